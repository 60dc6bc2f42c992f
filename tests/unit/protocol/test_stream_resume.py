"""Continuing a broken chat stream: what was sent, the continuation request, the splice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mesh_llm.protocol.event_streams import EventStreamRewriter
from mesh_llm.protocol.stream_end import LAST_CHUNK, ChunkedTracker, as_chunk
from mesh_llm.protocol.stream_resume import (
    MAX_RECORDED_BYTES,
    ContinuationFixer,
    PartialStream,
    StreamRecorder,
    continuation_body,
    read_partial_stream,
    request_blocks_resume,
)

BASE = {"id": "chatcmpl-orig", "created": 111, "model": "m.gguf", "object": "chat.completion.chunk"}


def event(delta: dict[str, Any] | None = None, **extra: Any) -> bytes:
    payload: dict[str, Any] = dict(BASE)
    if delta is not None:
        payload["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
    payload.update(extra)
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chunked(*events: bytes) -> bytes:
    return b"".join(as_chunk(e) for e in events)


def recorded(data: bytes) -> StreamRecorder:
    rec = StreamRecorder()
    for i in range(0, len(data), 7):  # as the relay observes it: in arbitrary pieces
        rec(data[i : i + 7])
    return rec


def test_text_and_tokens_of_a_broken_stream() -> None:
    data = chunked(
        event({"role": "assistant", "content": None}),
        event({"content": "The"}),
        event({"content": " sky"}),
    )
    partial = read_partial_stream(recorded(data + b'1a\r\ndata: {"choi'))  # torn last chunk
    assert partial == PartialStream("The sky", 2, "chatcmpl-orig", 111, "m.gguf", None)


@pytest.mark.parametrize(
    ("last", "why"),
    [
        (event({"tool_calls": [{"index": 0, "function": {"name": "f"}}]}), "tool call"),
        (event({"reasoning_content": "hmm"}), "reasoning"),
        (event({}, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]), "finished"),
        (event(None, choices=[], usage={"prompt_tokens": 1, "completion_tokens": 2}), "finished"),
        (b'data: {"error": {"message": "boom"}}\n\n', "error"),
    ],
)
def test_unsafe_streams_say_why(last: bytes, why: str) -> None:
    partial = read_partial_stream(recorded(chunked(event({"content": "a"}), last)))
    assert partial.unsafe is not None
    assert why in partial.unsafe


def test_an_overlong_stream_is_not_resumable() -> None:
    rec = StreamRecorder()
    rec(b"x" * (MAX_RECORDED_BYTES - 10))
    rec(b"y" * 20)
    assert rec.overflowed
    assert read_partial_stream(rec).unsafe == "the stream was too long to record"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"stream": False, "messages": [{"role": "user", "content": "x"}]}, "not a stream"),
        ({"stream": True, "n": 2, "messages": [{"role": "user"}]}, "n > 1"),
        ({"stream": True, "logprobs": True, "messages": [{"role": "user"}]}, "log prob"),
        ({"stream": True, "messages": []}, "no messages"),
        ({"stream": True, "messages": [{"role": "assistant", "content": "a"}]}, "already"),
    ],
)
def test_requests_that_block_resuming(body: dict[str, Any], why: str) -> None:
    reason = request_blocks_resume(body)
    assert reason is not None
    assert why in reason


def test_plain_stream_request_may_resume() -> None:
    body = {"stream": True, "n": 1, "messages": [{"role": "user", "content": "hi"}], "tools": []}
    assert request_blocks_resume(body) is None


def test_continuation_appends_the_text_and_reduces_the_budget() -> None:
    body = {"model": "m", "stream": True, "max_tokens": 10, "messages": [{"role": "user"}]}
    partial = PartialStream("The sky", 2, "i", 1, "m", None)
    out = json.loads(continuation_body(body, partial) or b"")
    assert out["messages"][-1] == {"role": "assistant", "content": "The sky"}
    assert out["messages"][:-1] == body["messages"]
    assert out["max_tokens"] == 8
    assert out["continue_final_message"] is True
    assert out["add_generation_prompt"] is False
    assert body["max_tokens"] == 10  # the original is not modified
    assert continuation_body({**body, "max_tokens": 2}, partial) is None  # nothing left


def test_the_continued_stream_is_spliced_into_the_original() -> None:
    partial = PartialStream("The sky", 2, "chatcmpl-orig", 111, "m.gguf", None)
    other = {"id": "chatcmpl-new", "created": 222, "model": "m.gguf", "object": "x"}

    def cont(delta: dict[str, Any] | None, **extra: Any) -> bytes:
        payload: dict[str, Any] = dict(other)
        if delta is not None:
            payload["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
        payload.update(extra)
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    upstream = (
        chunked(
            cont({"role": "assistant", "content": None}),
            cont({"content": " is"}),
            cont({"content": " blue"}),
            cont(None, choices=[], usage={"prompt_tokens": 16, "completion_tokens": 2}),
            b"data: [DONE]\n\n",
        )
        + LAST_CHUNK
    )
    rewriter = EventStreamRewriter(ContinuationFixer(partial))
    out = b"".join(rewriter.feed(upstream[i : i + 11]) for i in range(0, len(upstream), 11))
    assert rewriter.done
    payload = bytearray()
    tracker = ChunkedTracker(payload)
    tracker.feed(out)
    assert tracker.done
    events = [e for e in bytes(payload).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    parsed = [json.loads(e[6:]) for e in events[:-1]]
    assert [p["choices"][0]["delta"]["content"] for p in parsed[:2]] == [" is", " blue"]
    assert {(p["id"], p["created"]) for p in parsed} == {("chatcmpl-orig", 111)}
    assert parsed[-1]["usage"] == {"prompt_tokens": 14, "completion_tokens": 4}
