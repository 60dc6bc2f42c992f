"""wait_for_model: holding a request while its model loads (fake ready/send, short limits)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from mesh_llm.network.proxy import warmup as warmup_mod
from mesh_llm.network.proxy.warmup import EVENT_STREAM_HEAD, Warmup, wait_for_model, wants_stream

HEADER = b"X-Mesh-Model: m\r\n"


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warmup_mod, "FIRST_COMMENT_S", 0.05)
    monkeypatch.setattr(warmup_mod, "COMMENT_EVERY_S", 0.1)
    monkeypatch.setattr(warmup_mod, "POLL_S", 0.01)


class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def __call__(self, data: bytes) -> None:
        self.sent.append(data)


def _ready_after(seconds: float) -> Callable[[], bool]:
    at = time.monotonic() + seconds

    def ready() -> bool:
        return time.monotonic() >= at

    return ready


async def test_ready_at_once_sends_nothing() -> None:
    sink = Sink()
    out = await wait_for_model(
        Warmup("m", "this node"), ready=lambda: True, send=sink, stream=True, model_header=HEADER
    )
    assert out.ready
    assert not out.head_sent
    assert out.error is None
    assert sink.sent == []


async def test_not_a_stream_sends_nothing_while_waiting() -> None:
    sink = Sink()
    ready = _ready_after(0.4)
    out = await wait_for_model(
        Warmup("m", "this node"),
        ready=ready,
        send=sink,
        stream=False,
        model_header=HEADER,
    )
    assert out.ready
    assert not out.head_sent
    assert sink.sent == []


async def test_stream_gets_the_head_once_then_comments() -> None:
    sink = Sink()
    ready = _ready_after(0.4)
    out = await wait_for_model(
        Warmup("m", "node 1a2b"),
        ready=ready,
        send=sink,
        stream=True,
        model_header=HEADER,
    )
    assert out.ready
    assert out.head_sent
    assert len(sink.sent) >= 2
    assert sink.sent[0].startswith(EVENT_STREAM_HEAD + HEADER + b"\r\n")
    assert all(EVENT_STREAM_HEAD not in part for part in sink.sent[1:])
    for part in sink.sent:
        assert b": loading m on node 1a2b (" in part
        assert part.endswith(b"\n\n\r\n")


async def test_failure_is_an_error_with_the_reason() -> None:
    sink = Sink()
    out = await wait_for_model(
        Warmup("m", "this node", failure=lambda: "out of memory"),
        ready=lambda: False,
        send=sink,
        stream=False,
        model_header=HEADER,
    )
    assert not out.ready
    assert out.error == "loading m failed: out of memory"


async def test_timeout_says_still_loading() -> None:
    sink = Sink()
    out = await wait_for_model(
        Warmup("m", "node 1a2b"),
        ready=lambda: False,
        send=sink,
        stream=False,
        model_header=HEADER,
        limit_s=0.2,
    )
    assert not out.ready
    assert not out.head_sent
    assert out.error == "m is still loading on node 1a2b after 0 s; retry shortly"


async def test_timeout_after_head_reports_head_sent() -> None:
    sink = Sink()
    out = await wait_for_model(
        Warmup("m", "node 1a2b"),
        ready=lambda: False,
        send=sink,
        stream=True,
        model_header=HEADER,
        limit_s=0.3,
    )
    assert not out.ready
    assert out.head_sent
    assert out.error is not None
    assert out.error.endswith("retry shortly")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"stream": true}', True),
        (b'{"stream": false}', False),
        (b'{"stream": "true"}', False),
        (b'{"model": "m"}', False),
        (b"[1, 2]", False),
        (b"not json", False),
        (b"", False),
        (b"[" * 100_000, False),
    ],
)
def test_wants_stream(body: bytes, expected: bool) -> None:
    assert wants_stream(body) is expected
