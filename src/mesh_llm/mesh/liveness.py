"""Per-peer connection liveness: how many connections, when we last heard, smoothed RTT.

A small mutable record owned by the membership core, one per peer with at least one live
connection (members and not-yet-admitted peers alike). "Heard from" is any inbound traffic on a
connection: a gossip, an accepted stream, a ping answered. Death is decided in
:meth:`Link.is_dead`; see :mod:`mesh_llm.mesh.timing` for the rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh_llm.mesh.timing import Timing

__all__ = ["Link"]


@dataclass(slots=True)
class Link:
    """Connections to one peer (briefly two, e.g. after a simultaneous dial from both ends)."""

    count: int
    last_heard: float
    unanswered: int = 0
    """Probes sent since the peer was last heard from."""
    srtt: float | None = None
    """Smoothed round-trip time in seconds (None until the first sample)."""

    def heard(self, now: float) -> None:
        if now > self.last_heard:
            self.last_heard = now
        self.unanswered = 0

    def rtt_sample(self, rtt_s: float, timing: Timing) -> None:
        if rtt_s < 0:
            return
        if self.srtt is None:
            self.srtt = rtt_s
        else:
            self.srtt += timing.srtt_gain * (rtt_s - self.srtt)

    def dead_after(self, timing: Timing) -> float:
        return timing.dead_after_for(self.srtt)

    def death_deadline(self, timing: Timing) -> float | None:
        """When the peer becomes dead if nothing is heard; None while too few probes went out
        (the next probe round is then the next thing that can change the verdict)."""
        if self.unanswered < timing.probe_misses:
            return None
        return self.last_heard + self.dead_after(timing)

    def is_dead(self, now: float, timing: Timing) -> bool:
        deadline = self.death_deadline(timing)
        return deadline is not None and now >= deadline
