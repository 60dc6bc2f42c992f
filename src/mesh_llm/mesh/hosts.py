"""Host choice and the route table: pure functions over announcements (docs/DESIGN.md, "Host
order and route tables").

``hosts_for_model`` spreads load without coordination: every node sorts the candidates the same
way, then starts at a different place in the list, chosen by a hash of its own id. The hash is the
Rust nodes' (``fold(own_id, 0, |a, b| a * 31 + b)`` with wrapping u64 arithmetic), so a Python
node picks the host a Rust node with the same id would.
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh_llm.protocol.frames import NodeRole, PeerAnnouncement, RouteEntry, RouteTable
from mesh_llm.protocol.token import PeerId

__all__ = ["host_rotation_hash", "hosts_for_model", "routable_models", "route_table"]

_U64 = (1 << 64) - 1


def host_rotation_hash(own_id: PeerId) -> int:
    """``fold(own_id bytes, 0, (a, b) -> a*31 + b mod 2**64)``."""
    h = 0
    for b in own_id:
        h = (h * 31 + b) & _U64
    return h


def routable_models(peer: PeerAnnouncement) -> tuple[str, ...]:
    """What a peer can take requests for: ``hosted_models`` when it says the list is known
    (the healthy, actually routable ones), else what it was assigned to serve."""
    return peer.hosted_models if peer.hosted_models_known else peer.serving_models


def hosts_for_model(peers: Iterable[PeerAnnouncement], model: str, own_id: PeerId) -> list[PeerId]:
    """Ids of the HOST peers routing ``model``: sorted by id bytes, then rotated left by
    ``host_rotation_hash(own_id) % n`` so that different nodes start at different hosts."""
    ids = sorted(
        {p.endpoint_id for p in peers if p.role is NodeRole.HOST and model in routable_models(p)}
    )
    if not ids:
        return []
    k = host_rotation_hash(own_id) % len(ids)
    return ids[k:] + ids[:k]


def route_table(
    me: PeerAnnouncement, peers: Iterable[PeerAnnouncement], mesh_id: str | None
) -> RouteTable:
    """Stream 0x05 reply: this node (unless a CLIENT) for each hosted model, then every known peer
    (transitive included) for each routable model, sorted by id; plus the mesh id."""
    entries: list[RouteEntry] = []
    if me.role is not NodeRole.CLIENT:
        entries += [RouteEntry(me.endpoint_id, m) for m in me.hosted_models]
    for peer in sorted(peers, key=lambda p: p.endpoint_id):
        entries += [RouteEntry(peer.endpoint_id, m) for m in routable_models(peer)]
    return RouteTable(entries=tuple(entries), mesh_id=mesh_id)
