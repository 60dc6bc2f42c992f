"""Who takes part in splitting a model, from a frozen view of the peers (pure).

:func:`split_group` picks, among the peers this node sees, the election group of a model (the
connected, admitted, non-client peers that declared it) and the idle workers that may lend
memory; :func:`mesh_llm.inference.plan_model` then elects the host and picks the workers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mesh_llm.inference import Member
from mesh_llm.protocol import NodeRole, PeerAnnouncement

__all__ = ["PeerSnapshot", "SplitGroup", "split_group"]


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """One peer as split planning sees it at one moment."""

    peer_id: bytes
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


def split_group(model: str, peers: Iterable[PeerSnapshot]) -> SplitGroup:
    """The members of ``model``'s split among ``peers``, in the order given.

    Only connected, admitted peers that are not clients take part."""
    group: list[Member] = []
    helpers: list[Member] = []
    for peer in peers:
        ann = peer.announcement
        if ann.role is NodeRole.CLIENT or not (peer.admitted and peer.connected):
            continue
        member = Member(peer.peer_id, ann.vram_bytes, peer.rtt_ms, ann.llama_build, ann.rpc_ready)
        if model in ann.serving_models:
            group.append(member)
        elif not ann.serving_models and ann.rpc_ready:
            helpers.append(member)
    return SplitGroup(tuple(group), tuple(helpers))
