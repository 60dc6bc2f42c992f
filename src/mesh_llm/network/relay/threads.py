"""Relay threads: the rest of a chosen response moves between two ends in a thread of its own.

A relay thread makes blocking calls on duplicates of the sockets' descriptors (and on iroh streams,
through :mod:`mesh_llm.network.transport`'s blocking calls), in C where it is built
(:mod:`.native`), else in Python; the event loop is not on the per-chunk path. :func:`run_relay`
runs one such loop and turns its outcome into the exception the ingress expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from mesh_llm.errors import MeshLlmError, TransportError
from mesh_llm.network.relay import native as native_relay
from mesh_llm.network.relay.native import (
    NativeRelay,
    RelayCancelledError,
    RelaySinkError,
    RelaySourceError,
)

__all__ = [
    "RELAY_IDLE_S",
    "RELAY_READ",
    "STALL_CAP",
    "BlockingSink",
    "BlockingSource",
    "ClientGoneError",
    "dup_socket",
    "relay_from",
    "relay_socket",
    "relay_socket_into",
    "release_socket",
    "run_relay",
    "take_over_socket",
]

log = logging.getLogger(__name__)

RELAY_READ = 64 * 1024
RELAY_IDLE_S = 600.0
"""A relayed response with no progress for this long (neither a byte from the upstream nor a
write the client accepts) is cut: llama-server's own read/write timeout is the same."""
_IDLE_TIMEVAL = struct.pack("ll", int(RELAY_IDLE_S), 0)
_FLUSH_POLL_S = 0.002


class ClientGoneError(ConnectionError):
    """The client's socket failed while a response was relayed into it."""


async def relay_socket(
    up: socket.socket, client: asyncio.WriteTransport, observe: Callable[[bytes], None] | None
) -> None:
    """Relay ``up`` (a blocking duplicate, see :func:`dup_socket`) into ``client``'s socket until
    ``up`` ends; ``up`` is released either way.

    A blocking ``recv`` and ``sendall`` per chunk in a relay thread, in C where it is built
    (:mod:`.native`, which hands ``observe`` the bytes in batches), else in Python with
    ``observe`` on each chunk first. Raises :class:`ClientGoneError` if the client's socket
    fails, TransportError if the upstream's does. Cancelling shuts both connections down, which
    ends the thread.
    """
    try:
        down = await take_over_socket(client, socket.SO_SNDTIMEO)
    except BaseException:
        release_socket(up)
        raise
    native = NativeRelay() if native_relay.available() else None
    pump: Callable[[], None]
    if native is not None:
        pump = functools.partial(native.socket_to_socket, up, down, RELAY_READ, observe)
    else:
        pump = _python_pump(functools.partial(up.recv, RELAY_READ), down.sendall, observe)
    await run_relay(
        pump,
        on_cancel=functools.partial(_cut, None, up, down),
        cleanup=functools.partial(_release_all, up, down),
        native=native,
    )


async def relay_socket_into(
    up: socket.socket, sink: BlockingSink, observe: Callable[[bytes], None] | None
) -> None:
    """Like :func:`relay_socket`, into a sink written from the relay thread (an HTTP tunnel
    stream)."""
    cancel = threading.Event()
    end = sink.native_sink() if native_relay.streams_available() else None
    native = NativeRelay() if end is not None else None
    pump: Callable[[], None]
    if native is not None and end is not None:
        send, count = end
        pump = functools.partial(
            native.socket_to_stream, up, send, RELAY_READ, _counting(observe, count)
        )
    else:
        pump = _python_pump(
            functools.partial(up.recv, RELAY_READ),
            lambda data: sink.write_blocking(data, cancel),
            observe,
        )
    await run_relay(
        pump,
        on_cancel=functools.partial(_cut, cancel, up),
        cleanup=functools.partial(release_socket, up),
        native=native,
    )


class _RelayThreads:
    """Daemon threads that run relays. Starting a thread costs about a millisecond
    (docs/BENCHMARKS.md), which would land on the time to first token, so finished ones wait
    for the next relay; one is started only when none is idle, and at most :data:`_MAX_IDLE`
    stay idle."""

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


def dup_socket(transport: asyncio.BaseTransport, timeout_option: int) -> socket.socket:
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


NativeEnd = tuple[int, Callable[[int], None] | None]
"""An iroh stream half's handle (``BiStream.send_handle``/``recv_handle``) for :mod:`.native`
and the byte counter to call per chunk."""


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


class Interrupt:
    """Ends one relay early as if its source had failed, leaving the client's connection open
    (node shutdown: the ingress then ends the response itself). Hooks added after :meth:`fire`
    run at once. Used on the event loop's thread."""

    __slots__ = ("_fired", "_hooks")

    def __init__(self, fired: bool = False) -> None:
        self._fired = fired
        self._hooks: list[Callable[[], object]] = []

    @property
    def fired(self) -> bool:
        return self._fired

    def add(self, hook: Callable[[], object]) -> None:
        if self._fired:
            hook()
        else:
            self._hooks.append(hook)

    def fire(self) -> None:
        if self._fired:
            return
        self._fired = True
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()


async def relay_from(
    source: BlockingSource,
    client: asyncio.WriteTransport,
    observe: Callable[[bytes], None] | None,
    interrupt: Interrupt | None = None,
) -> None:
    """Relay a source read from a relay thread (an HTTP tunnel) into the client's socket; the
    read and the socket write of each chunk happen in the thread, in C where it is built (see
    :class:`_DrainingWriter` for a client that stops reading).

    Firing ``interrupt`` gives up the wait for the source (TransportError here) without
    touching the client's socket: what was read has been written whole."""
    down = await take_over_socket(client, socket.SO_SNDTIMEO)
    cancel = threading.Event()
    writer = _DrainingWriter(
        down, lambda timeout: source.read_blocking(RELAY_READ, cancel, timeout), observe
    )
    end = source.native_source() if native_relay.streams_available() else None
    native = NativeRelay() if end is not None else None
    if native is not None and end is not None:
        recv, count = end
        counted = _counting(observe, count)

        def pump() -> None:
            while (rest := native.stream_to_socket(recv, RELAY_READ, down, counted)) is not None:
                try:  # the client is behind: Python drains the stream until it catches up
                    writer.drain(bytearray(rest))
                except (OSError, MeshLlmError) as exc:
                    raise RelaySinkError(exc) from exc

    else:
        pump = _python_pump(
            functools.partial(source.read_blocking, RELAY_READ, cancel), writer.write, observe
        )
    if interrupt is not None:
        interrupt.add(functools.partial(_give_up_source, cancel, native))
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


def _give_up_source(cancel: threading.Event, native: NativeRelay | None) -> None:
    cancel.set()
    if native is not None:
        native.cancel()


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
    socket for a relay thread to write to (see :func:`dup_socket`)."""
    while client.get_write_buffer_size():  # from here on, the thread writes to the socket
        if client.is_closing():
            raise ClientGoneError("client closed")
        await asyncio.sleep(_FLUSH_POLL_S)
    return dup_socket(client, timeout_option)


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
    (:class:`RelaySinkError`) :class:`ClientGoneError`; any other exception (a bug, in
    ``observe`` say) is logged with its traceback and raised here as it is. Cancelling calls
    ``on_cancel``, which must make the thread's blocking calls return (and cancels ``native``'s
    waits).
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
        except Exception as exc:
            log.error("relay thread failed", exc_info=exc)
            outcome = exc
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
