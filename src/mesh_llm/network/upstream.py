"""Upstream connections of the ingress: one request's connection to whoever answers it.

:class:`UpstreamStream` is the shape the ingress needs (a local llama-server over TCP, or a mesh
tunnel). :func:`connect_local` opens the TCP kind as a plain protocol so that, once the response is
chosen, its bytes can be spliced into the client socket without a coroutine wake-up per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Protocol, cast

from mesh_llm.errors import TransportError
from mesh_llm.network.routing import Target

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
_SPLICE_POLL_S = 0.01


class TcpUpstream(asyncio.Protocol):
    """:class:`UpstreamStream` over a loopback TCP connection, as a plain protocol.

    Until the response is chosen it is read like a stream (:meth:`read`). Then :meth:`splice`
    hands every chunk straight from ``data_received`` to the client's transport: no coroutine
    wake-up per streamed token, which is most of the proxy's per-token cost.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._eof = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._write_ready = asyncio.Event()
        self._write_ready.set()
        self._sink: Callable[[bytes], None] | None = None
        self._done = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink(data)
            return
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
        if not self._done.done():
            self._done.set_result(None)

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

    async def splice(self, sink: Callable[[bytes], None], client: asyncio.WriteTransport) -> None:
        """Feed the rest of the response to ``sink`` as it arrives, until the upstream closes.

        Backpressure: while ``client`` holds more than the buffer limit, upstream reading pauses.
        """
        if self._buffer:
            sink(bytes(self._buffer))
            self._buffer.clear()
        if self._eof:
            return
        self._sink = sink
        transport = self._transport
        if transport is not None:
            transport.resume_reading()
        paused = False
        while not self._done.done():
            await asyncio.wait([self._done], timeout=_SPLICE_POLL_S if paused else None)
            if transport is None or self._done.done():
                break
            backlog = client.get_write_buffer_size()
            if not paused and backlog > _UPSTREAM_BUFFER:
                transport.pause_reading()
                paused = True
            elif paused and backlog < _UPSTREAM_BUFFER // 2:
                transport.resume_reading()
                paused = False

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
