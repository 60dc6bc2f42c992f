"""Codec fuzzing soak: >= 10^5 mutated inputs over every wire codec in ``mesh_llm.protocol``.

    .venv/bin/python bench/bench_fuzz.py [--cases 100000] [--seed 1]

Uses the seeded mutator in ``tests/unit/protocol/codec_fuzz.py`` (``make test`` runs a small
budget of the same). Prints per-codec case and rejection counts, any finding (an exception outside
the ``ProtocolError`` family, with its input in hex) and writes JSON to ``bench/results/``.
Exits 1 on a finding.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.unit.protocol import codec_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    report = codec_fuzz.run(args.cases, args.seed)
    elapsed = time.perf_counter() - start
    print(f"{'codec':<20}{'cases':>10}{'rejected':>10}")
    for name, count in report.cases.items():
        print(f"{name:<20}{count:>10}{report.rejected.get(name, 0):>10}")
    print(f"{sum(report.cases.values())} cases in {elapsed:.1f} s, {len(report.findings)} findings")
    for finding in report.findings:
        print(finding)
    out = REPO / "bench" / "results" / "fuzz.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.node(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seed": args.seed,
                "cases": report.cases,
                "rejected": report.rejected,
                "findings": report.findings,
                "seconds": elapsed,
            },
            indent=2,
        )
    )
    return 1 if report.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
