"""Load on one node: proxy overhead at 8 concurrent streams, and overload at 256 clients.

    .venv/bin/python bench/bench_load.py [--rounds 6] [--streams 8] [--max-tokens 64]
                                         [--clients 256] [--skip-ratio] [--skip-overload]

- **Ratio.** One node serves the bundled SmolLM2 with ``--parallel`` equal to ``--streams``. Each
  round sends ``--streams`` concurrent streamed chat completions (greedy, ``ignore_eos``) through
  :9337 and the same load straight to the node's llama-server, the order alternating per round.
  Aggregate tok/s = streamed content events / wall time of the round. Reported: the median of the
  per-round ratios (mesh ÷ direct) with min..max of the paired ratios, a distribution-free interval
  for the median ratio (coverage 1 - 2^(1-n): 97% at 6 rounds).
- **Overload.** ``--clients`` streams released at once through :9337: each must complete or get
  a 503 with ``Retry-After``; hangs, resets and truncated streams are counted. RSS of the
  mesh-llm process before and after.

Prints tables and writes JSON to ``bench/results/load.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.harness import MeshNode  # noqa: E402
from tests.integration.load import MODEL, run_concurrent  # noqa: E402


def llama_port(node: MeshNode) -> int:
    for child in node.children():
        argv = child.cmdline()
        if argv and "llama-server" in Path(argv[0]).name and "--port" in argv:
            return int(argv[argv.index("--port") + 1])
    raise RuntimeError("no llama-server child found")


def interval(values: list[float]) -> tuple[float, float]:
    """Min..max of the paired ratios: covers the median ratio with probability 1 - 2**(1 - n)."""
    return min(values), max(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--skip-ratio", action="store_true")
    parser.add_argument("--skip-overload", action="store_true")
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    out: dict[str, object] = {
        "machine": f"{platform.node()} ({psutil.cpu_count()} cpu)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
    }
    with tempfile.TemporaryDirectory() as home:
        node = MeshNode(
            "bench", Path(home), ["--model", MODEL, "--parallel", str(args.streams)]
        ).start()
        try:
            node.wait_models({MODEL}, timeout=300)
            direct = llama_port(node)
            if not args.skip_ratio:
                run_concurrent(node.api_port, args.streams, 8, 120)  # warm-up
                ratios, mesh_tps, direct_tps = [], [], []
                for r in range(args.rounds):
                    order = [node.api_port, direct] if r % 2 == 0 else [direct, node.api_port]
                    tps = {}
                    for port in order:
                        res = run_concurrent(port, args.streams, args.max_tokens, 300)
                        bad = {k: v for k, v in res.counts().items() if k != "ok"}
                        if bad:
                            raise RuntimeError(f"round {r} port {port}: {bad}")
                        tps[port] = res.tokens / res.wall_s
                    mesh_tps.append(tps[node.api_port])
                    direct_tps.append(tps[direct])
                    ratios.append(tps[node.api_port] / tps[direct])
                    print(
                        f"round {r}: mesh {tps[node.api_port]:.1f} tok/s, "
                        f"direct {tps[direct]:.1f} tok/s, ratio {ratios[-1]:.3f}",
                        flush=True,
                    )
                lo, hi = interval(ratios)
                out["ratio"] = {
                    "streams": args.streams,
                    "max_tokens": args.max_tokens,
                    "rounds": args.rounds,
                    "mesh_tok_s": mesh_tps,
                    "direct_tok_s": direct_tps,
                    "ratios": ratios,
                    "median": statistics.median(ratios),
                    "interval": [lo, hi],
                }
                print(
                    f"{args.streams} streams: mesh/direct aggregate tok/s = "
                    f"{statistics.median(ratios):.3f} [{lo:.3f}, {hi:.3f}]"
                )
            if not args.skip_overload:
                assert node.proc is not None
                proc = psutil.Process(node.proc.pid)
                rss0 = proc.memory_info().rss
                res = run_concurrent(node.api_port, args.clients, 16, 300)
                rss1 = proc.memory_info().rss
                counts = dict(res.counts())
                slowest = max(o.seconds for o in res.outcomes)
                out["overload"] = {
                    "clients": args.clients,
                    "counts": counts,
                    "wall_s": res.wall_s,
                    "slowest_s": slowest,
                    "rss_before_mib": rss0 / 2**20,
                    "rss_after_mib": rss1 / 2**20,
                }
                print(
                    f"{args.clients} clients: {counts} in {res.wall_s:.1f} s "
                    f"(slowest {slowest:.1f} s), RSS {rss0 / 2**20:.0f} -> {rss1 / 2**20:.0f} MiB"
                )
        finally:
            node.stop()
    path = REPO / "bench" / "results" / "load.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
