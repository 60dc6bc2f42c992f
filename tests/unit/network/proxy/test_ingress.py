"""The :9337 ingress over real loopback sockets, fake upstreams standing in for llama-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import openai
import pytest

from mesh_llm.errors import PortInUseError
from mesh_llm.network.proxy.ingress import Ingress
from mesh_llm.network.proxy.routing import RoutingSnapshot, Target
from mesh_llm.network.proxy.upstream import connect_local
from mesh_llm.protocol.http1 import CONTINUE_RESPONSE
from tests.fakes.fake_upstream import (
    OVERFLOW_BODY,
    SSE_HEAD,
    FakeUpstream,
    close_without_answer,
    echo,
    hang,
    overflow_400,
    raw,
    response,
    running,
    sse,
)

pytestmark = pytest.mark.timeout(60)

DEADLINE = 5.0
"""Seconds any single wait in these tests may take."""
MODELS = [{"id": "m", "object": "model", "owned_by": "mesh-llm"}]


def target(model: str, port: int, ctx: int | None = None) -> Target:
    return Target(
        model=model, key=f"local:{port}", local_port=port, peer_id=None, context_length=ctx
    )


def to(model: str, upstream: FakeUpstream) -> Target:
    return target(model, upstream.port)


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Harness:
    ingress: Ingress
    failed: list[Target] = field(default_factory=list)
    demanded: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.ingress.port


@contextlib.asynccontextmanager
async def serving(
    targets: Mapping[str, Sequence[Target]],
    *,
    is_serving: bool = True,
    on_demand: Callable[[str], None] | None = None,
    **kwargs: float,
) -> AsyncIterator[Harness]:
    failed: list[Target] = []
    demanded: list[str] = []
    ingress = Ingress(
        host="127.0.0.1",
        port=0,
        snapshot=lambda: RoutingSnapshot(targets, is_serving),
        connect=connect_local,
        models_listing=lambda: MODELS,
        on_demand=on_demand or demanded.append,
        on_target_failed=failed.append,
        **kwargs,  # type: ignore[arg-type]
    )
    await ingress.start()
    try:
        yield Harness(ingress, failed, demanded)
    finally:
        await ingress.close()


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(DEADLINE):
            return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def chat(model: str = "m", **extra: object) -> bytes:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def assert_openai_error(data: bytes, status: int, kind: str, code: str) -> str:
    got_status, headers, body = parse(data)
    assert got_status == status, data
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["type"] == kind
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    return str(error["message"])


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` until it holds, failing after :data:`DEADLINE` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        if predicate():
            return
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def open_stream_until(
    port: int, events: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Start a streaming chat on ``port`` and read until ``events`` ``tok`` events arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(chat(stream=True))
    async with asyncio.timeout(DEADLINE):
        seen = b""
        while seen.count(b"data: tok") < events:
            chunk = await reader.read(65536)
            assert chunk, "closed before the events arrived"
            seen += chunk
    return reader, writer


def unstarted_ingress(up: FakeUpstream) -> Ingress:
    """An ingress routing ``m`` to ``up``; the caller starts and closes it."""
    return Ingress(
        host="127.0.0.1",
        port=0,
        snapshot=lambda: RoutingSnapshot({"m": [to("m", up)]}, True),
        connect=connect_local,
        models_listing=list,
    )


# -- forwarding ------------------------------------------------------------------------------


async def test_chunked_request_reaches_upstream_with_content_length() -> None:
    async with running(echo()) as up, serving({"m": [to("m", up)]}) as h:
        body = b'{"model":"m","x":"' + b"y" * 100 + b'"}'
        chunked = b"".join(
            f"{len(body[i : i + 7]):x}\r\n".encode() + body[i : i + 7] + b"\r\n"
            for i in range(0, len(body), 7)
        )
        request = (
            b"POST /v1/completions HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\n\r\n"
        )
        status, headers, seen = parse(await exchange(h.port, request))
        assert status == 200
        assert headers["x-mesh-llm-model"] == "m"
        assert seen == (
            b"POST /v1/completions HTTP/1.1\r\nHost: h\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        assert h.demanded == ["m"]
        assert h.ingress.requests_total == 1


async def test_expect_100_continue() -> None:
    async with running(echo()) as up, serving({"m": [to("m", up)]}) as h:
        body = b'{"model":"m"}'
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nExpect: 100-continue\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        async with asyncio.timeout(DEADLINE):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim == CONTINUE_RESPONSE
        writer.write(body)
        async with asyncio.timeout(DEADLINE):
            rest = await reader.read()
        writer.close()
        status, _, seen = parse(rest)
        assert status == 200
        assert b"expect" not in seen.lower()
        assert seen.endswith(b"\r\n\r\n" + body)


async def test_pipelined_bytes_are_not_forwarded() -> None:
    async with running(echo()) as up, serving({"m": [to("m", up)]}) as h:
        second = b"GET /second HTTP/1.1\r\nHost: h\r\n\r\n"
        status, _, seen = parse(await exchange(h.port, chat() + second))
        assert status == 200
        assert b"/second" not in seen
        assert len(up.requests) == 1
        assert up.extra_bytes == b""


# -- errors on the request -------------------------------------------------------------------


async def test_too_many_headers_is_431() -> None:
    async with serving({}) as h:
        headers = b"".join(b"X-%d: v\r\n" % i for i in range(70))
        data = await exchange(h.port, b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
        assert_openai_error(data, 431, "invalid_request_error", "headers_too_large")


async def test_body_too_large_is_413_before_the_body_is_sent() -> None:
    async with serving({}) as h:
        head = b"POST /v1/completions HTTP/1.1\r\nContent-Length: 9000000\r\n\r\n"
        data = await exchange(h.port, head)
        assert_openai_error(data, 413, "invalid_request_error", "body_too_large")


async def test_body_limit_is_a_parameter() -> None:
    async with serving({}, max_body=10) as h:
        data = await exchange(h.port, chat())
        assert_openai_error(data, 413, "invalid_request_error", "body_too_large")


async def test_malformed_request_is_400() -> None:
    async with serving({}) as h:
        data = await exchange(h.port, b"HELLO THERE\r\n\r\n")
        assert_openai_error(data, 400, "invalid_request_error", "invalid_request")


async def test_slow_request_is_408() -> None:
    async with serving({}, header_timeout=0.2) as h:
        data = await exchange(h.port, b"POST /v1/completions HTTP/1.1\r\nHost:")
        assert_openai_error(data, 408, "invalid_request_error", "request_timeout")


# -- relaying ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("relay_loops")
async def test_response_is_relayed_byte_exactly_with_the_model_header() -> None:
    payload = os.urandom(300_000)
    answer = (
        b"HTTP/1.1 200 OK\r\nX-Odd:  spaced  \r\nset-cookie: a=b\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(
            f"{len(payload[i : i + 10_000]):x}\r\n".encode() + payload[i : i + 10_000] + b"\r\n"
            for i in range(0, len(payload), 10_000)
        )
        + b"0\r\n\r\n"
    )
    async with running(raw(answer)) as up, serving({"m": [to("m", up)]}) as h:
        data = await exchange(h.port, chat())
        cut = answer.index(b"\r\n") + 2
        assert data == answer[:cut] + b"x-mesh-llm-model: m\r\n" + answer[cut:]


@pytest.mark.usefixtures("relay_loops")
async def test_streaming_arrives_incrementally() -> None:
    gate = asyncio.Event()
    async with (
        running(sse([b"first", b"second", b"last"], delay=0.05, gate=gate)) as up,
        serving({"m": [to("m", up)]}) as h,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(chat(stream=True))
        seen = b""
        async with asyncio.timeout(DEADLINE):
            while b"data: second" not in seen:
                chunk = await reader.read(65536)
                assert chunk, "closed before the first events arrived"
                seen += chunk
        assert b"data: last" not in seen
        gate.set()
        async with asyncio.timeout(DEADLINE):
            seen += await reader.read()
        writer.close()
        assert seen.startswith(b"HTTP/1.1 200 OK\r\nx-mesh-llm-model: m\r\n")
        assert seen.endswith(b"data: last\n\n\r\n0\r\n\r\n")


@pytest.mark.usefixtures("relay_loops")
async def test_a_large_stream_to_a_slow_reader_arrives_whole_and_in_order() -> None:
    # 8 MiB of events, far more than the socket buffers: the relay must wait for the client
    # (it writes from a thread of its own) without losing, reordering or duplicating a byte.
    events = [b"%08d" % i + os.urandom(2_000).hex().encode() for i in range(2_000)]
    async with running(sse(events)) as up, serving({"m": [to("m", up)]}) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(chat(stream=True))
        await asyncio.sleep(0.5)  # let every buffer on the way fill up
        received = bytearray()
        async with asyncio.timeout(DEADLINE * 4):
            while chunk := await reader.read(4096):
                received += chunk
                if len(received) % 65536 < 4096:
                    await asyncio.sleep(0.001)
        writer.close()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\nx-mesh-llm-model: m\r\n")
    expected = b"".join(
        f"{len(line):x}\r\n".encode() + line + b"\r\n"
        for line in (b"data: " + e + b"\n\n" for e in events)
    )
    assert body == expected + b"0\r\n\r\n"


# -- failover -----------------------------------------------------------------------------------


async def test_failover_past_a_dead_target() -> None:
    dead = target("m", dead_port())
    async with running(echo()) as up, serving({"m": [dead, to("m", up)]}) as h:
        status, headers, _ = parse(await exchange(h.port, chat()))
        assert status == 200
        assert headers["x-mesh-llm-model"] == "m"
        assert h.failed == [dead]


async def test_failover_when_the_upstream_closes_without_answering() -> None:
    async with (
        running(close_without_answer()) as bad,
        running(echo()) as good,
        serving({"m": [to("m", bad), to("m", good)]}) as h,
    ):
        status, _, _ = parse(await exchange(h.port, chat()))
        assert status == 200
        assert h.failed == [to("m", bad)]
        assert len(good.requests) == 1


async def test_failover_on_first_byte_timeout() -> None:
    async with (
        running(hang()) as slow,
        running(echo()) as good,
        serving({"m": [to("m", slow), to("m", good)]}, first_byte_timeout=0.3) as h,
    ):
        status, _, _ = parse(await exchange(h.port, chat()))
        assert status == 200
        assert h.failed == [to("m", slow)]
        await wait_for(slow.gone.is_set)


async def test_failover_on_context_overflow_400() -> None:
    async with (
        running(overflow_400()) as small,
        running(echo()) as good,
        serving({"m": [to("m", small), to("m", good)]}) as h,
    ):
        status, _, _ = parse(await exchange(h.port, chat()))
        assert status == 200
        assert len(small.requests) == 1
        assert len(good.requests) == 1
        assert h.failed == []


async def test_last_candidates_overflow_400_is_returned_as_is() -> None:
    async with running(overflow_400()) as small, serving({"m": [to("m", small)]}) as h:
        data = await exchange(h.port, chat())
        answer = response(400, OVERFLOW_BODY)
        cut = answer.index(b"\r\n") + 2
        assert data == answer[:cut] + b"x-mesh-llm-model: m\r\n" + answer[cut:]


async def test_other_400_is_not_retried() -> None:
    answer = response(400, b'{"error":"bad json"}')
    async with (
        running(raw(answer)) as first,
        running(echo()) as second,
        serving({"m": [to("m", first), to("m", second)]}) as h,
    ):
        status, _, body = parse(await exchange(h.port, chat()))
        assert (status, body) == (400, b'{"error":"bad json"}')
        assert second.requests == []


async def test_503_when_nothing_can_serve() -> None:
    async with serving({}) as h:
        message = assert_openai_error(
            await exchange(h.port, chat("llama")), 503, "server_error", "no_backend"
        )
        assert message == "No inference server available for model 'llama'"


async def test_503_when_every_candidate_fails() -> None:
    dead1, dead2 = target("m", dead_port()), target("m", dead_port())
    async with serving({"m": [dead1, dead2]}) as h:
        message = assert_openai_error(
            await exchange(h.port, chat()), 503, "server_error", "no_backend"
        )
        assert message == "No inference server available for model 'm'"
        assert h.failed == [dead1, dead2]


# -- local answers and routing ------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/models", "/models", "/v1/models?x=1"])
async def test_models_listing(path: str) -> None:
    async with serving({}) as h:
        request = f"GET {path} HTTP/1.1\r\nHost: h\r\nOrigin: http://localhost:3131\r\n\r\n"
        status, headers, body = parse(await exchange(h.port, request.encode()))
        assert status == 200
        assert headers["access-control-allow-origin"] == "http://localhost:3131"
        assert json.loads(body) == {"object": "list", "data": MODELS}


async def test_health_and_cors_preflight() -> None:
    async with serving({}) as h:
        status, _, body = parse(await exchange(h.port, b"GET /health HTTP/1.1\r\n\r\n"))
        assert (status, json.loads(body)) == (200, {"status": "ok"})
        preflight = (
            b"OPTIONS /v1/chat/completions HTTP/1.1\r\nOrigin: http://127.0.0.1:3131\r\n"
            b"Access-Control-Request-Method: POST\r\n"
            b"Access-Control-Request-Headers: authorization, content-type\r\n\r\n"
        )
        status, headers, body = parse(await exchange(h.port, preflight))
        assert status == 204
        assert body == b""
        assert "content-length" not in headers
        assert headers["access-control-allow-origin"] == "http://127.0.0.1:3131"
        assert "POST" in headers["access-control-allow-methods"]
        assert headers["access-control-allow-headers"] == "authorization, content-type"


async def test_unknown_model_falls_back_and_names_the_answering_model() -> None:
    async with running(echo()) as up, serving({"real": [to("real", up)]}) as h:
        status, headers, _ = parse(await exchange(h.port, chat("no-such-model")))
        assert status == 200
        assert headers["x-mesh-llm-model"] == "real"
        status, headers, _ = parse(await exchange(h.port, chat("auto")))
        assert headers["x-mesh-llm-model"] == "real"
        assert h.demanded == ["no-such-model"]


async def test_non_json_body_is_routed_to_the_first_target() -> None:
    async with running(echo()) as up, serving({"real": [to("real", up)]}) as h:
        request = b"POST /tokenize HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        status, headers, seen = parse(await exchange(h.port, request))
        assert (status, headers["x-mesh-llm-model"]) == (200, "real")
        assert seen.endswith(b"\r\n\r\nabc")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/embeddings", "/v1/responses"])
async def test_bad_json_to_an_api_path_is_400_without_reaching_upstream(path: str) -> None:
    async with running(echo()) as up, serving({"real": [to("real", up)]}) as h:
        body = b'{"model": "real", "messages": ['
        request = b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
            path.encode(),
            len(body),
            body,
        )
        message = assert_openai_error(
            await exchange(h.port, request), 400, "invalid_request_error", "invalid_json"
        )
        assert "not valid JSON" in message
        assert up.requests == []


async def test_bad_json_to_the_messages_api_gets_an_anthropic_error() -> None:
    async with running(echo()) as up, serving({"real": [to("real", up)]}) as h:
        request = b"POST /v1/messages HTTP/1.1\r\nContent-Length: 5\r\n\r\n[1,2]"
        status, _, body = parse(await exchange(h.port, request))
        assert status == 400
        error = json.loads(body)
        assert error["type"] == "error"
        assert error["error"]["type"] == "invalid_request_error"
        assert "JSON object" in error["error"]["message"]
        assert up.requests == []


async def test_embedding_requests_go_to_the_embedding_targets() -> None:
    async with running(echo()) as chat_up, running(echo()) as emb_up:
        snapshot = RoutingSnapshot(
            {"m": [to("m", chat_up)]}, True, embedding_targets={"m": [to("m", emb_up)]}
        )
        ingress = Ingress(
            host="127.0.0.1",
            port=0,
            snapshot=lambda: snapshot,
            connect=connect_local,
            models_listing=lambda: MODELS,
        )
        await ingress.start()
        try:
            body = b'{"model": "m", "input": "hi"}'
            for path in ("/v1/embeddings", "/v1/chat/completions"):
                request = b"POST %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
                    path.encode(),
                    len(body),
                    body,
                )
                assert parse(await exchange(ingress.port, request))[0] == 200
        finally:
            await ingress.close()
        assert [r.split(b" ")[1] for r in emb_up.requests] == [b"/v1/embeddings"]
        assert [r.split(b" ")[1] for r in chat_up.requests] == [b"/v1/chat/completions"]


# -- client disconnects and robustness -------------------------------------------------------------


@pytest.mark.usefixtures("relay_loops")
async def test_client_disconnect_mid_stream_cancels_the_upstream() -> None:
    # Three events, then silence: only watching the client can notice it went away.
    behaviour = sse([b"tok"] * 4, delay=0.01, gate=asyncio.Event())
    async with running(behaviour) as up, serving({"m": [to("m", up)]}) as h:
        _reader, writer = await open_stream_until(h.port, 3)
        writer.close()
        await writer.wait_closed()
        await wait_for(up.gone.is_set)
        await wait_for(lambda: h.ingress.inflight == 0)
        assert not up.finished.is_set()


async def test_client_disconnect_while_waiting_cancels_the_upstream() -> None:
    async with running(hang()) as up, serving({"m": [to("m", up)]}) as h:
        _reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(chat())
        await wait_for(lambda: len(up.requests) == 1)
        writer.close()
        await writer.wait_closed()
        await wait_for(up.gone.is_set)
        assert h.failed == []


@pytest.mark.usefixtures("relay_loops")
async def test_a_client_that_stops_reading_then_leaves_frees_the_relay() -> None:
    # The relay thread blocks in sendall once the client's buffers are full; the client going
    # away must still end it and close the upstream.
    events = [os.urandom(3_000).hex().encode() for _ in range(3_000)]  # ~18 MB
    async with running(sse(events)) as up, serving({"m": [to("m", up)]}) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(chat(stream=True))
        async with asyncio.timeout(DEADLINE):
            assert await reader.read(1024)
        await asyncio.sleep(0.3)  # everything on the way fills up
        writer.transport.abort()
        await wait_for(up.gone.is_set)
        await wait_for(lambda: h.ingress.inflight == 0)
        assert not up.finished.is_set()


@pytest.mark.usefixtures("relay_loops")
async def test_close_during_a_relayed_stream_ends_it_at_once() -> None:
    gate = asyncio.Event()  # the stream never ends by itself
    async with running(sse([b"tok"] * 3, gate=gate)) as up:
        ingress = unstarted_ingress(up)
        await ingress.start()
        reader, writer = await open_stream_until(ingress.port, 2)
        async with asyncio.timeout(DEADLINE):
            await ingress.close()
            await wait_for(up.gone.is_set)
            await reader.read()  # returns at EOF: the client's connection ends too
        writer.close()
        assert ingress.inflight == 0


async def test_close_cancels_in_flight_connections() -> None:
    async with running(hang()) as up:
        ingress = unstarted_ingress(up)
        await ingress.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
        writer.write(chat())
        await wait_for(lambda: len(up.requests) == 1)
        assert ingress.inflight == 1
        async with asyncio.timeout(DEADLINE):
            await ingress.close()
        assert ingress.inflight == 0
        async with asyncio.timeout(DEADLINE):
            assert await reader.read() == b""
        writer.close()
        await wait_for(up.gone.is_set)


@pytest.mark.parametrize(
    "garbage",
    [
        os.urandom(5000),
        b"\x00" * 100 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
        b"\r\n" * 10,
        b"",
    ],
)
async def test_garbage_never_kills_the_server(garbage: bytes) -> None:
    async with running(echo()) as up, serving({"m": [to("m", up)]}, header_timeout=0.5) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(garbage)
        writer.write_eof()
        async with asyncio.timeout(DEADLINE):
            await reader.read()
        writer.close()
        status, _, _ = parse(await exchange(h.port, chat()))
        assert status == 200


async def test_a_failing_callback_gets_a_500_and_the_server_keeps_serving() -> None:
    def explode(model: str) -> None:
        raise RuntimeError("boom")

    async with running(echo()) as up, serving({"m": [to("m", up)]}, on_demand=explode) as h:
        assert_openai_error(await exchange(h.port, chat()), 500, "server_error", "internal")
        status, _, _ = parse(await exchange(h.port, b"GET /health HTTP/1.1\r\n\r\n"))
        assert status == 200


async def test_port_in_use() -> None:
    async with serving({}) as h:
        other = Ingress(
            host="127.0.0.1",
            port=h.port,
            snapshot=lambda: RoutingSnapshot({}, False),
            connect=connect_local,
            models_listing=list,
        )
        with pytest.raises(PortInUseError, match=str(h.port)):
            await other.start()


# -- a real OpenAI client ----------------------------------------------------------------------


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    ).encode()


@pytest.mark.usefixtures("relay_loops")
async def test_openai_client_streaming_chat() -> None:
    events = [_chunk("Hel"), _chunk("lo"), _chunk(None, "stop"), b"[DONE]"]
    async with running(sse(events, delay=0.01)) as up, serving({"m": [to("m", up)]}) as h:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{h.port}/v1", api_key="unused", max_retries=0
        )
        try:
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        finally:
            await client.close()
        assert "".join(p for p in pieces if p) == "Hello"
        assert json.loads(up.requests[0].partition(b"\r\n\r\n")[2])["stream"] is True


def _sse_chunk(payload: bytes) -> bytes:
    line = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(line), line)


@pytest.mark.usefixtures("relay_loops")
async def test_openai_client_gets_a_typed_error_when_the_upstream_dies_mid_stream() -> None:
    dying = raw(SSE_HEAD + _sse_chunk(_chunk("Hel")) + _sse_chunk(_chunk("lo")))
    async with running(dying) as up, serving({"m": [to("m", up)]}) as h:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{h.port}/v1", api_key="unused", max_retries=0
        )
        pieces: list[str] = []

        async def consume() -> None:
            stream = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            async with asyncio.timeout(DEADLINE):
                async for c in stream:
                    pieces.append(c.choices[0].delta.content or "")

        try:
            with pytest.raises(openai.APIError, match="stopped in the middle of the response"):
                await consume()
        finally:
            await client.close()
        assert "".join(pieces) == "Hello"


@pytest.mark.usefixtures("relay_loops")
async def test_messages_stream_cut_short_ends_with_an_anthropic_error_event() -> None:
    dying = raw(SSE_HEAD + _sse_chunk(b'{"type": "message_start"}'))
    async with running(dying) as up, serving({"m": [to("m", up)]}) as h:
        body = b'{"model": "m", "stream": true, "max_tokens": 5, "messages": []}'
        request = b"POST /v1/messages HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )
        data = await exchange(h.port, request)
        assert data.endswith(b"\r\n0\r\n\r\n")
        assert b"event: error\ndata: " in data
        assert b'"type": "api_error"' in data


@pytest.mark.usefixtures("relay_loops")
async def test_a_stream_cut_inside_a_chunk_is_just_closed() -> None:
    cut = _sse_chunk(_chunk("Hel"))
    async with running(raw(SSE_HEAD + cut[:-7])) as up, serving({"m": [to("m", up)]}) as h:
        data = await exchange(h.port, chat(stream=True))
        assert data.endswith(cut[:-7])


@pytest.mark.usefixtures("relay_loops")
async def test_a_complete_stream_gets_nothing_appended() -> None:
    whole = SSE_HEAD + _sse_chunk(b"[DONE]") + b"0\r\n\r\n"
    async with running(raw(whole)) as up, serving({"m": [to("m", up)]}) as h:
        data = await exchange(h.port, chat(stream=True))
        assert data.endswith(_sse_chunk(b"[DONE]") + b"0\r\n\r\n")
        assert b"error" not in data


async def test_first_byte_timeout_503_says_what_happened() -> None:
    async with (
        running(hang()) as slow,
        serving({"m": [to("m", slow)]}, first_byte_timeout=0.3) as h,
    ):
        message = assert_openai_error(
            await exchange(h.port, chat()), 503, "server_error", "no_backend"
        )
        assert message == (
            f"timed out waiting for this node's llama-server for 'm' (port {slow.port}) after 0.3 s"
        )


async def test_a_body_dribbled_byte_by_byte_gets_408_and_is_let_go() -> None:
    """Each byte arrives well within the idle bound, but the body comes in far below the
    minimum rate: 408 within about the header timeout, the connection closed."""
    async with serving({}, header_timeout=0.5) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            writer.write(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
            )
            start = asyncio.get_running_loop().time()

            async def dribble() -> None:
                with contextlib.suppress(OSError):
                    for _ in range(1000):
                        writer.write(b"x")
                        await writer.drain()
                        await asyncio.sleep(0.1)

            feeder = asyncio.create_task(dribble())
            try:
                async with asyncio.timeout(DEADLINE):
                    data = await reader.read()
            finally:
                feeder.cancel()
            took = asyncio.get_running_loop().time() - start
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        assert_openai_error(data, 408, "invalid_request_error", "request_timeout")
        assert took < 2.0
        await wait_for(lambda: h.ingress.inflight == 0)  # the connection is let go
