"""RPC split through mesh-llm's tunnel ends vs llama.cpp's own RPC over plain TCP, and solo.

Real llama-server and ggml-rpc-server, SmolLM2-135M, ``-ngl 16`` (half the layers on the
worker). The two tunnel ends are joined in-process (no iroh), so the figures isolate llama.cpp plus
mesh-llm's relay and rewriting. Modes run interleaved, ``--rounds`` times each:

- ``solo``: llama-server alone.
- ``tcp``: ``--rpc`` straight to the rpc-server (llama.cpp's own RPC over loopback TCP).
- ``relay``: through the tunnel ends, no weight rewriting (host has no model table).
- ``file``: through the tunnel ends, the worker holds the GGUF (weights become references).
- ``store``: the worker keeps what it is sent; after the first round the store serves the load.

Per mode: load time, bytes host -> worker during the load (tunnel modes), decode tok/s (72
tokens, median), and RPC round trips per generated token (all round trips of a 72-token request,
prompt included, divided by 72). Then the latency the tunnel ends add to one round trip:
``GET_ALIGNMENT`` ping-pong against the same rpc-server, direct and through both ends.

    .venv/bin/python bench/bench_rpc_tunnel.py [--rounds 3]

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from mesh_llm.inference import RpcServer, host_weights, locate_backend  # noqa: E402
from mesh_llm.models import RpcStore  # noqa: E402
from mesh_llm.network import WorkerSources  # noqa: E402
from tests.integration.harness import smollm_path  # noqa: E402
from tests.integration.rpc_rig import LlamaServer, TunnelRig  # noqa: E402

MODES = ("solo", "tcp", "relay", "file", "store")
SHORT, LONG = 8, 72  # warm-up request, measured request


async def one_run(mode: str, tmp: Path, rpc_port: int, store: RpcStore) -> dict[str, Any]:
    bins = locate_backend()
    model = smollm_path()
    log = tmp / f"llama-{mode}.log"
    if mode in ("solo", "tcp"):
        rpc = f"127.0.0.1:{rpc_port}" if mode == "tcp" else None
        async with LlamaServer(
            bins.llama_server, model, log, rpc=rpc, ngl=16 if rpc else None
        ) as s:
            await s.complete(SHORT)
            long = await s.complete(LONG)
        return {"load_s": s.load_s, "tok_s": long["timings"]["predicted_per_second"]}
    weights = None if mode == "relay" else await asyncio.to_thread(host_weights, model)
    files = {weights.identity.hex(): (model,)} if mode == "file" and weights else {}
    sources = WorkerSources(files=files, store=store if mode == "store" else None)
    async with TunnelRig(rpc_port, weights, sources) as rig:
        stats = rig.host.stats
        async with LlamaServer(
            bins.llama_server, model, log, rpc=rig.host.endpoint, ngl=16
        ) as server:
            load_bytes = stats.bytes_sent
            await server.complete(SHORT)
            rt0, sent0, received0 = stats.round_trips, stats.bytes_sent, stats.bytes_received
            long = await server.complete(LONG)
        n_long = max(1, int(long["timings"]["predicted_n"]))
        return {
            "load_s": server.load_s,
            "tok_s": long["timings"]["predicted_per_second"],
            "load_bytes": load_bytes,
            "round_trips_per_token": (stats.round_trips - rt0) / n_long,
            "bytes_to_worker_per_token": (stats.bytes_sent - sent0) / n_long,
            "bytes_from_worker_per_token": (stats.bytes_received - received0) / n_long,
        }


PINGS = 2000


async def ping_us(port: int, count: int = PINGS) -> float:
    """Median microseconds of a GET_ALIGNMENT round trip (HELLO first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack("<BQ", 14, 24) + bytes(24))
    await reader.readexactly(8 + 28)
    ping = struct.pack("<BQI", 1, 4, 0)
    samples: list[float] = []
    for _ in range(count):
        t0 = time.perf_counter()
        writer.write(ping)
        await reader.readexactly(16)
        samples.append(time.perf_counter() - t0)
    writer.close()
    await writer.wait_closed()
    return statistics.median(samples) * 1e6


async def latency(rpc_port: int) -> dict[str, float]:
    model = smollm_path()
    weights = await asyncio.to_thread(host_weights, model)
    out = {"tcp": await ping_us(rpc_port)}
    async with TunnelRig(rpc_port, None, WorkerSources()) as rig:
        out["relay"] = await ping_us(rig.host.port)
    files = {weights.identity.hex(): (model,)}
    async with TunnelRig(rpc_port, weights, WorkerSources(files=files)) as rig:
        out["file"] = await ping_us(rig.host.port)
    out["tcp_again"] = await ping_us(rpc_port)
    return {k: round(v, 1) for k, v in out.items()}


async def main(rounds: int) -> dict[str, Any]:
    bins = locate_backend()
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        rpc = RpcServer(bins.rpc_server, log_path=tmp / "rpc.log", threads=1)
        port = await rpc.start()
        store = RpcStore(tmp / "store", cap_bytes=10**9)
        try:
            for r in range(rounds):
                order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    results[mode].append(await one_run(mode, tmp, port, store))
            ping = await latency(port)
        finally:
            store.close()
            await rpc.stop()
    summary: dict[str, Any] = {}
    for mode, runs in results.items():
        row: dict[str, Any] = {
            "load_s_median": round(statistics.median(r["load_s"] for r in runs), 2),
            "tok_s_median": round(statistics.median(r["tok_s"] for r in runs), 1),
            "tok_s_runs": [round(r["tok_s"], 1) for r in runs],
        }
        if "load_bytes" in runs[0]:
            row["load_bytes_runs"] = [r["load_bytes"] for r in runs]
            for key in (
                "round_trips_per_token",
                "bytes_to_worker_per_token",
                "bytes_from_worker_per_token",
            ):
                row[key] = round(statistics.median(r[key] for r in runs), 2)
        summary[mode] = row
    summary["round_trip_us"] = ping
    return summary


def table(summary: dict[str, Any], model_bytes: int) -> str:
    head = f"{'mode':<7}{'load s':>8}{'tok/s':>8}{'vs tcp':>8}{'MB to worker: 1st load':>24}"
    lines = [head + f"{'later':>8}{'RT/tok':>8}"]
    tcp = summary["tcp"]["tok_s_median"]
    for mode in MODES:
        row = summary[mode]
        loads = row.get("load_bytes_runs")
        first = f"{loads[0] / 1e6:.2f}" if loads else "-"
        later = f"{statistics.median(loads[1:]) / 1e6:.2f}" if loads and len(loads) > 1 else "-"
        rt = row.get("round_trips_per_token", "-")
        lines.append(
            f"{mode:<7}{row['load_s_median']:>8}{row['tok_s_median']:>8}"
            f"{row['tok_s_median'] / tcp:>8.2f}{first:>24}{later:>8}{rt!s:>8}"
        )
    lines.append(f"model file: {model_bytes / 1e6:.1f} MB; tok/s per run in the JSON")
    ping = summary["round_trip_us"]
    lines.append(
        "GET_ALIGNMENT round trip, median us: "
        + ", ".join(f"{mode} {value}" for mode, value in ping.items())
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    summary = asyncio.run(main(args.rounds))
    model_bytes = smollm_path().stat().st_size
    print(table(summary, model_bytes))
    out = REPO / "bench" / "results" / f"rpc_tunnel-{started.replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "started": started,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "model_bytes": model_bytes,
        "rounds": args.rounds,
        "results": summary,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
