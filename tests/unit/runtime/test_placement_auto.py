"""A GPU node whose ``--auto`` found no mesh and started one serves ``auto_model_pack``'s model
for its memory (spec surface §4), not whatever the joiner's assignment would spread it to."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from mesh_llm.network import RoutingSnapshot
from mesh_llm.runtime.placement import Placement
from tests.unit.runtime.test_placement_cold_start import FakeNode

GB = 1_000_000_000


@dataclass
class AutoNode(FakeNode):
    started_mesh: bool = True
    said: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.discovery = SimpleNamespace(started_mesh=self.started_mesh, auto=True)
        self.hub = SimpleNamespace(changed=lambda: None)
        self.gate.set()

    def out(self, line: str) -> None:
        self.said.append(line)

    def routing_snapshot(self) -> RoutingSnapshot:
        return RoutingSnapshot(targets={}, serving=False)


async def test_a_node_that_started_its_mesh_serves_the_pack_model_for_its_memory() -> None:
    node = AutoNode(capacity=10 * GB)
    await Placement(node)._place(True)  # type: ignore[arg-type]
    assert node.loads == [("Qwen3-8B-Q4_K_M", True)]
    assert "auto_model_pack for 10.0 GB" in node.said[0]


async def test_a_small_node_gets_the_smallest_tier() -> None:
    node = AutoNode(capacity=4 * GB)
    await Placement(node)._place(True)  # type: ignore[arg-type]
    assert node.loads == [("Qwen3-4B-Q4_K_M", True)]


async def test_a_node_that_joined_a_mesh_keeps_the_joiners_assignment() -> None:
    node = AutoNode(capacity=10 * GB, started_mesh=False)
    await Placement(node)._place(True)  # type: ignore[arg-type]
    assert len(node.loads) == 1
    assert "auto_model_pack" not in node.said[0]
