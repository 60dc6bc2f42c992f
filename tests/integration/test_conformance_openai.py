"""The Python ``openai`` SDK against a real node: every API it speaks, streaming, tool calls,
usage and the errors a user can run into."""

from __future__ import annotations

import json
import math
import os
import signal
import time
from pathlib import Path

import openai
import pytest

from tests.integration.conformance import (
    CTX,
    EMBEDDING_DIM,
    LOOPBACK_MESH,
    MODEL,
    OPENAI_WEATHER_TOOL,
    WEATHER_QUESTION,
    WEATHER_RESULT,
    chat_pid,
    check_weather_arguments,
    mentions_the_result,
    start_node,
)
from tests.integration.conformance import node as node  # the module-scoped fixture
from tests.integration.harness import MeshNode, wait_for

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]
LONG = "Write a very long story about a dragon who learns to bake bread."


def client(node: MeshNode, *, timeout: float = 120) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{node.api}/v1", api_key="unused", max_retries=0, timeout=timeout
    )


# -- listing, chat, completions ------------------------------------------------------------


def test_models_list(node: MeshNode) -> None:
    models = client(node).models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model"
    assert models[0].owned_by == "mesh-llm"


def test_chat_plain(node: MeshNode) -> None:
    raw = client(node).chat.completions.with_raw_response.create(
        model=MODEL, messages=HELLO, max_tokens=24, temperature=0
    )
    assert raw.headers["x-mesh-llm-model"] == MODEL
    reply = raw.parse()
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streamed_with_usage(node: MeshNode) -> None:
    stream = client(node).chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta]
    text = "".join(p for p in pieces if p)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "expected the reply in several deltas"
    assert text.strip()
    assert finishes[-1] in ("stop", "length")
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens > 0
    assert 0 < usage_chunk.usage.completion_tokens <= 24
    assert all(c.usage is None for c in chunks[:-1])


def test_max_completion_tokens_is_honoured(node: MeshNode) -> None:
    reply = client(node).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": LONG}],
        max_completion_tokens=5,
        temperature=0,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5


def test_completions(node: MeshNode) -> None:
    reply = client(node).completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert reply.choices[0].text.strip()
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0


# -- responses ---------------------------------------------------------------------------------


def test_responses_plain(node: MeshNode) -> None:
    response = client(node).responses.create(
        model=MODEL,
        input="Say hello in one short sentence.",
        max_output_tokens=24,
        temperature=0,
    )
    assert response.status == "completed"
    assert response.output_text.strip()
    message = response.output[0]
    assert message.type == "message"
    assert message.content[0].type == "output_text"
    assert response.usage is not None
    assert response.usage.input_tokens > 0
    assert 0 < response.usage.output_tokens <= 24


def test_responses_max_output_tokens_is_honoured(node: MeshNode) -> None:
    response = client(node).responses.create(
        model=MODEL, input=LONG, max_output_tokens=5, temperature=0
    )
    assert response.usage is not None
    assert response.usage.output_tokens == 5


def test_responses_streamed(node: MeshNode) -> None:
    with client(node).responses.stream(
        model=MODEL,
        input="Say hello in one short sentence.",
        max_output_tokens=24,
        temperature=0,
    ) as stream:
        kinds = []
        deltas = []
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert len(deltas) > 1
    assert "".join(deltas) == final.output_text
    assert final.output_text.strip()
    assert final.usage is not None
    assert final.usage.output_tokens > 0


def test_responses_function_call(node: MeshNode) -> None:
    tool = {"type": "function", **OPENAI_WEATHER_TOOL["function"]}
    response = client(node).responses.create(
        model=MODEL,
        input=WEATHER_QUESTION,
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=64,
        temperature=0,  # greedy like the other tool-call tests: the plumbing is tested, not luck
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]
    assert check_weather_arguments(calls[0].arguments)["city"] == "Paris"
    assert calls[0].call_id


# -- embeddings --------------------------------------------------------------------------------


