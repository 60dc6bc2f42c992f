"""What the backend self-test costs: a forced self-test of the cached llama.cpp build, repeated.

The self-test runs once per build and machine (after every build, and when binaries are not yet
proven on this CPU); a node start that finds a passing record skips it. This measures the forced
run (tiny model written once, then llama-server load + 4 tokens + rpc-server HELLO) and the
skipped one (the record lookup).

    .venv/bin/python bench/bench_selftest.py [--rounds 15]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from mesh_llm.inference import locate_backend, prove_backend  # noqa: E402


def _commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    bins = locate_backend()
    forced: list[float] = []
    skipped: list[float] = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        result = prove_backend(bins, progress=lambda _msg: None, force=True)
        forced.append(time.perf_counter() - started)
        if not result.ok:
            raise SystemExit(f"self-test failed: {result.detail}; log: {result.log_path}")
        started = time.perf_counter()
        prove_backend(bins, progress=lambda _msg: None)
        skipped.append(time.perf_counter() - started)
    rows = [("forced self-test", forced), ("already proven (record lookup)", skipped)]
    print(f"{'case':34} {'median':>9} {'min':>9} {'max':>9}   ({args.rounds} rounds)")
    for name, values in rows:
        print(
            f"{name:34} {statistics.median(values) * 1000:7.1f}ms {min(values) * 1000:7.1f}ms "
            f"{max(values) * 1000:7.1f}ms"
        )
    payload = {
        "bench": "selftest",
        "date": time.strftime("%Y-%m-%d"),
        "commit": _commit(),
        "machine": f"{platform.machine()} {platform.processor()} ({platform.node()})",
        "binaries": str(bins.llama_server.parent),
        "rounds": args.rounds,
        "forced_s": forced,
        "skipped_s": skipped,
    }
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"selftest-{stamp}.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
