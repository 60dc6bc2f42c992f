"""Transport benchmark: iroh stream throughput and small-message round trips on loopback.

Runs each variant (``patched``: with ``mesh_llm.network.transport._iroh_patch`` applied;
``unpatched``: the bindings as shipped) in its own fresh Python process, since the patch cannot
be undone in a process. Both endpoints of a measurement live in that process (relays disabled,
127.0.0.1), so each figure includes both sides' Python overhead.

Measures, per variant:
- ``lower_1mib_ms``: time to hand 1 MiB to the bindings (``RustBuffer`` lowering only);
- ``throughput_mb_s``: one stream, ``--size`` MiB written in ``--chunk`` KiB writes, timed until
  the reader sees end of stream (MB = 10^6 bytes);
- ``rtt_stream_us``: median/p90 of a 64-byte echo on one long-lived stream;
- ``rtt_new_stream_us``: median/p90 of open stream + 64-byte request + 64-byte reply.

With ``--relay-threads`` it also measures the CPU cost of one stream write and one stream read made
by relay threads (``BiStream.write_blocking`` / ``read_blocking``, paced at one 110-byte write per
millisecond like a token stream) through ``mesh_llm.network.transport._iroh_direct`` and through the
generated methods, alternating, plus the CPU of Rust's threads per operation.

With ``--detection`` it also times how a connection learns that its peer went away: after a
graceful ``close()`` and after the peer process is SIGKILLed (``closed()`` and ``Conn.probe``).

Prints a table and writes JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mesh_llm.network.transport import Conn, Transport
from mesh_llm.network.transport import _iroh_direct as iroh_direct
from mesh_llm.network.transport import _iroh_patch as iroh_patch
from mesh_llm.protocol.token import decode_token

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024
MSG = 64


async def _pair() -> tuple[Transport, Transport, Conn, Conn]:
    a = await Transport.bind(no_relay=True, bind_ip="127.0.0.1", patch_bindings=False)
    b = await Transport.bind(no_relay=True, bind_ip="127.0.0.1", patch_bindings=False)
    accepted = asyncio.ensure_future(b.accept())
    ab = await a.connect(b.addr(), timeout=10)
    return a, b, ab, await accepted


def _lower_ms() -> float:
    from iroh import iroh_ffi

    data = os.urandom(MIB)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        rbuf = iroh_ffi._UniffiFfiConverterBytes.lower(data)
        best = min(best, time.perf_counter() - started)
        rbuf.free()
    return best * 1000


async def _throughput(ab: Conn, ba: Conn, size: int, chunk: int) -> float:
    data = os.urandom(chunk)

    async def sink() -> int:
        stream = await ba.accept_bi()
        total = 0
        while block := await stream.read(MIB):
            total += len(block)
        return total

    reader = asyncio.ensure_future(sink())
    stream = await ab.open_bi()
    started = time.perf_counter()
    sent = 0
    while sent < size:
        await stream.write(data)
        sent += len(data)
    await stream.finish()
    received = await reader
    elapsed = time.perf_counter() - started
    assert received == sent, (received, sent)
    return sent / elapsed / 1e6


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[int(len(ordered) * 0.9)],
        "n": len(ordered),
    }


async def _rtt_stream(ab: Conn, ba: Conn, iters: int) -> dict[str, float]:
    async def echo() -> None:
        stream = await ba.accept_bi()
        while True:
            try:
                data = await stream.read_exact(MSG)
            except Exception:  # noqa: BLE001 - the client finished
                return
            await stream.write(data)

    server = asyncio.ensure_future(echo())
    client = await ab.open_bi()
    payload = os.urandom(MSG)
    samples: list[float] = []
    for i in range(iters + 100):
        started = time.perf_counter()
        await client.write(payload)
        assert await client.read_exact(MSG) == payload
        if i >= 100:
            samples.append((time.perf_counter() - started) * 1e6)
    await client.finish()
    await server
    return _summary(samples)


async def _rtt_new_stream(ab: Conn, ba: Conn, iters: int) -> dict[str, float]:
    async def serve(count: int) -> None:
        for _ in range(count):
            stream = await ba.accept_bi()
            await stream.write(await stream.read_to_end(MSG))
            await stream.finish()

    server = asyncio.ensure_future(serve(iters + 20))
    payload = os.urandom(MSG)
    samples: list[float] = []
    for i in range(iters + 20):
        started = time.perf_counter()
        stream = await ab.open_bi()
        await stream.write(payload)
        await stream.finish()
        assert await stream.read_to_end(MSG) == payload
        if i >= 20:
            samples.append((time.perf_counter() - started) * 1e6)
    await server
    return _summary(samples)


async def run_variant(args: argparse.Namespace) -> dict[str, Any]:
    patched = iroh_patch.apply() if args.variant == "patched" else False
    result: dict[str, Any] = {
        "variant": args.variant,
        "patch_applied": patched or iroh_patch.is_applied(),
        "lower_1mib_ms": _lower_ms(),
    }
    a, b, ab, ba = await _pair()
    try:
        await _throughput(ab, ba, 4 * MIB, args.chunk * 1024)  # warm-up
        result["throughput_mb_s"] = await _throughput(ab, ba, args.size * MIB, args.chunk * 1024)
        result["rtt_stream_us"] = await _rtt_stream(ab, ba, args.rtt_iters)
        result["rtt_new_stream_us"] = await _rtt_new_stream(ab, ba, args.rtt_iters // 4)
    finally:
        await a.close()
        await b.close()
    return result


def _rust_threads_cpu_s() -> float:
    """CPU seconds of this process's threads that Python did not start (Rust's)."""
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().startswith("python"):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def _relay_round(out: Any, inbound: Any, ops: int) -> dict[str, float]:
    payload = b'data: {"choices":[{"delta":{"content":" token"}}]}\n\n' * 2
    cpu: dict[str, float] = {}

    def writer() -> None:
        started = time.thread_time()
        for _ in range(ops):
            time.sleep(0.001)
            out.write_blocking(payload)
        cpu["writer"] = time.thread_time() - started

    def reader() -> None:
        started, got = time.thread_time(), 0
        while got < ops * len(payload):
            got += len(inbound.read_blocking(65536))
        cpu["reader"] = time.thread_time() - started

    def pacing() -> None:  # the writer's sleeps alone
        started = time.thread_time()
        for _ in range(ops):
            time.sleep(0.001)
        cpu["pacing"] = time.thread_time() - started

    await asyncio.to_thread(pacing)
    rust = _rust_threads_cpu_s()
    await asyncio.gather(asyncio.to_thread(reader), asyncio.to_thread(writer))
    cpu["rust"] = _rust_threads_cpu_s() - rust
    return {
        "write_us": (cpu["writer"] - cpu["pacing"]) / ops * 1e6,
        "read_us": cpu["reader"] / ops * 1e6,
        "rust_threads_us": cpu["rust"] / ops * 1e6,
    }


async def run_relay_threads(ops: int, rounds: int) -> dict[str, Any]:
    a = await Transport.bind(no_relay=True, bind_ip="127.0.0.1")
    b = await Transport.bind(no_relay=True, bind_ip="127.0.0.1")
    try:
        accepted = asyncio.ensure_future(b.accept())
        ab = await a.connect(b.addr(), timeout=10)
        ba = await accepted
        out = await ab.open_bi()
        await out.write(b"!")
        inbound = await ba.accept_bi()
        await inbound.read_exact(1)
        direct_ok = iroh_direct.available()
        samples: dict[str, list[dict[str, float]]] = {"direct": [], "generated": []}
        for i in range(rounds):
            order = ["direct", "generated"] if i % 2 == 0 else ["generated", "direct"]
            for mode in order:
                iroh_direct._checked = None if mode == "direct" else False
                samples[mode].append(await _relay_round(out, inbound, ops))
        iroh_direct._checked = None
    finally:
        await a.close()
        await b.close()
    return {
        "direct_available": direct_ok,
        "ops_per_round": ops,
        "rounds": rounds,
        **{
            mode: {k: round(statistics.median(r[k] for r in rows), 1) for k in rows[0]}
            for mode, rows in samples.items()
        },
    }


PEER_SCRIPT = """
import asyncio
from mesh_llm.network.transport import Transport
from mesh_llm.protocol.token import encode_token

