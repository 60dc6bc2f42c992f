"""The event stream rewriters, on streams recorded from the pinned llama-server."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.protocol.event_streams import (
    EventStreamRewriter,
    MessageStartFixer,
    ResponsesEventFixer,
)
from mesh_llm.protocol.stream_end import ChunkedTracker, as_chunk
from tests.fakes.fake_upstream import SSE_HEAD, raw, running
from tests.unit.network.proxy.test_ingress import serving, to

DATA = Path(__file__).parent / "data"
TEXT = (DATA / "llama_responses_text.sse").read_bytes()
TOOL = (DATA / "llama_responses_tool.sse").read_bytes()
NO_START = (DATA / "llama_messages_no_start.sse").read_bytes()


def ResponsesStreamRewriter() -> EventStreamRewriter:  # noqa: N802 - reads like the class
    return EventStreamRewriter(ResponsesEventFixer())


def chunked(sse: bytes, size: int = 0) -> bytes:
    """``sse`` as llama-server sends it: one event per chunk (or ``size``-byte chunks)."""
    if size:
        parts = [sse[i : i + size] for i in range(0, len(sse), size)]
    else:
        parts = [e + b"\n\n" for e in sse.split(b"\n\n") if e.strip()]
    return b"".join(as_chunk(p) for p in parts) + b"0\r\n\r\n"


def dechunk(body: bytes) -> bytes:
    sink = bytearray()
    tracker = ChunkedTracker(sink)
    tracker.feed(body)
    assert tracker.done
    return bytes(sink)


def events(sse: bytes) -> list[dict[str, object]]:
    out = []
    for block in sse.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                out.append(json.loads(line[5:]))
    return out


@pytest.mark.parametrize("recorded", [TEXT, TOOL], ids=["text", "tool"])
def test_indexes_are_filled_in(recorded: bytes) -> None:
    rewriter = ResponsesStreamRewriter()
    out = rewriter.feed(chunked(recorded))
    assert rewriter.done
    fixed = events(dechunk(out))
    original = events(recorded)
    assert [e["type"] for e in fixed] == [e["type"] for e in original]
    assert [e["sequence_number"] for e in fixed] == list(range(len(fixed)))
    for event in fixed:
        if "item_id" in event or "item" in event:
            assert event["output_index"] == 0
        if str(event["type"]).startswith(("response.output_text.", "response.content_part.")):
            assert event["content_index"] == 0
    # Nothing else changed.
    for before, after in zip(original, fixed, strict=True):
        extra = set(after) - set(before)
        assert extra <= {"output_index", "content_index", "sequence_number"}
        assert {k: after[k] for k in before} == before


@settings(max_examples=30)
@given(st.integers(min_value=1, max_value=97))
def test_any_chunking_gives_the_same_events(size: int) -> None:
    expected = events(dechunk(ResponsesStreamRewriter().feed(chunked(TEXT))))
    rewriter = ResponsesStreamRewriter()
    body = chunked(TEXT, size)
    out = b"".join(rewriter.feed(body[i : i + 13]) for i in range(0, len(body), 13))
    assert rewriter.done
    assert events(dechunk(out)) == expected


def test_fields_that_are_present_are_kept() -> None:
    fixer = ResponsesEventFixer()
    fixer.fix({"type": "response.output_item.added", "item": {"id": "a"}})
    event = {"type": "response.output_text.delta", "item_id": "a", "output_index": 7}
    assert fixer.fix(event)["output_index"] == 7


def test_a_second_output_item_gets_the_next_index() -> None:
    fixer = ResponsesEventFixer()
    fixer.fix({"type": "response.output_item.added", "item": {"id": "r"}})
    fixer.fix({"type": "response.output_item.added", "item": {"id": "m"}})
    delta = fixer.fix({"type": "response.output_text.delta", "item_id": "m", "delta": "x"})
    assert delta["output_index"] == 1
    done = fixer.fix({"type": "response.output_item.done", "item": {"id": "r"}})
    assert done["output_index"] == 0


async def test_openai_stream_helper_works_through_the_ingress() -> None:
    async with running(raw(SSE_HEAD + chunked(TEXT))) as up, serving({"m": [to("m", up)]}) as h:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{h.port}/v1", api_key="unused", max_retries=0
        )
        try:
            async with client.responses.stream(model="m", input="Say hello.") as stream:
                deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
                final = await stream.get_final_response()
        finally:
            await client.close()
    assert "".join(deltas) == final.output_text
    assert final.output_text
    assert final.usage is not None
    assert final.usage.output_tokens > 0


async def test_openai_stream_helper_sees_a_streamed_function_call() -> None:
    async with running(raw(SSE_HEAD + chunked(TOOL))) as up, serving({"m": [to("m", up)]}) as h:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{h.port}/v1", api_key="unused", max_retries=0
        )
        try:
            async with client.responses.stream(model="m", input="Weather in Paris?") as stream:
                final = await stream.get_final_response()
        finally:
            await client.close()
    calls = [o for o in final.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].arguments) == {"city": "Paris"}


def test_message_start_is_added_only_when_missing() -> None:
    fixed = EventStreamRewriter(MessageStartFixer("m")).feed(chunked(NO_START))
    types = [e["type"] for e in events(dechunk(fixed))]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[1:] == [e["type"] for e in events(NO_START)]
    again = EventStreamRewriter(MessageStartFixer("m")).feed(fixed)
    assert dechunk(again) == dechunk(fixed)


async def test_anthropic_stream_helper_works_when_llama_server_skips_message_start() -> None:
    body = SSE_HEAD + chunked(NO_START)
    async with running(raw(body)) as up, serving({"m": [to("m", up)]}) as h:
        client = anthropic.AsyncAnthropic(
            base_url=f"http://127.0.0.1:{h.port}", api_key="unused", max_retries=0
        )
        try:
            async with client.messages.stream(
                model="m", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
                final = await stream.get_final_message()
        finally:
            await client.close()
    assert text
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 8
