"""Cold starts seen from the ingress: a request names a model nobody serves, some node can load it.

The runtime decides who loads the model and starts it (:class:`Warmup`); the ingress holds the
request until a target for the model appears (:func:`wait_for_model`), within a bound. A streamed
request does not sit silent meanwhile: after :data:`FIRST_COMMENT_S` the client gets the response
head of an event stream and an SSE comment every :data:`COMMENT_EVERY_S` (clients and proxies
that time out idle streams stay connected); the model's answer then continues that same stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from mesh_llm.protocol.stream_end import as_chunk

__all__ = [
    "COLD_START_TIMEOUT_S",
    "EVENT_STREAM_HEAD",
    "Warmup",
    "WarmupOutcome",
    "wait_for_model",
    "wants_stream",
]

COLD_START_TIMEOUT_S: Final = 120.0
"""How long a request waits for a model being loaded for it (``--cold-start-timeout``)."""
FIRST_COMMENT_S: Final = 1.0
COMMENT_EVERY_S: Final = 5.0
POLL_S: Final = 0.1

EVENT_STREAM_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"X-Accel-Buffering: no\r\n"
)
"""An event stream's head without its last CRLF (the ingress adds the model header)."""


@dataclass(slots=True)
class Warmup:
    """A model being loaded somewhere in the mesh for waiting requests."""

    model: str
    where: str
    """Where it loads, for people: "this node", "node 1a2b3c4d5e"."""
    failure: Callable[[], str | None] = field(default=lambda: None)
    """Why the load failed, once it has (None while it may still come up)."""
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class WarmupOutcome:
    ready: bool
    head_sent: bool
    """The event-stream head (and comments) went to the client: the answer continues it."""
    error: str | None = None


def wants_stream(body: bytes) -> bool:
    """Whether a JSON request body asks for a streamed answer (``"stream": true``)."""
    try:
        parsed: object = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and parsed.get("stream") is True


async def wait_for_model(
    warmup: Warmup,
    *,
    ready: Callable[[], bool],
    send: Callable[[bytes], Awaitable[None]],
    stream: bool,
    model_header: bytes,
    limit_s: float = COLD_START_TIMEOUT_S,
) -> WarmupOutcome:
    """Wait until ``ready()`` (a target for the model exists), the load fails, or ``limit_s``.

    With ``stream``, sends the event-stream head then keep-alive comments while waiting.
    ``send`` raises ConnectionError when the client is gone (propagated).
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + limit_s
    next_comment = start + FIRST_COMMENT_S
    head_sent = False
    while True:
        if ready():
            return WarmupOutcome(True, head_sent)
        why = warmup.failure()
        now = loop.time()
        if why is not None:
            return WarmupOutcome(False, head_sent, f"loading {warmup.model} failed: {why}")
        if now >= deadline:
            return WarmupOutcome(
                False,
                head_sent,
                f"{warmup.model} is still loading on {warmup.where} after {limit_s:.0f} s; "
                "retry shortly",
            )
        if stream and now >= next_comment:
            data = b""
            if not head_sent:
                data = EVENT_STREAM_HEAD + model_header + b"\r\n"
                head_sent = True
            comment = f": loading {warmup.model} on {warmup.where} ({now - start:.0f} s)\n\n"
            await send(data + as_chunk(comment.encode()))
            next_comment = now + COMMENT_EVERY_S
        await asyncio.sleep(POLL_S)
