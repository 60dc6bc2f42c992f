"""The APIs through a ``--client`` node: a host serves SmolLM2 with ``--embeddings``, a client
joins it, and every request below goes client ingress -> iroh tunnel -> host -> llama-server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import openai
import pytest

from tests.integration.conformance import (
    EMBEDDING_DIM,
    LOOPBACK_MESH,
    MODEL,
    OPENAI_WEATHER_TOOL,
    WEATHER_QUESTION,
    check_weather_arguments,
    embeddings_ready,
    start_node,
)
from tests.integration.harness import MeshNode, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshNode]:
    root = tmp_path_factory.mktemp("conformance-mesh")
    host = start_node(root / "host", "host", "--embeddings")
    client: MeshNode | None = None
    try:
        wait_for(lambda: embeddings_ready(host), 120, "the host's embedding llama-server")
        token = wait_for(lambda: host.status()["token"], 30, "the host's invite token")
        client = MeshNode("client", root / "client", ["--client", "--join", token, *LOOPBACK_MESH])
        client.start()
        client.wait_models({MODEL}, timeout=120)
        yield client
    except AssertionError as exc:
        tails = "\n".join(n.log_tail(40) for n in (host, client) if n is not None)
        raise AssertionError(f"{exc}\n{tails}") from None
    finally:
        if client is not None:
            client.stop()
        host.stop()


def oai(node: MeshNode) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.api}/v1", api_key="unused", max_retries=0, timeout=120)


def test_tool_call_through_the_mesh(client_node: MeshNode) -> None:
    stream = oai(client_node).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": WEATHER_QUESTION}],
        tools=[OPENAI_WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=64,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    deltas = [d for c in chunks for ch in c.choices for d in (ch.delta.tool_calls or [])]
    assert deltas
    assert deltas[0].function is not None
    assert deltas[0].function.name == "get_weather"
    arguments = "".join((d.function.arguments or "") for d in deltas if d.function)
    assert check_weather_arguments(arguments)["city"] == "Paris"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_embeddings_through_the_mesh(client_node: MeshNode) -> None:
    result = oai(client_node).embeddings.create(model=MODEL, input=["one", "two"])
    assert [len(d.embedding) for d in result.data] == [EMBEDDING_DIM, EMBEDDING_DIM]


def test_responses_stream_through_the_mesh(client_node: MeshNode) -> None:
    with oai(client_node).responses.stream(
        model=MODEL, input="Say hello in one short sentence.", max_output_tokens=16
    ) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert final.output_text.strip()


def test_messages_stream_through_the_mesh(client_node: MeshNode) -> None:
    client = anthropic.Anthropic(
        base_url=client_node.api, api_key="unused", max_retries=0, timeout=120
    )
    with client.messages.stream(
        model=MODEL,
        max_tokens=16,
        messages=[{"role": "user", "content": "Say hello in one short sentence."}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text.strip()
    assert final.stop_reason in ("end_turn", "max_tokens")


def test_bad_json_through_the_mesh_is_400(client_node: MeshNode) -> None:
    with pytest.raises(openai.BadRequestError, match="not valid JSON"):
        oai(client_node).post(
            "/chat/completions",
            cast_to=object,
            content=json.dumps({"model": MODEL}).encode()[:-1],
            options={"headers": {"Content-Type": "application/json"}},
        )
