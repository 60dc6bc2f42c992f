"""Placement.cold_start over a fake node: who loads a model a request waits for, or why nobody.

The decision itself is pure (inference/assignment, tested there); these tests cover what the
node feeds it and what the ingress gets back: a Warmup (reused while that load is under way),
a reason for a 503, or None for a name no disk and no catalog knows.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mesh_llm.network import Warmup
from mesh_llm.runtime.config import NodeConfig
from mesh_llm.runtime.placement import Placement

SMOL = "SmolLM2-135M-Instruct"
GB = 1_000_000_000


@dataclass
class FakeNode:
    """What Placement reads of a Node (no mesh: a node on its own)."""

    capacity: int = 8 * GB
    binaries: object | None = "ready"
    client: bool = False
    config: NodeConfig = field(default_factory=NodeConfig)
    mesh: None = None
    operator_unloaded: set[str] = field(default_factory=set)
    loads: list[tuple[str, bool]] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.config = NodeConfig(client=self.client)

    def used_bytes(self) -> int:
        return 0

    def runner_named(self, name: str) -> None:
        return None

    def load_failure(self, name: str) -> str | None:
        return None

    async def load_model(
        self, ref: str, *, wait: bool = True, download: bool = True, automatic: bool = False
    ) -> str:
        self.loads.append((ref, download))
        await self.gate.wait()
        return ref


def placement(node: FakeNode, inventory: tuple[tuple[str, int], ...] = ()) -> Placement:
    place = Placement(node)  # type: ignore[arg-type]
    place._inventory = inventory
    return place


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_catalog_model_is_downloaded_here_when_it_fits() -> None:
    node = FakeNode()
    warmup = await placement(node).cold_start(SMOL)
    assert isinstance(warmup, Warmup)
    assert warmup.where == "this node"
    await settle()
    assert node.loads == [(SMOL, True)]
    assert warmup.failure() is None
    node.gate.set()


async def test_a_model_on_this_disk_is_loaded_without_a_download() -> None:
    node = FakeNode()
    warmup = await placement(node, (("tiny", 98_000_000),)).cold_start("tiny")
    assert isinstance(warmup, Warmup)
    await settle()
    assert node.loads == [("tiny", False)]
    node.gate.set()


async def test_a_second_request_waits_on_the_same_load() -> None:
    node = FakeNode()
    place = placement(node)
    first = await place.cold_start(SMOL)
    second = await place.cold_start(SMOL)
    assert first is second
    await settle()
    assert node.loads == [(SMOL, True)]
    node.gate.set()


async def test_an_unknown_name_is_not_a_cold_start() -> None:
    assert await placement(FakeNode()).cold_start("gpt-4o") is None


async def test_too_large_everywhere_says_so_with_the_figures() -> None:
    why = await placement(FakeNode(capacity=GB // 10)).cold_start(SMOL)
    assert why == (
        f"no node has room for {SMOL}: it needs 0.11 GB and the most any node has free is 0.10 GB"
    )


async def test_unloaded_by_hand_says_how_to_load_it_again() -> None:
    node = FakeNode(operator_unloaded={"tiny"})
    why = await placement(node, (("tiny", 98_000_000),)).cold_start("tiny")
    assert why == (
        "tiny was unloaded on this node by hand and no other node can load it; "
        "load it again with: mesh-llm load tiny"
    )


async def test_while_llama_cpp_is_being_prepared_the_reason_is_not_a_lack_of_room() -> None:
    # Regression: the ingress answers while llama.cpp is still being found or built (minutes
    # on a first run); this node was then left out of the candidates and the 503 said "no node
    # has room ... the most any node has free is 0.00 GB" on a node with 8 GB free.
    node = FakeNode(binaries=None)
    why = await placement(node).cold_start(SMOL)
    assert isinstance(why, str)
    assert "0.00 GB" not in why
    assert why == "llama.cpp is not ready on this node yet; retry shortly"
    assert node.loads == []


async def test_a_client_node_has_no_room_of_its_own() -> None:
    why = await placement(FakeNode(client=True, capacity=0)).cold_start(SMOL)
    assert isinstance(why, str)
    assert why.startswith(f"no node has room for {SMOL}")
