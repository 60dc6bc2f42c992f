"""CPU per streamed token of the mesh-llm processes, relay loops in Python vs in C.

A host node serving the synthetic 2-layer llama (~500 tok/s here) and a ``--client`` node joined
to it on loopback; ``--streams`` streaming chats of ``--max-tokens`` through the client's :9337
(client relay: QUIC stream -> socket; host relay: llama-server's socket -> QUIC stream). The CPU
of both processes is read per thread from ``/proc`` before and after and divided by the tokens
streamed. Variants alternate (python, native, python, native, ...), each with fresh nodes started
with ``MESH_LLM_NATIVE_RELAY=0`` or without it; the tunnel tok/s of each run is printed too.
Then the same streams through the host's own :9337 (local path: llama-server's socket -> the
client's socket), with the host's CPU per token.

    .venv/bin/python bench/bench_relay_cpu.py [--pairs 2] [--streams 15] [--max-tokens 128]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from streamclient import chat_body, stream_chat  # noqa: E402
from synth_model import write_synthetic_llama  # noqa: E402

from tests.integration.harness import MeshNode, smollm_path, wait_for  # noqa: E402

MESH = ["--no-relay", "--bind-ip", "127.0.0.1"]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread group of a process: main, tokio (iroh), other Python threads."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        seconds = (int(fields[11]) + int(fields[12])) / TICKS
        if task.name == str(pid):
            kind = "main"
        elif "tokio" in name or "async-compat" in name:
            kind = "iroh"
        else:
            kind = "relay+other"
        out[kind] = out.get(kind, 0.0) + seconds
    return out


def per_token(before: dict[str, float], after: dict[str, float], tokens: int) -> dict[str, int]:
    return {k: round((after[k] - before.get(k, 0.0)) / tokens * 1e6) for k in after}


def run_variant(native: bool, gguf: Path, work: Path, streams: int, n: int) -> dict[str, object]:
    env = {} if native else {"MESH_LLM_NATIVE_RELAY": "0"}
    tag = f"{'native' if native else 'python'}-{time.monotonic_ns()}"
    host = MeshNode(f"host-{tag}", work / f"host-{tag}",
                    ["--gguf", str(gguf), "--parallel", "2", *MESH], env=env).start()  # fmt: skip
    try:
        wait_for(host.model_ids, 300, "the model to be served")
        model = host.model_ids()[0]
        join = ["--client", "--join", host.status()["token"], *MESH]
        client = MeshNode(f"client-{tag}", work / f"client-{tag}", join, env=env).start()
        try:
            wait_for(lambda: model in client.model_ids(), 30, "the client to list the model")
            for node in (host, client):
                relay = node.status()["relay"]
                if relay["native_streams"] != native:
                    raise SystemExit(f"{node.name}: relay is {relay}, wanted native={native}")
            body = chat_body(model, PROMPT, n)
            for _ in range(2):  # warm-up
                asyncio.run(stream_chat(client.api_port, body))
            assert host.proc is not None
            assert client.proc is not None
            h0, c0 = thread_cpu(host.proc.pid), thread_cpu(client.proc.pid)
            rates = [
                asyncio.run(stream_chat(client.api_port, body)).tok_per_s for _ in range(streams)
            ]
            h1, c1 = thread_cpu(host.proc.pid), thread_cpu(client.proc.pid)
        finally:
            client.stop()
        # the local path: the host's own :9337 relaying its llama-server (socket -> socket)
        l0 = thread_cpu(host.proc.pid)
        local_rates = [
            asyncio.run(stream_chat(host.api_port, body)).tok_per_s for _ in range(streams)
        ]
        l1 = thread_cpu(host.proc.pid)
    finally:
        host.stop()
    tokens = streams * n
    host_us, client_us = per_token(h0, h1, tokens), per_token(c0, c1, tokens)
    local_us = per_token(l0, l1, tokens)
    return {
        "local_us_per_token": local_us,
        "local_total_us_per_token": sum(local_us.values()),
        "local_tok_s": round(statistics.median(local_rates), 1),
        "relay": "native" if native else "python",
        "host_us_per_token": host_us,
        "client_us_per_token": client_us,
        "both_us_per_token": sum(host_us.values()) + sum(client_us.values()),
        "tunnel_tok_s": round(statistics.median(rates), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--streams", type=int, default=15)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    runs: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        work = Path(tmp)
        synth = write_synthetic_llama(smollm_path(), work / "synthetic-llama-2x256.gguf")
        for _ in range(args.pairs):
            for native in (False, True):
                runs.append(run_variant(native, synth, work, args.streams, args.max_tokens))
                r = runs[-1]
                print(
                    f"{r['relay']:7} both nodes {r['both_us_per_token']:>5} us/token"
                    f"  host {r['host_us_per_token']}  client {r['client_us_per_token']}"
                    f"  tunnel {r['tunnel_tok_s']} tok/s"
                    f" | local :9337 {r['local_total_us_per_token']:>4} us/token"
                    f" {r['local_us_per_token']} {r['local_tok_s']} tok/s",
                    flush=True,
                )
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    result = {"bench": "relay_cpu", "machine": platform.platform(), "runs": runs}
    (out / f"relay-cpu-{stamp}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
