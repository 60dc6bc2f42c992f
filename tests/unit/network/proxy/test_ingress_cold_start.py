"""Cold starts through the :9337 ingress: a request for a model nobody serves waits for a load.

Real loopback sockets; the runtime's side is faked: ``cold_start`` answers a :class:`Warmup` (and
makes the model's target appear in the routing snapshot a little later), a reason (nobody has
room) or None (not a cold start), and fake upstreams stand in for the llama-server that loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anthropic
import openai
import pytest

from mesh_llm.network.proxy import warmup as warmup_mod
from mesh_llm.network.proxy.ingress import SHUTDOWN_MESSAGE, Ingress
from mesh_llm.network.proxy.routing import RoutingSnapshot, Target
from mesh_llm.network.proxy.upstream import connect_local
from mesh_llm.network.proxy.warmup import EVENT_STREAM_HEAD, Warmup
from tests.fakes.fake_upstream import SSE_HEAD, echo, hang, raw, response, running, sse
from tests.unit.network.proxy.test_event_streams import chunked
from tests.unit.network.proxy.test_ingress import (
    DEADLINE,
    assert_openai_error,
    chat,
    dead_port,
    exchange,
    parse,
    target,
    to,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

DATA = Path(__file__).parent / "data"
RESPONSES_TEXT = (DATA / "llama_responses_text.sse").read_bytes()
MESSAGES_NO_START = (DATA / "llama_messages_no_start.sse").read_bytes()
COLD = "cold-model"
LOAD_S = 0.4
"""How long the fake load takes before the model's target appears."""


@pytest.fixture(autouse=True)
def _fast_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warmup_mod, "FIRST_COMMENT_S", 0.05)
    monkeypatch.setattr(warmup_mod, "COMMENT_EVERY_S", 0.1)
    monkeypatch.setattr(warmup_mod, "POLL_S", 0.01)


@dataclass
class Mesh:
    """The routing snapshot (mutable: a load adds a target) and the fake runtime's cold start."""

    targets: dict[str, list[Target]] = field(default_factory=dict)
    no_mesh_reason: str | None = None
    down: dict[str, str] = field(default_factory=dict)
    answer: Warmup | str | None = None
    """What the next cold start returns."""
    loads_to: Target | None = None
    """With a Warmup answer: the target that appears LOAD_S later (None: it never does)."""
    asked: list[str] = field(default_factory=list)
    failure: str | None = None

    def snapshot(self) -> RoutingSnapshot:
        return RoutingSnapshot(
            {k: list(v) for k, v in self.targets.items() if v},
            serving=bool(self.targets),
            down=dict(self.down),
            no_mesh_reason=self.no_mesh_reason,
        )

    async def cold_start(self, model: str) -> Warmup | str | None:
        self.asked.append(model)
        answer = self.answer
        if isinstance(answer, Warmup) and self.loads_to is not None:
            loaded = self.loads_to
            asyncio.get_running_loop().call_later(
                LOAD_S, lambda: self.targets.setdefault(loaded.model, []).append(loaded)
            )
        return answer

    def warmup(self, where: str = "this node") -> Warmup:
        return Warmup(COLD, where, failure=lambda: self.failure)


def make_ingress(mesh: Mesh, **kwargs: object) -> Ingress:
    """An ingress on a free loopback port whose routing and cold starts are ``mesh``'s."""
    return Ingress(
        host="127.0.0.1",
        port=0,
        snapshot=mesh.snapshot,
        connect=connect_local,
        models_listing=list,
        cold_start=mesh.cold_start,
        **kwargs,  # type: ignore[arg-type]
    )


@contextlib.asynccontextmanager
async def ingress_for(mesh: Mesh, **kwargs: object) -> AsyncIterator[Ingress]:
    ingress = make_ingress(mesh, **kwargs)
    await ingress.start()
    try:
        yield ingress
    finally:
        await ingress.close()


