"""Upstream connections of the ingress: one request's connection to whoever answers it.

:class:`UpstreamStream` is the shape the ingress needs (a local llama-server over TCP, or a mesh
tunnel). :func:`connect_local` opens the TCP kind as a plain protocol so that, once the response is
chosen, the rest of its bytes are relayed into the client socket by a thread of its own
(:meth:`TcpUpstream.relay`), without the event loop on the per-chunk path.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast, runtime_checkable

from mesh_llm.errors import MeshLlmError, TransportError
from mesh_llm.network import native_relay
from mesh_llm.network.native_relay import (
    NativeRelay,
    RelayCancelledError,
    RelaySinkError,
    RelaySourceError,
)
from mesh_llm.network.routing import Target

__all__ = [
    "BlockingSink",
    "BlockingSource",
    "ClientGoneError",
    "TcpUpstream",
    "UpstreamStream",
    "connect_local",
    "relay_from",
    "release_socket",
    "run_relay",
    "take_over_socket",
]


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
_RELAY_READ = 64 * 1024
RELAY_IDLE_S = 600.0
"""A relayed response with no progress for this long (neither a byte from the upstream nor a
write the client accepts) is cut: llama-server's own read/write timeout is the same."""
_IDLE_TIMEVAL = struct.pack("ll", int(RELAY_IDLE_S), 0)
_FLUSH_POLL_S = 0.002


