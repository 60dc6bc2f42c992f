"""Thin asyncio adapter over the iroh bindings: endpoints, connections, bidirectional streams.

Everything iroh-specific stops here. Callers see :class:`Transport`, :class:`Conn` and
:class:`BiStream`; every failure of the bindings surfaces as :class:`TransportError` (or
:class:`PortInUseError` for a taken UDP port), raised ``from`` the original ``IrohError``.

Binding never waits on the network: the endpoint uses iroh's minimal preset (no DNS/pkarr
discovery, nothing published) with an explicit relay map, and ``bind`` returns as soon as the UDP
sockets are open. :meth:`Transport.wait_relay` is the separate, optional wait for a home relay.

Liveness: the bindings expose no keep-alive or idle-timeout setting. iroh keeps idle connections
alive itself (a QUIC ping about every 5 s) and closes a connection whose peer went silent after
its 30 s idle timeout; a peer that closes gracefully is noticed at once. To notice a silent peer
sooner, :meth:`Conn.probe` sends an empty QUIC datagram (ACK-eliciting; peers ACK it within their
ack delay even if their application never reads datagrams) and reports whether any packet came
back within the timeout.

Timeouts are the caller's: wrap calls in ``asyncio.timeout()``. A read cancelled mid-way may lose
the bytes it had consumed, so a stream whose read timed out must be discarded.

Fast path: unless switched off (``Transport.bind(patch_bindings=False)``, which a node does
when its configuration says so: ``MESH_LLM_IROH_FAST=0``, read by the CLI), binding an endpoint
first replaces the bindings' byte-by-byte write copy (:mod:`._iroh_patch`) and their async
driver (:mod:`._iroh_async`), each only if the installed bindings still have the code it
replaces. Both are optional: without them every call goes through the bindings' generated code,
and the blocking calls of relay threads run as tasks on the stream's event loop
instead (slower, same results).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from iroh import iroh_ffi as iroh

from mesh_llm.errors import ConfigError, PortInUseError, TransportError
from mesh_llm.network.transport import _iroh_async as iroh_async
from mesh_llm.network.transport import _iroh_direct as iroh_direct
from mesh_llm.network.transport import _iroh_patch as iroh_patch
from mesh_llm.protocol.streams import ALPN
from mesh_llm.protocol.token import EndpointAddrInfo, InvalidTokenError, PeerId

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_RELAY_URLS",
    "MAX_CONCURRENT_BI_STREAMS",
    "BiStream",
    "Conn",
    "Transport",
    "generate_key",
    "load_or_create_key",
]

log = logging.getLogger(__name__)

DEFAULT_RELAY_URLS: Final = (
    "https://usw1-2.relay.michaelneale.mesh-llm.iroh.link./",
    "https://mesh-llm-relay.fly.dev./",
)
"""mesh-llm's own relays (stock iroh-relay); ``--relay`` replaces them."""

MAX_CONCURRENT_BI_STREAMS: Final = 1024
DEFAULT_CONNECT_TIMEOUT: Final = 15.0
HANDSHAKE_TIMEOUT: Final = 10.0
"""Longest an inbound handshake may take before :meth:`Transport.accept` gives up on it."""

_PROBE_POLL_INTERVAL: Final = 0.01
_KEY_BYTES: Final = 32


# --------------------------------------------------------------------------------------------
# Keys


def generate_key() -> bytes:
    """A fresh Ed25519 secret key (32 random bytes)."""
    return secrets.token_bytes(_KEY_BYTES)


def load_or_create_key(path: Path) -> bytes:
    """Read the node key from ``path`` (64 hex chars), creating it with mode 0600 if absent."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return _create_key_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read node key {path}: {exc}") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise ConfigError(f"node key {path} is not hex") from exc
    if len(key) != _KEY_BYTES or len(text) != 2 * _KEY_BYTES:
        raise ConfigError(f"node key {path} must hold {2 * _KEY_BYTES} hex chars")
    with contextlib.suppress(OSError):
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
    return key


def _create_key_file(path: Path) -> bytes:
    key = generate_key()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key.hex() + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(f"cannot create node key {path}: {exc}") from exc
    return key


# --------------------------------------------------------------------------------------------
# Error translation


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn errors from the bindings into :class:`TransportError`."""
    try:
        yield
    except (iroh.IrohError, iroh.InternalError) as exc:
        raise TransportError(f"{what}: {iroh_direct.describe_error(exc)}") from exc
    except iroh_async.BlockingCallCancelledError:
        raise TransportError(f"{what}: cancelled") from None
    except iroh_async.BlockingCallTimeoutError:
        raise TimeoutError(f"{what}: timed out") from None


