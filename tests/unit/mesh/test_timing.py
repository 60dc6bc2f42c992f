"""Timing: spec defaults, the adaptive death bound, scaling for simulations."""

from __future__ import annotations

import pytest

from mesh_llm.mesh import Timing


def test_defaults_are_the_spec_values() -> None:
    t = Timing()
    assert (t.gossip_horizon, t.prune_after, t.heartbeat_interval) == (180.0, 360.0, 60.0)
    assert (t.heartbeat_fanout, t.heartbeat_strikes, t.rejoin_interval) == (5, 2, 60.0)
    assert (t.peer_down_confirm, t.leave_flush, t.demand_ttl) == (3.0, 0.2, 86400.0)
    assert (t.probe_interval, t.dead_after, t.probe_misses) == (1.0, 3.0, 3)


@pytest.mark.parametrize(
    ("srtt", "bound"),
    [(None, 3.0), (0.001, 3.0), (0.5, 3.0), (0.8, 4.2), (2.0, 9.0), (10.0, 15.0)],
)
def test_dead_after_adapts_to_rtt_within_floor_and_cap(srtt: float | None, bound: float) -> None:
    assert Timing().dead_after_for(srtt) == pytest.approx(bound)


def test_fast_is_every_interval_in_milliseconds() -> None:
    fast = Timing.fast()
    assert fast.heartbeat_interval == pytest.approx(0.06)
    assert fast.probe_interval == pytest.approx(0.001)
    assert fast.dead_after_for(0.0008) == pytest.approx(0.0042)
    assert (fast.heartbeat_fanout, fast.probe_misses, fast.dead_after_rtt_factor) == (5, 3, 4.0)


def test_scale_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        Timing().scaled(0)
