"""Keeping a public mesh listed, and converging lonely meshes (docs/DESIGN.md, "Discovery").
Pure decisions over the current listings; ``runtime/discovery_link.py`` runs them.

- **Watchdog takeover** (non-publishing ``--auto`` nodes that serve): every 20-35 s look for a
  listing of our mesh id; with none (and peers or models of our own), look again after 3-10 s,
  then publish the mesh ourselves. Beyond the reference, a listing counts only while its invite
  token's node is still in the mesh (ourselves or a connected peer): a publisher killed with -9
  leaves its listing on the relays for up to its 120 s expiry, and the reference's watchdog waited
  that long.
- **Unpublish and merge** (a node publishing a mesh that ``--auto`` started): with no serving peer,
  withdraw the listing and join a larger mesh: one carrying our mesh id, or, if we are unnamed,
  any unnamed one. "Larger" means more nodes than ours (1), so two lonely nodes never chase each
  other.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Set
from typing import Final

from mesh_llm.discovery.listing import DiscoveredMesh
from mesh_llm.errors import ProtocolError
from mesh_llm.protocol import decode_token

__all__ = [
    "WATCHDOG_INTERVAL_S",
    "WATCHDOG_RECHECK_S",
    "listing_node_id",
    "merge_target",
    "needs_takeover",
    "watchdog_delay",
]

WATCHDOG_INTERVAL_S: Final = (20.0, 35.0)
WATCHDOG_RECHECK_S: Final = (3.0, 10.0)


def watchdog_delay(bounds: tuple[float, float], rng: random.Random) -> float:
    """A jittered delay within ``bounds`` (jitter: members of one mesh do not all take over at
    the same instant)."""
    low, high = bounds
    return rng.uniform(low, high)


def listing_node_id(mesh: DiscoveredMesh) -> str | None:
    """The hex node id of the listing's invite token; None if the token is unreadable."""
    try:
        return decode_token(mesh.listing.invite_token).id_hex
    except ProtocolError:
        return None


def needs_takeover(
    meshes: Iterable[DiscoveredMesh],
    *,
    mesh_id: str | None,
    members: Set[str],
    has_peers: bool,
    serves: bool,
) -> bool:
    """Whether this node should start publishing its mesh: it has a mesh id, peers or models of
    its own, and no listing carries that mesh id with a publisher node still in ``members``
    (hex ids of this node and its connected peers)."""
    if mesh_id is None or not (has_peers or serves):
        return False
    for mesh in meshes:
        if mesh.listing.mesh_id != mesh_id:
            continue
        if listing_node_id(mesh) in members:
            return False
    return True


def merge_target(
    meshes: Iterable[DiscoveredMesh],
    *,
    mesh_id: str | None,
    named: bool,
    own_node_id: str,
    serving_peers: int,
    own_nodes: int = 1,
) -> DiscoveredMesh | None:
    """The larger mesh a publisher with no serving peer should join, or None to stay listed.

    Candidates: listings with our mesh id, or (when we are unnamed) any unnamed listing, with
    more nodes than ours, not published for our own node. Largest first (nodes, then VRAM)."""
    if serving_peers > 0:
        return None
    candidates = [
        m
        for m in meshes
        if m.listing.node_count > own_nodes
        and listing_node_id(m) not in (None, own_node_id)
        and (
            (mesh_id is not None and m.listing.mesh_id == mesh_id)
            or (not named and m.listing.name is None)
        )
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda m: (m.listing.node_count, m.listing.total_vram_bytes))
