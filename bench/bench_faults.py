"""Detection and recovery per fault, and requests lost (issue 16's figures); about 2 minutes.

    .venv/bin/python bench/bench_faults.py [--partition-s 10]

Needs root (network namespaces). The topology of ``tests/integration/far_mesh.py``: A serves
SmolLM2, B is A's ``--client``, C (its own namespace, serving the same weights as ``smollm-far``)
reaches A only through a UDP relay adding 20 ms +- 10 ms each way and 2 % loss. Throughout each
fault, two threads send streamed chat completions for A's model back to back at A and at B
(requests not on the faulty node): every failure among them is a request lost.

- **partition**: the relay drops everything. Detection = until A no longer lists C (peers and
  ``/v1/models``); also B (through A's PeerDown) and C (A's model gone from C's list).
- **heal**: after ``--partition-s``, the relay forwards again. Recovery = until A lists C and its
  model again.
- **kill -9**: C's mesh-llm is SIGKILLed. Detection as above. Recovery = C restarted (same home,
  same identity) until A lists its model again (includes C's start-up and model load).

Prints a table and writes JSON to ``bench/results/faults.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.far_mesh import FAR, MODEL, FarMesh, Traffic, far_mesh  # noqa: E402
from tests.integration.harness import wait_for  # noqa: E402
from tests.integration.netns import netns_available  # noqa: E402


def _ids(status: dict[str, Any]) -> set[str]:
    return {p["id"] for p in status["peers"]}


def _timed(predicate: Any, since: float, timeout: float, what: str) -> float:
    wait_for(predicate, timeout, what, interval=0.05)
    return time.monotonic() - since


def detect(mesh: FarMesh, c_id: str, since: float) -> dict[str, float]:
    a = _timed(
        lambda: FAR not in mesh.a.model_ids() and c_id not in _ids(mesh.a.status()),
        since,
        30,
        "A to drop C",
    )
    b = _timed(lambda: c_id not in _ids(mesh.b.status()), since, 30, "B to drop C")
    return {"detect_a_s": a, "detect_b_s": b}


def converged(mesh: FarMesh, c_id: str) -> bool:
    return FAR in mesh.a.model_ids() and c_id in _ids(mesh.a.status())


def lost(traffic: Traffic) -> dict[str, Any]:
    outcomes = traffic.outcomes()
    return {
        "requests": sum(outcomes.values()),
        "lost": sum(traffic.failures().values()),
        "failures": traffic.failures(),
    }


def partition_and_heal(mesh: FarMesh, hold_s: float) -> list[dict[str, Any]]:
    c_id = mesh.c_id()
    with Traffic([("A", mesh.a), ("B", mesh.b)]) as traffic:
        time.sleep(1.0)
        mesh.relay.partition()
        cut = time.monotonic()
        part = detect(mesh, c_id, cut)
        part["detect_c_s"] = _timed(
            lambda: MODEL not in mesh.c.model_ids(), cut, 30, "C to drop A's model"
        )
        time.sleep(max(0.0, hold_s - (time.monotonic() - cut)))
        mesh.relay.heal()
        healed = time.monotonic()
        recover = _timed(lambda: converged(mesh, c_id), healed, 60, "A to see C again")
        time.sleep(1.0)
    return [
        {"fault": "partition", **part, **lost(traffic)},
        {"fault": "heal", "recover_s": recover, "after_partition_s": healed - cut},
    ]


def kill9(mesh: FarMesh) -> dict[str, Any]:
    c_id = mesh.c_id()
    orphans = mesh.c.children()
    with Traffic([("A", mesh.a), ("B", mesh.b)]) as traffic:
        time.sleep(1.0)
        mesh.c.signal(signal.SIGKILL)
        killed = time.monotonic()
        result = detect(mesh, c_id, killed)
        for proc in orphans:  # its llama-server, orphaned
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(orphans, timeout=10)
        restarted = time.monotonic()
        mesh.restart_c()
        result["recover_s"] = _timed(
            lambda: converged(mesh, c_id), restarted, 180, "A to list C's model again"
        )
        time.sleep(1.0)
    return {"fault": "kill -9", **result, **lost(traffic)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partition-s", type=float, default=10.0)
    args = parser.parse_args()
    unavailable = netns_available()
    if unavailable is not None:
        sys.exit(f"bench_faults: {unavailable}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp, far_mesh(Path(tmp)) as mesh:
        rows = partition_and_heal(mesh, args.partition_s)
        rows.append(kill9(mesh))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    print(f"{'fault':<10} {'detect A':>9} {'detect B':>9} {'detect C':>9} {'recover':>8} lost")
    for row in rows:

        def cell(key: str, row: dict[str, Any] = row) -> str:
            return f"{row[key]:.1f} s" if key in row else "-"

        lost_cell = f"{row['lost']}/{row['requests']}" if "lost" in row else "-"
        print(
            f"{row['fault']:<10} {cell('detect_a_s'):>9} {cell('detect_b_s'):>9} "
            f"{cell('detect_c_s'):>9} {cell('recover_s'):>8} {lost_cell}"
        )
    out = REPO / "bench" / "results" / "faults.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"commit": commit, "machine": platform.node(), "cpus": psutil.cpu_count()}
    out.write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out} ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