def dechunk(body: bytes) -> Iterator[bytes]:
    """The chunks of a complete chunked body, checking its framing down to the last chunk."""
    rest = body
    while True:
        size_line, sep, rest = rest.partition(b"\r\n")
        assert sep, f"unterminated chunk size line in {body!r}"
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", f"bytes after the last chunk: {rest!r}"
            return
        payload, trailer = rest[:size], rest[size : size + 2]
        assert trailer == b"\r\n", f"chunk of {size} bytes not followed by CRLF in {body!r}"
        yield payload
        rest = rest[size + 2 :]


def error_event(payloads: list[bytes]) -> dict[str, str]:
    """The OpenAI-style error object of the stream's one error event (its last payload)."""
    last = payloads[-1]
    assert last.startswith(b"data: "), last
    assert last.endswith(b"\n\n"), last
    error: dict[str, str] = json.loads(last[len(b"data: ") :])["error"]
    return error


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": COLD,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
    ).encode()


# -- the load comes up --------------------------------------------------------------------


async def test_a_request_waits_for_the_load_and_is_answered_by_it() -> None:
    async with running(echo()) as up:
        mesh = Mesh(answer=None, loads_to=to(COLD, up))
        mesh.answer = mesh.warmup()
        async with ingress_for(mesh) as ingress:
            loop = asyncio.get_running_loop()
            started = loop.time()
            status, headers, body = parse(await exchange(ingress.port, chat(COLD)))
            waited = loop.time() - started
        assert status == 200
        assert headers["x-mesh-llm-model"] == COLD
        assert json.loads(body.partition(b"\r\n\r\n")[2])["model"] == COLD  # echoed request
        assert mesh.asked == [COLD]
        assert len(up.requests) == 1
        assert waited >= LOAD_S * 0.9  # it was held, not answered by anything else


async def test_a_stream_gets_loading_comments_then_the_answer_in_the_same_response() -> None:
    events = [b'{"n":1}', b'{"n":2}', b"[DONE]"]
    async with running(sse(events, delay=0.01)) as up:
        mesh = Mesh(loads_to=to(COLD, up))
        mesh.answer = mesh.warmup("node 1a2b3c4d5e")
        async with ingress_for(mesh) as ingress:
            data = await exchange(ingress.port, chat(COLD, stream=True))
    head_end = data.index(b"\r\n\r\n") + 4
    assert data[:head_end] == EVENT_STREAM_HEAD + f"x-mesh-llm-model: {COLD}\r\n\r\n".encode()
    payloads = list(dechunk(data[head_end:]))
    comments = [p for p in payloads if p.startswith(b": ")]
    assert len(comments) >= 2  # first after 0.05 s, then every 0.1 s during a 0.4 s load
    assert all(
        p.startswith(f": loading {COLD} on node 1a2b3c4d5e (".encode()) and p.endswith(b" s)\n\n")
        for p in comments
    )
    answer = [p for p in payloads if not p.startswith(b": ")]
    assert answer == [b"data: " + e + b"\n\n" for e in events]
    assert payloads.index(answer[0]) > payloads.index(comments[-1])  # comments only before
    assert b"HTTP/1.1" not in data[head_end:]  # the upstream's own head was not relayed
    assert len(up.requests) == 1


@pytest.mark.usefixtures("relay_loops")
async def test_openai_client_streams_through_a_cold_start() -> None:
    events = [_chunk("Hel"), _chunk("lo"), _chunk(None, "stop"), b"[DONE]"]
    async with running(sse(events, delay=0.01)) as up:
        mesh = Mesh(loads_to=to(COLD, up))
        mesh.answer = mesh.warmup()
        async with ingress_for(mesh) as ingress:
            client = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{ingress.port}/v1", api_key="unused", max_retries=0
            )
            try:
                stream = await client.chat.completions.create(
                    model=COLD, messages=[{"role": "user", "content": "hi"}], stream=True
                )
                async with asyncio.timeout(DEADLINE):
                    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
            finally:
                await client.close()
    assert "".join(p for p in pieces if p) == "Hello"


