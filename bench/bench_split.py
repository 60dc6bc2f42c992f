"""Split inference through the mesh vs llama.cpp's own RPC over plain TCP, on one machine.

1. Two mesh-llm nodes with ``--max-vram 0.07`` split SmolLM2 (the worker holds the file). Against
   the host's llama-server (so the ingress is not measured) vs a llama-server using a plain
   ``ggml-rpc-server`` over loopback TCP with the same layer split: streaming tok/s and TTFT,
   interleaved, medians. RPC round trips per generated token from the host's tunnel counters.
2. Model load over the network: bytes the host sent the worker while loading, with the worker
   holding the file, and with a worker that has no model (first load, then a reload).

    .venv/bin/python bench/bench_split.py [--rounds 7] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from streamclient import chat_body, compare_paths  # noqa: E402

from mesh_llm.inference import locate_backend  # noqa: E402
from tests.integration.harness import MeshNode, free_port, http_json, smollm_path, wait_for  # noqa: E402

MODEL = "SmolLM2-135M-Instruct"
ARGS = ["--max-vram", "0.07", "--parallel", "1", "--ctx-size", "2048"]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def tunnel_stats(host: MeshNode) -> dict[str, Any]:
    tunnels: dict[str, Any] = host.status()["rpc_server"]["tunnels"]
    return next(iter(tunnels.values())) if tunnels else {}


def split_role(node: MeshNode) -> str | None:
    for m in node.status()["local_models"]:
        if m.get("split"):
            role: str = m["split"]["role"]
            return role
    return None


def start_pair(
    work: Path, tag: str, worker_args: list[str], env: dict[str, str]
) -> tuple[MeshNode, MeshNode]:
    worker = MeshNode(
        f"worker-{tag}", work / f"worker-{tag}", [*worker_args, *ARGS], env=env
    ).start()
    token = wait_for(lambda: worker.status()["token"], 30, "worker token")
    host = MeshNode(f"host-{tag}", work / f"host-{tag}", ["--model", MODEL, "--join", token, *ARGS])
    host.start()
    return host, worker


def plain_tcp_split(host: MeshNode, started: list[subprocess.Popen[bytes]]) -> int:
    """llama-server + ggml-rpc-server over loopback TCP; its port.

    The llama-server runs with exactly the mesh host's command line (read from ``/proc``), only
    its port and ``--rpc`` address changed: same layer split, output placement, context, slots.
    """
    bins = locate_backend()
    rpc_port, port = free_port(), free_port()
    env = {**os.environ, "GGML_RPC_NO_RDMA": "1"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    started.append(subprocess.Popen([str(bins.rpc_server), "-H", "127.0.0.1", "-p", str(rpc_port),
                                     "-t", str(os.cpu_count() or 1)], **quiet))  # type: ignore[arg-type]  # fmt: skip
    time.sleep(1)
    pid = http_json(f"{host.console}/api/runtime/processes")["processes"][0]["pid"]
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--rpc") + 1] = f"127.0.0.1:{rpc_port}"
    assert "-ngl" in argv, argv
    started.append(subprocess.Popen(argv, **quiet))  # type: ignore[call-overload]
    wait_for(
        lambda: http_json(f"http://127.0.0.1:{port}/health")["status"] == "ok", 120, "tcp split"
    )
    return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    model_bytes = smollm_path().stat().st_size
    result: dict[str, Any] = {
        "bench": "split",
        "machine": platform.platform(),
        "model_bytes": model_bytes,
    }
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        work = Path(tmp)
        first, second = start_pair(work, "file", ["--model", MODEL], {})
        host, worker = first, second
        try:
            t0 = time.monotonic()
            # Both declare the model: the election (capacity, then id) decides who hosts.
            wait_for(lambda: {split_role(first), split_role(second)} == {"host", "worker"}, 300,
                     "a host and a worker")  # fmt: skip
            if split_role(second) == "host":
                host, worker = second, first
            wait_for(lambda: MODEL in host.model_ids(), 300, "the split host to serve")
            result["with_file_load_s"] = round(time.monotonic() - t0, 2)
            result["with_file_load_bytes"] = tunnel_stats(host).get("bytes_sent")
            mesh_port = int(http_json(f"{host.console}/api/runtime")["models"][0]["port"])
            tcp_port = plain_tcp_split(host, started)
            before = tunnel_stats(host)
            body = chat_body(MODEL, PROMPT, args.max_tokens)
            m = asyncio.run(compare_paths(tcp_port, mesh_port, body, args.rounds))
            after = tunnel_stats(host)
            tokens = (args.rounds + 2) * args.max_tokens
            result["tok_s"] = m
            for key, name in (("round_trips", "round_trips_per_token"),
                              ("bytes_sent", "bytes_to_worker_per_token"),
                              ("bytes_received", "bytes_from_worker_per_token")):  # fmt: skip
                result[name] = round((after.get(key, 0) - before.get(key, 0)) / tokens, 2)
            print(json.dumps(result, indent=2), flush=True)
        finally:
            for proc in started:
                proc.terminate()
                proc.wait(10)
            host.stop()
            worker.stop()
        # A worker without the model: the first load sends the weights, a reload reads its store.
        bins = locate_backend()
        env = {"MESH_LLM_CACHE": str(work / "worker-cache")}
        host = MeshNode("host-store", work / "host-store", ["--model", MODEL, *ARGS]).start()
        token = wait_for(lambda: host.status()["token"], 30, "host token")
        worker_args = ["--join", token, "--bin-dir", str(bins.llama_server.parent), *ARGS]
        worker = MeshNode("worker-store", work / "worker-store", worker_args, env=env).start()
        try:
            wait_for(lambda: MODEL in host.model_ids(), 300, "split with an empty worker")
            result["no_file_first_load_bytes"] = tunnel_stats(host).get("bytes_sent")
            host.stop()
            worker_token = worker.status()["token"]
            again = [*host.args, "--join", worker_token]
            host = MeshNode(host.name + "-again", host.home, again).start()
            wait_for(lambda: MODEL in host.model_ids(), 300, "split after a host restart")
            result["no_file_second_load_bytes"] = tunnel_stats(host).get("bytes_sent")
        finally:
            host.stop()
            worker.stop()
    print(json.dumps(result, indent=2))
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"split-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
