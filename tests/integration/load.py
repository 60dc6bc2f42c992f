"""Concurrent streaming clients against an OpenAI-compatible endpoint, classifying what each saw.

Shared by ``test_load.py`` and ``bench/bench_load.py``. Each client opens its own connection,
sends one streamed chat completion and reads to the end. Outcomes a user can tell apart:
``ok`` (200 and the stream ended with ``data: [DONE]``), ``busy`` (503 with ``Retry-After``),
``busy_no_retry_after`` (503 without it), ``status_<n>`` (any other status), ``reset`` (the
connection reset or closed before the response ended), ``truncated`` (200 but no ``[DONE]``),
``hang`` (nothing finished within the client's deadline).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

MODEL = "SmolLM2-135M-Instruct"


@dataclass
class Outcome:
    kind: str
    seconds: float
    tokens: int = 0
    retry_after: str | None = None


@dataclass
class LoadResult:
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0

    def counts(self) -> Counter[str]:
        return Counter(o.kind for o in self.outcomes)

    @property
    def tokens(self) -> int:
        return sum(o.tokens for o in self.outcomes)


def _body(max_tokens: int, prompt: str) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
        }
    ).encode()


def one_stream(port: int, max_tokens: int, deadline_s: float, prompt: str) -> Outcome:
    start = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline_s)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=_body(max_tokens, prompt),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        if resp.status == 503:
            resp.read()
            retry = resp.getheader("Retry-After")
            kind = "busy" if retry else "busy_no_retry_after"
            return Outcome(kind, time.monotonic() - start, retry_after=retry)
        if resp.status != 200:
            resp.read()
            return Outcome(f"status_{resp.status}", time.monotonic() - start)
        tokens = 0
        done = False
        for raw in resp:
            line = raw.strip()
            if line == b"data: [DONE]":
                done = True
            elif line.startswith(b"data: ") and b'"content"' in line:
                tokens += 1
        return Outcome("ok" if done else "truncated", time.monotonic() - start, tokens)
    except TimeoutError:
        return Outcome("hang", time.monotonic() - start)
    except (ConnectionError, http.client.HTTPException, OSError):
        return Outcome("reset", time.monotonic() - start)
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def run_concurrent(
    port: int, clients: int, max_tokens: int, deadline_s: float, prompt: str = "Count to ten."
) -> LoadResult:
    """``clients`` streams released together (a barrier), each with its own connection."""
    barrier = threading.Barrier(clients)

    def go(i: int) -> Outcome:
        barrier.wait(timeout=60)
        return one_stream(port, max_tokens, deadline_s, f"{prompt} ({i})")

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        outcomes = list(pool.map(go, range(clients)))
    return LoadResult(outcomes, time.monotonic() - start)
