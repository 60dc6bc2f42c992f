"""Chunk-framing tracker and the error tail of a broken event stream."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.protocol.stream_end import ChunkedTracker, stream_error_tail


def chunked(payloads: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads)


def test_boundaries_and_the_end() -> None:
    tracker = ChunkedTracker()
    assert tracker.at_boundary
    tracker.feed(b"5\r\nhel")
    assert not tracker.at_boundary
    tracker.feed(b"lo\r\n")
    assert tracker.at_boundary
    assert not tracker.done
    tracker.feed(b"0\r\n\r\n")
    assert tracker.done
    assert not tracker.at_boundary


def test_chunk_extensions_and_trailers() -> None:
    tracker = ChunkedTracker()
    tracker.feed(b"3;name=value\r\nabc\r\n0\r\nX-Trailer: 1\r\n")
    assert not tracker.done
    tracker.feed(b"\r\n")
    assert tracker.done


def test_garbage_loses_track_for_good() -> None:
    tracker = ChunkedTracker()
    tracker.feed(b"zz\r\n")
    assert not tracker.at_boundary
    tracker.feed(b"0\r\n\r\n")
    assert not tracker.done


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=40),
)
def test_any_split_of_the_bytes_gives_the_same_answer(
    payloads: list[bytes], cuts: list[int]
) -> None:
    body = chunked(payloads)
    tracker = ChunkedTracker()
    i = 0
    for size in cuts:
        tracker.feed(body[i : i + size])
        i += size
    tracker.feed(body[i:])
    assert tracker.at_boundary
    tracker.feed(b"0\r\n\r\n")
    assert tracker.done


def _event(tail: bytes) -> bytes:
    size, _, rest = tail.partition(b"\r\n")
    event = rest[: int(size, 16)]
    assert rest[int(size, 16) :] == b"\r\n0\r\n\r\n"
    return event


def test_openai_error_tail() -> None:
    event = _event(stream_error_tail("/v1/chat/completions", "it broke"))
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    error = json.loads(event[len(b"data: ") :])["error"]
    assert error == {"message": "it broke", "type": "server_error", "code": "upstream_failed"}


def test_anthropic_error_tail() -> None:
    event = _event(stream_error_tail("/v1/messages", "it broke"))
    name, data = event.strip().split(b"\n")
    assert name == b"event: error"
    payload = json.loads(data[len(b"data: ") :])
    assert payload == {"type": "error", "error": {"type": "api_error", "message": "it broke"}}


def _state_bytewise(data: bytes) -> tuple[bool, bool]:
    """The reference: one byte at a time never takes the whole-chunk fast path."""
    tracker = ChunkedTracker()
    for i in range(len(data)):
        tracker.feed(data[i : i + 1])
    return tracker.done, tracker.at_boundary


_piece = st.one_of(
    st.lists(st.binary(min_size=1, max_size=40), max_size=4).map(chunked),
    st.sampled_from(
        [b"0\r\n\r\n", b"0\r\nX: 1\r\n\r\n", b"3;x=y\r\nabc\r\n", b"A\r\n", b"\r\n", b"zz\r\n"]
    ),
    st.binary(max_size=12),
)


@given(st.lists(_piece, max_size=8), st.lists(st.integers(min_value=1, max_value=64), max_size=20))
def test_the_fast_path_agrees_with_the_state_machine_on_any_input(
    pieces: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(pieces)
    tracker = ChunkedTracker()
    i = 0
    for size in [*cuts, len(data)]:
        tracker.feed(data[i : i + size])
        i = min(i + size, len(data))
        assert (tracker.done, tracker.at_boundary) == _state_bytewise(data[:i])
