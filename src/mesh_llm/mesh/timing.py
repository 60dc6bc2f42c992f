"""Every interval the membership core uses, as one value (conventions: "Timing is a value").

The defaults are the original mesh-llm's (docs/DESIGN.md, "Membership rules") plus the fast liveness
probe, which the original does not have: the Python iroh bindings expose no QUIC idle-timeout or
keep-alive setting, so a silently dead peer (``kill -9``, a pulled cable) is found by an
application-level ping instead.

Liveness in short: every ``probe_interval`` each directly connected peer is pinged; any inbound
traffic from a peer is proof of life; a peer unheard of for ``dead_after_for(srtt)`` seconds *and*
for at least ``probe_misses`` probes is declared dead. The second condition keeps a node whose own
event loop stalled (and so sent no probes) from declaring everyone dead when it wakes up.

Simulations use :meth:`Timing.fast` or :meth:`Timing.scaled` instead of monkeypatching.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["Timing"]


@dataclass(frozen=True, slots=True)
class Timing:
    """Intervals in seconds (counts are plain integers and never scaled)."""

    # Gossip and heartbeat
    gossip_horizon: float = 180.0
    """Entries last proven alive longer ago than this are left out of gossip (``PEER_STALE_SECS``);
    a failed heartbeat within it is not a strike."""
    prune_after: float = 360.0
    """Peers last proven alive longer ago than this are forgotten after each heartbeat round."""
    heartbeat_interval: float = 60.0
    """Heartbeat round period; the first round runs one period after start."""
    heartbeat_fanout: int = 5
    """``GOSSIP_K``: at most this many heartbeat targets per round (chosen at random)."""
    heartbeat_strikes: int = 2
    """Failed heartbeats (outside the gossip horizon) after which a peer is declared dead."""
    heartbeat_timeout: float = 20.0
    """A heartbeat with no outcome after this long counts as failed (connect 10 s + gossip 10 s)."""
    rejoin_interval: float = 60.0
    """Period of re-dialling the ``--join`` bootstrap addresses that are not known."""
    demand_push: float = 2.0
    """After a request is counted, the demand map is gossiped to connected peers within this."""
    rejoin_lost_delay: float = 1.0
    """After losing its last member (a partition, its peers' death), a node with ``--join``
    addresses re-dials them after this, doubling up to ``rejoin_lost_max`` while it stays out of
    any mesh, so a healed partition converges in seconds rather than a minute."""
    rejoin_lost_max: float = 15.0
    """The longest gap between those re-dials (the detection bound's cap): however long the
    partition lasted, the mesh converges within about this after it heals."""
    demand_ttl: float = 86400.0
    """Demand entries idle longer than this are dropped unless someone still requests the model."""

    # Connection set-up (used by the adapter; carried on :class:`~mesh_llm.mesh.actions.Connect`)
    join_connect_timeout: float = 15.0
    connect_timeout: float = 10.0
    gossip_timeout: float = 10.0
    stream_type_timeout: float = 10.0
    """An accepted stream whose type byte has not arrived after this long is dropped."""
    frame_read_timeout: float = 10.0
    """A control frame (PeerDown, PeerLeaving, route request) must arrive within this."""
    tunnel_open_timeout: float = 5.0
    """Opening a tunnel or RPC stream to a connected peer gives up after this."""
    oneway_send_timeout: float = 3.0
    """Sending one PeerDown or PeerLeaving frame gives up after this."""
    leave_send_timeout: float = 1.0
    """Shutdown waits at most this long for the PeerLeaving frames to be sent."""

    # Death and leaving
    peer_down_confirm: float = 3.0
    """How long the receiver of a PeerDown waits for a sign of life before removing the peer."""
    leave_flush: float = 0.2
    """How long the leaving node waits after sending PeerLeaving before closing connections."""
    dead_ttl: float = 360.0
    """How long a peer stays in the dead set (after that, stale gossip about it has aged out)."""
    dead_recheck_interval: float = 30.0
    """At most one verification dial per dead peer per this interval, when gossip mentions it."""

    # Fast liveness probe (not in the original, see the module docstring)
    probe_interval: float = 1.0
    """Period of the ping sent to every directly connected peer."""
    probe_timeout: float = 3.0
    """How long the adapter waits for a ping's answer before reporting it failed."""
    probe_misses: int = 3
    """Probes sent since the peer was last heard from that death needs (besides silence)."""
    dead_after: float = 3.0
    """Silence after which a connected peer is dead: the floor of the adaptive bound."""
    dead_after_rtt_factor: float = 4.0
    dead_after_margin: float = 1.0
    dead_after_max: float = 15.0
    """Adaptive bound: ``clamp(factor * srtt + margin, dead_after, dead_after_max)``."""
    srtt_gain: float = 0.125
    """Weight of a new RTT sample in the smoothed RTT (RFC 6298's alpha)."""

    # Discovery
    discover_fanout: int = 8
    """At most this many unconnected peers dialled after one discovering gossip exchange."""

    def dead_after_for(self, srtt: float | None) -> float:
        """Silence (seconds) after which a connected peer with smoothed RTT ``srtt`` is dead."""
        if srtt is None:
            return self.dead_after
        adaptive = self.dead_after_rtt_factor * srtt + self.dead_after_margin
        return min(max(self.dead_after, adaptive), max(self.dead_after, self.dead_after_max))

    def scaled(self, factor: float) -> Timing:
        """Every duration multiplied by ``factor``; counts and ratios unchanged."""
        if factor <= 0:
            raise ValueError("scale factor must be positive")
        changes: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, float) and field.name not in _UNSCALED:
                changes[field.name] = value * factor
        return dataclasses.replace(self, **changes)

    @classmethod
    def fast(cls) -> Timing:
        """Simulation timing: every interval 1000x shorter (seconds become milliseconds)."""
        return cls().scaled(0.001)


_UNSCALED = frozenset({"dead_after_rtt_factor", "srtt_gain"})
