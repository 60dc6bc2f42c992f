"""The peer table: what this node believes about every other node, and how gossip updates it.

The gossip processing rules (docs/DESIGN.md, "Membership rules"), as data-structure operations
(the membership core decides when):

* :meth:`PeerTable.admit` applies a peer's *own* entry, received over its own connection: insert
  or update, keep the old address unless the new entry has one, ``last_seen = now``, clear the
  dead flag. This is admission (``direct``).
* :meth:`PeerTable.learn` applies a *transitive* entry (what a peer says about a third node):
  a new one is inserted with ``last_seen = now``; an existing one is updated without refreshing
  ``last_seen``, keeping its address unless the new one lists at least as many addresses; an
  entry the peer itself gave us directly is never overwritten by hearsay.
* The dead set blocks transitive insertion.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass

from mesh_llm.mesh.actions import PeerView
from mesh_llm.protocol.frames import PeerAnnouncement
from mesh_llm.protocol.token import EndpointAddrInfo, PeerId

__all__ = ["Admission", "DeadEntry", "PeerInfo", "PeerTable", "addr_count", "strip_self_fields"]


def addr_count(addr: EndpointAddrInfo | None) -> int:
    """How many ways to reach a node an address lists (relays plus IPs)."""
    return 0 if addr is None else len(addr.relay_urls) + len(addr.ip_addrs)


def strip_self_fields(entry: PeerAnnouncement) -> PeerAnnouncement:
    """Drop ``mesh_id`` and ``demand``: they only mean something in the sender's self entry."""
    if entry.mesh_id is None and not entry.demand:
        return entry
    return dataclasses.replace(entry, mesh_id=None, demand=())


@dataclass(slots=True)
class PeerInfo:
    """What this node knows about one peer (members and transitive entries)."""

    announcement: PeerAnnouncement
    last_seen: float
    """When the peer was last proven alive directly (or when its transitive entry was inserted)."""
    direct: bool = False
    """It gossiped to us itself over its own connection: it is admitted."""
    strikes: int = 0
    """Consecutive failed heartbeats outside the gossip horizon."""
    rtt_ms: int | None = None
    """Best round-trip time ever measured."""


@dataclass(slots=True)
class DeadEntry:
    since: float
    last_verify: float = -math.inf
    """When we last dialled it to check whether it came back."""


class Admission(enum.Enum):
    NEW = "new"
    """Not in the table before."""
    NEWLY_DIRECT = "newly_direct"
    """Known transitively until now."""
    UPDATED = "updated"
    UNCHANGED = "unchanged"


class PeerTable:
    __slots__ = ("_dead", "_peers")

    def __init__(self) -> None:
        self._peers: dict[PeerId, PeerInfo] = {}
        self._dead: dict[PeerId, DeadEntry] = {}

    # Peers ------------------------------------------------------------------------------------

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer_id: PeerId) -> PeerInfo | None:
        return self._peers.get(peer_id)

    def ids(self) -> list[PeerId]:
        return sorted(self._peers)

    def items(self) -> Iterator[tuple[PeerId, PeerInfo]]:
        """(id, info) pairs sorted by id; safe to remove peers while iterating."""
        return iter(sorted(self._peers.items()))

    def announcements(self) -> list[PeerAnnouncement]:
        return [info.announcement for info in self._peers.values()]

    def is_direct(self, peer_id: PeerId) -> bool:
        info = self._peers.get(peer_id)
        return info is not None and info.direct

    def admit(self, entry: PeerAnnouncement, now: float) -> Admission:
        """Apply a peer's own entry, received from it directly."""
        pid = entry.endpoint_id
        self._dead.pop(pid, None)
        ann = strip_self_fields(entry)
        info = self._peers.get(pid)
        if info is None:
            self._peers[pid] = PeerInfo(ann, last_seen=now, direct=True)
            return Admission.NEW
        if addr_count(ann.addr) == 0 and info.announcement.addr is not None:
            ann = dataclasses.replace(ann, addr=info.announcement.addr)
        was_direct = info.direct
        changed = info.announcement != ann
        info.announcement = ann
        info.last_seen = max(info.last_seen, now)
        info.direct = True
        info.strikes = 0
        if not was_direct:
            return Admission.NEWLY_DIRECT
        return Admission.UPDATED if changed else Admission.UNCHANGED

    def learn(self, entry: PeerAnnouncement, now: float) -> Admission:
        """Apply a transitive entry (the caller has checked the dead set)."""
        pid = entry.endpoint_id
        ann = strip_self_fields(entry)
        info = self._peers.get(pid)
        if info is None:
            self._peers[pid] = PeerInfo(ann, last_seen=now)
            return Admission.NEW
        if info.direct:
            return Admission.UNCHANGED  # only the peer itself updates what it told us
        if addr_count(ann.addr) < addr_count(info.announcement.addr):
            ann = dataclasses.replace(ann, addr=info.announcement.addr)
        if ann == info.announcement:
            return Admission.UNCHANGED
        info.announcement = ann
        return Admission.UPDATED

    def touch(self, peer_id: PeerId, now: float) -> None:
        """``peer_id`` was just proven alive directly."""
        info = self._peers.get(peer_id)
        if info is not None and now > info.last_seen:
            info.last_seen = now

    def record_rtt(self, peer_id: PeerId, rtt_ms: float) -> None:
        info = self._peers.get(peer_id)
        if info is not None:
            sample = round(rtt_ms)
            if info.rtt_ms is None or sample < info.rtt_ms:
                info.rtt_ms = sample

    def remove(self, peer_id: PeerId) -> PeerInfo | None:
        return self._peers.pop(peer_id, None)

    def gossip_entries(self, now: float, horizon: float) -> list[PeerAnnouncement]:
        """Entries proven alive less than ``horizon`` seconds ago, sorted by id."""
        return [info.announcement for _, info in self.items() if now - info.last_seen < horizon]

    def requested_models(self) -> set[str]:
        models: set[str] = set()
        for info in self._peers.values():
            models.update(info.announcement.requested_models)
        return models

    def views(self, now: float, connected: frozenset[PeerId]) -> list[PeerView]:
        return [
            PeerView(
                peer_id=pid,
                role=info.announcement.role,
                serving_models=info.announcement.serving_models,
                hosted_models=info.announcement.hosted_models,
                vram_bytes=info.announcement.vram_bytes,
                version=info.announcement.version,
                rtt_ms=info.rtt_ms,
                direct=info.direct,
                connected=pid in connected,
                last_seen_age=max(0.0, now - info.last_seen),
                hostname=info.announcement.hostname,
                llama_build=info.announcement.llama_build,
            )
            for pid, info in self.items()
        ]

    # Dead set ---------------------------------------------------------------------------------

    def is_dead(self, peer_id: PeerId) -> bool:
        return peer_id in self._dead

    def dead_entry(self, peer_id: PeerId) -> DeadEntry | None:
        return self._dead.get(peer_id)

    def mark_dead(self, peer_id: PeerId, now: float) -> None:
        self._dead[peer_id] = DeadEntry(since=now)

    def clear_dead(self, peer_id: PeerId) -> bool:
        """Forget that ``peer_id`` was dead; True if it was."""
        return self._dead.pop(peer_id, None) is not None

    def expire_dead(self, now: float, ttl: float) -> None:
        for pid in [p for p, d in self._dead.items() if now - d.since > ttl]:
            del self._dead[pid]
