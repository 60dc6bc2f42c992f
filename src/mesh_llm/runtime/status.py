"""The JSON the node shows: ``/v1/models`` entries, ``/api/status``, ``/api/runtime*``.

Pure renderings of a :class:`~mesh_llm.runtime.view.NodeView`; the field names and state strings
are what users' scripts read, so they never change (fields are only ever added).
"""

from __future__ import annotations

from typing import assert_never

from mesh_llm import __version__
from mesh_llm.mesh import JoinStatus
from mesh_llm.network import RoutingSnapshot
from mesh_llm.runtime.states import RunnerMode, RunnerState
from mesh_llm.runtime.view import NodeView, PeerRow, RunnerView
from mesh_llm.system import GB

__all__ = [
    "join_json",
    "models_listing",
    "peer_json",
    "runner_json",
    "runtime_models",
    "runtime_processes",
    "status",
]


def models_listing(routing: RoutingSnapshot, started_at: float) -> list[dict[str, object]]:
    """Every model the mesh can answer right now (local ones first)."""
    listing: list[dict[str, object]] = []
    for name, candidates in routing.targets.items():
        if not candidates:
            continue
        listing.append(
            {
                "id": name,
                "object": "model",
                "created": int(started_at),
                "owned_by": "mesh-llm",
                "display_name": name,
                "capabilities": ["text"],
                "multimodal_status": "none",
                "vision_status": "none",
                "audio_status": "none",
                "reasoning_status": "none",
                "context_length": candidates[0].context_length,
                "node_count": len(candidates),
            }
        )
    return listing


def status(view: NodeView) -> dict[str, object]:
    survey = view.survey
    primary = view.runners[0] if view.runners else None
    ready = view.ready_models
    binaries = view.binaries
    return {
        "version": __version__,
        "node_id": view.node_id[:10] if view.node_id else None,
        "node_id_full": view.node_id,
        "token": view.token,
        "mesh_id": view.mesh_id,
        "node_status": view.state.value,
        "is_host": bool(ready),
        "is_client": view.client,
        "llama_ready": bool(ready),
        "model_name": primary.name if primary else None,
        "models": [r.name for r in view.runners],
        "available_models": [r.name for r in view.runners],
        "requested_models": list(view.requested_models),
        "serving_models": [r.name for r in view.runners],
        "hosted_models": ready,
        "api_port": view.api_port,
        "console_port": view.console_port,
        "my_vram_gb": round(view.capacity / GB, 2),
        "model_size_gb": round(primary.size_bytes / GB, 3) if primary else 0.0,
        "peers": [peer_json(row) for row in view.peers],
        "mesh_models": [m["id"] for m in models_listing(view.routing, view.started_at)],
        "inflight_requests": view.inflight,
        "requests_total": view.requests_total,
        "model_substitution": {
            "enabled": view.model_substitution,
            "substituted_total": view.substitutions_total,
            "by_model": dict(view.substitutions),
        },
        "my_hostname": survey.hostname if survey else None,
        "my_is_soc": survey.is_soc if survey else False,
        "gpus": [{"name": g.name, "vram_bytes": g.vram_bytes} for g in survey.gpus]
        if survey
        else [],
        "llama_cpp": {
            "commit": binaries.commit,
            "backend": binaries.backend.value if binaries.backend else None,
            "build_id": binaries.build_id,
            "llama_server": str(binaries.llama_server),
        }
        if binaries
        else None,
        "local_models": [runner_json(r) for r in [*view.runners, *view.sidecars]],
        "rpc_server": dict(view.rpc) if view.rpc is not None else None,
        "relay": dict(view.relay) if view.relay is not None else None,
        "uptime_secs": int(view.now - view.started_at),
        "join": join_json(view.join),
        "demand": [
            {
                "model": d.model,
                "request_count": d.request_count,
                "last_active_secs_ago": max(0, int(view.now - d.last_active)),
            }
            for d in view.demand
        ],
        "standby_reason": view.standby_reason,
        "models_on_disk": [
            {"name": m.model, "size_bytes": m.size_bytes, "nodes": list(m.nodes)}
            for m in view.on_disk
        ],
    }


def join_json(join: JoinStatus | None) -> dict[str, object] | None:
    """How joining through ``--join`` goes; None when the node was given no token."""
    if join is None:
        return None
    return {
        "state": join.state.value,
        "reason": join.reason,
        "peer": join.peer_id.hex(),
        "short_id": join.short_id,
        "attempts": join.attempts,
        "summary": join.describe(),
    }


def peer_json(row: PeerRow) -> dict[str, object]:
    view = row.peer
    return {
        "id": view.peer_id.hex(),
        "short_id": view.peer_id[:5].hex(),
        "role": view.role.name.capitalize(),
        "models": list(view.serving_models),
        "serving_models": list(view.serving_models),
        "hosted_models": list(view.hosted_models),
        "hosted_models_known": True,
        "vram_gb": round(view.vram_bytes / 1e9, 2),
        "version": view.version,
        "hostname": view.hostname,
        "llama_build": view.llama_build,
        "rtt_ms": view.rtt_ms,
        "direct": view.direct,
        "connected": view.connected,
        "last_seen_secs_ago": round(view.last_seen_age, 1),
        "tunnel_bytes_sent": row.tunnel_sent,
        "tunnel_bytes_received": row.tunnel_received,
    }


def runner_json(runner: RunnerView) -> dict[str, object]:
    """One ``local_models`` entry."""
    data: dict[str, object] = {
        "name": runner.name,
        "mode": runner.mode.value,
        "path": str(runner.path),
        "status": runner.state.value,
        "port": runner.port,
        "pid": runner.pid,
        "ctx_size": runner.ctx_size,
        "restarts": runner.restarts,
        "error": runner.last_error if not runner.ready else None,
        "log": str(runner.log_path) if runner.log_path else None,
        "architecture": runner.architecture,
        "layers": runner.layers,
        "quantization": runner.quantization,
        "size_bytes": runner.size_bytes,
        "draining": runner.draining,
    }
    if runner.mode is RunnerMode.SPLIT:
        plan = runner.plan
        data["split"] = (
            {
                "role": plan.kind.value,
                "host": plan.host.hex() if plan.host else None,
                "workers": [w.hex() for w in plan.workers],
                "tensor_split": plan.tensor_split,
                "reason": plan.reason,
                "excluded": [{"id": p.hex(), "reason": why} for p, why in plan.excluded],
            }
            if plan
            else None
        )
    data["role"] = runner.role.value
    return data


def _runtime_status(state: RunnerState) -> str:
    """``/api/runtime/models`` folds restarting into starting."""
    match state:
        case RunnerState.STARTING | RunnerState.RESTARTING:
            return "starting"
        case (
            RunnerState.READY
            | RunnerState.IDLE
            | RunnerState.FAILED
            | RunnerState.STOPPED
            | RunnerState.WORKER
            | RunnerState.WAIT
        ):
            return state.value
        case _:
            assert_never(state)


def runtime_models(view: NodeView) -> dict[str, object]:
    return {
        "models": [
            {
                "name": r.name,
                "backend": "llama",
                "status": _runtime_status(r.state),
                "port": r.port,
            }
            for r in view.runners
        ]
    }


def runtime_processes(view: NodeView) -> dict[str, object]:
    return {
        "processes": [
            {
                "name": r.name,
                "role": r.role.value,
                "backend": "llama",
                "status": r.state.value,
                "port": r.port,
                "pid": r.pid,
            }
            for r in [*view.runners, *view.sidecars]
            if r.pid is not None
        ]
    }
