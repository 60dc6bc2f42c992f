"""Proxy overhead: streaming tok/s and time to first token, through :9337 vs at llama-server.

Same prompts, same llama-server, requests interleaved (alternating which path goes first), median of
``--rounds``. Run at two token rates: SmolLM2-135M (about 140 tok/s on a 2-core CPU) and a synthetic
2-layer llama (about 1,000 tok/s), where per-chunk proxy cost starts to show.

    .venv/bin/python bench/bench_proxy.py [--rounds 9] [--max-tokens 128]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from streamclient import chat_body, compare_paths, format_ci  # noqa: E402
from synth_model import write_synthetic_llama  # noqa: E402

from tests.integration.harness import MeshNode, http_json, smollm_path, wait_for  # noqa: E402

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


async def compare(node: MeshNode, model: str, rounds: int, max_tokens: int) -> dict[str, object]:
    runtime = http_json(f"{node.console}/api/runtime")
    direct_port = int(runtime["models"][0]["port"])
    body = chat_body(model, PROMPT, max_tokens)
    m = await compare_paths(direct_port, node.api_port, body, rounds)
    return {
        "model": model,
        "rounds": rounds,
        "max_tokens": max_tokens,
        "direct_tok_s": m["baseline_tok_s"],
        "proxy_tok_s": m["other_tok_s"],
        "tok_s_ratio": m["tok_s_ratio"],
        "tok_s_ratio_ci95": m["tok_s_ratio_ci95"],
        "paired_ratios": m["paired_ratios"],
        "ratio_of_medians": m["ratio_of_medians"],
        "direct_ttft_ms": m["baseline_ttft_ms"],
        "proxy_ttft_ms": m["other_ttft_ms"],
        "ttft_added_ms": m["ttft_added_ms"],
    }


def run_model(gguf: Path, rounds: int, max_tokens: int, work: Path) -> dict[str, object]:
    node = MeshNode(gguf.stem, work / gguf.stem, ["--gguf", str(gguf), "--parallel", "2"]).start()
    try:
        wait_for(node.model_ids, 300, f"{gguf.name} to be served")
        name = node.model_ids()[0]
        return asyncio.run(compare(node, name, rounds, max_tokens))
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    smol = smollm_path()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        work = Path(tmp)
        synth = write_synthetic_llama(smol, work / "synthetic-llama-2x256.gguf")
        rows.append(run_model(smol, args.rounds, args.max_tokens, work))
        rows.append(run_model(synth, args.rounds, args.max_tokens, work))
    header = f"{'model':32} {'direct tok/s':>12} {'proxy tok/s':>12} {'ratio':>6} "
    header += f"{'95% CI':>13} {'direct TTFT':>12} {'proxy TTFT':>11} {'added':>8}"
    print(header)
    for r in rows:
        print(
            f"{r['model']!s:32} {r['direct_tok_s']:>12} {r['proxy_tok_s']:>12} "
            f"{r['tok_s_ratio']:>6} {format_ci(r['tok_s_ratio_ci95']):>13} "
            f"{r['direct_ttft_ms']:>10}ms {r['proxy_ttft_ms']:>9}ms {r['ttft_added_ms']:>6}ms"
        )
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    payload = {"bench": "proxy", "when": stamp, "machine": platform.platform(), "rows": rows}
    (out / f"proxy-{stamp}.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
