"""A minimal raw-socket streaming client for benchmarks: the client's own overhead stays tiny and
identical for every path measured (direct llama-server, :9337 ingress, a client node's tunnel)."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast


@dataclass(frozen=True)
class StreamResult:
    ttft_s: float  # request sent -> first content chunk
    tokens: int  # content chunks received (llama-server streams one token per chunk)
    decode_s: float  # first content chunk -> last content chunk

    @property
    def tok_per_s(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


def chat_body(model: str, prompt: str, max_tokens: int) -> bytes:
    return json.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": 1,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()


async def stream_chat(port: int, body: bytes, host: str = "127.0.0.1") -> StreamResult:
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    started = time.perf_counter()
    writer.write(head + body)
    await writer.drain()
    first = last = 0.0
    tokens = 0
    buf = b""
    while True:
        data = await reader.read(65536)
        if not data:
            break
        now = time.perf_counter()
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.startswith(b"data: {") and b'"content":"' in line:
                tokens += 1
                if tokens == 1:
                    first = now
                last = now
    writer.close()
    if tokens == 0:
        raise RuntimeError("no tokens streamed")
    return StreamResult(first - started, tokens, last - first)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def format_ci(bounds: object) -> str:
    """``[low, high]`` of a ``tok_s_ratio_ci95`` entry."""
    low, high = cast("Sequence[float]", bounds)
    return f"[{low}, {high}]"


def median_ci95(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95% confidence interval for the median: the order statistics
    (X(j), X(n+1-j)) for the largest j whose coverage P(j <= Binomial(n, 1/2) <= n-j) is at
    least 0.95 (n=9: ranks 2 and 8; n=15: 4 and 12); (nan, nan) below 6 values."""
    n = len(values)
    ordered = sorted(values)
    pmf = [math.comb(n, i) / 2**n for i in range(n + 1)]
    for j in range(n // 2, 0, -1):
        if sum(pmf[j : n - j + 1]) >= 0.95:
            return ordered[j - 1], ordered[n - j]
    return float("nan"), float("nan")


async def compare_paths(
    baseline_port: int, other_port: int, body: bytes, rounds: int, warmup: int = 2
) -> dict[str, Any]:
    """Stream the same request through two paths, interleaved (alternating which goes first),
    and return the medians: tok/s and time to first token of each, their ratio and difference.

    ``tok_s_ratio`` is the median of the per-round ratios (each round measures both paths back
    to back, so a drift of the machine's speed cancels out); ``ratio_of_medians`` is also given.
    """
    for _ in range(warmup):
        await stream_chat(baseline_port, body)
        await stream_chat(other_port, body)
    base: list[StreamResult] = []
    other: list[StreamResult] = []
    for i in range(rounds):
        order = [(baseline_port, base), (other_port, other)]
        if i % 2:
            order.reverse()
        for port, sink in order:
            sink.append(await stream_chat(port, body))
    b_tps, o_tps = median([r.tok_per_s for r in base]), median([r.tok_per_s for r in other])
    b_ttft = median([r.ttft_s for r in base]) * 1000
    o_ttft = median([r.ttft_s for r in other]) * 1000
    ratios = [o.tok_per_s / b.tok_per_s for b, o in zip(base, other, strict=True)]
    paired = median(ratios)
    low, high = median_ci95(ratios)
    return {
        "baseline_tok_s": round(b_tps, 1),
        "other_tok_s": round(o_tps, 1),
        "tok_s_ratio": round(paired, 3),
        "tok_s_ratio_ci95": [round(low, 3), round(high, 3)],
        "ratio_of_medians": round(o_tps / b_tps, 3),
        "baseline_ttft_ms": round(b_ttft, 2),
        "other_ttft_ms": round(o_ttft, 2),
        "ttft_added_ms": round(o_ttft - b_ttft, 2),
        "paired_ratios": [round(r, 4) for r in ratios],  # per round, for pooling runs
    }