class ClientGoneError(ConnectionError):
    """The client's socket failed while a response was relayed into it."""


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

        The bytes move in a thread of their own (:func:`run_relay`), between duplicates of the two
        sockets' descriptors (:func:`_dup_socket`): a blocking ``recv`` and ``sendall`` per chunk,
        in C where it is built (:mod:`.native_relay`, which hands ``observe`` the bytes in
        batches), else in Python with ``observe`` on each chunk first. On a
        CPU-bound machine an event-loop relay costs about 1.5x the CPU per chunk
        (``docs/BENCHMARKS.md``).

        Raises :class:`ClientGoneError` if the client's socket fails, TransportError if the
        upstream's does. Cancelling shuts both connections down, which ends the thread.
        """
        up = self._take_over(observe, client.write)
        if up is None:
            return
        try:
            down = await take_over_socket(client, socket.SO_SNDTIMEO)
        except BaseException:
            release_socket(up)
            raise
        native = NativeRelay() if native_relay.available() else None
        pump: Callable[[], None]
        if native is not None:
            pump = functools.partial(native.socket_to_socket, up, down, _RELAY_READ, observe)
        else:
            pump = _python_pump(functools.partial(up.recv, _RELAY_READ), down.sendall, observe)
        await run_relay(
            pump,
            on_cancel=functools.partial(_cut, None, up, down),
            cleanup=functools.partial(_release_all, up, down),
            native=native,
        )

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
        cancel = threading.Event()
        end = sink.native_sink() if native_relay.streams_available() else None
        native = NativeRelay() if end is not None else None
        pump: Callable[[], None]
        if native is not None and end is not None:
            send, count = end
            pump = functools.partial(
                native.socket_to_stream, up, send, _RELAY_READ, _counting(observe, count)
            )
        else:
            pump = _python_pump(
                functools.partial(up.recv, _RELAY_READ),
                lambda data: sink.write_blocking(data, cancel),
                observe,
            )
        await run_relay(
            pump,
            on_cancel=functools.partial(_cut, cancel, up),
            cleanup=functools.partial(release_socket, up),
            native=native,
        )

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
        return _dup_socket(transport, socket.SO_RCVTIMEO)

    async def aclose(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class _RelayThreads:
    """Daemon threads that run relays. Starting a thread costs 0.4-1.2 ms here, which would
    land on the time to first token, so finished ones wait for the next relay; one is started
    only when none is idle, and at most :data:`_MAX_IDLE` stay idle."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0

    def run(self, job: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name="mesh-llm-relay", daemon=True).start()

    def _work(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                if self._idle >= _MAX_IDLE:
                    return
                self._idle += 1


_MAX_IDLE = 32
_RELAY_THREADS = _RelayThreads()


def _resolve(future: asyncio.Future[BaseException | None], outcome: BaseException | None) -> None:
    if not future.done():
        future.set_result(outcome)


def _dup_socket(transport: asyncio.BaseTransport, timeout_option: int) -> socket.socket:
    """A blocking socket object on a duplicate of ``transport``'s descriptor.

    Blocking mode belongs to the file description, which the event loop shares: while the relay
    runs, the loop does no I/O on the upstream (paused) and only reads the client's socket when
    epoll says it is readable, which never blocks; :func:`release_socket` makes the description
    non-blocking again before the relay lets go. The idle bound is the kernel's
    (``SO_RCVTIMEO``/``SO_SNDTIMEO``), so each chunk costs one ``recv`` and one ``send``, not a
    ``poll`` before each as a Python-level timeout would.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        raise TransportError("transport has no socket")
    dup = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        dup.setblocking(True)
        dup.setsockopt(socket.SOL_SOCKET, timeout_option, _IDLE_TIMEVAL)
    except BaseException:
        release_socket(dup)
        raise
    return dup


def _release_all(*socks: socket.socket) -> None:
    for sock in socks:
        release_socket(sock)


def release_socket(sock: socket.socket) -> None:
    """Close a relay's blocking duplicate, leaving the shared description non-blocking."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
    sock.close()


NativeEnd = tuple[Any, Callable[[int], None] | None]
"""An iroh stream half for :mod:`.native_relay` and the byte counter to call per chunk."""


@runtime_checkable
class BlockingSource(Protocol):
    """An upstream a relay thread can read from (an HTTP tunnel to a peer)."""

    def read_blocking(
        self, n: int, cancel: threading.Event, timeout: float | None = None
    ) -> bytes: ...

    def native_source(self) -> NativeEnd | None:
        """The stream's receive half for the C relay loop, or None."""
        ...


class BlockingSink(Protocol):
    """A sink a relay thread can write to (an HTTP tunnel back to the requesting node)."""

    def write_blocking(self, data: bytes, cancel: threading.Event) -> None: ...

    def native_sink(self) -> NativeEnd | None:
        """The stream's send half for the C relay loop, or None."""
        ...


async def relay_from(
    source: BlockingSource,
    client: asyncio.WriteTransport,
    observe: Callable[[bytes], None] | None,
) -> None:
    """Relay a source read from a relay thread (an HTTP tunnel) into the client's socket; the
    read and the socket write of each chunk happen in the thread, in C where it is built (see
    :class:`_DrainingWriter` for a client that stops reading)."""
    down = await take_over_socket(client, socket.SO_SNDTIMEO)
    cancel = threading.Event()
    writer = _DrainingWriter(
        down, lambda timeout: source.read_blocking(_RELAY_READ, cancel, timeout), observe
    )
    end = source.native_source() if native_relay.streams_available() else None
    native = NativeRelay() if end is not None else None
    if native is not None and end is not None:
        recv, count = end
        counted = _counting(observe, count)

        def pump() -> None:
            while (rest := native.stream_to_socket(recv, _RELAY_READ, down, counted)) is not None:
                try:  # the client is behind: Python drains the stream until it catches up
                    writer.drain(bytearray(rest))
                except (OSError, MeshLlmError) as exc:
                    raise RelaySinkError(exc) from exc

    else:
        pump = _python_pump(
            functools.partial(source.read_blocking, _RELAY_READ, cancel), writer.write, observe
        )
    await run_relay(
        pump,
        on_cancel=functools.partial(_cut, cancel, down),
        cleanup=functools.partial(release_socket, down),
        native=native,
    )


def _counting(
    observe: Callable[[bytes], None] | None, count: Callable[[int], None] | None
) -> Callable[[bytes], None] | None:
    """``observe`` and ``count`` for each chunk, as one callback (None if neither)."""
    if count is None:
        return observe
    if observe is None:
        return lambda data: count(len(data))

    def both(data: bytes) -> None:
        observe(data)
        count(len(data))

    return both


_STALL_POLL_S = 0.01
STALL_CAP = 16 * 1024 * 1024
_COMPACT_AT = 1 << 20


class _DrainingWriter:
    """Writes a tunnel's chunks to the client's socket and, while the socket is full, keeps
    reading the tunnel into memory.

    A QUIC stream must not be left unread holding many small chunks: the QUIC stack in the iroh
    wheel closes the whole connection (every tunnel and the gossip on it) at about two thousand
    ("too many gaps in stream buffer", docs/DESIGN.md), and token streams are made of small
    chunks. So when a ``send`` does not take a whole chunk, the thread alternates between waiting
    up to :data:`_STALL_POLL_S` for more of the tunnel and offering what is pending to the socket.
    A client :data:`STALL_CAP` bytes behind, or one that takes nothing for ``RELAY_IDLE_S``, is
    cut off (:class:`ClientGoneError`). The common case costs what ``sendall`` did: one ``send``.
    """

    __slots__ = ("_observe", "_read_within", "_sock")

    def __init__(
        self,
        sock: socket.socket,
        read_within: Callable[[float], bytes],
        observe: Callable[[bytes], None] | None,
    ) -> None:
        self._sock = sock
        self._read_within = read_within
        self._observe = observe

    def write(self, data: bytes) -> None:
        try:
            sent = self._sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self.drain(bytearray(memoryview(data)[sent:]))

    def drain(self, pending: bytearray) -> None:
        """Send ``pending`` (and what more the tunnel brings meanwhile) to the client."""
        source_open = True
        progress = time.monotonic()
        start = 0  # pending[start:] is still to send; the sent head is dropped now and then
        writable = select.poll()  # not select(): descriptors past 1023 are common on a busy node
        writable.register(self._sock, select.POLLOUT)
        while start < len(pending):
            try:
                sent = self._sock.send(memoryview(pending)[start:], socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent:
                start += sent
                progress = time.monotonic()
                if start >= _COMPACT_AT and start * 2 >= len(pending):
                    del pending[:start]
                    start = 0
                continue
            if time.monotonic() - progress > RELAY_IDLE_S:
                raise ClientGoneError(f"client took nothing for {RELAY_IDLE_S:.0f} s")
            if not source_open:
                writable.poll(_STALL_POLL_S * 1000)
                continue
            if len(pending) - start >= STALL_CAP:
                raise ClientGoneError(f"client more than {STALL_CAP >> 20} MiB behind")
            try:
                more = self._read_within(_STALL_POLL_S)
            except TimeoutError:
                continue
            if more:
                if self._observe is not None:
                    self._observe(more)
                pending += more
            else:
                source_open = False  # the next read of the relay loop sees the end again


def _cut(cancel: threading.Event | None, *socks: socket.socket) -> None:
    """Make a relay thread's blocking calls return: set its cancel event (for iroh calls) and
    shut its sockets down (the response is abandoned)."""
    if cancel is not None:
        cancel.set()
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


async def take_over_socket(client: asyncio.WriteTransport, timeout_option: int) -> socket.socket:
    """Wait until the event loop has flushed ``client``, then return a blocking duplicate of its
    socket for a relay thread to write to (see :func:`_dup_socket`)."""
    while client.get_write_buffer_size():  # from here on, the thread writes to the socket
        if client.is_closing():
            raise ClientGoneError("client closed")
        await asyncio.sleep(_FLUSH_POLL_S)
    return _dup_socket(client, timeout_option)


def _python_pump(
    read: Callable[[], bytes],
    write: Callable[[bytes], object],
    observe: Callable[[bytes], None] | None,
) -> Callable[[], None]:
    """A relay loop in Python: chunks from ``read`` (``b""`` at the end) through ``observe`` to
    ``write``, the failures as :func:`run_relay` expects them."""

    def pump() -> None:
        while True:
            try:
                data = read()
            except (OSError, MeshLlmError) as exc:  # includes the idle timeout
                raise RelaySourceError(exc) from exc
            if not data:
                return
            if observe is not None:
                observe(data)
            try:
                write(data)
            except (OSError, MeshLlmError) as exc:
                raise RelaySinkError(exc) from exc

    return pump


async def run_relay(
    pump: Callable[[], None],
    *,
    on_cancel: Callable[[], None],
    cleanup: Callable[[], object],
    native: NativeRelay | None = None,
) -> None:
    """Run ``pump``, a whole relay loop, in a relay thread until its source ends; ``cleanup``
    runs in the thread when it stops (then ``native``, the C state the pump used, is freed).

    A source failure (:class:`RelaySourceError`) raises TransportError here, a sink failure
    (:class:`RelaySinkError`) :class:`ClientGoneError`. Cancelling calls ``on_cancel``, which
    must make the thread's blocking calls return (and cancels ``native``'s waits).
    """
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[BaseException | None] = loop.create_future()

    def job() -> None:
        outcome: BaseException | None = None
        try:
            pump()
        except RelaySourceError as exc:
            outcome = TransportError(f"upstream read failed: {exc}")
        except RelaySinkError as exc:
            outcome = ClientGoneError(f"client write failed: {exc}")
        except RelayCancelledError:
            outcome = TransportError("relay cancelled")
        finally:  # also after a bug in ``observe``: the request must still end
            cleanup()
            if native is not None:
                native.close()
            with contextlib.suppress(RuntimeError):  # the loop closed first: nobody waits
                loop.call_soon_threadsafe(_resolve, finished, outcome)

    _RELAY_THREADS.run(job)
    try:
        outcome = await asyncio.shield(finished)
    except asyncio.CancelledError:
        on_cancel()
        if native is not None:
            native.cancel()
        raise
    if outcome is not None:
        raise outcome


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
