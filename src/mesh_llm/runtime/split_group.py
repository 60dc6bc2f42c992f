"""Who takes part in splitting a model, from a frozen view of the peers (pure).

:func:`split_group` picks, among the peers this node sees, the election group of a model (the
connected, admitted, non-client peers that declared it) and the idle workers that may lend
memory; :func:`mesh_llm.inference.plan_model` then elects the host and picks the workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mesh_llm.inference import Member
from mesh_llm.protocol import NodeRole, PeerAnnouncement, PeerId

__all__ = ["PeerSnapshot", "SplitGroup", "split_group"]


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """One peer as split planning sees it at one moment."""

    peer_id: PeerId
    announcement: PeerAnnouncement
    rtt_ms: float | None
    """Best measured round trip; None when never measured."""
    admitted: bool
    """It gossiped to us over its own connection."""
    connected: bool


@dataclass(frozen=True, slots=True)
class SplitGroup:
    peers: tuple[Member, ...]
    """Peers that declared the model: the election group besides this node."""
    helpers: tuple[Member, ...]
    """Idle workers (an rpc-server, no model of their own): they lend memory, never host."""
    ignored: tuple[tuple[PeerId, str], ...] = ()
    """The other peers, with why none of them can take part (shown in ``/api/status`` beside the
    plan's own exclusions, so a split that does not form says what it waits for)."""


def split_group(model: str, peers: Iterable[PeerSnapshot]) -> SplitGroup:
    """The members of ``model``'s split among ``peers``, in the order given.

    Only connected, admitted peers that are not clients take part."""
    group: list[Member] = []
    helpers: list[Member] = []
    ignored: list[tuple[PeerId, str]] = []
    for peer in peers:
        ann = peer.announcement
        why = _not_a_member(model, peer)
        if why is not None:
            ignored.append((peer.peer_id, why))
            continue
        member = Member(peer.peer_id, ann.vram_bytes, peer.rtt_ms, ann.llama_build, ann.rpc_ready)
        if model in ann.serving_models:
            group.append(member)
        else:
            helpers.append(member)
    return SplitGroup(tuple(group), tuple(helpers), tuple(ignored))


def _not_a_member(model: str, peer: PeerSnapshot) -> str | None:
    """Why ``peer`` takes no part in ``model``'s split (None: it does)."""
    ann = peer.announcement
    if ann.role is NodeRole.CLIENT:
        return "a client (runs no models)"
    if not peer.connected:
        return "not connected"
    if not peer.admitted:
        return "not admitted yet (has not gossiped over its own connection)"
    if model in ann.serving_models:
        return None
    if ann.serving_models:
        return f"serves {', '.join(sorted(ann.serving_models))}, not {model}"
    if not ann.rpc_ready:
        return "idle, but its rpc-server is not running"
    return None