@pytest.mark.usefixtures("relay_loops")
async def test_a_stream_whose_model_loads_before_the_first_comment_is_relayed_as_usual() -> None:
    async with running(sse([b"a", b"b"])) as up:
        mesh = Mesh(targets={COLD: []})
        mesh.answer = mesh.warmup()

        async def instant(model: str) -> Warmup | str | None:
            mesh.asked.append(model)
            mesh.targets[COLD] = [to(COLD, up)]
            return mesh.warmup()

        mesh.cold_start = instant  # type: ignore[method-assign]
        async with ingress_for(mesh) as ingress:
            data = await exchange(ingress.port, chat(COLD, stream=True))
    assert mesh.asked == [COLD]
    # The upstream's own head, with the model header: no comment went out first.
    assert data.startswith(b"HTTP/1.1 200 OK\r\nx-mesh-llm-model: " + COLD.encode() + b"\r\n")
    assert b": loading" not in data
    assert data.endswith(b"data: b\n\n\r\n0\r\n\r\n")


async def test_a_non_stream_answer_after_the_comments_becomes_an_error_event() -> None:
    async with running(raw(response(500, b'{"error":{"message":"boom"}}'))) as up:
        mesh = Mesh(loads_to=to(COLD, up))
        mesh.answer = mesh.warmup()
        async with ingress_for(mesh) as ingress:
            data = await exchange(ingress.port, chat(COLD, stream=True))
    head_end = data.index(b"\r\n\r\n") + 4
    assert data.startswith(EVENT_STREAM_HEAD)
    error = error_event(list(dechunk(data[head_end:])))
    assert error["message"].startswith(f"the server for {COLD} answered 500: ")
    assert "boom" in error["message"]


async def test_a_loaded_target_that_fails_ends_the_waiting_stream_with_the_reason() -> None:
    mesh = Mesh(loads_to=target(COLD, dead_port()))
    mesh.answer = mesh.warmup()
    async with ingress_for(mesh) as ingress:
        data = await exchange(ingress.port, chat(COLD, stream=True))
    head_end = data.index(b"\r\n\r\n") + 4
    assert data.startswith(EVENT_STREAM_HEAD)
    error = error_event(list(dechunk(data[head_end:])))
    assert error["message"] == f"No inference server available for model '{COLD}'"


# -- the load does not come up ------------------------------------------------------------


async def test_timeout_without_a_stream_is_a_503_saying_it_is_still_loading() -> None:
    mesh = Mesh()
    mesh.answer = mesh.warmup("node 1a2b3c4d5e")
    async with ingress_for(mesh, cold_start_timeout=0.6) as ingress:
        data = await exchange(ingress.port, chat(COLD))
    message = assert_openai_error(data, 503, "server_error", "model_loading")
    assert message == f"{COLD} is still loading on node 1a2b3c4d5e after 1 s; retry shortly"
    assert parse(data)[1]["retry-after"] == "2"


async def test_timeout_of_a_stream_ends_it_with_an_error_event() -> None:
    mesh = Mesh()
    mesh.answer = mesh.warmup()
    async with ingress_for(mesh, cold_start_timeout=0.6) as ingress:
        data = await exchange(ingress.port, chat(COLD, stream=True))
    head_end = data.index(b"\r\n\r\n") + 4
    assert data[:head_end] == EVENT_STREAM_HEAD + f"x-mesh-llm-model: {COLD}\r\n\r\n".encode()
    payloads = list(dechunk(data[head_end:]))
    assert payloads[0].startswith(f": loading {COLD} on this node".encode())
    error = error_event(payloads)
    assert error == {
        "message": f"{COLD} is still loading on this node after 1 s; retry shortly",
        "type": "server_error",
        "code": "upstream_failed",
    }


