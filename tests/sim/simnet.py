"""A deterministic in-memory network for membership cores.

N :class:`~mesh_llm.mesh.Membership` cores exchange messages through simulated QUIC connections
on a fake clock, with the adapter's duties played by :class:`SimNet`:

* ``Probe`` / ``CheckReachable``: a ping over the connection, answered by the peer's core
  (``heard_from``), reported with ``probe_result`` or, after the timeout, as a failure;
* ``SendGossip``: the frame is *encoded and decoded with the real codec*, the receiver answers
  with its own frame, both sides process;
* ``Connect``: a handshake taking one round trip when the target is alive and the link is up,
  else ``connect_failed`` after the timeout;
* ``BroadcastPeerDown``, ``CloseConnection``; and node shutdown: ``kill`` (silence; the other
  ends only notice through the QUIC idle timeout) or ``stop`` (ctrl-c: PeerLeaving to every
  connection, the 200 ms flush, then closing).

Links have a one-way latency, a relative jitter, a loss rate and an up/down state. Streams are
reliable, as in QUIC: a lost packet delays the message by a retransmission timeout instead of
dropping it. A partition (link down) drops everything. A loaded node processes its input late
(``lag``), in order, including its own timers.

Everything random draws from one seeded ``random.Random``: the same seed gives the same run.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh_llm.mesh import (
    Action,
    BroadcastPeerDown,
    ChangeReason,
    CheckReachable,
    CloseConnection,
    Connect,
    Membership,
    MeshIdAdopted,
    PeersChanged,
    Probe,
    SendGossip,
    Timing,
)
from mesh_llm.protocol.frames import (
    NodeRole,
    PeerAnnouncement,
    PeerDown,
    PeerLeaving,
    decode_gossip_frame,
    decode_peer_down,
    decode_peer_leaving,
    encode_gossip_frame,
    encode_peer_down,
    encode_peer_leaving,
    is_valid_endpoint_id,
)
from mesh_llm.protocol.token import EndpointAddrInfo

START = 1000.0
IDLE_TIMEOUT = 30.0
"""QUIC idle timeout: when the far end of a silent connection finally notices."""


def make_id(name: str) -> bytes:
    """A deterministic valid Ed25519 public key for ``name``."""
    counter = 0
    while True:
        key = hashlib.sha256(f"{name}/{counter}".encode()).digest()
        if is_valid_endpoint_id(key):
            return key
        counter += 1


@dataclass
class LinkConf:
    latency: float = 0.002
    """One-way delay in seconds."""
    jitter: float = 0.0
    """Relative: each message's delay is latency * uniform(1 - jitter, 1 + jitter)."""
    loss: float = 0.0
    """Chance that a message needs (another) retransmission."""
    up: bool = True
    generation: int = 0
    """Bumped when the link goes down, so stale idle-timeout checks can tell."""


@dataclass
class Conn:
    cid: int
    a: str
    b: str
    open_at: dict[str, bool]

    def other(self, name: str) -> str:
        return self.b if name == self.a else self.a


@dataclass
class SimNode:
    name: str
    peer_id: bytes
    addr: EndpointAddrInfo
    core: Membership
    bootstrap: tuple[str, ...]
    role: NodeRole
    models: tuple[str, ...]
    alive: bool = True
    incarnation: int = 0
    lag: Callable[[random.Random], float] | None = None
    busy_until: float = 0.0
    timer_gen: int = 0
    timer_at: float | None = None
    changes: list[tuple[float, ChangeReason, bytes]] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)

    def view(self) -> set[bytes]:
        return set(self.core.peer_ids())


