"""What a node with nothing declared should serve, and when a standby node should start. Pure.

Two planners over a frozen view of the mesh (``docs/DESIGN.md`` "Many models: assignment and
standby promotion"):

- :func:`pick_model_assignment`: a node joined without ``--model`` picks, in order, (1) a model
  with active demand and no server that is on its disk and fits, (2) an under-served on-disk model
  that fits, (3) an unserved catalog model that fits (to download); several candidates of tiers 1
  and 3 are spread across joiners by a hash of the node id, so joiners do not all pick the same
  model. Nothing: standby.
- :func:`choose_cold_start`: a request names a model nobody serves: which node loads it (one that
  has it on disk and room for it, this node first, then the one with the most room left; else one
  with room that downloads it from the catalog), or why none can.
- :func:`check_unserved_model`: a standby node promotes to (1) the model with demand and no
  server (highest request count), else (2) the hottest served model when its requests per server
  are at least 3x the coldest's and at least 10 (or at least 10 when it is the only one). Only
  models on this node's disk that fit; a standby never downloads on promotion.

Request counts are cumulative (gossip merges them with max), not rates: "hot" means "many requests
in the activity window".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from mesh_llm.inference.placement import FIT_FACTOR

__all__ = [
    "ACTIVE_WINDOW_S",
    "AUTO_PACK_BUDGET",
    "HOT_RATIO",
    "MIN_HOT_REQUESTS",
    "MIN_ON_DISK_BYTES",
    "PROMOTION_WINDOW_S",
    "Assignment",
    "AssignmentKind",
    "ColdStart",
    "DemandView",
    "LoaderCandidate",
    "LocalModel",
    "auto_pack_assignment",
    "check_unserved_model",
    "choose_cold_start",
    "node_hash",
    "pick_model_assignment",
]

ACTIVE_WINDOW_S: Final = 86_400
"""A model requested within this window (or pinned by a live declaring node) has active demand."""
PROMOTION_WINDOW_S: Final = 3_600
"""The imbalance rule looks only at models requested within this window."""
HOT_RATIO: Final = 3.0
MIN_HOT_REQUESTS: Final = 10
MIN_ON_DISK_BYTES: Final = 500_000_000
"""Tier 1 ignores tiny files (test and draft models) as the reference does."""


@dataclass(frozen=True, slots=True)
class DemandView:
    """One model's demand as the gossiped map has it."""

    request_count: int
    last_active: int
    """Unix seconds of the latest request anyone saw."""
    pinned: bool = False
    """A live node declared it (``--model``): active whatever its age."""

    def active(self, now: float) -> bool:
        return self.pinned or now - self.last_active < ACTIVE_WINDOW_S


@dataclass(frozen=True, slots=True)
class LocalModel:
    """A model this node could serve: on its disk, or downloadable from the catalog."""

    name: str
    size_bytes: int


class AssignmentKind(enum.StrEnum):
    SERVE = "serve"
    DOWNLOAD = "download"
    STANDBY = "standby"


@dataclass(frozen=True, slots=True)
class Assignment:
    kind: AssignmentKind
    model: str | None
    reason: str


def node_hash(node_id: bytes) -> int:
    """The reference's spread: a wrapping 64-bit fold ``h = h*31 + b`` over the id's bytes."""
    h = 0
    for b in node_id:
        h = (h * 31 + b) & 0xFFFF_FFFF_FFFF_FFFF
    return h


def _fits(size: int, capacity: int) -> bool:
    return capacity >= int(size * FIT_FACTOR)


def pick_model_assignment(
    *,
    node_id: bytes,
    capacity: int,
    demand: Mapping[str, DemandView],
    servers: Mapping[str, int],
    on_disk: Sequence[LocalModel],
    catalog: Sequence[LocalModel],
    now: float,
) -> Assignment:
    """What a node joined without ``--model`` serves (spec tiers 1-3), else standby.

    ``servers``: model -> nodes serving it now (routable); ``on_disk`` and ``catalog`` in a stable
    order (the spread picks by index).
    """
    h = node_hash(node_id)
    fitting = [m for m in on_disk if _fits(m.size_bytes, capacity)]
    wanted = [
        m
        for m in fitting
        if m.size_bytes >= MIN_ON_DISK_BYTES
        and (d := demand.get(m.name)) is not None
        and d.active(now)
        and servers.get(m.name, 0) == 0
    ]
    if wanted:
        pick = wanted[h % len(wanted)]
        return Assignment(
            AssignmentKind.SERVE, pick.name, "requested in the mesh, served by nobody, on disk"
        )
    most = max(servers.values(), default=0)
    under = [m for m in fitting if servers.get(m.name, 0) < most]
    if under:
        under.sort(
            key=lambda m: (
                servers.get(m.name, 0),
                -(demand[m.name].request_count if m.name in demand else 0),
            )
        )
        pick = under[0]
        return Assignment(
            AssignmentKind.SERVE,
            pick.name,
            f"under-served ({servers.get(pick.name, 0)} of up to {most} servers), on disk",
        )
    downloadable = [
        m for m in catalog if servers.get(m.name, 0) == 0 and _fits(m.size_bytes, capacity)
    ]
    if downloadable:
        pick = downloadable[h % len(downloadable)]
        return Assignment(AssignmentKind.DOWNLOAD, pick.name, "unserved catalog model that fits")
    return Assignment(AssignmentKind.STANDBY, None, "nothing unserved fits here: standby")


