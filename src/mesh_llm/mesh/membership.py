"""The membership state machine, sans-IO (docs/DESIGN.md, "Membership rules").

:class:`Membership` holds one node's view of the mesh. It never touches a socket or a clock:
every input carries ``now`` (monotonic seconds), random choices come from an injected
``random.Random``, and every output is an action (:mod:`mesh_llm.mesh.actions`) for the adapter
to perform. Given the same inputs it produces the same outputs.

Departures from the Rust nodes, each fixing a weakness or a gap of theirs:

* **Admission** needs a gossip from the peer itself over its own connection (``direct``); a
  transitive entry does not admit. A frame without the sender's own entry is ignored entirely.
* A transitive entry never overwrites what a directly admitted peer said about itself.
* **Fast failure detection** by an application probe (see :mod:`mesh_llm.mesh.timing`): a silent
  peer is declared dead within seconds, not the ~41 s the Rust nodes take.
* A peer removed on a confirmed PeerDown or a PeerLeaving goes into the dead set, so stale
  gossip from nodes that have not heard yet cannot resurrect it. Gossip that mentions a dead
  peer triggers (rate-limited) a verification dial, so a peer that really came back returns
  without waiting for it to dial us.
* The receiver of a PeerLeaving re-broadcasts it as PeerDown, so peers with no connection to the
  leaver drop it as fast as its direct neighbours do.
* A peer unknown to us that we admit is announced (one gossip exchange) to our other direct
  peers, so new members spread in one round trip instead of one heartbeat.
* Connections are counted per peer, so a dying old connection does not evict its replacement.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

from mesh_llm.mesh.actions import (
    Action,
    BroadcastPeerDown,
    ChangeReason,
    CheckReachable,
    CloseConnection,
    Connect,
    ConnectReason,
    MeshIdAdopted,
    PeersChanged,
    PeerView,
    Probe,
    SendGossip,
)
from mesh_llm.mesh.demand import DemandTable
from mesh_llm.mesh.hosts import hosts_for_model, route_table
from mesh_llm.mesh.join import JoinFailure, JoinStatus, join_status, redial_address
from mesh_llm.mesh.liveness import Link
from mesh_llm.mesh.peers import Admission, PeerTable, addr_count, strip_self_fields
from mesh_llm.mesh.timing import Timing
from mesh_llm.protocol.frames import (
    DemandEntry,
    GossipFrame,
    PeerAnnouncement,
    PeerDown,
    PeerLeaving,
    RouteTable,
)
from mesh_llm.protocol.token import EndpointAddrInfo, PeerId

__all__ = ["Membership"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Dial:
    reason: ConnectReason
    deadline: float
    timeout: float


_LOSS_REASONS = {
    ChangeReason.DIED: "it stopped answering",
    ChangeReason.DOWN: "another peer reported it down",
    ChangeReason.LEFT: "it left the mesh",
    ChangeReason.LOST: "the connection was lost",
    ChangeReason.PRUNED: "it was not seen for too long",
}


def _short(peer_id: PeerId) -> str:
    return peer_id[:5].hex()


class Membership:
    """One node's membership state machine. See the module docstring."""

    def __init__(
        self,
        own_id: PeerId,
        *,
        now: float,
        timing: Timing | None = None,
        rng: random.Random | None = None,
        mesh_id: str | None = None,
        bootstrap: Iterable[EndpointAddrInfo] = (),
        wall_offset: float = 0.0,
        relay_urls: Iterable[str] = (),
    ) -> None:
        """``mesh_id``: set by the originator (a joiner leaves it None and adopts one).
        ``bootstrap``: the ``--join`` addresses, re-dialled every ``rejoin_interval``.
        ``wall_offset``: unix time minus ``now``, for demand timestamps.
        ``relay_urls``: this node's relay map (empty without relays): a bootstrap peer whose
        token address failed is dialled again by id through them (``join.redial_address``)."""
        if len(own_id) != 32:
            raise ValueError("own_id must be the 32-byte endpoint id")
        self.own_id = own_id
        self.timing = timing or Timing()
        self._rng = rng or random.Random(0)
        self._mesh_id = mesh_id
        self._merge_target: PeerId | None = None
        """Set by :meth:`merge`: the next mesh id this peer gossips in its own entry replaces
        ours."""
        self._bootstrap = tuple(a for a in bootstrap if a.id_bytes != own_id)
        self._bootstrap_ids = tuple(a.id_bytes for a in self._bootstrap)
        self._join_attempts = 0
        self._relay_urls = tuple(relay_urls)
        self._bootstrap_failures: dict[bytes, int] = {}
        """Failed dials of each bootstrap peer: picks the relay the next redial goes through."""
        self._join_failure: JoinFailure | None = None
        self._joined_once = False
        self._join_warned: JoinFailure | None = None
        self._wall_offset = wall_offset
        self._self = PeerAnnouncement(endpoint_id=own_id, hosted_models_known=True)
        self._demand = DemandTable()
        self._peers = PeerTable()
        self._links: dict[PeerId, Link] = {}
        self._dialing: dict[PeerId, _Dial] = {}
        self._confirming: dict[PeerId, float] = {}
        self._reconnecting: dict[PeerId, float] = {}
        self._heartbeat_pending: dict[PeerId, float] = {}
        self._next_probe = now + self.timing.probe_interval
        self._next_heartbeat = now + self.timing.heartbeat_interval
        self._next_rejoin = now + self.timing.rejoin_interval
        self._rejoin_backoff: float | None = None
        """Set while out of any mesh after losing it: the delay before the next fast re-dial."""

    # ------------------------------------------------------------------------------------------
    # Queries

    @property
    def mesh_id(self) -> str | None:
        return self._mesh_id

    @property
    def merging(self) -> bool:
        """A :meth:`merge` waits for its target's mesh id (ours is still the old mesh's)."""
        return self._merge_target is not None

    @property
    def self_announcement(self) -> PeerAnnouncement:
        return self._self

    def peer_ids(self) -> list[PeerId]:
        """Every peer in the view (admitted and transitive), sorted."""
        return self._peers.ids()

    def announcement(self, peer_id: PeerId) -> PeerAnnouncement | None:
        info = self._peers.get(peer_id)
        return None if info is None else info.announcement

    def is_admitted(self, peer_id: PeerId) -> bool:
        """May ``peer_id`` use gated streams? Only once it gossiped to us over its own link."""
        return self._peers.is_direct(peer_id)

    def is_connected(self, peer_id: PeerId) -> bool:
        return peer_id in self._links

    def is_dead(self, peer_id: PeerId) -> bool:
        return self._peers.is_dead(peer_id)

    def demand(self) -> tuple[DemandEntry, ...]:
        return self._demand.entries()

    def gossip_frame(self, now: float) -> GossipFrame:
        """What we send in a gossip exchange: every entry proven alive within the gossip horizon,
        sorted by id, then our self entry last (carrying ``mesh_id`` and demand)."""
        entries = self._peers.gossip_entries(now, self.timing.gossip_horizon)
        me = dataclasses.replace(
            self._self,
            mesh_id=self._mesh_id,
            demand=self._demand.entries(),
            hosted_models_known=True,
        )
        return GossipFrame(sender_id=self.own_id, peers=(*entries, me))

    def peers_view(self, now: float) -> list[PeerView]:
        """Every known peer as ``/api/status`` shows it, sorted by id."""
        return self._peers.views(now, frozenset(self._links))

    def hosts_for_model(self, model: str, own_id: PeerId | None = None) -> list[PeerId]:
        """HOST peers routing ``model``, in this node's rotation order."""
        return hosts_for_model(
            self._peers.announcements(), model, self.own_id if own_id is None else own_id
        )

    def join_status(self) -> JoinStatus | None:
        """How joining through the bootstrap addresses is going; None without any."""
        pending = {*self._dialing, *(p for p in self._links if not self._peers.is_direct(p))}
        return join_status(
            self._bootstrap_ids,
            members=self._connected_members(),
            pending=pending,
            failure=self._join_failure,
            joined_once=self._joined_once,
            attempts=self._join_attempts,
        )

    def route_table(self) -> RouteTable:
        return route_table(self._self, self._peers.announcements(), self._mesh_id)

    def heartbeat_targets(self) -> list[PeerId]:
        """All known peers (transitive included); above ``heartbeat_fanout``, a random subset.
        Draws from the injected RNG."""
        ids = self._peers.ids()
        if len(ids) > self.timing.heartbeat_fanout:
            self._rng.shuffle(ids)
            ids = ids[: self.timing.heartbeat_fanout]
        return ids

    def next_deadline(self) -> float:
        """The earliest time at which :meth:`tick` has something to do."""
        t = self.timing
        candidates = [self._next_heartbeat]
        if self._bootstrap:
            candidates.append(self._next_rejoin)
        if any(pid in self._peers for pid in self._links):
            candidates.append(self._next_probe)
        for pid, link in self._links.items():
            if pid in self._peers:
                deadline = link.death_deadline(t)
                if deadline is not None:
                    candidates.append(deadline)
        candidates += self._confirming.values()
        candidates += self._reconnecting.values()
        candidates += self._heartbeat_pending.values()
        candidates += (d.deadline for d in self._dialing.values())
        return min(candidates)

    # ------------------------------------------------------------------------------------------
    # Inputs from the runtime

    def update_self(self, announcement: PeerAnnouncement, now: float) -> list[Action]:
        """Set what we announce (role, ports, models, vram, version, addr...). ``mesh_id`` and
        ``demand`` in it are ignored (the core fills them). A change is gossiped to every
        connected member at once, with discovery."""
        if announcement.endpoint_id != self.own_id:
            raise ValueError("the self announcement must carry our own endpoint id")
        announcement = strip_self_fields(announcement)
        if announcement == self._self:
            return []
        self._self = announcement
        return [SendGossip(pid, discover=True) for pid in self._connected_members()]

    def originate_mesh_id(self, mesh_id: str) -> None:
        """This node starts a mesh (``--auto`` found none to join): take ``mesh_id`` unless one
        was already adopted from a peer."""
        if self._mesh_id is None:
            self._mesh_id = mesh_id

    def record_request(self, model: str, now: float) -> None:
        """Count one request for ``model`` in the demand map."""
        self._demand.record_request(model, now + self._wall_offset)

    def join(self, addr: EndpointAddrInfo, now: float) -> list[Action]:
        """Explicit join (``--join``, ``POST /api/join``): forget that the target was dead and
        dial it; if already connected, gossip with discovery instead."""
        pid = addr.id_bytes
        if pid == self.own_id:
            return []
        self._peers.clear_dead(pid)
        if pid in self._links:
            return [SendGossip(pid, discover=True)]
        if addr_count(addr) == 0:
            self._join_failed(pid, "its address lists no relay and no IP address to dial")
        return self._dial(addr, ConnectReason.JOIN, now)

    def merge(self, addr: EndpointAddrInfo, now: float) -> list[Action]:
        """Leave our mesh for the one ``addr``'s node belongs to (the unpublish-and-merge rule,
        docs/DESIGN.md "Discovery"): join it, and take the mesh id its node gossips in its own
        entry even though we have one. The only way a mesh id is replaced: otherwise the first
        one adopted stays (spec: joiners never overwrite it)."""
        if addr.id_bytes == self.own_id:
            return []
        self._merge_target = addr.id_bytes
        return self.join(addr, now)

    # ------------------------------------------------------------------------------------------
    # Inputs from the transport adapter

    def connection_up(self, peer_id: PeerId, inbound: bool, now: float) -> list[Action]:
        """A connection to ``peer_id`` (TLS-verified) is established."""
        if peer_id == self.own_id:
            return []
        link = self._links.get(peer_id)
        if link is None:
            link = self._links[peer_id] = Link(count=0, last_heard=now)
        link.count += 1
        self._reconnecting.pop(peer_id, None)
        self._heard(peer_id, now)
        if inbound:
            # The dialler gossips first; a peer we held dead gets our view at once.
            if self._peers.clear_dead(peer_id):
                return [SendGossip(peer_id, discover=False)]
            return []
        dial = self._dialing.pop(peer_id, None)
        discover = dial is not None and dial.reason in (ConnectReason.JOIN, ConnectReason.REJOIN)
        return [SendGossip(peer_id, discover=discover)]

    def connection_lost(self, peer_id: PeerId, now: float) -> list[Action]:
        """A connection to ``peer_id`` closed (not one we closed on a CloseConnection)."""
        link = self._links.get(peer_id)
        if link is None:
            return []
        link.count -= 1
        if link.count > 0:
            return []
        del self._links[peer_id]
        if self._bootstrap and self._peers.is_direct(peer_id) and not self._connected_members():
            self._join_failed(peer_id, _LOSS_REASONS[ChangeReason.LOST])
            self._lost_the_mesh(now)
        if peer_id in self._confirming:
            return self._remove(peer_id, now, ChangeReason.DOWN, mark_dead=True)
        info = self._peers.get(peer_id)
        if info is None:
            return []
        addr = info.announcement.addr
        if addr is None or addr_count(addr) == 0:
            return self._remove(peer_id, now, ChangeReason.LOST)
        # A closed connection: reconnect; the member stays until that fails or its silence is
        # too long.
        self._reconnecting[peer_id] = now + link.dead_after(self.timing)
        return self._dial(addr, ConnectReason.RECONNECT, now)

    def connect_failed(
        self, peer_id: PeerId, now: float, reason: str | None = None
    ) -> list[Action]:
        """A :class:`Connect` to ``peer_id`` failed or timed out (``reason``: the transport's
        words, shown in the join state)."""
        dial = self._dialing.pop(peer_id, None)
        if dial is None:
            return []
        return self._dial_failed(peer_id, dial.reason, now, reason or "the connection failed")

    def admission_refused(self, peer_id: PeerId, now: float, reason: str) -> list[Action]:
        """A private-mesh admission failed on a connection to ``peer_id`` (``reason``: the
        refusal, ``refused: …``, shown in the join state); the adapter closed the connection."""
        dial = self._dialing.pop(peer_id, None)
        if dial is not None:
            return self._dial_failed(peer_id, dial.reason, now, reason)
        if peer_id in self._bootstrap_ids and not self._peers.is_direct(peer_id):
            self._join_failed(peer_id, reason)
        return []

    def gossip_failed(self, peer_id: PeerId, now: float, reason: str | None = None) -> list[Action]:
        """A :class:`SendGossip` exchange failed or timed out."""
        if peer_id in self._bootstrap_ids and not self._peers.is_direct(peer_id):
            why = reason or "no answer"
            self._join_failed(peer_id, f"connected, but the gossip exchange failed: {why}")
        if peer_id in self._heartbeat_pending:
            return self._heartbeat_failed(peer_id, now)
        return []

    def heard_from(self, peer_id: PeerId, now: float) -> list[Action]:
        """Any inbound traffic from ``peer_id`` (stream accepted, data read): proof of life."""
        self._heard(peer_id, now)
        return []

    def probe_result(
        self, peer_id: PeerId, ok: bool, rtt_ms: float | None, now: float
    ) -> list[Action]:
        """Outcome of a :class:`Probe` or :class:`CheckReachable` ping."""
        if not ok:
            return []
        self._heard(peer_id, now)
        if rtt_ms is not None and rtt_ms >= 0:
            link = self._links.get(peer_id)
            if link is not None:
                link.rtt_sample(rtt_ms / 1000.0, self.timing)
            self._peers.record_rtt(peer_id, rtt_ms)
        return []

    def gossip_received(
        self, remote_id: PeerId, frame: GossipFrame, now: float, *, discover: bool = False
    ) -> list[Action]:
        """Process a validated gossip frame from ``remote_id`` (the TLS-verified sender), either a
        request we answered or the reply to our :class:`SendGossip` (``discover`` as requested).

        The sender's own entry admits it; other entries are transitive."""
        if remote_id == self.own_id or frame.sender_id != remote_id:
            return []
        self._heard(remote_id, now)
        own_entry = next((e for e in reversed(frame.peers) if e.endpoint_id == remote_id), None)
        if own_entry is None:
            log.debug("gossip from %s without its own entry: ignored", _short(remote_id))
            return []
        actions = self._admit(remote_id, own_entry, now)
        for entry in frame.peers:
            if entry.endpoint_id not in (self.own_id, remote_id):
                actions += self._learn_transitive(entry, now)
        if discover:
            actions += self._discover(remote_id, frame, now)
        return actions

    def peer_down_received(self, remote_id: PeerId, msg: PeerDown, now: float) -> list[Action]:
        """``remote_id`` reports ``msg.peer_id`` dead. Without a connection to it we believe the
        report; with one we check it first."""
        self._heard(remote_id, now)
        target = msg.peer_id
        if not self.is_admitted(remote_id) or target in (self.own_id, remote_id):
            return []
        if target not in self._peers or target in self._confirming:
            return []
        if target not in self._links:
            log.info("%s reports %s down", _short(remote_id), _short(target))
            return self._remove(target, now, ChangeReason.DOWN, mark_dead=True)
        timeout = self.timing.peer_down_confirm
        self._confirming[target] = now + timeout
        return [CheckReachable(target, timeout)]

    def peer_unreachable_confirmed(self, peer_id: PeerId, now: float) -> list[Action]:
        """The :class:`CheckReachable` ping went unanswered: remove the peer."""
        if self._confirming.pop(peer_id, None) is None:
            return []
        return self._remove(peer_id, now, ChangeReason.DOWN, mark_dead=True)

    def peer_leaving_received(
        self, remote_id: PeerId, msg: PeerLeaving, now: float
    ) -> list[Action]:
        """``remote_id`` is shutting down. Only the leaver itself may say so."""
        if msg.peer_id != remote_id or remote_id == self.own_id:
            return []
        if remote_id not in self._peers:
            return []
        log.info("%s is leaving", _short(remote_id))
        return self._remove(remote_id, now, ChangeReason.LEFT, mark_dead=True, broadcast=True)

    # ------------------------------------------------------------------------------------------
    # Timers

    def tick(self, now: float) -> list[Action]:
        """Run everything due at ``now``; call it at :meth:`next_deadline` (early is harmless)."""
        t = self.timing
        actions: list[Action] = []
        for pid, dial in sorted(self._dialing.items()):
            if now >= dial.deadline:
                del self._dialing[pid]
                why = f"no answer within {dial.timeout:.0f} s"
                actions += self._dial_failed(pid, dial.reason, now, why)
        for pid, deadline in sorted(self._heartbeat_pending.items()):
            if now >= deadline:
                actions += self._heartbeat_failed(pid, now)
        if now >= self._next_probe:
            following = self._next_probe + t.probe_interval
            self._next_probe = following if following > now else now + t.probe_interval
            for pid in sorted(self._links):
                if pid in self._peers:
                    self._links[pid].unanswered += 1
                    actions.append(Probe(pid))
        for pid, link in sorted(self._links.items()):
            if pid in self._peers and link.is_dead(now, t):
                log.info("%s silent for %.1f s: dead", _short(pid), now - link.last_heard)
                actions += self._remove(pid, now, ChangeReason.DIED, mark_dead=True, broadcast=True)
        for pid, deadline in sorted(self._confirming.items()):
            if now >= deadline:
                del self._confirming[pid]
                actions += self._remove(pid, now, ChangeReason.DOWN, mark_dead=True)
        for pid, deadline in sorted(self._reconnecting.items()):
            if now >= deadline:
                actions += self._remove(pid, now, ChangeReason.LOST)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + t.heartbeat_interval
            actions += self._heartbeat(now)
        if now >= self._next_rejoin:
            self._next_rejoin = now + t.rejoin_interval
            if self._rejoin_backoff is not None:
                if self._connected_members():
                    self._rejoin_backoff = None
                else:
                    self._rejoin_backoff = min(2 * self._rejoin_backoff, t.rejoin_lost_max)
                    self._next_rejoin = now + self._rejoin_backoff
            for addr in self._bootstrap:
                pid = addr.id_bytes
                if pid not in self._links and pid not in self._dialing:
                    self._peers.clear_dead(pid)
                    actions += self._dial(self._bootstrap_addr(addr), ConnectReason.REJOIN, now)
        return actions

    # ------------------------------------------------------------------------------------------
    # Internals

    def _connected_members(self, *, exclude: PeerId | None = None) -> list[PeerId]:
        return [pid for pid in sorted(self._links) if pid != exclude and self._peers.is_direct(pid)]

    def _heard(self, peer_id: PeerId, now: float) -> None:
        link = self._links.get(peer_id)
        if link is None:
            return
        link.heard(now)
        self._confirming.pop(peer_id, None)
        self._peers.touch(peer_id, now)

    def _dial(self, addr: EndpointAddrInfo, reason: ConnectReason, now: float) -> list[Action]:
        pid = addr.id_bytes
        if pid == self.own_id or pid in self._dialing or addr_count(addr) == 0:
            return []
        t = self.timing
        timeout = t.join_connect_timeout if reason is ConnectReason.JOIN else t.connect_timeout
        self._dialing[pid] = _Dial(reason, now + timeout, timeout)
        if pid in self._bootstrap_ids:
            self._join_attempts += 1
        return [Connect(addr, reason, timeout)]

    def _dial_failed(
        self, peer_id: PeerId, reason: ConnectReason, now: float, why: str
    ) -> list[Action]:
        if peer_id == self._merge_target and reason is ConnectReason.JOIN:
            self._merge_target = None  # the merge did not happen: we stay in our mesh
        if peer_id in self._bootstrap_ids:
            self._join_failed(peer_id, why)
            failures = self._bootstrap_failures.get(peer_id, 0) + 1
            self._bootstrap_failures[peer_id] = failures
            if reason is ConnectReason.JOIN and failures == 1:
                # The token's address failed: try the same id through a relay at once rather
                # than at the next rejoin.
                token = next(a for a in self._bootstrap if a.id_bytes == peer_id)
                redial = self._bootstrap_addr(token)
                if redial is not token:
                    via = ", ".join(redial.relay_urls) or "the addresses gossip named"
                    log.info("dialling %s again by its id, through %s", _short(peer_id), via)
                    return self._dial(redial, ConnectReason.REJOIN, now)
        if reason is ConnectReason.RECONNECT and peer_id in self._reconnecting:
            return self._remove(peer_id, now, ChangeReason.LOST)
        if reason is ConnectReason.HEARTBEAT and peer_id in self._heartbeat_pending:
            return self._heartbeat_failed(peer_id, now)
        return []

    def _bootstrap_addr(self, token: EndpointAddrInfo) -> EndpointAddrInfo:
        """Where to dial a bootstrap peer now: its token's address until that failed, then by
        id through a relay (see :func:`redial_address`)."""
        pid = token.id_bytes
        info = self._peers.get(pid)
        redial = redial_address(
            token,
            failures=self._bootstrap_failures.get(pid, 0),
            relays=self._relay_urls,
            learned=info.announcement.addr if info is not None else None,
        )
        return token if redial is None else redial

    def _admit(self, remote_id: PeerId, entry: PeerAnnouncement, now: float) -> list[Action]:
        actions: list[Action] = []
        merging = remote_id == self._merge_target
        if entry.mesh_id and (self._mesh_id is None or merging):
            if merging:
                self._merge_target = None
            if entry.mesh_id != self._mesh_id:
                self._mesh_id = entry.mesh_id
                actions.append(MeshIdAdopted(entry.mesh_id))
        self._demand.merge(entry.demand)
        self._heartbeat_pending.pop(remote_id, None)
        if self._bootstrap and not self._joined_once:
            log.info("joined the mesh through %s", _short(remote_id))
        self._joined_once = True
        self._join_failure = self._join_warned = None
        self._rejoin_backoff = None
        match self._peers.admit(entry, now):
            case Admission.NEW:
                log.info("%s joined", _short(remote_id))
                actions.append(PeersChanged(ChangeReason.JOINED, remote_id))
                # Announce the newcomer to our other members (they learn it transitively).
                actions += [SendGossip(p) for p in self._connected_members(exclude=remote_id)]
            case Admission.NEWLY_DIRECT:
                actions.append(PeersChanged(ChangeReason.JOINED, remote_id))
            case Admission.UPDATED:
                actions.append(PeersChanged(ChangeReason.UPDATED, remote_id))
            case Admission.UNCHANGED:
                pass
        return actions

    def _learn_transitive(self, entry: PeerAnnouncement, now: float) -> list[Action]:
        pid = entry.endpoint_id
        dead = self._peers.dead_entry(pid)
        if dead is not None:
            # Stale news, or the peer really came back: only a dial can tell (rate-limited).
            if entry.addr is None or now < dead.last_verify + self.timing.dead_recheck_interval:
                return []
            dead.last_verify = now
            return self._dial(entry.addr, ConnectReason.VERIFY, now)
        match self._peers.learn(entry, now):
            case Admission.NEW:
                return [PeersChanged(ChangeReason.DISCOVERED, pid)]
            case Admission.UPDATED:
                return [PeersChanged(ChangeReason.UPDATED, pid)]
            case _:
                return []

    def _discover(self, remote_id: PeerId, frame: GossipFrame, now: float) -> list[Action]:
        candidates: dict[PeerId, EndpointAddrInfo] = {}
        for entry in frame.peers:
            pid = entry.endpoint_id
            info = self._peers.get(pid)
            if pid in (self.own_id, remote_id) or info is None:
                continue
            addr = info.announcement.addr
            if pid in self._links or pid in self._dialing or addr is None or not addr_count(addr):
                continue
            candidates[pid] = addr
        chosen = sorted(candidates)
        if len(chosen) > self.timing.discover_fanout:
            chosen = sorted(self._rng.sample(chosen, self.timing.discover_fanout))
        actions: list[Action] = []
        for pid in chosen:
            actions += self._dial(candidates[pid], ConnectReason.DISCOVER, now)
        return actions

    def _heartbeat(self, now: float) -> list[Action]:
        t = self.timing
        actions: list[Action] = []
        for pid in self.heartbeat_targets():
            info = self._peers.get(pid)
            if info is None or pid in self._heartbeat_pending:
                continue
            if pid in self._links:
                # Connected peers are watched by the probe; this exchange only syncs state.
                actions.append(SendGossip(pid))
                continue
            addr = info.announcement.addr
            self._heartbeat_pending[pid] = now + t.heartbeat_timeout
            if addr is None or addr_count(addr) == 0:
                actions += self._heartbeat_failed(pid, now)
            elif pid not in self._dialing:
                actions += self._dial(addr, ConnectReason.HEARTBEAT, now)
        for pid, info in self._peers.items():
            if now - info.last_seen > t.prune_after:
                log.info("%s not seen for %.0f s: pruned", _short(pid), now - info.last_seen)
                actions += self._remove(pid, now, ChangeReason.PRUNED)
        requested = self._peers.requested_models() | set(self._self.requested_models)
        self._demand.gc(now + self._wall_offset, t.demand_ttl, frozenset(requested))
        self._peers.expire_dead(now, t.dead_ttl)
        return actions

    def _heartbeat_failed(self, peer_id: PeerId, now: float) -> list[Action]:
        self._heartbeat_pending.pop(peer_id, None)
        info = self._peers.get(peer_id)
        if info is None or now - info.last_seen < self.timing.gossip_horizon:
            return []  # recently proven alive: reachable inbound only, e.g. behind NAT
        info.strikes += 1
        if info.strikes < self.timing.heartbeat_strikes:
            return []
        log.info("%s failed %d heartbeats: dead", _short(peer_id), info.strikes)
        return self._remove(peer_id, now, ChangeReason.DIED, mark_dead=True, broadcast=True)

    def _remove(
        self,
        peer_id: PeerId,
        now: float,
        reason: ChangeReason,
        *,
        mark_dead: bool = False,
        broadcast: bool = False,
    ) -> list[Action]:
        info = self._peers.remove(peer_id)
        self._confirming.pop(peer_id, None)
        self._reconnecting.pop(peer_id, None)
        self._heartbeat_pending.pop(peer_id, None)
        actions: list[Action] = []
        if broadcast:
            actions.append(BroadcastPeerDown(peer_id))
        if self._links.pop(peer_id, None) is not None:
            actions.append(CloseConnection(peer_id))
        if mark_dead:
            self._peers.mark_dead(peer_id, now)
        if info is not None:
            actions.append(PeersChanged(reason, peer_id))
            if self._bootstrap and info.direct and not self._connected_members():
                self._join_failed(peer_id, _LOSS_REASONS.get(reason, reason.value))
                self._lost_the_mesh(now)
        return actions

    def _lost_the_mesh(self, now: float) -> None:
        """The last connected member is gone: re-dial the bootstrap soon, then back off."""
        if self._rejoin_backoff is None:
            self._rejoin_backoff = self.timing.rejoin_lost_delay
        self._next_rejoin = min(self._next_rejoin, now + self._rejoin_backoff)

    def _join_failed(self, peer_id: PeerId, why: str) -> None:
        """Record (and say, at WARNING while not in any mesh) why joining did not work."""
        failure = JoinFailure(peer_id, why)
        self._join_failure = failure
        if self._connected_members():
            log.info("bootstrap peer %s: %s", _short(peer_id), why)
            return
        level = logging.INFO if failure == self._join_warned else logging.WARNING
        self._join_warned = failure
        whose = " (the --join token's node)" if peer_id in self._bootstrap_ids else ""
        if why.startswith("refused"):  # a private mesh's refusal: the peer answered
            log.log(level, "not admitted to the mesh: %s%s %s", _short(peer_id), whose, why)
            return
        log.log(
            level,
            "not connected to any mesh: could not reach %s%s: %s; retrying (at least every %.0f s)",
            _short(peer_id),
            whose,
            why,
            self.timing.rejoin_interval,
        )
