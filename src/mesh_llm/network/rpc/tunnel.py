"""RPC tunnels (stream 0x02): llama-server on the host uses a worker's rpc-server through the mesh.

Host end, :class:`RpcTunnelHost` (one per worker peer): a ``127.0.0.1:0`` listener handed to
llama-server as ``--rpc 127.0.0.1:<port>``. Each accepted connection opens a 0x02 stream through
the injected ``open_stream``, exchanges the preamble (:mod:`mesh_llm.protocol.rpc`), then relays:
requests through :class:`~.rpc_splice.HostSplicer`, replies verbatim.

Worker end, :func:`serve_rpc_tunnel`: reads the preamble, connects to the local rpc-server on
127.0.0.1, answers what it holds of the host's model, then relays: requests through
:class:`~.rpc_splice.WorkerSplicer` (TENSOR_REF data sent with ``sendfile`` from the local file or
store, TENSOR_STORE data forwarded and kept), replies verbatim.

Both relay in chunks of at most 64 KiB with TCP_NODELAY; when either side ends, both are closed.
A malformed preamble or private frame closes the tunnel with a log line, never more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import socket
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Protocol, Self

from mesh_llm.errors import ProtocolError, TransportError
from mesh_llm.protocol.rpc import (
    RpcCodecError,
)
from mesh_llm.protocol.rpc_mesh import (
    HOST_PREAMBLE_SIZE,
    PREAMBLE_VERSION,
    WORKER_PREAMBLE_HEAD_SIZE,
    Extent,
    Holding,
    Holdings,
    HostPreamble,
    WorkerPreamble,
    decode_host_preamble,
    decode_worker_extents,
    decode_worker_preamble_head,
    encode_host_preamble,
    encode_worker_preamble,
)
from mesh_llm.protocol.rpc_splice import (
    FileSlice,
    HostSplicer,
    HostWeights,
    ReadRef,
    RpcTunnelStats,
    StoreBegin,
    StoreChunk,
    StoreDone,
    WorkerSplicer,
)

__all__ = ["RpcStream", "RpcTunnelHost", "WeightStore", "WorkerSources", "serve_rpc_tunnel"]

log = logging.getLogger(__name__)

CHUNK: Final = 64 * 1024
PREAMBLE_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 10.0
FILE_SLICE: Final = 1024 * 1024  # host: bytes re-read from the model file per stream write
STORE_BATCH: Final = 4 * 1024 * 1024  # worker: bytes gathered per store write
STORE_FLUSH_EVERY: Final = 256 * 1024 * 1024  # worker: persist the store index this often


class RpcStream(Protocol):
    """The part of :class:`~mesh_llm.network.transport.BiStream` a tunnel uses."""

    async def write(self, data: bytes) -> None: ...

    async def read(self, n: int) -> bytes: ...

    async def read_exact(self, n: int) -> bytes: ...

    async def reset(self, code: int = 0) -> None: ...

    async def aclose(self) -> None: ...


OpenStream = Callable[[], Awaitable[RpcStream]]


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _close_writer(writer: asyncio.StreamWriter | None) -> None:
    if writer is None:
        return
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


async def _close_stream(stream: RpcStream | None, clean: bool) -> None:
    """End a tunnel stream: finished when the relay ended cleanly, reset after an error."""
    if stream is None:
        return
    if not clean:
        with contextlib.suppress(TransportError, OSError):
            await stream.reset(0)
    with contextlib.suppress(TransportError, OSError):
        await stream.aclose()


async def _first_done(*coros: Coroutine[Any, Any, None]) -> None:
    """Run the coroutines until the first ends; cancel the rest; re-raise the first error."""
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, Exception):
            raise result


# ------------------------------------------------------------------------------------- host


class RpcTunnelHost:
    """Local TCP port -> 0x02 streams to one worker (see module doc).

    ``weights`` is the host's model (``inference.host_weights``); without it the tunnel is a plain
    relay that only counts. Use ``async with`` or :meth:`start` / :meth:`aclose`.
    """

    def __init__(
        self,
        open_stream: OpenStream,
        weights: HostWeights | None = None,
        *,
        label: str = "",
        stats: RpcTunnelStats | None = None,
    ) -> None:
        self._open_stream = open_stream
        self._weights = weights
        self.label = label
        self.stats = stats if stats is not None else RpcTunnelStats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._maps: list[mmap.mmap] = []
        self._port = 0

    @property
    def port(self) -> int:
        """The listening port (0 before :meth:`start`)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``, for llama-server's ``--rpc``."""
        return f"127.0.0.1:{self._port}"

    async def start(self, port: int = 0) -> int:
        if self._weights is not None:
            self._maps = _map_parts(self._weights)
            if not self._maps:
                log.warning("rpc tunnel %s: model files changed; weights go in full", self.label)
                self._weights = None
        self._server = await asyncio.start_server(self._on_client, "127.0.0.1", port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        log.info("rpc tunnel to %s listening on 127.0.0.1:%d", self.label, self._port)
        return self._port

    async def aclose(self) -> None:
        """Stop listening, cut every live tunnel, unmap the model."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        for m in self._maps:
            m.close()
        self._maps = []

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections += 1
        self.stats.active += 1
        stream: RpcStream | None = None
        clean = False
        try:
            _nodelay(writer)
            stream = await self._open_stream()
            splicer = await self._preamble(stream)
            await _first_done(
                self._requests(reader, stream, splicer), self._replies(stream, writer)
            )
            clean = True
            log.debug("rpc tunnel to %s: connection ended", self.label)
        except (ProtocolError, TransportError, OSError, TimeoutError) as exc:
            message = str(exc) or type(exc).__name__
            self.stats.last_error = message
            log.warning("rpc tunnel to %s closed: %s", self.label, message)
        except Exception as exc:  # root of a connection task: log, never leak
            self.stats.last_error = f"internal error: {exc!r}"
            log.exception("rpc tunnel to %s failed", self.label)
        finally:
            self.stats.active -= 1
            self._tasks.discard(task)
            await _close_stream(stream, clean)
            await _close_writer(writer)

    async def _preamble(self, stream: RpcStream) -> HostSplicer:
        weights = self._weights
        hello = encode_host_preamble(HostPreamble(weights.identity if weights else None))
        await stream.write(hello)
        self.stats.bytes_sent += len(hello)
        async with asyncio.timeout(PREAMBLE_TIMEOUT_S):
            head = await stream.read_exact(WORKER_PREAMBLE_HEAD_SIZE)
            reply, count = decode_worker_preamble_head(head)
            body = await stream.read_exact(count * 20) if count else b""
        self.stats.bytes_received += len(head) + len(body)
        if reply.holding is Holding.REFUSED or reply.version != PREAMBLE_VERSION:
            raise RpcCodecError(
                f"worker speaks RPC tunnel preamble v{reply.version}, this node v{PREAMBLE_VERSION}"
            )
        extents: tuple[Extent, ...] = decode_worker_extents(body, count)
        if weights is not None:
            sizes = weights.part_sizes
            extents = tuple(e for e in extents if e.part < len(sizes) and e.end <= sizes[e.part])
        self.stats.holding = reply.holding.name.lower()
        return HostSplicer(weights, self._maps, Holdings(extents), reply.accepts_store, self.stats)

    async def _requests(
        self, reader: asyncio.StreamReader, stream: RpcStream, splicer: HostSplicer
    ) -> None:
        stats = self.stats
        while data := await reader.read(CHUNK):
            pieces = splicer.feed(data)
            if len(pieces) == 1 and type(pieces[0]) is bytes:
                await stream.write(pieces[0])
                stats.bytes_sent += len(pieces[0])
                continue
            batch: list[bytes] = []
            for piece in pieces:
                if isinstance(piece, bytes):
                    batch.append(piece)
                    continue
                if batch:
                    await self._write(stream, b"".join(batch))
                    batch = []
                await self._write_file_slice(stream, piece)
            if batch:
                await self._write(stream, b"".join(batch))

    async def _write(self, stream: RpcStream, data: bytes) -> None:
        await stream.write(data)
        self.stats.bytes_sent += len(data)

    async def _write_file_slice(self, stream: RpcStream, piece: FileSlice) -> None:
        source = self._maps[piece.part]
        end = piece.offset + piece.length
        for start in range(piece.offset, end, FILE_SLICE):
            await self._write(stream, source[start : min(end, start + FILE_SLICE)])

    async def _replies(self, stream: RpcStream, writer: asyncio.StreamWriter) -> None:
        stats = self.stats
        while data := await stream.read(CHUNK):
            writer.write(data)
            stats.bytes_received += len(data)
            await writer.drain()


def _map_parts(weights: HostWeights) -> list[mmap.mmap]:
    """Read-only maps of the model parts; [] when a part is missing or changed size."""
    maps: list[mmap.mmap] = []
    try:
        for path, size in zip(weights.parts, weights.part_sizes, strict=True):
            with path.open("rb") as fh:
                m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            maps.append(m)
            if len(m) != size:
                raise OSError(f"{path}: size changed")
    except (OSError, ValueError) as exc:
        log.warning("cannot map %s: %s", weights.parts[len(maps) - 1 : len(maps)], exc)
        for m in maps:
            m.close()
        return []
    return maps


# ----------------------------------------------------------------------------------- worker


class WeightStore(Protocol):
    """The worker's store of model bytes a tunnel uses (:class:`mesh_llm.models.RpcStore`):
    blocking, thread-safe methods, called through ``asyncio.to_thread`` where they write."""

    @property
    def enabled(self) -> bool: ...

    def holdings(self, identity: str) -> tuple[Extent, ...]: ...

    def part_path(self, identity: str, part: int) -> Path: ...

    def pin(self, identity: str) -> None: ...

    def unpin(self, identity: str) -> None: ...

    def reserve(self, identity: str, length: int) -> bool: ...

    def release(self, identity: str, length: int) -> None: ...

    def write(self, identity: str, part: int, offset: int, data: bytes) -> None: ...

    def commit(self, identity: str, part: int, offset: int, length: int) -> None: ...

    def flush(self, identity: str) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkerSources:
    """Where a worker finds model bytes: its own GGUFs (identity hex -> parts) and its store."""

    files: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)
    store: WeightStore | None = None


async def serve_rpc_tunnel(
    stream: RpcStream,
    rpc_port: int,
    sources: WorkerSources,
    *,
    stats: RpcTunnelStats | None = None,
    label: str = "",
) -> None:
    """Serve one inbound 0x02 stream (type byte already read) until either side ends.

    Never raises for network trouble or bad bytes: it logs, closes both sides and returns.
    """
    stats = stats if stats is not None else RpcTunnelStats()
    stats.connections += 1
    stats.active += 1
    tunnel = _WorkerTunnel(stream, sources, stats, label)
    clean = False
    try:
        await tunnel.run(rpc_port)
        clean = True
        log.debug("rpc tunnel from %s: connection ended", label)
    except (ProtocolError, TransportError, OSError, TimeoutError) as exc:
        message = str(exc) or type(exc).__name__
        stats.last_error = message
        log.warning("rpc tunnel from %s closed: %s", label, message)
    finally:
        stats.active -= 1
        await tunnel.close(clean)


class _WorkerTunnel:
    def __init__(
        self, stream: RpcStream, sources: WorkerSources, stats: RpcTunnelStats, label: str
    ) -> None:
        self.stream = stream
        self.sources = sources
        self.stats = stats
        self.label = label
        self.writer: asyncio.StreamWriter | None = None
        self.identity = ""
        self.from_store = False
        self.pinned = False
        self.files: dict[int, IO[bytes]] = {}
        self.local_parts: tuple[Path, ...] = ()
        self.store_open: tuple[int, int, int] | None = None  # part, offset, reserved length
        self.store_buf = bytearray()
        self.store_buf_at = 0
        self.unflushed = 0

    async def run(self, rpc_port: int) -> None:
        async with asyncio.timeout(PREAMBLE_TIMEOUT_S):
            raw = await self.stream.read_exact(HOST_PREAMBLE_SIZE)
        self.stats.bytes_received += len(raw)
        preamble = decode_host_preamble(raw)
        if preamble.version != PREAMBLE_VERSION:
            refusal = encode_worker_preamble(WorkerPreamble(Holding.REFUSED))
            await self.stream.write(refusal)
            raise RpcCodecError(
                f"host speaks RPC tunnel preamble v{preamble.version}, "
                f"this node v{PREAMBLE_VERSION}"
            )
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, self.writer = await asyncio.open_connection("127.0.0.1", rpc_port)
        _nodelay(self.writer)
        reply = self._holding(preamble.identity)
        encoded = encode_worker_preamble(reply)
        await self.stream.write(encoded)
        self.stats.bytes_sent += len(encoded)
        self.stats.holding = reply.holding.name.lower()
        splicer = WorkerSplicer(Holdings(reply.extents), self.stats)
        await _first_done(self._requests(splicer), self._replies(reader))

    def _holding(self, identity: bytes | None) -> WorkerPreamble:
        if identity is None:
            return WorkerPreamble(Holding.NONE)
        self.identity = identity.hex()
        parts = self.sources.files.get(self.identity)
        if parts:
            try:
                sizes = [p.stat().st_size for p in parts]
            except OSError as exc:
                log.warning("rpc tunnel: local model file unreadable: %s", exc)
            else:
                self.local_parts = parts
                extents = tuple(Extent(i, 0, size) for i, size in enumerate(sizes))
                return WorkerPreamble(Holding.FILE, False, extents)
        store = self.sources.store
        if store is None or not store.enabled:
            return WorkerPreamble(Holding.NONE)
        store.pin(self.identity)
        self.pinned = True
        self.from_store = True
        extents = store.holdings(self.identity)
        return WorkerPreamble(Holding.STORE if extents else Holding.NONE, True, extents)

    def _file(self, part: int) -> IO[bytes]:
        fh = self.files.get(part)
        if fh is None:
            if self.from_store:
                assert self.sources.store is not None
                path = self.sources.store.part_path(self.identity, part)
            else:
                path = self.local_parts[part]
            fh = self.files[part] = path.open("rb")
        return fh

    async def _requests(self, splicer: WorkerSplicer) -> None:
        writer = self.writer
        assert writer is not None
        loop = asyncio.get_running_loop()
        while data := await self.stream.read(CHUNK):
            self.stats.bytes_received += len(data)
            for item in splicer.feed(data):
                match item:
                    case bytes():
                        writer.write(item)
                    case ReadRef(part, offset, length):
                        await writer.drain()
                        if writer.transport.is_closing():
                            raise ConnectionResetError("rpc-server connection closed")
                        sent = await loop.sendfile(
                            writer.transport, self._file(part), offset, length
                        )
                        if sent != length:  # the file shrank under us: the stream is lost
                            raise OSError(f"local model part {part} ended at {offset + sent}")
                    case StoreChunk(_, _, chunk):
                        writer.write(chunk)
                        if self.store_open is not None:
                            await self._store_add(chunk)
                    case StoreBegin(part, offset, length):
                        store = self.sources.store
                        if (
                            self.pinned
                            and store is not None
                            and await asyncio.to_thread(store.reserve, self.identity, length)
                        ):
                            self.store_open = (part, offset, length)
                            self.store_buf_at = offset
                    case StoreDone():
                        await self._store_done()
            await writer.drain()

    async def _store_add(self, chunk: bytes) -> None:
        self.store_buf += chunk
        if len(self.store_buf) >= STORE_BATCH:
            await self._store_write()

    async def _store_write(self) -> None:
        store, open_ = self.sources.store, self.store_open
        if not self.store_buf or store is None or open_ is None:
            return
        data = bytes(self.store_buf)
        self.store_buf.clear()
        try:
            await asyncio.to_thread(store.write, self.identity, open_[0], self.store_buf_at, data)
        except OSError as exc:  # disk full, read-only cache: keep serving, stop storing
            log.warning("rpc store: cannot store for %s: %s", self.label, exc)
            store.release(self.identity, open_[2])
            self.store_open = None
            return
        self.store_buf_at += len(data)

    async def _store_done(self) -> None:
        store, open_ = self.sources.store, self.store_open
        if store is None or open_ is None:
            return
        await self._store_write()
        if self.store_open is None:
            return
        part, offset, length = open_
        store.commit(self.identity, part, offset, length)
        self.store_open = None
        self.unflushed += length
        if self.unflushed >= STORE_FLUSH_EVERY:
            self.unflushed = 0
            await asyncio.to_thread(store.flush, self.identity)

    async def _replies(self, reader: asyncio.StreamReader) -> None:
        while data := await reader.read(CHUNK):
            await self.stream.write(data)
            self.stats.bytes_sent += len(data)

    async def close(self, clean: bool) -> None:
        await _close_stream(self.stream, clean)
        await _close_writer(self.writer)
        for fh in self.files.values():
            fh.close()
        store = self.sources.store
        if store is not None and self.pinned:
            if self.store_open is not None:
                store.release(self.identity, self.store_open[2])
                self.store_open = None
            try:
                if self.identity:
                    await asyncio.to_thread(store.flush, self.identity)
            except OSError as exc:
                log.warning("rpc store: cannot persist %s: %s", self.identity[:12], exc)
            finally:
                store.unpin(self.identity)
