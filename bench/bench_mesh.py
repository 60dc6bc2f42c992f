"""Mesh benchmarks on loopback (real iroh, real llama-server):

1. streaming tok/s and time to first token through a ``--client`` node's QUIC tunnel vs directly at
   the host's llama-server, interleaved, median of ``--rounds``, at two token rates (SmolLM2 and a
   synthetic 2-layer llama);
2. join-to-first-token: from starting ``mesh-llm --client --join T`` to the first streamed token;
3. failure detection: from ``kill -9`` of a serving peer to its model leaving the other node's
   ``/v1/models``.

    .venv/bin/python bench/bench_mesh.py [--rounds 9] [--max-tokens 128]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from streamclient import chat_body, compare_paths, format_ci, stream_chat  # noqa: E402
from synth_model import write_synthetic_llama  # noqa: E402

from tests.integration.harness import MeshNode, http_json, smollm_path, wait_for  # noqa: E402

MESH = ["--no-relay", "--bind-ip", "127.0.0.1"]
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


async def tunnel_vs_direct(
    host: MeshNode, client: MeshNode, model: str, rounds: int, n: int
) -> dict[str, object]:
    direct_port = int(http_json(f"{host.console}/api/runtime")["models"][0]["port"])
    m = await compare_paths(direct_port, client.api_port, chat_body(model, PROMPT, n), rounds)
    return {
        "model": model,
        "direct_tok_s": m["baseline_tok_s"],
        "tunnel_tok_s": m["other_tok_s"],
        "tok_s_ratio": m["tok_s_ratio"],
        "tok_s_ratio_ci95": m["tok_s_ratio_ci95"],
        "paired_ratios": m["paired_ratios"],
        "ratio_of_medians": m["ratio_of_medians"],
        "direct_ttft_ms": m["baseline_ttft_ms"],
        "tunnel_ttft_ms": m["other_ttft_ms"],
        "ttft_added_ms": m["ttft_added_ms"],
    }


def join_to_first_token(host: MeshNode, work: Path, model: str, name: str) -> float:
    token = host.status()["token"]
    started = time.monotonic()
    client = MeshNode(name, work / name, ["--client", "--join", token, *MESH]).start()
    try:
        wait_for(lambda: model in client.model_ids(), 30, "the client to list the model", 0.02)
        asyncio.run(stream_chat(client.api_port, chat_body(model, "Hi", 4)))
        return time.monotonic() - started
    finally:
        client.stop()


def failure_detection(host: MeshNode, work: Path, gguf: Path, name: str) -> float:
    link = work / f"{name}.gguf"
    link.symlink_to(gguf)
    token = host.status()["token"]
    peer = MeshNode(name, work / name, ["--gguf", str(link), "--join", token, *MESH]).start()
    try:
        wait_for(lambda: name in host.model_ids(), 120, f"{name} to be listed by the host")
        peer.signal(signal.SIGKILL)
        killed = time.monotonic()
        assert peer.proc is not None
        peer.proc.wait(10)
        wait_for(lambda: name not in host.model_ids(), 60, f"{name} to disappear", 0.02)
        return time.monotonic() - killed
    finally:
        peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    smol = smollm_path()
    rows: list[dict[str, object]] = []
    result: dict[str, object] = {"bench": "mesh", "machine": platform.platform()}
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        work = Path(tmp)
        synth = write_synthetic_llama(smol, work / "synthetic-llama-2x256.gguf")
        for gguf in (smol, synth):
            host = MeshNode(f"host-{gguf.stem}", work / f"host-{gguf.stem}",
                            ["--gguf", str(gguf), "--parallel", "2", *MESH]).start()  # fmt: skip
            try:
                wait_for(host.model_ids, 300, f"{gguf.name} to be served")
                model = host.model_ids()[0]
                join = ["--client", "--join", host.status()["token"], *MESH]
                client = MeshNode(f"client-{gguf.stem}", work / f"client-{gguf.stem}", join)
                client.start()
                try:
                    wait_for(lambda c=client, m=model: m in c.model_ids(), 30, "client ready")
                    rows.append(
                        asyncio.run(
                            tunnel_vs_direct(host, client, model, args.rounds, args.max_tokens)
                        )
                    )
                finally:
                    client.stop()
                if gguf == synth:
                    joins = [join_to_first_token(host, work, model, f"join{i}") for i in range(3)]
                    kills = [failure_detection(host, work, synth, f"victim{i}") for i in range(3)]
                    result["join_to_first_token_s"] = [round(j, 2) for j in joins]
                    result["failure_detection_s"] = [round(k, 2) for k in kills]
            finally:
                host.stop()
    result["rows"] = rows
    print(
        f"{'model':28} {'direct tok/s':>12} {'tunnel tok/s':>12} {'ratio':>6} "
        f"{'95% CI':>13} {'direct TTFT':>12} {'tunnel TTFT':>12} {'added':>8}"
    )
    for r in rows:
        print(
            f"{r['model']!s:28} {r['direct_tok_s']:>12} {r['tunnel_tok_s']:>12} "
            f"{r['tok_s_ratio']:>6} {format_ci(r['tok_s_ratio_ci95']):>13} "
            f"{r['direct_ttft_ms']:>10}ms {r['tunnel_ttft_ms']:>10}ms {r['ttft_added_ms']:>6}ms"
        )
    print(f"join -> first token (s): {result.get('join_to_first_token_s')}")
    print(f"kill -9 -> gone from the host's /v1/models (s): {result.get('failure_detection_s')}")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"mesh-{stamp}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
