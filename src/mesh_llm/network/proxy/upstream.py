"""Upstream connections of the ingress: one request's connection to whoever answers it.

:class:`UpstreamStream` is the shape the ingress needs (a local llama-server over TCP, or a mesh
tunnel). :func:`connect_local` opens the TCP kind as a plain protocol so that, once the response is
chosen, the rest of its bytes are relayed into the client socket by a thread of its own
(:meth:`TcpUpstream.relay`), without the event loop on the per-chunk path.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from mesh_llm.errors import TransportError
from mesh_llm.network.proxy.routing import Target
from mesh_llm.network.relay import (
    BlockingSink,
    dup_socket,
    relay_socket,
    relay_socket_into,
    release_socket,
)

__all__ = ["TcpUpstream", "UpstreamStream", "connect_local"]


class UpstreamStream(Protocol):
    """One upstream connection carrying one request."""

    async def write(self, data: bytes) -> None: ...

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at EOF."""
        ...

    async def aclose(self) -> None:
        """Close or abort both directions."""
        ...


_UPSTREAM_BUFFER = 1 << 20  # bytes held before the upstream socket is paused


class TcpUpstream(asyncio.Protocol):
    """:class:`UpstreamStream` over a loopback TCP connection, as a plain protocol.

    Until the response is chosen it is read like a stream (:meth:`read`). Then :meth:`relay`
    moves the rest from the upstream socket to the client's in a thread.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_ready = asyncio.Event()
        self._write_ready.set()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > _UPSTREAM_BUFFER and self._transport is not None:
            self._transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._write_ready.set()
        self._wake()

    def pause_writing(self) -> None:
        self._write_ready.clear()

    def resume_writing(self) -> None:
        self._write_ready.set()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # UpstreamStream
    async def write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise TransportError("upstream write failed: connection closed")
        self._transport.write(data)
        await self._write_ready.wait()
        if self._error is not None:
            raise TransportError(f"upstream write failed: {self._error}")

    async def read(self, n: int) -> bytes:
        while not self._buffer and not self._eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self._buffer:
            if self._error is not None:
                raise TransportError(f"upstream read failed: {self._error}")
            return b""
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        if self._transport is not None and len(self._buffer) < _UPSTREAM_BUFFER:
            self._transport.resume_reading()
        return data

    async def relay(
        self, client: asyncio.WriteTransport, observe: Callable[[bytes], None] | None
    ) -> None:
        """Relay the rest of the response into ``client``'s socket until the upstream closes.

        The bytes move in a relay thread (:func:`~mesh_llm.network.relay.relay_socket`), which
        costs less CPU per chunk than an event-loop relay (``docs/BENCHMARKS.md``).

        Raises :class:`~mesh_llm.network.relay.ClientGoneError` if the client's socket fails,
        TransportError if the upstream's does. Cancelling shuts both connections down, which
        ends the thread.
        """
        up = self._take_over(observe, client.write)
        if up is None:
            return
        await relay_socket(up, client, observe)

    async def relay_into(
        self,
        sink: BlockingSink,
        observe: Callable[[bytes], None] | None,
        write: Callable[[bytes], Awaitable[None]],
    ) -> None:
        """Like :meth:`relay`, into a sink written from the relay thread (an HTTP tunnel stream);
        ``write`` sends what was read before the hand-over."""
        pending: list[bytes] = []
        up = self._take_over(observe, pending.append)
        try:
            for data in pending:
                await write(data)
        except BaseException:
            if up is not None:
                release_socket(up)
            raise
        if up is None:
            return
        await relay_socket_into(up, sink, observe)

    def _take_over(
        self, observe: Callable[[bytes], None] | None, flush: Callable[[bytes], object]
    ) -> socket.socket | None:
        """Hand what is buffered to ``flush``, stop the event loop reading, and return a blocking
        duplicate of the upstream socket; None if the upstream already ended."""
        transport = self._transport
        if self._buffer:
            data = bytes(self._buffer)
            self._buffer.clear()
            if observe is not None:
                observe(data)
            flush(data)
        if self._eof or transport is None:
            if self._error is not None:
                raise TransportError(f"upstream read failed: {self._error}")
            return None
        transport.pause_reading()
        return dup_socket(transport, socket.SO_RCVTIMEO)

    def interrupt(self) -> None:
        """End the response early (node shutdown): shut the connection down, which the relay
        thread's duplicate of the socket shares, so the relay sees the upstream end."""
        if self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def aclose(self) -> None:
        if self._transport is not None:
            self._transport.abort()


async def connect_local(target: Target) -> UpstreamStream:
    """Open a TCP connection to a llama-server of this node."""
    if target.local_port is None:
        raise TransportError(f"target {target.key} has no local port")
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.create_connection(
            TcpUpstream, "127.0.0.1", target.local_port
        )
    except OSError as exc:
        raise TransportError(f"cannot connect to {target.key}: {exc}") from exc
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return protocol
