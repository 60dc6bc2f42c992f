"""A client that stops reading a tunnelled response must not cost the mesh connection: the relay
keeps draining the QUIC stream while the client's socket is full (real iroh on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator

import pytest

from mesh_llm.network.relay import ClientGoneError, relay_from
from mesh_llm.network.relay import threads as upstream
from mesh_llm.network.transport import BiStream, Transport
from tests.unit.network.conftest import STEP, connect, open_stream_on

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("relay_loops")]


@contextlib.asynccontextmanager
async def _stuck_client() -> AsyncIterator[tuple[socket.socket, asyncio.WriteTransport]]:
    """A connected pair with small buffers: the client end reads nothing until told to; the
    other end, as an event-loop transport, is what the relay writes to."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    served, _ = listener.accept()
    listener.close()
    served.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    served.setblocking(False)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, served)
    assert isinstance(transport, asyncio.WriteTransport)
    try:
        yield client, transport
    finally:
        transport.close()
        client.close()


def _write_paced(out: BiStream, messages: list[bytes]) -> None:
    for message in messages:  # paced, so that each message travels as a chunk of its own
        out.write_blocking(message)
        time.sleep(0.0002)


def _read_all(client: socket.socket, size: int) -> bytes:
    client.settimeout(STEP)
    data = bytearray()
    while len(data) < size:
        chunk = client.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def test_a_stalled_client_keeps_the_connection_and_gets_everything(
    pair: tuple[Transport, Transport],
) -> None:
    ab, ba = await connect(*pair)
    out, inbound = await open_stream_on(ab, ba, b"!")
    messages = [b"data: %05d %s\n\n" % (i, b"x" * 86) for i in range(5000)]  # ~2,000 chunks kill
    expected = b"".join(messages)
    observed = bytearray()
    async with _stuck_client() as (client, transport):
        relay = asyncio.ensure_future(relay_from(inbound, transport, observed.extend))
        async with asyncio.timeout(STEP * 3):
            await asyncio.to_thread(_write_paced, out, messages)
            # the connection still carries streams
            other_out, other_in = await open_stream_on(ab, ba, b"!")
            await other_out.write(b"ping")
            assert await other_in.read_exact(4) == b"ping"
            await out.finish()
            received = await asyncio.to_thread(_read_all, client, len(expected))
            await relay
    assert received == expected
    assert bytes(observed) == expected


async def test_a_client_too_far_behind_is_cut_off(
    pair: tuple[Transport, Transport], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "STALL_CAP", 64 * 1024)
    ab, ba = await connect(*pair)
    out, inbound = await open_stream_on(ab, ba, b"!")
    async with _stuck_client() as (_client, transport):
        relay = asyncio.ensure_future(relay_from(inbound, transport, lambda _: None))
        stop = threading.Event()

        def flood() -> None:
            while not stop.is_set():
                out.write_blocking(b"x" * 1000)
                time.sleep(0.0005)

        flooding = asyncio.ensure_future(asyncio.to_thread(flood))
        try:
            async with asyncio.timeout(STEP):
                with pytest.raises(ClientGoneError, match="behind"):
                    await relay
        finally:
            stop.set()
            await flooding


def test_the_drain_keeps_order_across_megabytes() -> None:
    """The relay's drain on its own: a socket that takes nothing at first, a tunnel that keeps
    bringing 1 KiB pieces (3 MiB, past the point where the sent head is dropped)."""
    relay_end, client_end = socket.socketpair()
    relay_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pieces = [bytes([i % 251]) * 1024 for i in range(3 * 1024)]
    supply = iter(pieces)
    observed = bytearray()

    def read_within(timeout: float) -> bytes:
        return next(supply, b"")

    writer = upstream._DrainingWriter(relay_end, read_within, observed.extend)
    first = b"head" * 50_000  # more than the socket takes: the drain starts at once
    received = bytearray()

    def read_later() -> None:
        time.sleep(0.2)  # the drain must keep reading the tunnel meanwhile
        client_end.settimeout(STEP)
        while len(received) < len(first) + 3 * 1024 * 1024:
            received.extend(client_end.recv(1 << 16))

    reader = threading.Thread(target=read_later)
    reader.start()
    try:
        writer.write(first)
    finally:
        reader.join(STEP)
        relay_end.close()
        client_end.close()
    assert bytes(observed) == b"".join(pieces)
    assert bytes(received) == first + b"".join(pieces)
