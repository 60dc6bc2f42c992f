"""One timing value for the node: scaling it scales the mesh's intervals too."""

from __future__ import annotations

import pytest

from mesh_llm.mesh import Timing
from mesh_llm.runtime.timing import NodeTiming


def test_scaled_scales_every_interval_including_the_mesh() -> None:
    fast = NodeTiming().scaled(0.001)
    assert fast.split_replan == pytest.approx(0.005)
    assert fast.seen_model_ttl == pytest.approx(1.8)
    assert fast.mesh == Timing().scaled(0.001)
    assert fast.mesh.heartbeat_fanout == Timing().heartbeat_fanout


def test_scale_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        NodeTiming().scaled(0)