def test_embeddings(node: MeshNode) -> None:
    raw = client(node).embeddings.with_raw_response.create(
        model=MODEL, input=["The cat sat on the mat.", "Stock markets fell today."]
    )
    assert raw.headers["x-mesh-llm-model"] == MODEL
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    first, second = (d.embedding for d in result.data)
    assert len(first) == len(second) == EMBEDDING_DIM
    assert all(math.isfinite(x) for x in first)
    assert first != second
    assert result.usage.prompt_tokens > 0


def test_embeddings_as_floats(node: MeshNode) -> None:
    result = client(node).embeddings.create(model=MODEL, input="hello", encoding_format="float")
    assert len(result.data[0].embedding) == EMBEDDING_DIM


# -- tool calls --------------------------------------------------------------------------------


def test_tool_call_round_trip(node: MeshNode) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": WEATHER_QUESTION}]
    first = client(node).chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        tools=[OPENAI_WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=64,
        temperature=0,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert check_weather_arguments(call.function.arguments)["city"] == "Paris"

    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append(
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps(WEATHER_RESULT)}
    )
    final = client(node).chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        tools=[OPENAI_WEATHER_TOOL],  # type: ignore[list-item]
        max_tokens=48,
        temperature=0,
    )
    answer = final.choices[0]
    assert not answer.message.tool_calls
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.content
    assert mentions_the_result(answer.message.content)


def test_streamed_tool_call_deltas_are_well_formed(node: MeshNode) -> None:
    stream = client(node).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": WEATHER_QUESTION}],
        tools=[OPENAI_WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=64,
        temperature=0,
        stream=True,
    )
    deltas = []
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            deltas.extend(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert deltas
    head, rest = deltas[0], deltas[1:]
    assert head.index == 0
    assert head.id
    assert head.type == "function"
    assert head.function is not None
    assert head.function.name == "get_weather"
    assert all(d.index == 0 and d.id is None for d in rest)
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert check_weather_arguments(arguments)["city"] == "Paris"


# -- errors ------------------------------------------------------------------------------------


def test_unknown_route_is_404(node: MeshNode) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client(node).post("/no/such/route", cast_to=object, body={"model": MODEL})
    assert caught.value.status_code == 404


def test_bad_json_is_400(node: MeshNode) -> None:
    with pytest.raises(openai.BadRequestError, match="not valid JSON") as caught:
        client(node).post(
            "/chat/completions",
            cast_to=object,
            content=b'{"model": "SmolLM2-135M-Instruct", "messages": [',
            options={"headers": {"Content-Type": "application/json"}},
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"


def test_request_too_large_for_the_context_is_400_naming_the_limit(node: MeshNode) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(node).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x " * 10_000}], max_tokens=4
        )
    message = caught.value.message
    assert "context" in message
    assert str(CTX) in message
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["n_ctx"] == CTX


def test_nothing_serving_is_503(tmp_path: Path) -> None:
    empty = MeshNode("empty", tmp_path / "empty", ["--client", *LOOPBACK_MESH]).start()
    try:
        wait_for(lambda: empty.model_ids() == [], 60, "the client node's API")
        with pytest.raises(openai.InternalServerError) as caught:
            client(empty).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
        assert caught.value.status_code == 503
        assert "No inference server available" in caught.value.message
    finally:
        empty.stop()


def test_upstream_crash_mid_stream_is_an_error_then_it_restarts(tmp_path: Path) -> None:
    crashing = start_node(tmp_path / "crash", "crash")
    try:
        pid = chat_pid(crashing)
        stream = client(crashing, timeout=30).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": LONG}],
            max_tokens=400,
            temperature=0,
            stream=True,
        )
        received = 0

        def read_and_kill() -> None:
            nonlocal received
            for _chunk in stream:
                received += 1
                if received == 3:
                    os.kill(pid, signal.SIGKILL)

        started = time.monotonic()
        with pytest.raises(openai.APIError, match="stopped in the middle of the response"):
            read_and_kill()
        assert received >= 3
        assert time.monotonic() - started < 20, "the client waited instead of getting an error"

        def serving_again() -> bool:
            reply = client(crashing).chat.completions.create(
                model=MODEL, messages=HELLO, max_tokens=4
            )
            return bool(reply.choices[0].message.content)

        wait_for(serving_again, 60, "the supervisor to restart llama-server", interval=0.5)
        assert chat_pid(crashing) != pid
    finally:
        crashing.stop()
