"""Every interval the runtime uses, as one value (conventions: "Timing is a value").

The membership core's intervals stay in :class:`mesh_llm.mesh.Timing`; :class:`NodeTiming` carries
that value (``mesh``) plus the runtime's own, so a node is built with one timing value and tests
shorten it without monkeypatching.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mesh_llm.mesh import Timing

__all__ = ["NodeTiming"]


@dataclass(frozen=True, slots=True)
class NodeTiming:
    """Intervals in seconds."""

    mesh: Timing = field(default_factory=Timing)
    """Gossip, heartbeat, probe, join and leave intervals of the membership core."""
    split_settle: float = 2.0
    """A split runner waits this long for gossip before its first plan."""
    split_debounce: float = 1.0
    """After a peer change, a split runner lets the view settle this long before re-planning."""
    split_replan: float = 5.0
    """A split runner re-plans at least this often (RTT changes emit no peer-change event)."""
    seen_model_ttl: float = 1800.0
    """A model the mesh served within this window and nobody serves now gets 503, not the
    unknown-model fallback."""
    ready_poll: float = 1.0
    """How often the start-up summary checks for models that became ready (or failed)."""
    help_timeout: float = 30.0
    """How long ``llama-server --help`` (read for its feature flags) may take."""
    standby_settle: float = 5.0
    """A node with nothing to serve lets gossip settle this long before it picks a model."""
    standby_poll: float = 2.0
    """How often a standby node checks the demand map for a model to promote to."""
    inventory_refresh: float = 30.0
    """How often the list of models on this node's disk (announced for cold starts) is re-read."""
    load_timeout: float = 600.0
    """How long ``POST /api/runtime/models`` waits for the loaded model to answer."""
    withdraw_grace: float = 2.0
    """An unloading model still answers requests peers route with a stale view this long."""
    unload_drain: float = 300.0
    """How long an unload waits for in-flight requests to the model before stopping it."""

    def scaled(self, factor: float) -> NodeTiming:
        """Every duration multiplied by ``factor`` (the mesh's too)."""
        if factor <= 0:
            raise ValueError("scale factor must be positive")
        changes: dict[str, Any] = {"mesh": self.mesh.scaled(factor)}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float):
                changes[f.name] = value * factor
        return dataclasses.replace(self, **changes)
