"""The asyncio adapter that runs the membership core over the iroh transport.

It owns connections and streams; every decision comes from :class:`~mesh_llm.mesh.Membership`,
whose actions it performs and whose inputs it feeds (with ``now`` from a monotonic clock).

Per connection, accepted streams are handled each in its own task (a stalled stream never blocks
the connection's other streams, unlike the original's sequential dispatcher). Before a peer has
gossiped over its own connection, only GOSSIP (0x01) and ROUTE_REQUEST (0x05) are served.

In a private mesh (a mesh key), a connection counts for nothing until the admission handshake
(:mod:`mesh_llm.protocol.admission`) succeeds on it: the membership core hears of it only then,
nothing is sent on it before, and any other stream the remote opens first gets the connection
closed with a refusal that the remote reads back (docs/DESIGN.md, "Private meshes").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from mesh_llm.errors import ProtocolError, TransportError
from mesh_llm.mesh.actions import (
    Action,
    BroadcastPeerDown,
    CheckReachable,
    CloseConnection,
    Connect,
    MeshIdAdopted,
    PeersChanged,
    Probe,
    SendGossip,
)
from mesh_llm.mesh.membership import Membership
from mesh_llm.network import BiStream, Conn, PeerTraffic, Transport, TunnelStream
from mesh_llm.protocol import (
    MAX_CONTROL_FRAME_BYTES,
    PRE_ADMISSION_STREAM_TYPES,
    REFUSED_CODE,
    AdmitAnswer,
    AdmitRequest,
    EndpointAddrInfo,
    PeerDown,
    PeerId,
    PeerLeaving,
    Refusal,
    StreamType,
    acceptor_proof,
    decode_admit_answer,
    decode_admit_request,
    decode_gossip_frame,
    decode_peer_down,
    decode_peer_leaving,
    decode_route_table_request,
    dialer_proof,
    encode_admit_answer,
    encode_admit_request,
    encode_frame,
    encode_gossip_frame,
    encode_peer_down,
    encode_peer_leaving,
    encode_reply,
    encode_route_table,
    parse_frame_length,
    refusal_from_close_reason,
    verify_acceptor,
    verify_dialer,
)

__all__ = ["MeshService"]

log = logging.getLogger(__name__)

MAX_STREAM_TASKS_PER_CONN = 1024
MAX_WARNED_REFUSALS = 1024
REFUSAL_READ_S = 1.0
"""How long a failed handshake waits for the connection's close (which carries a refusal)."""


def _short(peer_id: PeerId) -> str:
    return peer_id[:5].hex()


@dataclass(slots=True)
class _ConnState:
    conn: Conn
    inbound: bool
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    up: bool = False
    """The membership core knows this connection (private mesh: it passed admission)."""
    admitted: asyncio.Event = field(default_factory=asyncio.Event)


async def _read_frame(stream: BiStream) -> bytes:
    header = await stream.read_exact(4)
    length = parse_frame_length(header, MAX_CONTROL_FRAME_BYTES)
    return await stream.read_exact(length)


