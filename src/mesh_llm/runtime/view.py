"""A frozen picture of the node at one moment, which :mod:`mesh_llm.runtime.status` renders.

The node builds a :class:`NodeView` on demand (:meth:`mesh_llm.runtime.Node.view`); everything
derived from it (the node state, the JSON) is a pure function of the view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mesh_llm.inference import BackendBinaries, Plan, PlanKind
from mesh_llm.mesh import JoinStatus, PeerView
from mesh_llm.network import RoutingSnapshot
from mesh_llm.runtime.states import ModelRole, NodeState, RunnerMode, RunnerState
from mesh_llm.system import HardwareSurvey

__all__ = ["DemandRow", "NodeView", "OnDiskRow", "PeerRow", "RunnerView", "node_state"]


@dataclass(frozen=True, slots=True)
class RunnerView:
    """One model runner (a model served solo, a split, or an embedding sidecar)."""

    name: str
    mode: RunnerMode
    role: ModelRole
    path: Path
    state: RunnerState
    ctx_size: int
    port: int | None = None
    pid: int | None = None
    restarts: int = 0
    last_error: str | None = None
    log_path: Path | None = None
    identity: str | None = None
    architecture: str = ""
    layers: int | None = None
    quantization: str | None = None
    size_bytes: int = 0
    plan: Plan | None = None
    """A split runner's current plan (None: solo, or not planned yet)."""
    draining: bool = False
    """Being unloaded: no new requests, the in-flight ones finish."""

    @property
    def ready(self) -> bool:
        return self.state is RunnerState.READY


@dataclass(frozen=True, slots=True)
class PeerRow:
    """One peer, with the bytes HTTP tunnels carried to and from it."""

    peer: PeerView
    tunnel_sent: int = 0
    tunnel_received: int = 0


@dataclass(frozen=True, slots=True)
class DemandRow:
    """One model of the gossiped demand map. Counts are cumulative (merged with max across the
    mesh over the 24 h activity window), not rates."""

    model: str
    request_count: int
    last_active: int
    """Unix seconds of the latest request anyone recorded."""


@dataclass(frozen=True, slots=True)
class OnDiskRow:
    model: str
    size_bytes: int
    nodes: tuple[str, ...]
    """Short ids of the nodes holding it ("self" for this one)."""


@dataclass(frozen=True, slots=True)
class NodeView:
    client: bool
    runners: tuple[RunnerView, ...]
    """The models this node serves (``--gguf`` then ``--model`` order)."""
    sidecars: tuple[RunnerView, ...]
    """Embedding sidecars of chat models (``--embeddings``)."""
    requested_models: tuple[str, ...]
    api_port: int
    console_port: int
    capacity: int
    routing: RoutingSnapshot
    """What this node can route to right now (local models first)."""
    started_at: float
    """Unix time."""
    now: float
    """Unix time of the view."""
    node_id: str | None = None
    """Hex endpoint id; None before the mesh is up."""
    token: str | None = None
    mesh_id: str | None = None
    bootstrap: bool = False
    """Given ``--join`` addresses."""
    join: JoinStatus | None = None
    peers: tuple[PeerRow, ...] = ()
    inflight: int = 0
    requests_total: int = 0
    model_substitution: bool = True
    substitutions_total: int = 0
    substitutions: tuple[tuple[str, int], ...] = ()
    """Unknown model name -> requests answered by another model (the ingress's table)."""
    survey: HardwareSurvey | None = None
    binaries: BackendBinaries | None = None
    rpc: Mapping[str, object] | None = None
    """The rpc-server and its tunnels (:meth:`mesh_llm.runtime.rpc_link.RpcLink.status`)."""
    relay: Mapping[str, object] | None = None
    """Whether relays run in C (:func:`mesh_llm.network.native_relay_status`)."""
    demand: tuple[DemandRow, ...] = ()
    """The mesh's demand map, busiest first."""
    standby_reason: str | None = None
    """Why a node with nothing to serve stands by."""
    on_disk: tuple[OnDiskRow, ...] = ()
    """Models on the disks of this node and its peers (what a cold start can load)."""

    @property
    def ready_models(self) -> list[str]:
        return [r.name for r in self.runners if r.ready]

    @property
    def state(self) -> NodeState:
        return node_state(self)


def node_state(view: NodeView) -> NodeState:
    if view.client:
        return NodeState.CLIENT
    planned = [r.plan for r in view.runners if r.plan is not None]
    if any(r.ready for r in view.runners):
        split_ready = any(r.ready and r.plan is not None for r in view.runners)
        return NodeState.SERVING_SPLIT if split_ready else NodeState.SERVING
    if any(plan.kind is PlanKind.WORKER for plan in planned):
        return NodeState.WORKER_SPLIT
    if view.runners:
        return NodeState.STARTING
    return NodeState.STANDBY if view.bootstrap else NodeState.IDLE
