"""Pure placement decisions for a model: solo or split, which node hosts, which workers help,
and the ``--tensor-split`` proportions (docs/DESIGN.md, "Split inference: who hosts, who helps").

Inputs are frozen snapshots (this node plus the mesh members that declared the model); outputs are
decisions. Nothing here reads clocks, sockets or processes, so the runtime can re-plan on every peer
change and tests can enumerate cases.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from mesh_llm.protocol import PeerId

__all__ = [
    "FIT_FACTOR",
    "MAX_SPLIT_RTT_MS",
    "Member",
    "Plan",
    "PlanKind",
    "cpu_host_offload",
    "fits_solo",
    "plan_model",
    "tensor_split",
]

FIT_FACTOR = 1.1
MAX_SPLIT_RTT_MS = 80.0


@dataclass(frozen=True, slots=True)
class Member:
    """One node of a model's election group, as this node sees it."""

    node_id: PeerId
    capacity: int
    rtt_ms: float | None  # None: unknown (this node itself, or never measured)
    build_id: str | None
    rpc_ready: bool = True


class PlanKind(enum.Enum):
    SOLO = "solo"  # this node runs the whole model itself
    HOST = "host"  # this node runs llama-server with the workers' devices over RPC
    WORKER = "worker"  # another node hosts; this node lends its rpc-server
    WAIT = "wait"  # the mesh lacks the capacity; wait for a peer change


@dataclass(frozen=True, slots=True)
class Plan:
    kind: PlanKind
    host: PeerId | None = None
    workers: tuple[PeerId, ...] = ()  # in --rpc order
    tensor_split: str | None = None  # workers first, host last
    reason: str = ""
    excluded: tuple[tuple[PeerId, str], ...] = ()  # peers left out of the split, with why

    def describe(self) -> str:
        return self.reason


def fits_solo(capacity: int, model_bytes: int) -> bool:
    return capacity >= int(model_bytes * FIT_FACTOR)


def _host_key(member: Member) -> tuple[int, PeerId]:
    return (member.capacity, member.node_id)


def tensor_split(host_capacity: int, worker_capacities: Sequence[int]) -> str:
    """Proportional to capacity, RPC devices first and the host last (llama.cpp's device order).

    A worker that reports 0 counts with the host's capacity, as in the original.
    """
    values = [c if c > 0 else host_capacity for c in worker_capacities] + [host_capacity]
    total = sum(values)
    if total <= 0:
        values, total = [1] * len(values), len(values)
    return ",".join(f"{v / total:.2f}" for v in values)


def plan_model(
    me: Member,
    peers: Sequence[Member],
    model_bytes: int,
    *,
    helpers: Sequence[Member] = (),
    force_split: bool = False,
    max_rtt_ms: float = MAX_SPLIT_RTT_MS,
) -> Plan:
    """Decide how ``me`` takes part in serving a model of ``model_bytes``.

    ``peers``: the other non-client members that declared the model (the election group);
    ``helpers``: idle workers (an rpc-server, no model of their own) that may lend memory without
    holding the file. The host is the group member with the highest capacity, ties to the larger
    id (RTT plays no part in the election). The host picks workers among peers and helpers: same
    llama.cpp build, RTT within ``max_rtt_ms`` (unknown counts as eligible but sorts last), lowest
    RTT first, until the total capacity reaches size x 1.1.
    """
    need = int(model_bytes * FIT_FACTOR)
    if not force_split and fits_solo(me.capacity, model_bytes):
        return Plan(PlanKind.SOLO, host=me.node_id, reason="fits on this node")
    group = [me, *peers]
    host = max(group, key=_host_key)
    if host.node_id != me.node_id:
        return Plan(
            PlanKind.WORKER,
            host=host.node_id,
            reason=f"{host.node_id[:5].hex()} hosts (capacity {host.capacity / 1e9:.2f} GB)",
        )
    excluded: list[tuple[PeerId, str]] = []
    eligible: list[Member] = []
    for peer in [*peers, *helpers]:
        if peer.build_id != me.build_id:
            excluded.append(
                (peer.node_id, f"llama.cpp build {peer.build_id or 'unknown'} != {me.build_id}")
            )
        elif not peer.rpc_ready:
            excluded.append((peer.node_id, "no rpc-server running"))
        elif peer.rtt_ms is not None and peer.rtt_ms > max_rtt_ms:
            excluded.append((peer.node_id, f"RTT {peer.rtt_ms:.0f} ms > {max_rtt_ms:.0f} ms"))
        elif peer.capacity <= 0:
            excluded.append((peer.node_id, "offers no capacity"))
        else:
            eligible.append(peer)
    eligible.sort(key=lambda p: (p.rtt_ms is None, p.rtt_ms or 0.0, p.node_id))
    chosen: list[Member] = []
    total = me.capacity
    for peer in eligible:
        if total >= need and (chosen or not force_split):
            break
        chosen.append(peer)
        total += peer.capacity
    if total < need or not chosen:
        missing = max(0, need - total)
        return Plan(
            PlanKind.WAIT,
            host=me.node_id,
            reason=(
                f"needs {need / 1e9:.2f} GB, the mesh offers {total / 1e9:.2f} GB "
                f"({missing / 1e9:.2f} GB missing); waiting for more peers"
                if missing
                else "no eligible worker; waiting for a peer"
            ),
            excluded=tuple(excluded),
        )
    split = tensor_split(me.capacity, [p.capacity for p in chosen])
    return Plan(
        PlanKind.HOST,
        host=me.node_id,
        workers=tuple(p.node_id for p in chosen),
        tensor_split=split,
        reason=f"hosting with {len(chosen)} worker(s), split {split}",
        excluded=tuple(excluded),
    )


def cpu_host_offload(layers: int, split: str | None) -> int:
    """Layers a CPU host offloads to its RPC workers.

    On a CPU build the RPC devices are the only offload targets, so ``--tensor-split`` cannot keep
    layers on the host: ``-ngl`` does. The workers get their share of the ``layers + 1`` offloadable
    layers (the output layer counts as one); the host's share is the split's last value.
    """
    host_share = float(split.rsplit(",", 1)[-1]) if split else 0.0
    return max(1, round((layers + 1) * (1.0 - host_share)))