class MeshService:
    """Runs one node's mesh membership: accept, dial, gossip, probe, tunnels."""

    def __init__(
        self,
        transport: Transport,
        membership: Membership,
        *,
        serve_http: Callable[[BiStream, PeerTraffic], Coroutine[Any, Any, None]] | None,
        on_change: Callable[[], None],
        on_mesh_id: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        mesh_key: bytes | None = None,
    ) -> None:
        self.transport = transport
        self.membership = membership
        self._serve_http = serve_http
        self._on_change = on_change
        self._on_mesh_id = on_mesh_id or (lambda _mesh_id: None)
        self._clock = clock
        self._mesh_key = mesh_key
        """Private mesh: connections must pass the admission handshake (None: open mesh)."""
        self._warned: set[tuple[bytes, str]] = set()
        self._conns: dict[PeerId, _ConnState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._closing = False
        self.traffic: dict[PeerId, PeerTraffic] = {}
        self.rpc_handler: Callable[[PeerId, BiStream], Coroutine[Any, Any, None]] | None = None
        """Serves inbound RPC tunnels (0x02) from admitted peers; None: they are refused."""

    # ------------------------------------------------------------------------------ lifecycle

    def _spawn(
        self, coro: Coroutine[Any, Any, None], owner: set[asyncio.Task[None]] | None = None
    ) -> None:
        tasks = self._tasks if owner is None else owner
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def run(self) -> None:
        """Accept connections and drive the core's timers until cancelled."""
        self._spawn(self._accept_loop())
        try:
            await self._timer_loop()
        finally:
            for task in list(self._tasks):
                task.cancel()

    def apply(self, actions: list[Action]) -> None:
        """Perform actions the core returned (also used by the runtime after its own inputs)."""
        for action in actions:
            match action:
                case SendGossip(peer_id=peer, discover=discover):
                    self._spawn(self._gossip(peer, discover))
                case Connect(addr=addr, timeout=timeout):
                    self._spawn(self._connect(addr, timeout))
                case CloseConnection(peer_id=peer):
                    self._close_peer(peer)
                case BroadcastPeerDown(peer_id=peer):
                    self._spawn(self._broadcast_peer_down(peer))
                case CheckReachable(peer_id=peer, timeout=timeout):
                    self._spawn(self._check_reachable(peer, timeout))
                case Probe(peer_id=peer):
                    self._spawn(self._probe(peer))
                case PeersChanged():
                    self._on_change()
                case MeshIdAdopted(mesh_id=mesh_id):
                    self._on_mesh_id(mesh_id)
        self._wake.set()

    def join(self, addr: EndpointAddrInfo) -> None:
        self.apply(self.membership.join(addr, self._clock()))

    def merge(self, addr: EndpointAddrInfo) -> None:
        """Join ``addr``'s mesh and take its mesh id (:meth:`Membership.merge`)."""
        self.apply(self.membership.merge(addr, self._clock()))

    async def leave(self) -> None:
        """Tell every peer we are leaving (PeerLeaving), then give the frames time to flush."""
        self._closing = True
        own = self.transport.node_id_bytes
        frame = encode_frame(StreamType.PEER_LEAVING, encode_peer_leaving(PeerLeaving(own)))
        sends = [self._send_oneway(state.conn, frame) for state in list(self._conns.values())]
        if sends:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.membership.timing.leave_send_timeout):
                    await asyncio.gather(*sends, return_exceptions=True)
            await asyncio.sleep(self.membership.timing.leave_flush)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for state in list(self._conns.values()):
            with contextlib.suppress(TransportError):
                state.conn.close(0, b"shutdown")
            for task in list(state.tasks):
                task.cancel()
        self._conns.clear()

    async def _timer_loop(self) -> None:
        while True:
            now = self._clock()
            delay = max(0.0, min(self.membership.next_deadline() - now, 1.0))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self.apply(self.membership.tick(self._clock()))

    # ---------------------------------------------------------------------------- connections

    async def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn = await self.transport.accept()
            except TransportError as exc:
                if self.transport.is_closed:
                    return
                log.debug("accept failed: %s", exc)
                continue
            self._register(conn, inbound=True)

    def _register(self, conn: Conn, *, inbound: bool) -> None:
        peer = conn.remote_id_bytes
        if peer == self.transport.node_id_bytes:
            conn.close(0, b"self")
            return
        old = self._conns.get(peer)
        state = _ConnState(conn, inbound)
        self._conns[peer] = state
        if old is not None and old.conn is not conn:
            # Keep only the newest connection; cleanup is keyed by connection, so the old one's
            # death never evicts this one.
            with contextlib.suppress(TransportError):
                old.conn.close(0, b"replaced")
        self.traffic.setdefault(peer, PeerTraffic())
        self._spawn(self._serve(state))
        if self._mesh_key is None:
            self._up(state)
        elif inbound:
            self._spawn(self._admission_deadline(state))
        else:
            self._spawn(self._admit_outbound(state, self._mesh_key))

    def _up(self, state: _ConnState) -> None:
        """Hand the connection to the membership core (open mesh: at once; private: admitted)."""
        state.up = True
        state.admitted.set()
        peer = state.conn.remote_id_bytes
        self.apply(self.membership.connection_up(peer, state.inbound, self._clock()))

    async def _serve(self, state: _ConnState) -> None:
        conn = state.conn
        peer = conn.remote_id_bytes
        try:
            while True:
                stream = await conn.accept_bi()
                if len(state.tasks) >= MAX_STREAM_TASKS_PER_CONN:
                    await stream.aclose()
                    continue
                self._spawn(self._handle_stream(state, stream), state.tasks)
        except TransportError:
            pass
        finally:
            for task in list(state.tasks):
                task.cancel()
            if self._conns.get(peer) is state:
                del self._conns[peer]
                if not self._closing and state.up:
                    self.apply(self.membership.connection_lost(peer, self._clock()))

    def _close_peer(self, peer: PeerId) -> None:
        state = self._conns.get(peer)
        if state is not None:
            with contextlib.suppress(TransportError):
                state.conn.close(0, b"closed by membership")

    async def _connect(self, addr: EndpointAddrInfo, limit_s: float) -> None:
        peer = addr.id_bytes
        existing = self._conns.get(peer)
        if existing is not None and existing.up and not existing.conn.is_closed:
            self.apply(self.membership.connection_up(peer, False, self._clock()))
            return
        try:
            conn = await self.transport.connect(addr, timeout=limit_s)
        except TransportError as exc:
            log.info("connect to %s failed: %s", _short(peer), exc)
            self.apply(self.membership.connect_failed(peer, self._clock(), str(exc)))
            return
        if conn.remote_id_bytes != peer:
            conn.close(0, b"unexpected id")
            why = f"the node answering is {_short(conn.remote_id_bytes)}"
            self.apply(self.membership.connect_failed(peer, self._clock(), why))
            return
        self._register(conn, inbound=False)

    # --------------------------------------------------------------------------- outbound ops

    def is_connected(self, peer: PeerId) -> bool:
        return self._conn(peer) is not None

    def _conn(self, peer: PeerId) -> Conn | None:
        state = self._conns.get(peer)
        if state is None or not state.up or state.conn.is_closed:
            return None
        return state.conn

    # ---------------------------------------------------------------------- private meshes

    def _refuse(self, state: _ConnState, refusal: Refusal, detail: str = "") -> None:
        """Close an unadmitted connection with ``refusal`` (the remote reads it back)."""
        peer = state.conn.remote_id_bytes
        level = logging.INFO if (peer, refusal) in self._warned else logging.WARNING
        if len(self._warned) >= MAX_WARNED_REFUSALS:
            self._warned.clear()  # bounded: each refused connection may bring a fresh id
        self._warned.add((peer, refusal))
        what = refusal.value.removeprefix("refused: ")
        log.log(level, "refused peer %s: %s%s", peer.hex(), what, detail)
        with contextlib.suppress(TransportError):
            state.conn.close(REFUSED_CODE, refusal.value)

    async def _refusal_of(self, conn: Conn) -> str | None:
        """The remote's refusal, if it closed the connection with one."""
        if not conn.is_closed:
            with contextlib.suppress(TransportError, TimeoutError):
                async with asyncio.timeout(REFUSAL_READ_S):
                    await conn.closed()
        return refusal_from_close_reason(conn.close_reason)

    async def _admission_deadline(self, state: _ConnState) -> None:
        """An inbound connection that opens no stream is closed after the gossip timeout."""
        await asyncio.sleep(self.membership.timing.gossip_timeout)
        if not state.up and not state.conn.is_closed:
            self._refuse(state, Refusal.SECRET_REQUIRED, " (no admission within the timeout)")

    async def _admit_outbound(self, state: _ConnState, key: bytes) -> None:
        """Dialler's side of the handshake: prove we know the key, check the acceptor's proof."""
        conn = state.conn
        peer = conn.remote_id_bytes
        own = self.transport.node_id_bytes
        nonce = os.urandom(16)
        request = AdmitRequest(nonce, dialer_proof(key, own, peer, nonce))
        try:
            async with asyncio.timeout(self.membership.timing.gossip_timeout):
                stream = await conn.open_bi()
                async with stream:
                    await stream.write(bytes([StreamType.ADMIT]) + encode_admit_request(request))
                    await stream.finish()
                    body = await _read_frame(stream)
            answer = decode_admit_answer(body)
        except (TransportError, ProtocolError, TimeoutError) as exc:
            refusal = await self._refusal_of(conn)
            why = refusal or f"admission handshake failed: {exc or type(exc).__name__}"
            log.info("admission to the mesh through %s failed: %s", _short(peer), why)
            with contextlib.suppress(TransportError):
                conn.close(REFUSED_CODE, why if refusal else Refusal.SECRET_REQUIRED.value)
            self.apply(self.membership.admission_refused(peer, self._clock(), why))
            return
        if not verify_acceptor(key, peer, own, nonce, answer):
            self._refuse(state, Refusal.BAD_ANSWER)
            reason = Refusal.BAD_ANSWER.value
            self.apply(self.membership.admission_refused(peer, self._clock(), reason))
            return
        if self._conns.get(peer) is state and not conn.is_closed:
            self._up(state)

    async def _serve_admit(self, state: _ConnState, stream: BiStream) -> None:
        """Acceptor's side: check the dialler's proof; admit (answer) or refuse (close)."""
        peer = state.conn.remote_id_bytes
        if self._mesh_key is None:
            self._refuse(state, Refusal.NOT_PRIVATE)
            return
        if state.up:
            await stream.reset(0)  # one handshake per connection
            return
        body = await self._read_frame_timed(stream)
        request = decode_admit_request(body)
        own = self.transport.node_id_bytes
        if not verify_dialer(self._mesh_key, peer, own, request):
            self._refuse(state, Refusal.WRONG_SECRET)
            return
        nonce = os.urandom(16)
        proof = acceptor_proof(self._mesh_key, own, peer, request.nonce, nonce)
        # Up before answering: the dialler sends its gossip only after reading the answer.
        self._up(state)
        await stream.write(encode_admit_answer(AdmitAnswer(nonce, proof)))
        await stream.finish()

    async def _gossip(self, peer: PeerId, discover: bool) -> None:
        conn = self._conn(peer)
        if conn is None:
            self.apply(self.membership.gossip_failed(peer, self._clock(), "no connection"))
            return
        frame_bytes = encode_gossip_frame(self.membership.gossip_frame(self._clock()))
        try:
            async with asyncio.timeout(self.membership.timing.gossip_timeout):
                stream = await conn.open_bi()
                async with stream:
                    await stream.write(encode_frame(StreamType.GOSSIP, frame_bytes))
                    await stream.finish()
                    body = await _read_frame(stream)
            reply = decode_gossip_frame(body, remote_id=peer)
        except (TransportError, ProtocolError, TimeoutError) as exc:
            refusal = await self._refusal_of(conn) if conn.is_closed else None
            if refusal is not None:
                log.info("%s did not admit this node: %s", _short(peer), refusal)
                self.apply(self.membership.admission_refused(peer, self._clock(), refusal))
                return
            why = str(exc) or type(exc).__name__
            log.info("gossip with %s failed: %s", _short(peer), why)
            self.apply(self.membership.gossip_failed(peer, self._clock(), why))
            return
        now = self._clock()
        self._record_rtt(peer, conn, now)
        self.apply(self.membership.gossip_received(peer, reply, now, discover=discover))

    def _record_rtt(self, peer: PeerId, conn: Conn, now: float) -> None:
        with contextlib.suppress(TransportError):
            rtt = conn.rtt_ms()
            if rtt is not None:
                self.apply(self.membership.probe_result(peer, True, rtt, now))

    async def _send_oneway(self, conn: Conn, frame: bytes) -> None:
        try:
            async with asyncio.timeout(self.membership.timing.oneway_send_timeout):
                stream = await conn.open_bi()
                await stream.write(frame)
                await stream.finish()
        except (TransportError, TimeoutError) as exc:
            log.debug("one-way send to %s failed: %s", conn.remote_id[:10], exc)

    async def _broadcast_peer_down(self, dead: PeerId) -> None:
        frame = encode_frame(StreamType.PEER_DOWN, encode_peer_down(PeerDown(dead)))
        sends = [
            self._send_oneway(state.conn, frame)
            for peer, state in list(self._conns.items())
            if peer != dead
        ]
        await asyncio.gather(*sends, return_exceptions=True)

    async def _probe(self, peer: PeerId) -> None:
        conn = self._conn(peer)
        ok = False
        if conn is not None:
            try:
                ok = await conn.probe(self.membership.timing.probe_timeout)
            except TransportError:
                ok = False
        rtt = None
        if ok and conn is not None:
            with contextlib.suppress(TransportError):
                rtt = conn.rtt_ms()
        self.apply(self.membership.probe_result(peer, ok, rtt, self._clock()))

    async def _check_reachable(self, peer: PeerId, limit_s: float) -> None:
        conn = self._conn(peer)
        ok = False
        if conn is not None:
            with contextlib.suppress(TransportError):
                ok = await conn.probe(limit_s)
        now = self._clock()
        if ok:
            self.apply(self.membership.probe_result(peer, True, None, now))
        else:
            self.apply(self.membership.peer_unreachable_confirmed(peer, now))

    async def open_stream(self, peer: PeerId, kind: StreamType) -> BiStream:
        """Open a stream of type ``kind`` to ``peer`` (type byte written); TransportError if not."""
        conn = self._conn(peer)
        if conn is None:
            raise TransportError(f"no connection to {_short(peer)}")
        try:
            async with asyncio.timeout(self.membership.timing.tunnel_open_timeout):
                stream = await conn.open_bi()
                await stream.write(bytes([kind]))
        except TimeoutError as exc:
            raise TransportError(f"opening a stream to {_short(peer)} timed out") from exc
        return stream

    async def open_http_tunnel(self, peer: PeerId) -> TunnelStream:
        """Open an HTTP tunnel (0x04) to ``peer``'s ingress; raises TransportError on failure."""
        stream = await self.open_stream(peer, StreamType.TUNNEL_HTTP)
        return TunnelStream(stream, self.traffic.setdefault(peer, PeerTraffic()))

    # ---------------------------------------------------------------------------- inbound ops

    async def _handle_stream(self, state: _ConnState, stream: BiStream) -> None:
        peer = state.conn.remote_id_bytes
        try:
            async with asyncio.timeout(self.membership.timing.stream_type_timeout):
                first = await stream.read_exact(1)
            kind = first[0]
            if kind == StreamType.ADMIT:
                await self._serve_admit(state, stream)
                return
            if not await self._passed_admission(state, kind):
                await stream.reset(1)
                return
            self.membership.heard_from(peer, self._clock())
            if kind not in PRE_ADMISSION_STREAM_TYPES and not self.membership.is_admitted(peer):
                log.info("stream 0x%02x from unadmitted %s refused", kind, _short(peer))
                await stream.reset(1)
                return
            match kind:
                case StreamType.GOSSIP:
                    await self._serve_gossip(peer, stream)
                case StreamType.ROUTE_REQUEST:
                    await self._serve_route_request(stream)
                case StreamType.TUNNEL_HTTP:
                    await self._serve_http_tunnel(peer, stream)
                case StreamType.TUNNEL_RPC if self.rpc_handler is not None:
                    await self.rpc_handler(peer, stream)
                case StreamType.PEER_DOWN:
                    body = await self._read_frame_timed(stream)
                    message = decode_peer_down(body)
                    self.apply(self.membership.peer_down_received(peer, message, self._clock()))
                case StreamType.PEER_LEAVING:
                    body = await self._read_frame_timed(stream)
                    leaving = decode_peer_leaving(body, remote_id=peer)
                    self.apply(self.membership.peer_leaving_received(peer, leaving, self._clock()))
                case _:
                    # 0x02 without an rpc-server, 0x03 tunnel maps, 0x08-0x0a: accepted, dropped.
                    await stream.reset(0)
        except (ProtocolError, TransportError, TimeoutError) as exc:
            log.info("stream from %s dropped: %s", _short(peer), exc or type(exc).__name__)
            with contextlib.suppress(TransportError):
                await stream.reset(2)
        except Exception:
            log.exception("stream handler from %s failed", _short(peer))
            with contextlib.suppress(TransportError):
                await stream.reset(3)

    async def _passed_admission(self, state: _ConnState, kind: int) -> bool:
        """Private mesh: whether this connection passed admission (a stream the acceptor opens
        while our own handshake's answer is still in flight waits for it)."""
        if self._mesh_key is None or state.up:
            return True
        if not state.inbound:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.membership.timing.gossip_timeout):
                    await state.admitted.wait()
            return state.up
        self._refuse(state, Refusal.SECRET_REQUIRED, f" (it opened stream 0x{kind:02x} first)")
        return False

    async def _read_frame_timed(self, stream: BiStream) -> bytes:
        async with asyncio.timeout(self.membership.timing.frame_read_timeout):
            return await _read_frame(stream)

    async def _serve_gossip(self, peer: PeerId, stream: BiStream) -> None:
        body = await self._read_frame_timed(stream)
        frame = decode_gossip_frame(body, remote_id=peer)  # invalid: no reply, peer stays out
        reply = encode_gossip_frame(self.membership.gossip_frame(self._clock()))
        await stream.write(encode_reply(reply))
        await stream.finish()
        now = self._clock()
        conn = self._conn(peer)
        if conn is not None:
            self._record_rtt(peer, conn, now)
        self.apply(self.membership.gossip_received(peer, frame, now))

    async def _serve_route_request(self, stream: BiStream) -> None:
        body = await self._read_frame_timed(stream)
        decode_route_table_request(body)
        await stream.write(encode_reply(encode_route_table(self.membership.route_table())))
        await stream.finish()

    async def _serve_http_tunnel(self, peer: PeerId, stream: BiStream) -> None:
        """An HTTP request through the mesh: served by this node's local-only ingress (so a
        tunnelled request is never forwarded again), straight from the stream."""
        if self._serve_http is None:
            await stream.reset(4)
            return
        await self._serve_http(stream, self.traffic.setdefault(peer, PeerTraffic()))