async def main():
    t = await Transport.bind(no_relay=True, bind_ip="127.0.0.1")
    print(encode_token(t.addr()), flush=True)
    conn = await t.accept()
    print("accepted", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def _spawn_peer_and_connect(local: Transport) -> tuple[asyncio.subprocess.Process, Conn]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PEER_SCRIPT, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    token = (await proc.stdout.readline()).decode().strip()
    conn = await local.connect(decode_token(token), timeout=10)
    await proc.stdout.readline()
    return proc, conn


async def run_detection() -> dict[str, Any]:
    iroh_patch.apply()
    out: dict[str, Any] = {}
    a, b, ab, ba = await _pair()
    started = time.perf_counter()
    ba.close(0, b"bye")
    await ab.closed()
    out["graceful_close_closed_ms"] = (time.perf_counter() - started) * 1000
    await a.close()
    await b.close()

    local = await Transport.bind(no_relay=True, bind_ip="127.0.0.1")
    try:
        proc, conn = await _spawn_peer_and_connect(local)
        await asyncio.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        killed = time.perf_counter()
        probe_started = time.perf_counter()
        out["probe_1s_after_kill"] = await conn.probe(1.0)
        out["probe_ms"] = (time.perf_counter() - probe_started) * 1000

        async def failing_open_bi() -> float:
            while True:
                try:
                    stream = await conn.open_bi()
                    await stream.write(b"\x01")
                except Exception:  # noqa: BLE001 - waiting for the first failure
                    return time.perf_counter() - killed
                await asyncio.sleep(0.25)

        open_bi_task = asyncio.ensure_future(failing_open_bi())
        reason = await asyncio.wait_for(conn.closed(), 120)
        out["kill_closed_s"] = time.perf_counter() - killed
        out["kill_closed_reason"] = reason
        out["kill_open_bi_fails_s"] = await asyncio.wait_for(open_bi_task, 10)
    finally:
        await local.close()
    return out


def _child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--variant",
        variant,
        "--size",
        str(args.size),
        "--chunk",
        str(args.chunk),
        "--rtt-iters",
        str(args.rtt_iters),
        "--child",
    ]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _table(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'variant':<10} {'lower 1MiB':>11} {'MB/s':>8} {'rtt med':>9} {'rtt p90':>9}"
        f" {'new-stream med':>15} {'p90':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['variant']:<10} {r['lower_1mib_ms']:>9.2f}ms {r['throughput_mb_s']:>8.1f}"
            f" {r['rtt_stream_us']['median']:>7.0f}us {r['rtt_stream_us']['p90']:>7.0f}us"
            f" {r['rtt_new_stream_us']['median']:>13.0f}us"
            f" {r['rtt_new_stream_us']['p90']:>6.0f}us"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="MiB per throughput run")
    parser.add_argument("--chunk", type=int, default=64, help="KiB per write")
    parser.add_argument("--rtt-iters", type=int, default=2000)
    parser.add_argument("--variant", choices=["patched", "unpatched", "both"], default="both")
    parser.add_argument("--detection", action="store_true", help="also time peer-death detection")
    parser.add_argument(
        "--relay-threads", action="store_true", help="also measure relay-thread stream calls"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(asyncio.run(run_variant(args))))
        return

    variants = ["patched", "unpatched"] if args.variant == "both" else [args.variant]
    rows = [_child(v, args) for v in variants]
    print(f"iroh transport, loopback, one process per variant; {args.size} MiB in {args.chunk} KiB")
    print(_table(rows))
    report: dict[str, Any] = {
        "benchmark": "transport",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(),
        },
        "params": {"size_mib": args.size, "chunk_kib": args.chunk, "rtt_iters": args.rtt_iters},
        "variants": rows,
    }
    if args.relay_threads:
        relay = asyncio.run(run_relay_threads(ops=2000, rounds=6))
        report["relay_threads"] = relay
        for mode in ("direct", "generated"):
            r = relay[mode]
            print(
                f"relay thread, {mode:>9}: write {r['write_us']:.0f} us,"
                f" read {r['read_us']:.0f} us, Rust's threads {r['rust_threads_us']:.0f} us"
                " of CPU per operation"
            )
    if args.detection:
        detection = asyncio.run(run_detection())
        report["detection"] = detection
        print(
            "peer death: graceful close -> closed() in"
            f" {detection['graceful_close_closed_ms']:.1f} ms; SIGKILL -> probe(1s)="
            f"{detection['probe_1s_after_kill']} in {detection['probe_ms']:.0f} ms,"
            f" closed() after {detection['kill_closed_s']:.1f} s"
            f" ({detection['kill_closed_reason']}), open_bi/write fails after"
            f" {detection['kill_open_bi_fails_s']:.1f} s"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"transport-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