# --------------------------------------------------------------------------------------------
# Streams


class BiStream:
    """One QUIC bidirectional stream: a send half and a receive half.

    ``read`` returns at most ``n`` bytes and ``b""`` at end of stream; ``read_exact`` and
    ``read_to_end`` are bounded by their argument. Use as ``async with`` to close on exit.
    Created on an event loop, which serves the blocking calls when the fast path is off.
    """

    __slots__ = ("_eof", "_finished", "_leftover", "_loop", "_pending_read", "_recv", "_send")

    def __init__(self, raw: Any) -> None:
        self._send = raw.send()
        self._recv = raw.recv()
        self._loop = asyncio.get_running_loop()
        self._pending_read: iroh_async.LoopCall[bytes] | None = None  # see _read_on_loop
        self._leftover = b""
        self._finished = False
        self._eof = False

    async def write(self, data: bytes) -> None:
        """Write all of ``data`` (waits for flow-control credit)."""
        with _translated("stream write"):
            await self._send.write_all(data)

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes as they arrive; ``b""`` once the peer has finished."""
        if n <= 0:
            raise ValueError("read size must be positive")
        with _translated("stream read"):
            if self._pending_read is not None or self._leftover:  # a relay thread gave up
                data = await self._take_read(n)
            else:
                data = await self._recv.read(n)
        if not data:
            self._eof = True
        return data

    def write_blocking(self, data: bytes, cancel: threading.Event | None = None) -> None:
        """:meth:`write` for a thread without an event loop (a relay thread); setting ``cancel``
        gives up a write that waits for flow-control credit."""
        with _translated("stream write"):
            if iroh_direct.available():
                iroh_direct.write_all(self._send, data, cancel)
            elif iroh_async.is_installed():
                iroh_async.run_blocking(self._send.write_all(data), cancel)
            else:
                iroh_async.run_on_loop(self._loop, lambda: self._send.write_all(data), cancel)

    def read_blocking(
        self, n: int, cancel: threading.Event | None = None, timeout: float | None = None
    ) -> bytes:
        """:meth:`read` for a thread without an event loop; setting ``cancel`` gives it up
        (:class:`TransportError`), so does ``timeout`` seconds without data (``TimeoutError``,
        nothing read: the bytes come with the next read)."""
        if n <= 0:
            raise ValueError("read size must be positive")
        with _translated("stream read"):
            if iroh_direct.available():
                data = iroh_direct.read(self._recv, n, cancel, timeout)
            elif iroh_async.is_installed():
                data = iroh_async.run_blocking(self._recv.read(n), cancel, timeout)
            else:
                data = self._read_on_loop(n, cancel, timeout)
        if not data:
            self._eof = True
        return data

    def _read_on_loop(self, n: int, cancel: threading.Event | None, timeout: float | None) -> bytes:
        """:meth:`read_blocking` through the bindings' own driver: the read runs on the loop. A
        read given up stays pending, and the next read returns its bytes (a READY read cancelled
        before it resumes would lose them)."""
        if self._leftover:
            data, self._leftover = self._leftover[:n], self._leftover[n:]
            return data
        if self._pending_read is None:
            self._pending_read = iroh_async.LoopCall(self._loop, lambda: self._recv.read(n))
        pending = self._pending_read
        try:
            data = pending.wait(cancel, timeout)
        except (iroh_async.BlockingCallCancelledError, iroh_async.BlockingCallTimeoutError):
            raise
        except BaseException:
            self._pending_read = None
            raise
        self._pending_read = None
        return self._keep_rest(data, n)

    async def _take_read(self, n: int) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover[:n], self._leftover[n:]
            return data
        pending = self._pending_read
        assert pending is not None
        try:
            data = await pending.result()
        finally:
            self._pending_read = None
        return self._keep_rest(data, n)

    def _keep_rest(self, data: bytes, n: int) -> bytes:
        if len(data) > n:  # the pending read asked for more than this one
            self._leftover = data[n:]
            return data[:n]
        return data

    def send_handle(self) -> int:
        """The send half's uniffi handle, for a loop that writes through
        :func:`~mesh_llm.network.transport.ffi_streams` (like :meth:`write_blocking`); valid
        while this stream lives."""
        handle: int = self._send._handle
        return handle

    def recv_handle(self) -> int:
        """The receive half's uniffi handle, for a loop that reads through
        :func:`~mesh_llm.network.transport.ffi_streams` (like :meth:`read_blocking`)."""
        handle: int = self._recv._handle
        return handle

    def native_source(self) -> tuple[int, None]:
        """:meth:`recv_handle`, uncounted (a relay source, see ``relay.BlockingSource``)."""
        return self.recv_handle(), None

    async def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes; :class:`TransportError` if the stream ends first."""
        if n < 0:
            raise ValueError("read size must not be negative")
        if n == 0:
            return b""
        with _translated("stream read_exact"):
            head = b""
            if self._pending_read is not None or self._leftover:  # a relay thread gave up
                head = await self._take_read(n)
                if not head:
                    raise TransportError("stream read_exact: the stream ended first")
            data: bytes = head
            if len(head) < n:
                data += await self._recv.read_exact(n - len(head))
        return data

    async def read_to_end(self, limit: int) -> bytes:
        """Everything up to end of stream; :class:`TransportError` if more than ``limit``."""
        with _translated("stream read_to_end"):
            data: bytes = await self._recv.read_to_end(limit)
        self._eof = True
        return data

    async def finish(self) -> None:
        """Signal end of data on the send half. Idempotent."""
        if self._finished:
            return
        self._finished = True
        with _translated("stream finish"):
            await self._send.finish()

    async def reset(self, code: int = 0) -> None:
        """Abandon the send half; the peer's reads fail with ``code``."""
        self._finished = True
        with _translated("stream reset"):
            await self._send.reset(code)

    async def stop(self, code: int = 0) -> None:
        """Ask the peer to stop sending; its writes fail with ``code``."""
        self._eof = True
        with _translated("stream stop"):
            await self._recv.stop(code)

    async def aclose(self) -> None:
        """Finish the send half and stop the receive half, ignoring an already-dead stream."""
        if self._pending_read is not None:
            self._pending_read.cancel()
            self._pending_read = None
        with contextlib.suppress(TransportError):
            await self.finish()
        if not self._eof:
            with contextlib.suppress(TransportError):
                await self.stop(0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# --------------------------------------------------------------------------------------------
# Connections


class Conn:
    """A QUIC connection to one peer, authenticated by its key."""

    __slots__ = ("_raw", "remote_id")

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        with _translated("connection remote_id"):
            self.remote_id: str = str(raw.remote_id())
        """The peer's endpoint id (64 lowercase hex), as proven by the TLS handshake."""

    @property
    def remote_id_bytes(self) -> PeerId:
        return PeerId(bytes.fromhex(self.remote_id))

    @property
    def close_reason(self) -> str | None:
        """Why the connection closed, or None while it is open."""
        reason: str | None = self._raw.close_reason()
        return reason

    @property
    def is_closed(self) -> bool:
        return self.close_reason is not None

    async def open_bi(self) -> BiStream:
        with _translated(f"open_bi to {self.remote_id[:10]}"):
            raw = await self._raw.open_bi()
        return BiStream(raw)

    async def accept_bi(self) -> BiStream:
        """The next stream the peer opens; :class:`TransportError` once the connection closes."""
        with _translated(f"accept_bi from {self.remote_id[:10]}"):
            raw = await self._raw.accept_bi()
        return BiStream(raw)

    def rtt_ms(self) -> float | None:
        """iroh's RTT estimate on the selected path (whole milliseconds), None if no path."""
        with _translated("rtt"):
            rtt = self._raw.rtt()
        return None if rtt is None else float(rtt)

    def close(self, code: int = 0, reason: bytes | str = b"") -> None:
        """Close now with an application error code; the peer's ``closed()`` reports it."""
        data = reason.encode() if isinstance(reason, str) else reason
        with _translated("close"):
            self._raw.close(code, data)

    async def closed(self) -> str:
        """Wait until the connection is closed; returns the reason."""
        with _translated("closed"):
            reason: str = await self._raw.closed()
        return reason

    async def probe(self, timeout: float) -> bool:  # noqa: ASYNC109 - expiry is the answer
        """Whether the peer answers at the QUIC level within ``timeout`` seconds.

        Sends one empty datagram (which the peer's QUIC stack acknowledges) and watches the
        connection's received-packet counter. Returns False if nothing arrives in time or the
        connection is closed. Raises :class:`TransportError` if the peer does not accept
        datagrams.
        """
        if self.is_closed:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with _translated("probe"):
            before = self._raw.stats().udp_rx_datagrams
            self._raw.send_datagram(b"")
        while loop.time() < deadline:
            await asyncio.sleep(_PROBE_POLL_INTERVAL)
            if self.is_closed:
                return False
            with _translated("probe"):
                if self._raw.stats().udp_rx_datagrams != before:
                    return True
        return False


# --------------------------------------------------------------------------------------------
# Endpoint


def _bind_addr(bind_ip: str | None, bind_port: int | None) -> str | None:
    if bind_ip is None and bind_port is None:
        return None
    port = bind_port or 0
    if not 0 <= port <= 0xFFFF:
        raise ConfigError(f"bind port {port} out of range")
    ip = bind_ip or "0.0.0.0"
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class Transport:
    """An iroh endpoint speaking the mesh ALPN. Create with :meth:`bind`."""

    __slots__ = ("_endpoint", "_node_id")

    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint
        self._node_id = str(endpoint.id())

    @classmethod
    async def bind(
        cls,
        secret_key: bytes | None = None,
        *,
        relay_urls: list[str] | None = None,
        no_relay: bool = False,
        bind_ip: str | None = None,
        bind_port: int | None = None,
        patch_bindings: bool = True,
    ) -> Transport:
        """Open the UDP sockets and return at once, without waiting for relays or the internet.

        ``secret_key``: 32 bytes, or None for a fresh identity. ``relay_urls``: the relay map
        (None means :data:`DEFAULT_RELAY_URLS`); ``no_relay`` or an empty list disables relays.
        ``bind_ip``/``bind_port``: the local address (default: all interfaces, ephemeral port;
        a port alone binds ``0.0.0.0:port``). iroh additionally binds the other address family
        on an ephemeral port. ``patch_bindings`` applies :mod:`._iroh_patch` and
        :mod:`._iroh_async` first (the fast path; each only if it recognises the bindings).
        """
        if secret_key is not None and len(secret_key) != _KEY_BYTES:
            raise ConfigError(f"secret key must be {_KEY_BYTES} bytes")
        if patch_bindings:
            iroh_patch.apply()
            iroh_async.install()
        urls = list(DEFAULT_RELAY_URLS if relay_urls is None else relay_urls)
        addr = _bind_addr(bind_ip, bind_port)
        with _translated("endpoint configuration"):
            builder = iroh.EndpointBuilder()
            builder.apply_minimal()
            if no_relay or not urls:
                builder.relay_mode(iroh.RelayMode.disabled())
            else:
                builder.relay_mode(iroh.RelayMode.custom_from_urls(urls))
            builder.alpns([ALPN])
            if addr is not None:
                builder.bind_addr(addr)
            if secret_key is not None:
                builder.secret_key(secret_key)
        try:
            endpoint = await builder.bind()
        except iroh.IrohError as exc:
            detail = _debug_message(exc)
            if "Address already in use" in detail:
                raise PortInUseError(f"UDP address {addr} is already in use") from exc
            raise TransportError(f"endpoint bind: {iroh_direct.describe_error(exc)}") from exc
        transport = cls(endpoint)
        log.debug("bound endpoint %s on %s", transport.node_id[:10], transport.bound_sockets())
        return transport

    @property
    def node_id(self) -> str:
        """This node's endpoint id, 64 lowercase hex chars."""
        return self._node_id

    @property
    def node_id_bytes(self) -> PeerId:
        return PeerId(bytes.fromhex(self._node_id))

    @property
    def secret_key(self) -> bytes:
        with _translated("secret_key"):
            key: bytes = self._endpoint.secret_key().to_bytes()
        return key

    def bound_sockets(self) -> list[str]:
        with _translated("bound_sockets"):
            sockets: list[str] = self._endpoint.bound_sockets()
        return sockets

    def addr(self) -> EndpointAddrInfo:
        """Where peers can reach us now: direct addresses and the home relay once known."""
        with _translated("addr"):
            raw = self._endpoint.addr()
            relay: str | None = raw.relay_url()
            direct: list[str] = raw.direct_addresses()
        ips: list[str] = []
        for text in direct:
            try:
                EndpointAddrInfo.create(self._node_id, (), (text,))
            except InvalidTokenError:
                log.debug("skipping unusable local address %r", text)
                continue
            ips.append(text)
        return EndpointAddrInfo.create(self._node_id, [relay] if relay else [], ips)

    async def wait_relay(self, timeout: float) -> bool:  # noqa: ASYNC109 - expiry is the answer
        """Wait up to ``timeout`` seconds for a home relay; True if one is connected."""
        try:
            async with asyncio.timeout(timeout):
                with _translated("online"):
                    await self._endpoint.online()
        except TimeoutError:
            return False
        return True

    async def connect(
        self,
        addr: EndpointAddrInfo,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,  # noqa: ASYNC109 - becomes a TransportError
    ) -> Conn:
        """Dial ``addr`` over its relay and/or direct addresses and complete the handshake."""
        if addr.id_hex == self._node_id:
            raise TransportError("refusing to connect to ourselves")
        short = addr.id_hex[:10]
        try:
            async with asyncio.timeout(timeout):
                with _translated(f"connect to {short}"):
                    target = iroh.EndpointAddr(
                        iroh.EndpointId.from_bytes(addr.id_bytes),
                        addr.relay_urls[0] if addr.relay_urls else None,
                        list(addr.ip_addrs),
                    )
                    raw = await self._endpoint.connect(target, ALPN)
        except TimeoutError as exc:
            raise TransportError(f"connect to {short} timed out after {timeout:g}s") from exc
        conn = _accepted(raw)
        if conn.remote_id != addr.id_hex:  # iroh authenticates the key; this is a safety net
            conn.close(1, b"unexpected peer")
            raise TransportError(f"connected to {conn.remote_id[:10]}, expected {short}")
        return conn

    async def accept(self) -> Conn:
        """The next inbound connection that completes its handshake.

        Failed or slow (over :data:`HANDSHAKE_TIMEOUT`) handshakes are skipped. Raises
        :class:`TransportError` once the endpoint is closed.
        """
        while True:
            with _translated("accept"):
                incoming = await self._endpoint.accept_next()
            if incoming is None:
                raise TransportError("endpoint closed")
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                    accepting = await incoming.accept()
                    raw = await accepting.connect()
            except (iroh.IrohError, iroh.InternalError, TimeoutError) as exc:
                log.debug("inbound handshake failed: %s", iroh_direct.describe_error(exc))
                continue
            return _accepted(raw)

    async def close(self) -> None:
        """Close every connection (peers see a graceful close) and release the sockets."""
        with _translated("endpoint close"):
            await self._endpoint.close()

    @property
    def is_closed(self) -> bool:
        closed: bool = self._endpoint.is_closed()
        return closed


def _accepted(raw: Any) -> Conn:
    with _translated("set_max_concurrent_bi_streams"):
        raw.set_max_concurrent_bi_streams(MAX_CONCURRENT_BI_STREAMS)
    return Conn(raw)


def _debug_message(exc: Any) -> str:
    try:
        return str(exc.debug_message())
    except Exception:  # noqa: BLE001 - best-effort detail for classifying the error
        return ""
