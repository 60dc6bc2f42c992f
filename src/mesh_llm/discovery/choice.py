"""Which discovered mesh to join (docs/DESIGN.md, "Discovery"): newest event per publisher,
expired ones dropped, filters, ``score_mesh`` and ``smart_auto`` as in the original, and the
``--auto`` model for a node that starts a mesh. Pure functions over listings and ``now``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mesh_llm.discovery.listing import DiscoveredMesh

__all__ = [
    "AUTO_MODEL_PACK",
    "DEFAULT_MESH_NAME",
    "Join",
    "StartNew",
    "auto_model_for",
    "filter_meshes",
    "newest_per_publisher",
    "score_mesh",
    "smart_auto",
]

DEFAULT_MESH_NAME = "mesh-llm"

AUTO_MODEL_PACK: tuple[tuple[float, str], ...] = (
    (179.0, "MiniMax-M2.5-Q4_K_M"),
    (63.0, "Qwen3-Coder-Next-Q4_K_M"),
    (50.0, "GLM-4.7-Flash-Q4_K_M"),
    (24.0, "Qwen3.5-27B-Q4_K_M"),
    (8.0, "Qwen3-8B-Q4_K_M"),
    (0.0, "Qwen3-4B-Q4_K_M"),
)


def newest_per_publisher(meshes: Iterable[DiscoveredMesh], now: float) -> list[DiscoveredMesh]:
    """The newest listing of each publisher, expired ones dropped, sorted by node count then
    VRAM (largest first)."""
    newest: dict[str, DiscoveredMesh] = {}
    for mesh in meshes:
        if mesh.expires_at is not None and mesh.expires_at <= now:
            continue
        seen = newest.get(mesh.publisher_npub)
        if seen is None or mesh.published_at > seen.published_at:
            newest[mesh.publisher_npub] = mesh
    return sorted(
        newest.values(),
        key=lambda m: (m.listing.node_count, m.listing.total_vram_bytes),
        reverse=True,
    )


def filter_meshes(
    meshes: Iterable[DiscoveredMesh],
    *,
    model: str | None = None,
    min_vram_gb: float | None = None,
    region: str | None = None,
) -> list[DiscoveredMesh]:
    """``--model`` (substring of a served, wanted or on-disk name, case-insensitive),
    ``--min-vram`` (GB = 1e9 bytes), ``--region`` (exact, case-insensitive)."""
    result = []
    for mesh in meshes:
        listing = mesh.listing
        if model is not None:
            wanted = model.lower()
            names = (*listing.serving, *listing.wanted, *listing.on_disk)
            if not any(wanted in name.lower() for name in names):
                continue
        if min_vram_gb is not None and listing.total_vram_bytes < min_vram_gb * 1e9:
            continue
        if region is not None and (listing.region or "").lower() != region.lower():
            continue
        result.append(mesh)
    return result


def score_mesh(mesh: DiscoveredMesh, last_mesh_id: str | None) -> int:
    """The original's score: base 100; name "mesh-llm" +300, another name -200; our last
    mesh +500; full (max_clients) -1000, else +min(headroom, 20); +5 per node (up to 10),
    +10 per served model, +15 per wanted model. No region or freshness term."""
    listing = mesh.listing
    score = 100
    if listing.name is not None:
        score += 300 if listing.name == DEFAULT_MESH_NAME else -200
    if last_mesh_id is not None and listing.mesh_id == last_mesh_id:
        score += 500
    if listing.max_clients > 0:
        headroom = listing.max_clients - listing.client_count
        score += -1000 if headroom <= 0 else min(headroom, 20)
    score += 5 * min(listing.node_count, 10)
    score += 10 * len(listing.serving)
    score += 15 * len(listing.wanted)
    return score


@dataclass(frozen=True, slots=True)
class Join:
    candidates: tuple[DiscoveredMesh, ...]
    """Best first; ``--auto`` probes them in this order."""


@dataclass(frozen=True, slots=True)
class StartNew:
    pass


def smart_auto(
    meshes: Sequence[DiscoveredMesh], target_name: str | None, last_mesh_id: str | None
) -> Join | StartNew:
    """With a target name: the listings of that name (case-insensitive), all viable.
    Otherwise: listings scoring above 0. Sorted by score (stable: ties keep discovery order)."""
    if target_name is not None:
        viable = [m for m in meshes if (m.listing.name or "").lower() == target_name.lower()]
    else:
        viable = [m for m in meshes if score_mesh(m, last_mesh_id) > 0]
    if not viable:
        return StartNew()
    ranked = sorted(viable, key=lambda m: score_mesh(m, last_mesh_id), reverse=True)
    return Join(tuple(ranked))


def auto_model_for(vram_gb: float) -> str:
    """``auto_model_pack``: the model a GPU node starting a mesh with ``--auto`` serves."""
    for threshold, model in AUTO_MODEL_PACK:
        if vram_gb >= threshold:
            return model
    return AUTO_MODEL_PACK[-1][1]
