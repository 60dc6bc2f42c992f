"""Mesh-wide model demand: which models were requested, how recently, how often.

Every node keeps one merged map and gossips all of it in its self entry. Merging takes the
maximum of each field independently, so the map converges whatever order frames arrive in.
Timestamps are unix seconds (they cross machines); the membership core converts its monotonic
``now`` with a fixed offset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mesh_llm.protocol.frames import DemandEntry

__all__ = ["DemandTable", "ModelDemand"]


@dataclass(frozen=True, slots=True)
class ModelDemand:
    last_active: int
    """Unix seconds of the latest request anyone saw."""
    request_count: int


class DemandTable:
    """Model name -> :class:`ModelDemand`, merged with max per field."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, ModelDemand] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model: object) -> bool:
        return model in self._entries

    def get(self, model: str) -> ModelDemand | None:
        return self._entries.get(model)

    def record_request(self, model: str, unix_now: float) -> None:
        """One more request for ``model`` seen by this node."""
        old = self._entries.get(model)
        stamp = int(unix_now)
        if old is None:
            self._entries[model] = ModelDemand(stamp, 1)
        else:
            self._entries[model] = ModelDemand(max(old.last_active, stamp), old.request_count + 1)

    def merge(self, entries: Iterable[DemandEntry]) -> bool:
        """Fold in a peer's entries (max per field); True when anything changed."""
        changed = False
        for entry in entries:
            if not entry.model_name:
                continue
            old = self._entries.get(entry.model_name)
            if old is None:
                new = ModelDemand(entry.last_active, entry.request_count)
            else:
                new = ModelDemand(
                    max(old.last_active, entry.last_active),
                    max(old.request_count, entry.request_count),
                )
            if new != old:
                self._entries[entry.model_name] = new
                changed = True
        return changed

    def gc(self, unix_now: float, ttl: float, still_requested: frozenset[str]) -> list[str]:
        """Drop entries idle for more than ``ttl`` seconds unless their model is in
        ``still_requested`` (requested by this node or a live peer); return the dropped names."""
        dropped = [
            model
            for model, demand in self._entries.items()
            if unix_now - demand.last_active > ttl and model not in still_requested
        ]
        for model in dropped:
            del self._entries[model]
        return dropped

    def entries(self) -> tuple[DemandEntry, ...]:
        """The wire form, sorted by model name."""
        return tuple(
            DemandEntry(model, d.last_active, d.request_count)
            for model, d in sorted(self._entries.items())
        )
