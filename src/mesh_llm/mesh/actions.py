"""What the membership core asks its adapter to do, and what it tells the rest of the node.

Every input of :class:`~mesh_llm.mesh.membership.Membership` returns a list of these. They are
plain data: the adapter performs them (dial, send, ping, close) and reports the outcome back
through the core's input methods. Each class documents the adapter's duty.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from mesh_llm.protocol.frames import NodeRole
from mesh_llm.protocol.token import EndpointAddrInfo, PeerId

__all__ = [
    "Action",
    "BroadcastPeerDown",
    "ChangeReason",
    "CheckReachable",
    "CloseConnection",
    "Connect",
    "ConnectReason",
    "MeshIdAdopted",
    "PeerView",
    "PeersChanged",
    "Probe",
    "SendGossip",
]


class ConnectReason(enum.Enum):
    """Why the core wants a connection; decides what happens when it comes up or fails."""

    JOIN = "join"
    """An explicit join (``--join`` at start, ``POST /api/join``): gossip with discovery."""
    REJOIN = "rejoin"
    """The periodic re-dial of a bootstrap address that is not known any more."""
    RECONNECT = "reconnect"
    """The connection to a member dropped; failure removes the member (no PeerDown)."""
    HEARTBEAT = "heartbeat"
    """A heartbeat target without a connection; failure may be a strike."""
    DISCOVER = "discover"
    """A peer learnt from a discovering gossip exchange."""
    VERIFY = "verify"
    """Gossip mentions a peer we hold dead: dial it to see whether it really came back."""


class ChangeReason(enum.Enum):
    """Why the peer view changed (for logs, the event stream and routing refreshes)."""

    JOINED = "joined"
    """A peer gossiped to us over its own connection for the first time (it is now admitted)."""
    DISCOVERED = "discovered"
    """A transitive entry appeared (another peer told us about it)."""
    UPDATED = "updated"
    """A known peer's announcement changed (role, models, address...)."""
    DIED = "died"
    """We declared the peer dead ourselves (silence, or heartbeat strikes)."""
    DOWN = "down"
    """Another peer reported it dead (PeerDown) and we could not reach it either."""
    LEFT = "left"
    """It announced it is shutting down (PeerLeaving)."""
    LOST = "lost"
    """Its connection dropped and could not be re-established (no PeerDown is sent)."""
    PRUNED = "pruned"
    """Not proven alive for ``prune_after`` seconds."""


@dataclass(frozen=True, slots=True)
class SendGossip:
    """Run a gossip exchange with ``peer_id`` over the existing connection.

    Adapter: open a bi-stream, send ``0x01`` + ``Membership.gossip_frame(now)``, read the reply,
    then call ``gossip_received(peer_id, reply, now, discover=discover)``; on any failure or after
    ``Timing.gossip_timeout`` call ``gossip_failed(peer_id, now)``.
    """

    peer_id: PeerId
    discover: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    """Dial ``addr`` (within ``timeout`` seconds).

    Adapter: on success call ``connection_up(addr.id_bytes, inbound=False, now)`` (the core then
    asks for the gossip exchange); on failure call ``connect_failed(addr.id_bytes, now)``.
    """

    addr: EndpointAddrInfo
    reason: ConnectReason
    timeout: float


@dataclass(frozen=True, slots=True)
class CloseConnection:
    """Close every connection to ``peer_id``; report each with ``connection_lost``."""

    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class BroadcastPeerDown:
    """Send ``PeerDown(peer_id)`` (stream 0x06) on every connection but the one to ``peer_id``."""

    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class CheckReachable:
    """Someone reported ``peer_id`` dead and we hold a connection to it: ping it.

    Adapter: send a probe on that connection; an answer within ``timeout`` is reported with
    ``probe_result(peer_id, True, rtt_ms, now)``; no answer (or no connection) with
    ``peer_unreachable_confirmed(peer_id, now)``. The core also removes the peer by itself when
    nothing is heard from it within ``timeout``.
    """

    peer_id: PeerId
    timeout: float


@dataclass(frozen=True, slots=True)
class Probe:
    """Liveness ping: send a tiny request on the connection to ``peer_id``.

    Adapter: report an answer with ``probe_result(peer_id, True, rtt_ms, now)``; an error or no
    answer within ``Timing.probe_timeout`` with ``probe_result(peer_id, False, None, now)``.
    Probes are independent: do not wait for one to finish before sending the next.
    """

    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class PeersChanged:
    """The peer view changed. For the runtime: refresh routing, tunnels, the event stream."""

    reason: ChangeReason
    peer_id: PeerId


@dataclass(frozen=True, slots=True)
class MeshIdAdopted:
    """This node adopted ``mesh_id`` from the first peer that gossiped one (persist it)."""

    mesh_id: str


Action: TypeAlias = (
    SendGossip
    | Connect
    | CloseConnection
    | BroadcastPeerDown
    | CheckReachable
    | Probe
    | PeersChanged
    | MeshIdAdopted
)


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer as ``/api/status`` shows it."""

    peer_id: PeerId
    role: NodeRole
    serving_models: tuple[str, ...]
    hosted_models: tuple[str, ...]
    vram_bytes: int
    version: str | None
    rtt_ms: int | None
    """Best round-trip time ever measured, in milliseconds; None when never measured."""
    direct: bool
    """True once the peer gossiped to us over its own connection (it is admitted)."""
    connected: bool
    last_seen_age: float
    """Seconds since the peer was last proven alive (directly, or since a transitive insert)."""
    hostname: str | None = None
    llama_build: str | None = None
    """The peer's llama.cpp build id (``<commit>-<backend>``)."""