async def test_timeout_of_a_messages_stream_ends_it_with_an_anthropic_error_event() -> None:
    mesh = Mesh()
    mesh.answer = mesh.warmup()
    body = json.dumps(
        {
            "model": COLD,
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )
    request = (
        f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    async with ingress_for(mesh, cold_start_timeout=0.6) as ingress:
        data = await exchange(ingress.port, request)
    head_end = data.index(b"\r\n\r\n") + 4
    assert data.startswith(EVENT_STREAM_HEAD)
    last = list(dechunk(data[head_end:]))[-1]
    assert last.startswith(b"event: error\ndata: ")
    payload = json.loads(last.partition(b"data: ")[2])
    assert payload["type"] == "error"
    assert payload["error"]["message"].startswith(f"{COLD} is still loading on this node")


async def test_a_failed_load_is_a_503_naming_why() -> None:
    mesh = Mesh(failure="llama-server exited with code 1")
    mesh.answer = mesh.warmup()
    async with ingress_for(mesh) as ingress:
        data = await exchange(ingress.port, chat(COLD))
    message = assert_openai_error(data, 503, "server_error", "model_loading")
    assert message == f"loading {COLD} failed: llama-server exited with code 1"


async def test_a_load_failing_after_the_comments_ends_the_stream_with_why() -> None:
    mesh = Mesh()
    mesh.answer = mesh.warmup()

    async def fail_later() -> None:
        await asyncio.sleep(0.3)
        mesh.failure = "out of memory"

    async with ingress_for(mesh) as ingress:
        failing = asyncio.create_task(fail_later())
        data = await exchange(ingress.port, chat(COLD, stream=True))
        await failing
    head_end = data.index(b"\r\n\r\n") + 4
    payloads = list(dechunk(data[head_end:]))
    assert any(p.startswith(b": loading") for p in payloads)
    assert error_event(payloads)["message"] == f"loading {COLD} failed: out of memory"


# -- no load can start ----------------------------------------------------------------------

ROOM = "no node has room for cold-model: it needs 4.00 GB and the most any node has free is 1.00 GB"


async def test_nobody_has_room_is_a_503_naming_the_model_and_the_figures() -> None:
    async with running(echo()) as other:
        mesh = Mesh(targets={"m": [to("m", other)]}, answer=ROOM)
        async with ingress_for(mesh) as ingress:
            data = await exchange(ingress.port, chat(COLD))
        assert other.requests == []  # not substituted by the model that is served
    message = assert_openai_error(data, 503, "server_error", "no_backend")
    assert message == f"No inference server available for model '{COLD}': {ROOM}"
    assert parse(data)[1]["retry-after"] == "2"


async def test_nobody_has_room_while_in_no_mesh_says_not_connected() -> None:
    mesh = Mesh(answer=ROOM, no_mesh_reason="could not reach 0202020202: no answer")
    async with ingress_for(mesh) as ingress:
        data = await exchange(ingress.port, chat(COLD))
    message = assert_openai_error(data, 503, "server_error", "no_backend")
    assert message == "not connected to any mesh: could not reach 0202020202: no answer"


async def test_nobody_has_room_on_the_messages_api_is_an_anthropic_error() -> None:
    mesh = Mesh(answer=ROOM)
    body = json.dumps({"model": COLD, "max_tokens": 8, "messages": []})
    request = (
        f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    async with ingress_for(mesh) as ingress:
        status, _, raw_body = parse(await exchange(ingress.port, request))
    assert status == 503
    assert json.loads(raw_body) == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": f"No inference server available for model '{COLD}': {ROOM}",
        },
    }


async def test_not_a_cold_start_routes_as_before_by_substitution() -> None:
    async with running(echo()) as other:
        mesh = Mesh(targets={"m": [to("m", other)]}, answer=None)
        async with ingress_for(mesh) as ingress:
            status, headers, _ = parse(await exchange(ingress.port, chat("nobody-has-this")))
            assert ingress.substitutions == {"nobody-has-this": 1}
    assert mesh.asked == ["nobody-has-this"]
    assert status == 200
    assert headers["x-mesh-llm-model"] == "m"
    assert len(other.requests) == 1


async def test_not_a_cold_start_with_substitution_off_is_a_404() -> None:
    async with running(echo()) as other:
        mesh = Mesh(targets={"m": [to("m", other)]}, answer=None)
        async with ingress_for(mesh, model_substitution=False) as ingress:
            data = await exchange(ingress.port, chat("nobody-has-this"))
    message = assert_openai_error(data, 404, "invalid_request_error", "model_not_found")
    assert "nobody-has-this" in message
    assert other.requests == []


async def test_served_models_auto_and_down_models_never_ask_for_a_cold_start() -> None:
    async with running(echo()) as up:
        mesh = Mesh(targets={"m": [to("m", up)]}, down={COLD: "llama-server restarting"})
        mesh.answer = mesh.warmup()
        async with ingress_for(mesh) as ingress:
            for model in ("m", "auto"):
                assert parse(await exchange(ingress.port, chat(model)))[0] == 200
            down = await exchange(ingress.port, chat(COLD))
    assert mesh.asked == []
    message = assert_openai_error(down, 503, "server_error", "no_backend")
    assert message == f"Model '{COLD}' is not available on this node: llama-server restarting"


# -- the client goes away while it waits ---------------------------------------------------


async def test_a_client_leaving_during_the_wait_frees_the_request() -> None:
    async with running(echo()) as up:
        mesh = Mesh(loads_to=to(COLD, up))
        mesh.answer = mesh.warmup()
        async with ingress_for(mesh) as ingress:
            _reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
            writer.write(chat(COLD))
            await wait_for(lambda: mesh.asked == [COLD])
            writer.close()
            await writer.wait_closed()
            await wait_for(lambda: ingress.inflight == 0 and ingress.active == 0)
            await wait_for(lambda: bool(mesh.targets.get(COLD)))  # the load still completes
            assert up.requests == []  # the abandoned request was never sent
            status, _, _ = parse(await exchange(ingress.port, chat(COLD)))
        assert status == 200
        assert len(up.requests) == 1


async def test_a_stream_client_leaving_after_the_comments_frees_the_request() -> None:
    async with running(hang()) as up:
        mesh = Mesh()
        mesh.answer = mesh.warmup()
        async with ingress_for(mesh) as ingress:
            reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
            writer.write(chat(COLD, stream=True))
            seen = b""
            async with asyncio.timeout(DEADLINE):
                while b": loading" not in seen:
                    chunk = await reader.read(65536)
                    assert chunk, "closed before a loading comment"
                    seen += chunk
            writer.close()
            await writer.wait_closed()
            await wait_for(lambda: ingress.inflight == 0 and ingress.active == 0)
            mesh.targets[COLD] = [to(COLD, up)]
            await asyncio.sleep(0.1)
            assert up.requests == []


async def test_a_client_that_never_reads_the_comments_still_gets_the_timeout() -> None:
    # A client that sends its request and then neither reads nor closes: the comments fill
    # socket buffers at most (they are tiny); the wait still ends at the bound.
    mesh = Mesh()
    mesh.answer = mesh.warmup()
    async with ingress_for(mesh, cold_start_timeout=0.6) as ingress:
        reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
        writer.write(chat(COLD, stream=True))
        await asyncio.sleep(0.8)
        async with asyncio.timeout(DEADLINE):
            data = await reader.read()
        writer.close()
    assert b"still loading" in data
    assert data.endswith(b"0\r\n\r\n")


# -- the ingress closes meanwhile ------------------------------------------------------------


async def _read_until(reader: asyncio.StreamReader, marker: bytes) -> bytes:
    seen = b""
    async with asyncio.timeout(DEADLINE):
        while marker not in seen:
            chunk = await reader.read(65536)
            assert chunk, f"closed before {marker!r} arrived"
            seen += chunk
    return seen


async def _close_and_read(
    ingress: Ingress, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[bytes, float]:
    """Close ``ingress``; what the client still gets and how long until its answer ended."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    closing = asyncio.create_task(ingress.close())
    async with asyncio.timeout(DEADLINE):
        rest = await reader.read()
    took = loop.time() - started
    writer.close()
    await closing
    return rest, took


def _shutdown_message(seen: bytes) -> str:
    assert seen.endswith(b"\r\n0\r\n\r\n"), seen[-200:]
    error_line = seen.split(b"data: ")[-1].split(b"\n")[0]
    message: str = json.loads(error_line)["error"]["message"]
    return message


async def test_close_during_a_cold_started_stream_ends_it_with_an_error_event_at_once() -> None:
    gate = asyncio.Event()  # the last event never comes: the stream is in the middle
    async with running(sse([b"first", b"second", b"last"], gate=gate)) as up:
        mesh = Mesh(loads_to=to(COLD, up))
        mesh.answer = mesh.warmup()
        ingress = make_ingress(mesh)
        await ingress.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
        writer.write(chat(COLD, stream=True))
        seen = await _read_until(reader, b"data: second")
        assert b": loading" in seen  # the answer continues the cold start's event stream
        rest, took = await _close_and_read(ingress, reader, writer)
        gate.set()
    assert took < 1.0  # ended at once, not cut at the grace deadline (3 s)
    assert b"data: last" not in rest
    assert _shutdown_message(seen + rest) == SHUTDOWN_MESSAGE


async def test_close_while_a_stream_waits_for_its_model_ends_it_with_an_error_event() -> None:
    mesh = Mesh()  # the load never comes up
    mesh.answer = mesh.warmup()
    ingress = make_ingress(mesh)
    await ingress.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
    writer.write(chat(COLD, stream=True))
    seen = await _read_until(reader, b": loading")
    rest, took = await _close_and_read(ingress, reader, writer)
    assert took < 1.0
    assert _shutdown_message(seen + rest) == SHUTDOWN_MESSAGE


async def test_close_while_a_request_waits_for_its_model_answers_503() -> None:
    mesh = Mesh()
    mesh.answer = mesh.warmup()
    ingress = make_ingress(mesh)
    await ingress.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", ingress.port)
    writer.write(chat(COLD))
    await wait_for(lambda: mesh.asked == [COLD])
    rest, took = await _close_and_read(ingress, reader, writer)
    assert took < 1.0
    message = assert_openai_error(rest, 503, "server_error", "shutting_down")
    assert message == SHUTDOWN_MESSAGE
    assert parse(rest)[1]["retry-after"] == "2"


# -- the other stream dialects through a cold start (the rewriters after the comments) --------


async def test_openai_responses_stream_helper_works_through_a_cold_start() -> None:
    async with running(raw(SSE_HEAD + chunked(RESPONSES_TEXT))) as up:
        mesh = Mesh(loads_to=to(COLD, up))
        mesh.answer = mesh.warmup()
        async with ingress_for(mesh) as ingress:
            client = openai.AsyncOpenAI(
                base_url=f"http://127.0.0.1:{ingress.port}/v1", api_key="unused", max_retries=0
            )
            try:
                async with client.responses.stream(model=COLD, input="Say hello.") as stream:
                    deltas = [
                        e.delta async for e in stream if e.type == "response.output_text.delta"
                    ]
                    final = await stream.get_final_response()
            finally:
                await client.close()
    assert mesh.asked == [COLD]
    assert final.output_text
    assert "".join(deltas) == final.output_text


async def test_anthropic_stream_helper_works_through_a_cold_start() -> None:
    # llama-server skips message_start; the rewriter adds it after the loading comments.
    async with running(raw(SSE_HEAD + chunked(MESSAGES_NO_START))) as up:
        mesh = Mesh(loads_to=to(COLD, up))
        mesh.answer = mesh.warmup()
        async with ingress_for(mesh) as ingress:
            client = anthropic.AsyncAnthropic(
                base_url=f"http://127.0.0.1:{ingress.port}", api_key="unused", max_retries=0
            )
            try:
                async with client.messages.stream(
                    model=COLD, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
                ) as stream:
                    text = "".join([t async for t in stream.text_stream])
                    final = await stream.get_final_message()
            finally:
                await client.close()
    assert mesh.asked == [COLD]
    assert text
    assert final.content[0].type == "text"
    assert final.content[0].text == text
    assert final.stop_reason == "max_tokens"
