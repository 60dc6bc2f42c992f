"""The Python ``anthropic`` SDK against a real node: Messages plain and streamed, a tool_use
round trip, and errors."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from tests.integration.conformance import (
    CTX,
    MODEL,
    WEATHER_PARAMETERS,
    WEATHER_QUESTION,
    WEATHER_RESULT,
    check_weather_arguments,
    mentions_the_result,
)
from tests.integration.conformance import node as node  # the module-scoped fixture
from tests.integration.harness import MeshNode

pytestmark = pytest.mark.e2e

HELLO: list[Any] = [{"role": "user", "content": "Say hello in one short sentence."}]
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": WEATHER_PARAMETERS,
}
GREEDY = {"temperature": 0}


def client(node: MeshNode) -> anthropic.Anthropic:
    # The SDK appends /v1/messages itself: the base URL is the node's API root.
    return anthropic.Anthropic(base_url=node.api, api_key="unused", max_retries=0, timeout=120)


def test_messages_plain(node: MeshNode) -> None:
    message = client(node).messages.create(
        model=MODEL, max_tokens=24, messages=HELLO, extra_body=GREEDY
    )
    assert message.role == "assistant"
    assert message.stop_reason in ("end_turn", "max_tokens")
    text = [block for block in message.content if block.type == "text"]
    assert len(text) == 1
    assert text[0].text.strip()
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) > 0
    assert 0 < message.usage.output_tokens <= 24


def test_messages_streamed(node: MeshNode) -> None:
    with client(node).messages.stream(
        model=MODEL, max_tokens=24, messages=HELLO, extra_body=GREEDY
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces).strip()
    assert final.content[0].type == "text"
    assert final.content[0].text == "".join(pieces)
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert 0 < final.usage.output_tokens <= 24


def test_tool_use_round_trip(node: MeshNode) -> None:
    question = {"role": "user", "content": WEATHER_QUESTION}
    first = client(node).messages.create(
        model=MODEL,
        max_tokens=64,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=[question],  # type: ignore[list-item]
        extra_body=GREEDY,
    )
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert len(uses) == 1
    use = uses[0]
    assert use.name == "get_weather"
    assert use.id
    assert check_weather_arguments(use.input)["city"] == "Paris"  # type: ignore[arg-type]

    result = {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": json.dumps(WEATHER_RESULT)}
        ],
    }
    final = client(node).messages.create(
        model=MODEL,
        max_tokens=48,
        tools=[WEATHER_TOOL],
        messages=[question, {"role": "assistant", "content": first.content}, result],  # type: ignore[list-item]
        extra_body=GREEDY,
    )
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in final.content] == ["text"]
    answer = final.content[0].text  # type: ignore[union-attr]
    assert mentions_the_result(answer)


def test_request_too_large_for_the_context_is_a_bad_request(node: MeshNode) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(node).messages.create(
            model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "x " * 10_000}]
        )
    assert caught.value.status_code == 400
    assert "context size" in caught.value.message
    assert str(CTX) in caught.value.message


def test_a_body_that_is_not_an_object_gets_an_anthropic_error(node: MeshNode) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client(node).post("/v1/messages", cast_to=object, body=[{"model": MODEL}])
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "JSON object" in body["error"]["message"]
