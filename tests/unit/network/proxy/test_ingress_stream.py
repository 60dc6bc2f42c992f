"""The ingress serving a request straight from an HTTP tunnel stream (0x04), over real iroh on
loopback, a fake upstream standing in for llama-server."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from mesh_llm.errors import TransportError
from mesh_llm.network.proxy.ingress import SHUTDOWN_MESSAGE, Ingress
from mesh_llm.network.proxy.routing import RoutingSnapshot, Target
from mesh_llm.network.proxy.tunnel import TunnelStream
from mesh_llm.network.proxy.upstream import UpstreamStream
from mesh_llm.network.transport import BiStream, Transport
from tests.fakes.fake_upstream import FakeUpstream, running, sse
from tests.unit.network.conftest import connect, open_stream
from tests.unit.network.proxy.test_ingress import (
    MODELS,
    chat,
    open_stream_until,
    unstarted_ingress,
    wait_for,
)

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("relay_loops")]
STEP = 10.0


@dataclass
class Counter:
    sent: int = 0
    received: int = 0

    def add_sent(self, n: int) -> None:
        self.sent += n

    def add_received(self, n: int) -> None:
        self.received += n


async def _read_all(stream: BiStream) -> None:
    async with asyncio.timeout(STEP):
        while await stream.read(65536):
            pass


async def test_a_tunnelled_stream_is_answered_and_counted(
    pair: tuple[Transport, Transport],
) -> None:
    out, inbound = await open_stream(*pair, b"\x04")
    async with running(sse([b"one", b"two"])) as up:
        ingress, counter = unstarted_ingress(up), Counter()
        serving = asyncio.ensure_future(ingress.serve_stream(inbound, counter))
        request = chat(stream=True)
        await out.write(request)  # the requester never finishes its side
        async with asyncio.timeout(STEP):
            response = bytearray()
            while chunk := await out.read(65536):
                response += chunk
            await serving
        await ingress.close()
    assert response.startswith(b"HTTP/1.1 200 OK\r\nx-mesh-llm-model: m\r\n")
    assert response.endswith(b"data: two\n\n\r\n0\r\n\r\n")
    assert counter.received == len(request)
    assert counter.sent == len(response)
    assert ingress.inflight == 0


async def test_a_requester_that_resets_cancels_the_generation(
    pair: tuple[Transport, Transport],
) -> None:
    out, inbound = await open_stream(*pair, b"\x04")
    gate = asyncio.Event()  # the last event never comes: only the reset can end this
    async with running(sse([b"tok"] * 3, gate=gate)) as up:
        ingress = unstarted_ingress(up)
        serving = asyncio.ensure_future(ingress.serve_stream(inbound))
        await out.write(chat(stream=True))
        async with asyncio.timeout(STEP):
            seen = b""
            while seen.count(b"data: tok") < 2:
                seen += await out.read(65536)
            await out.reset(0)
            await wait_for(up.gone.is_set)
            await serving
        await ingress.close()
    assert not up.finished.is_set()
    assert ingress.inflight == 0


async def test_a_closing_ingress_refuses_new_streams(pair: tuple[Transport, Transport]) -> None:
    out, inbound = await open_stream(*pair, b"\x04")
    async with running(sse([b"x"])) as up:
        ingress = unstarted_ingress(up)
        await ingress.close()
        await ingress.serve_stream(inbound)
        await out.write(chat())
        with pytest.raises(TransportError):
            await _read_all(out)
    assert up.requests == []


async def test_blocking_calls_from_a_relay_thread(pair: tuple[Transport, Transport]) -> None:
    out, inbound = await open_stream(*pair, b"!")
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    reading = loop.run_in_executor(None, inbound.read_blocking, 100, cancel)
    await asyncio.sleep(0.05)  # the thread waits for Rust's answer on its lock
    await out.write(b"hello")
    async with asyncio.timeout(STEP):
        assert await reading == b"hello"
        await loop.run_in_executor(None, inbound.write_blocking, b"back", cancel)
        assert await out.read_exact(4) == b"back"
        waiting = loop.run_in_executor(None, inbound.read_blocking, 100, cancel)
        await asyncio.sleep(0.05)
        cancel.set()
        with pytest.raises(TransportError, match="cancelled"):
            await waiting
        await out.write(b"still usable")
        assert await inbound.read_exact(12) == b"still usable"


@contextlib.asynccontextmanager
async def _through_a_tunnel(
    pair: tuple[Transport, Transport], up: FakeUpstream
) -> AsyncIterator[tuple[Ingress, Ingress, Counter]]:
    """A client-side ingress whose target is a real 0x04 stream to a host-side ingress that
    serves it from the stream (the two halves of a mesh tunnel, without the mesh service)."""
    client_side, host_side = pair
    host_ingress = unstarted_ingress(up)
    conn, accepted = await connect(client_side, host_side)
    traffic = Counter()
    serving: set[asyncio.Task[None]] = set()

    async def accept_streams() -> None:
        while True:
            stream = await accepted.accept_bi()
            assert await stream.read_exact(1) == b"\x04"
            task = asyncio.ensure_future(host_ingress.serve_stream(stream))
            serving.add(task)
            task.add_done_callback(serving.discard)

    async def open_tunnel(target: Target) -> UpstreamStream:
        stream = await conn.open_bi()
        await stream.write(b"\x04")
        return TunnelStream(stream, traffic)  # type: ignore[arg-type]

    client_ingress = Ingress(
        host="127.0.0.1",
        port=0,
        snapshot=lambda: RoutingSnapshot({"m": [Target("m", "peer:ab", None, "ab", None)]}, True),
        connect=open_tunnel,
        models_listing=lambda: MODELS,
    )
    await client_ingress.start()
    acceptor = asyncio.ensure_future(accept_streams())
    try:
        yield client_ingress, host_ingress, traffic
    finally:
        acceptor.cancel()
        await client_ingress.close()
        await host_ingress.close()


async def test_a_stream_through_a_tunnel_arrives_whole(pair: tuple[Transport, Transport]) -> None:
    events = [b"%05d" % i + b"x" * 200 for i in range(300)]
    async with running(sse(events)) as up, _through_a_tunnel(pair, up) as (client, _, traffic):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(chat(stream=True))
        async with asyncio.timeout(STEP):
            response = await reader.read()
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    expected = b"".join(
        f"{len(line):x}\r\n".encode() + line + b"\r\n"
        for line in (b"data: " + e + b"\n\n" for e in events)
    )
    assert body == expected + b"0\r\n\r\n"
    assert traffic.received == len(response)


async def test_a_client_leaving_a_tunnelled_stream_stops_the_generation(
    pair: tuple[Transport, Transport],
) -> None:
    gate = asyncio.Event()  # the stream never ends by itself
    async with (
        running(sse([b"tok"] * 3, gate=gate)) as up,
        _through_a_tunnel(pair, up) as (
            client,
            host,
            _,
        ),
    ):
        _reader, writer = await open_stream_until(client.port, 2)
        writer.transport.abort()
        await wait_for(up.gone.is_set)
        await wait_for(lambda: client.inflight == 0 and host.inflight == 0)
        assert not up.finished.is_set()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_closing_the_ingress_ends_a_tunnelled_stream_with_an_error_event(
    pair: tuple[Transport, Transport], path: str
) -> None:
    """Ctrl-c of the node a client streams from, the model being on another node: the relay
    from the tunnel is given up (thread relay for chat, event-loop relay for the rewritten
    Messages stream) and the stream ends with the shutdown event, not at the grace deadline."""
    gate = asyncio.Event()  # the stream never ends by itself
    async with (
        running(sse([b"tok"] * 3, gate=gate)) as up,
        _through_a_tunnel(pair, up) as (client, _, _),
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(chat(stream=True).replace(b"/v1/chat/completions", path.encode()))
        seen = b""
        async with asyncio.timeout(STEP):
            while b"\n\n" not in seen.partition(b"\r\n\r\n")[2]:
                seen += await reader.read(65536)
        started = time.monotonic()
        closing = asyncio.ensure_future(client.close())
        async with asyncio.timeout(STEP):
            seen += await reader.read()
            writer.close()
            await closing
        assert time.monotonic() - started < 2.0  # drained, not cut at the grace deadline
        await wait_for(up.gone.is_set)  # the host's generation stopped too
    assert seen.endswith(b"\r\n0\r\n\r\n"), seen[-300:]
    assert SHUTDOWN_MESSAGE.encode() in seen.rsplit(b"data: ", 1)[-1]
