"""The closed sets the node reports: runner states, node states, model roles.

Their values are the strings ``/api/status`` and ``/api/runtime*`` have always shown (users'
scripts match on them), so a member's value never changes.
"""

from __future__ import annotations

import enum
from typing import assert_never

from mesh_llm.inference import PlanKind, ServerState

__all__ = ["ModelRole", "NodeState", "RunnerMode", "RunnerState", "runner_state"]


class RunnerState(enum.StrEnum):
    """Where one model runner stands (the ``status`` of a ``local_models`` entry)."""

    IDLE = "idle"
    """No llama-server yet (a solo runner before its first start)."""
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"
    WORKER = "worker"
    """A split model another node hosts: this node lends its rpc-server."""
    WAIT = "wait"
    """A split model the mesh lacks the capacity for."""


class RunnerMode(enum.StrEnum):
    SOLO = "solo"
    SPLIT = "split"


class ModelRole(enum.StrEnum):
    CHAT = "chat"
    EMBEDDINGS = "embeddings"
    """A dedicated embedding model, or a chat model's embedding sidecar."""


class NodeState(enum.StrEnum):
    """The node as a whole (``node_status``)."""

    CLIENT = "Client"
    SERVING = "Serving"
    SERVING_SPLIT = "Serving (split)"
    WORKER_SPLIT = "Worker (split)"
    STARTING = "Starting"
    STANDBY = "Standby"
    """No model of its own, joined (or joining) a mesh."""
    IDLE = "Idle"


def runner_state(server: ServerState | None, plan: PlanKind | None, *, split: bool) -> RunnerState:
    """A runner's state from its llama-server's (None: none started) and, for a split runner,
    its current plan (None: not planned yet)."""
    if split:
        match plan:
            case None:
                return RunnerState.STARTING
            case PlanKind.WORKER:
                return RunnerState.WORKER
            case PlanKind.WAIT:
                return RunnerState.WAIT
            case PlanKind.HOST | PlanKind.SOLO:
                pass  # this node runs the llama-server: its state is the server's
            case _:
                assert_never(plan)
    match server:
        case None:
            return RunnerState.IDLE
        case ServerState.STARTING:
            return RunnerState.STARTING
        case ServerState.READY:
            return RunnerState.READY
        case ServerState.RESTARTING:
            return RunnerState.RESTARTING
        case ServerState.FAILED:
            return RunnerState.FAILED
        case ServerState.STOPPED:
            return RunnerState.STOPPED
        case _:
            assert_never(server)