AUTO_PACK_BUDGET = 0.85
"""An ``auto_model_pack`` model must fit in this share of the node's memory (spec)."""


def auto_pack_assignment(
    *,
    capacity: int,
    pack: Sequence[tuple[int, str]],
    catalog: Sequence[LocalModel],
    on_disk: Sequence[LocalModel],
) -> Assignment:
    """What a node serves when its ``--auto`` found no mesh and started one (spec surface §4:
    ``auto_model_pack``). ``pack``: (minimum memory in bytes, model), largest first. The tier's
    model must fit in 85 % of ``capacity`` (size x 1.1); otherwise the largest catalog model
    that does, one on disk first. On disk: served from there; else a download."""
    budget = int(capacity * AUTO_PACK_BUDGET)
    disk = {m.name for m in on_disk}
    sizes = {m.name: m.size_bytes for m in catalog}
    tier = next((name for least, name in pack if capacity >= least), None)
    gb = capacity / 1e9
    if tier is not None and tier in sizes and _fits(sizes[tier], budget):
        pick, reason = tier, f"--auto started this mesh: auto_model_pack for {gb:.1f} GB"
    else:
        fitting = [m for m in catalog if _fits(m.size_bytes, budget)]
        if not fitting:
            return Assignment(
                AssignmentKind.STANDBY, None, "--auto started this mesh: no catalog model fits"
            )
        best = max(fitting, key=lambda m: (m.name in disk, m.size_bytes, m.name))
        pick = best.name
        reason = f"--auto started this mesh: the largest catalog model for {gb:.1f} GB"
    if pick in disk:
        return Assignment(AssignmentKind.SERVE, pick, reason + ", on disk")
    return Assignment(AssignmentKind.DOWNLOAD, pick, reason)


def check_unserved_model(
    *,
    capacity: int,
    demand: Mapping[str, DemandView],
    servers: Mapping[str, int],
    on_disk: Sequence[LocalModel],
    now: float,
) -> Assignment:
    """Whether a standby node should start serving, and what (spec §7); never a download."""
    fitting = {m.name for m in on_disk if _fits(m.size_bytes, capacity)}
    unserved = [
        (d.request_count, name)
        for name, d in demand.items()
        if name in fitting and d.request_count > 0 and servers.get(name, 0) == 0
    ]
    if unserved:
        count, name = max(unserved)
        return Assignment(AssignmentKind.SERVE, name, f"{count} requests and no server in the mesh")
    loads = sorted(
        (d.request_count / servers[name], name)
        for name, d in demand.items()
        if servers.get(name, 0) > 0
        and d.request_count > 0
        and now - d.last_active < PROMOTION_WINDOW_S
    )
    candidates = [(load, name) for load, name in loads if name in fitting]
    if not candidates:
        return Assignment(AssignmentKind.STANDBY, None, "no recent demand for a model on disk here")
    hottest_load, hottest = candidates[-1]
    coldest_load = loads[0][0]
    if len(loads) == 1:
        hot = hottest_load >= MIN_HOT_REQUESTS
    else:
        hot = hottest_load >= HOT_RATIO * coldest_load and hottest_load >= MIN_HOT_REQUESTS
    if hot:
        return Assignment(
            AssignmentKind.SERVE,
            hottest,
            f"{hottest_load:.0f} requests per server, the hottest model on disk here",
        )
    return Assignment(AssignmentKind.STANDBY, None, "demand is balanced")


@dataclass(frozen=True, slots=True)
class LoaderCandidate:
    """A node that might load a model for a cold start."""

    node: bytes | None
    """The peer's id; None for this node."""
    free_bytes: int
    """Memory it offers minus what its models use."""
    on_disk_bytes: int | None
    """The model's size on its disk; None: not there."""


@dataclass(frozen=True, slots=True)
class ColdStart:
    node: bytes | None
    download: bool
    size_bytes: int
    reason: str


def choose_cold_start(
    model: str,
    candidates: Sequence[LoaderCandidate],
    *,
    catalog_bytes: int | None,
) -> ColdStart | str | None:
    """Who loads ``model`` for a waiting request: a :class:`ColdStart`; why nobody can (str);
    or None when no node has it on disk and the catalog does not know it (an unknown name).

    On disk wins over a download; this node wins over a peer (no tunnel), then the most room left.
    """
    on_disk = [c for c in candidates if c.on_disk_bytes is not None]
    fitting = [
        c for c in on_disk if c.on_disk_bytes is not None and _fits(c.on_disk_bytes, c.free_bytes)
    ]
    if fitting:
        pick = min(fitting, key=lambda c: (c.node is not None, -c.free_bytes))
        size = pick.on_disk_bytes or 0
        where = "this node" if pick.node is None else "a peer"
        return ColdStart(pick.node, False, size, f"on the disk of {where}")
    if catalog_bytes is not None:
        room = [c for c in candidates if _fits(catalog_bytes, c.free_bytes)]
        if room:
            pick = min(room, key=lambda c: (c.node is not None, -c.free_bytes))
            return ColdStart(pick.node, True, catalog_bytes, "downloaded from the catalog")
    if not on_disk and catalog_bytes is None:
        return None
    need = max([c.on_disk_bytes or 0 for c in on_disk] + [catalog_bytes or 0])
    most = max((c.free_bytes for c in candidates), default=0)
    return (
        f"no node has room for {model}: it needs {need * FIT_FACTOR / 1e9:.2f} GB "
        f"and the most any node has free is {most / 1e9:.2f} GB"
    )