class SimNet:
    def __init__(self, *, seed: int = 1, timing: Timing | None = None) -> None:
        self.timing = timing or Timing()
        self.rng = random.Random(seed)
        self.now = START
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.nodes: dict[str, SimNode] = {}
        self.by_id: dict[bytes, str] = {}
        self.links: dict[frozenset[str], LinkConf] = {}
        self.default_link = LinkConf()
        self.conns: dict[int, Conn] = {}
        self._next_cid = 0
        self.messages = 0

    # ------------------------------------------------------------------------------------------
    # Set-up

    def add_node(
        self,
        name: str,
        *,
        join: tuple[str, ...] = (),
        mesh_id: str | None = None,
        role: NodeRole = NodeRole.HOST,
        models: tuple[str, ...] = ("m",),
    ) -> SimNode:
        peer_id = make_id(name)
        index = len(self.nodes) + 1
        addr = EndpointAddrInfo.create(
            peer_id.hex(), ip_addrs=[f"10.0.{index // 250}.{index % 250}:7000"]
        )
        node = SimNode(
            name, peer_id, addr, self._new_core(peer_id, join, mesh_id), join, role, models
        )
        self.nodes[name] = node
        self.by_id[peer_id] = name
        self._start(node)
        return node

    def _new_core(self, peer_id: bytes, join: tuple[str, ...], mesh_id: str | None) -> Membership:
        bootstrap = [self.nodes[j].addr for j in join]
        return Membership(
            peer_id,
            now=self.now,
            timing=self.timing,
            rng=random.Random(self.rng.random()),
            mesh_id=mesh_id,
            bootstrap=bootstrap,
            wall_offset=1.7e9,
        )

    def _start(self, node: SimNode) -> None:
        ann = PeerAnnouncement(
            endpoint_id=node.peer_id,
            role=node.role,
            http_port=9337 if node.role is NodeRole.HOST else None,
            addr=node.addr,
            serving_models=node.models,
            hosted_models=node.models,
            hosted_models_known=True,
        )
        self._apply(node, node.core.update_self(ann, self.now))
        for j in node.bootstrap:
            self._apply(node, node.core.join(self.nodes[j].addr, self.now))
            if self.nodes[j].alive:
                break
        self._schedule_timer(node)

    def link(self, a: str, b: str) -> LinkConf:
        key = frozenset((a, b))
        if key not in self.links:
            d = self.default_link
            self.links[key] = LinkConf(d.latency, d.jitter, d.loss, d.up)
        return self.links[key]

    # ------------------------------------------------------------------------------------------
    # Faults

    def kill(self, name: str) -> None:
        """kill -9: the node stops; the other ends hear nothing (until their idle timeout)."""
        node = self.nodes[name]
        node.alive = False
        for conn in self._open_conns(name):
            conn.open_at[name] = False
            other = conn.other(name)
            self._at(self.now + IDLE_TIMEOUT, lambda c=conn, o=other: self._idle_close(c, o, None))

    def stop(self, name: str) -> None:
        """ctrl-c: PeerLeaving on every connection, wait the flush delay, close, exit."""
        node = self.nodes[name]
        body = encode_peer_leaving(PeerLeaving(node.peer_id))
        for conn in self._open_conns(name):
            other = conn.other(name)
            self._send(conn, name, lambda o=other: self._on_leaving(o, name, body))
        self._at(self.now + self.timing.leave_flush, lambda: self._finish_stop(name))

    def _finish_stop(self, name: str) -> None:
        for conn in self._open_conns(name):
            self._close(conn, name, report_local=False)
        self.nodes[name].alive = False

    def restart(self, name: str) -> None:
        """Start a stopped or killed node again with the same id (a fresh core, no connections)."""
        node = self.nodes[name]
        assert not node.alive
        node.alive = True
        node.incarnation += 1
        node.busy_until = self.now
        node.core = self._new_core(node.peer_id, node.bootstrap, None)
        node.timer_at = None
        self._start(node)

    def partition(self, group_a: set[str], group_b: set[str]) -> None:
        for a in group_a:
            for b in group_b:
                self.set_link_up(a, b, False)

    def heal(self) -> None:
        for key in list(self.links):
            a, b = sorted(key)
            self.set_link_up(a, b, True)

    def set_link_up(self, a: str, b: str, up: bool) -> None:
        conf = self.link(a, b)
        if conf.up == up:
            return
        conf.up = up
        if up:
            return
        conf.generation += 1
        gen = conf.generation
        for conn in list(self.conns.values()):
            if {conn.a, conn.b} == {a, b}:
                for side in (a, b):
                    self._at(
                        self.now + IDLE_TIMEOUT, lambda c=conn, s=side: self._idle_close(c, s, gen)
                    )

    def _idle_close(self, conn: Conn, side: str, generation: int | None) -> None:
        if generation is not None:
            conf = self.link(conn.a, conn.b)
            if conf.up or conf.generation != generation:
                return
        if conn.open_at.get(side) and self.nodes[side].alive:
            conn.open_at[side] = False
            self._deliver_local(side, lambda: self._lost(side, conn.other(side)))

    # ------------------------------------------------------------------------------------------
    # Running

    def run_until(self, t: float) -> None:
        while self._queue and self._queue[0][0] <= t:
            when, _, fn = heapq.heappop(self._queue)
            self.now = when
            fn()
        self.now = max(self.now, t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_true(
        self, predicate: Callable[[], bool], limit: float, step: float = 0.01
    ) -> float:
        """Advance in ``step`` increments until ``predicate()``; returns the sim time it took."""
        start = self.now
        while not predicate():
            if self.now - start > limit:
                raise AssertionError(f"condition not reached within {limit} s of sim time")
            self.run_for(step)
        return self.now - start

    def alive_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    def removal_time(self, observer: str, peer: str, after: float) -> float | None:
        """When ``observer`` dropped ``peer`` from its view (first removal after ``after``)."""
        pid = self.nodes[peer].peer_id
        gone = {
            ChangeReason.DIED,
            ChangeReason.DOWN,
            ChangeReason.LEFT,
            ChangeReason.LOST,
            ChangeReason.PRUNED,
        }
        for when, reason, who in self.nodes[observer].changes:
            if who == pid and when >= after and reason in gone:
                return when
        return None

    # ------------------------------------------------------------------------------------------
    # Event plumbing

    def _at(self, when: float, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (max(when, self.now), self._seq, fn))

    def _deliver_local(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` on node ``name`` now, or later if it is loaded (in arrival order)."""
        node = self.nodes[name]
        incarnation = node.incarnation

        def run() -> None:
            if node.alive and node.incarnation == incarnation:
                fn()
                self._schedule_timer(node)

        if node.lag is None:
            run()
            return
        when = max(node.busy_until, self.now + node.lag(self.rng))
        node.busy_until = when
        self._at(when, run)

    def _schedule_timer(self, node: SimNode) -> None:
        deadline = node.core.next_deadline()
        if deadline == node.timer_at:
            return
        node.timer_at = deadline
        node.timer_gen += 1
        gen = node.timer_gen

        def fire() -> None:
            if gen != node.timer_gen:
                return
            node.timer_at = None
            self._deliver_local(node.name, lambda: self._tick(node))

        self._at(deadline, fire)

    def _tick(self, node: SimNode) -> None:
        self._apply(node, node.core.tick(self.now))
        nxt = node.core.next_deadline()
        assert nxt > self.now, f"{node.name}: next_deadline {nxt} not after now {self.now}"

    def _delay(self, conf: LinkConf) -> float:
        delay = conf.latency * (1 + self.rng.uniform(-conf.jitter, conf.jitter))
        pto = max(3 * conf.latency, 0.05)
        while conf.loss and self.rng.random() < conf.loss:
            delay += pto
            pto *= 2
        return delay

    def _send(
        self, conn: Conn, sender: str, on_arrival: Callable[[], None], *, closing: bool = False
    ) -> None:
        """One message over ``conn``; lost for good only if the link is down or the far end
        is gone. A far end that restarted answers with a stateless reset (closing our side)."""
        if not closing and not conn.open_at.get(sender):
            return
        self.messages += 1
        receiver = conn.other(sender)
        conf = self.link(sender, receiver)
        if not conf.up:
            return
        target = self.nodes[receiver]
        incarnation = target.incarnation

        def arrive() -> None:
            if not self.link(sender, receiver).up or not target.alive:
                return
            if target.incarnation != incarnation or not conn.open_at.get(receiver):
                if conn.open_at.get(sender):
                    self._at(self.now + conf.latency, lambda: self._reset(conn, sender))
                return
            self._deliver_local(receiver, on_arrival)

        self._at(self.now + self._delay(conf), arrive)

    def _reset(self, conn: Conn, side: str) -> None:
        if conn.open_at.get(side) and self.nodes[side].alive:
            conn.open_at[side] = False
            self._deliver_local(side, lambda: self._lost(side, conn.other(side)))

    def _open_conns(self, name: str, peer: str | None = None) -> list[Conn]:
        return [
            c
            for c in self.conns.values()
            if c.open_at.get(name)
            and (peer is None or c.other(name) == peer)
            and name in (c.a, c.b)
        ]

    def _conn_to(self, name: str, peer_id: bytes) -> Conn | None:
        peer = self.by_id.get(peer_id)
        if peer is None:
            return None
        conns = self._open_conns(name, peer)
        return conns[-1] if conns else None

    def _close(self, conn: Conn, name: str, *, report_local: bool) -> None:
        conn.open_at[name] = False
        other = conn.other(name)
        if report_local:
            self._deliver_local(name, lambda: self._lost(name, other))

        def notify() -> None:
            if conn.open_at.get(other):
                conn.open_at[other] = False
                self._lost(other, name)

        self._send(conn, name, notify, closing=True)

    def _lost(self, name: str, other: str) -> None:
        node = self.nodes[name]
        self._apply(node, node.core.connection_lost(self.nodes[other].peer_id, self.now))

    # ------------------------------------------------------------------------------------------
    # The adapter: performing actions

    def _apply(self, node: SimNode, actions: list[Action]) -> None:
        for action in actions:
            self._perform(node, action)

    def _perform(self, node: SimNode, action: Action) -> None:
        name = node.name
        core = node.core
        match action:
            case Probe(peer_id=pid):
                self._ping(node, pid, self.timing.probe_timeout, None)
            case CheckReachable(peer_id=pid, timeout=timeout):
                self._ping(node, pid, timeout, core.peer_unreachable_confirmed)
            case SendGossip(peer_id=pid, discover=discover):
                self._gossip(node, pid, discover)
            case Connect(addr=addr, timeout=timeout):
                self._connect(node, addr.id_bytes, timeout)
            case CloseConnection(peer_id=pid):
                peer = self.by_id.get(pid)
                for conn in self._open_conns(name, peer) if peer else []:
                    self._close(conn, name, report_local=False)
            case BroadcastPeerDown(peer_id=pid):
                body = encode_peer_down(PeerDown(pid))
                for conn in self._open_conns(name):
                    other = conn.other(name)
                    if self.nodes[other].peer_id != pid:
                        self._send(conn, name, lambda o=other: self._on_peer_down(o, name, body))
            case PeersChanged(reason=reason, peer_id=pid):
                node.changes.append((self.now, reason, pid))
            case MeshIdAdopted(mesh_id=mesh_id):
                node.adopted.append(mesh_id)

    def _ping(
        self,
        node: SimNode,
        pid: bytes,
        timeout: float,
        on_fail: Callable[[bytes, float], list[Action]] | None,
    ) -> None:
        conn = self._conn_to(node.name, pid)
        core = node.core
        if conn is None:
            self._apply(
                node,
                on_fail(pid, self.now)
                if on_fail
                else core.probe_result(pid, False, None, self.now),
            )
            return
        sent = self.now
        done = [False]
        other = conn.other(node.name)

        def pong() -> None:
            if done[0] or node.core is not core:
                return
            done[0] = True
            self._apply(node, core.probe_result(pid, True, (self.now - sent) * 1000, self.now))

        def ping_arrives() -> None:
            target = self.nodes[other]
            self._apply(target, target.core.heard_from(node.peer_id, self.now))
            self._send(conn, other, pong)

        def expire() -> None:
            if done[0] or node.core is not core:
                return
            done[0] = True
            if on_fail is not None:
                self._deliver_local(node.name, lambda: self._apply(node, on_fail(pid, self.now)))
            else:
                self._deliver_local(
                    node.name,
                    lambda: self._apply(node, core.probe_result(pid, False, None, self.now)),
                )

        self._send(conn, node.name, ping_arrives)
        self._at(self.now + timeout, expire)

    def _gossip(self, node: SimNode, pid: bytes, discover: bool) -> None:
        conn = self._conn_to(node.name, pid)
        core = node.core
        if conn is None:
            self._apply(node, core.gossip_failed(pid, self.now))
            return
        body = encode_gossip_frame(core.gossip_frame(self.now))
        other = conn.other(node.name)
        done = [False]

        def reply_arrives(reply: bytes) -> None:
            if done[0] or node.core is not core:
                return
            done[0] = True
            frame = decode_gossip_frame(reply, remote_id=pid)
            self._apply(node, core.gossip_received(pid, frame, self.now, discover=discover))

        def request_arrives() -> None:
            target = self.nodes[other]
            reply = encode_gossip_frame(target.core.gossip_frame(self.now))
            frame = decode_gossip_frame(body, remote_id=node.peer_id)
            self._apply(target, target.core.gossip_received(node.peer_id, frame, self.now))
            self._send(conn, other, lambda: reply_arrives(reply))

        def expire() -> None:
            if done[0] or node.core is not core:
                return
            done[0] = True
            self._deliver_local(
                node.name, lambda: self._apply(node, core.gossip_failed(pid, self.now))
            )

        self._send(conn, node.name, request_arrives)
        self._at(self.now + self.timing.gossip_timeout, expire)

    def _connect(self, node: SimNode, pid: bytes, timeout: float) -> None:
        core = node.core
        target_name = self.by_id.get(pid)
        conf = self.link(node.name, target_name) if target_name else None
        target = self.nodes[target_name] if target_name else None

        def fail() -> None:
            self._deliver_local(
                node.name, lambda: self._apply(node, core.connect_failed(pid, self.now))
            )

        if target is None or conf is None or not conf.up or not target.alive:
            self._at(self.now + timeout, lambda: fail() if node.core is core else None)
            return
        rtt = self._delay(conf) + self._delay(conf)
        incarnation = target.incarnation

        def established() -> None:
            if node.core is not core or not node.alive:
                return
            if not conf.up or not target.alive or target.incarnation != incarnation:
                self._at(self.now + max(0.0, timeout - rtt), fail)
                return
            self._next_cid += 1
            conn = Conn(
                self._next_cid, node.name, target.name, {node.name: True, target.name: True}
            )
            self.conns[conn.cid] = conn
            self._deliver_local(
                node.name, lambda: self._apply(node, core.connection_up(pid, False, self.now))
            )
            self._at(
                self.now + conf.latency,
                lambda: self._deliver_local(
                    target.name, lambda: self._accepted(target, node, conn)
                ),
            )

        self._at(self.now + rtt, established)

    def _accepted(self, target: SimNode, dialer: SimNode, conn: Conn) -> None:
        if conn.open_at.get(target.name):
            self._apply(target, target.core.connection_up(dialer.peer_id, True, self.now))

    def _on_peer_down(self, receiver: str, sender: str, body: bytes) -> None:
        node = self.nodes[receiver]
        msg = decode_peer_down(body)
        self._apply(node, node.core.peer_down_received(self.nodes[sender].peer_id, msg, self.now))

    def _on_leaving(self, receiver: str, sender: str, body: bytes) -> None:
        node = self.nodes[receiver]
        sender_id = self.nodes[sender].peer_id
        msg = decode_peer_leaving(body, remote_id=sender_id)
        self._apply(node, node.core.peer_leaving_received(sender_id, msg, self.now))
