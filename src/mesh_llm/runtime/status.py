"""The JSON the node shows: ``/v1/models`` entries, ``/api/status``, ``/api/runtime*``.

Built on demand from the node's in-memory state; nothing here changes that state.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mesh_llm import __version__
from mesh_llm.inference import PlanKind
from mesh_llm.network import native_relay_status
from mesh_llm.runtime.runners import ModelRunner, SplitRunner
from mesh_llm.system import GB

if TYPE_CHECKING:
    from mesh_llm.runtime.node import Node

__all__ = ["models_listing", "node_status", "runtime_models", "runtime_processes", "status"]


def models_listing(node: Node) -> list[dict[str, object]]:
    """Every model the mesh can answer right now (local ones first)."""
    listing: list[dict[str, object]] = []
    for name, candidates in node.routing_snapshot().targets.items():
        if not candidates:
            continue
        listing.append(
            {
                "id": name,
                "object": "model",
                "created": int(node.started_at),
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


def node_status(node: Node) -> str:
    if node.config.client:
        return "Client"
    split = [m for m in node.models if isinstance(m, SplitRunner) and m.plan is not None]
    if any(m.ready for m in node.models):
        return "Serving (split)" if any(m.ready for m in split) else "Serving"
    if any(m.plan is not None and m.plan.kind is PlanKind.WORKER for m in split):
        return "Worker (split)"
    if node.models:
        return "Starting"
    return "Standby" if node.mesh is not None and node.mesh.bootstrap else "Idle"


def status(node: Node) -> dict[str, object]:
    survey = node.survey
    primary = node.models[0] if node.models else None
    ready = [m.name for m in node.models if m.ready]
    binaries = node.binaries
    return {
        "version": __version__,
        "node_id": node.mesh.node_id[:10] if node.mesh and node.mesh.node_id else None,
        "node_id_full": node.mesh.node_id if node.mesh else None,
        "token": node.mesh.token if node.mesh else None,
        "mesh_id": node.mesh.membership.mesh_id if node.mesh and node.mesh.membership else None,
        "node_status": node_status(node),
        "is_host": bool(ready),
        "is_client": node.config.client,
        "llama_ready": bool(ready),
        "model_name": primary.name if primary else None,
        "models": [m.name for m in node.models],
        "available_models": [m.name for m in node.models],
        "requested_models": list(node.config.models),
        "serving_models": [m.name for m in node.models],
        "hosted_models": ready,
        "api_port": node._api_port,
        "console_port": node.console.port if node.console else node.config.console_port,
        "my_vram_gb": round(node.capacity / GB, 2),
        "model_size_gb": round(primary.info.file_size / GB, 3) if primary else 0.0,
        "peers": node.mesh.peers_status() if node.mesh else [],
        "mesh_models": [m["id"] for m in models_listing(node)],
        "inflight_requests": node.ingress.inflight if node.ingress else 0,
        "requests_total": node.ingress.requests_total if node.ingress else 0,
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
        "local_models": [
            {**m.status(), "role": role(node, m)} for m in [*node.models, *node.embedders]
        ],
        "rpc_server": node.rpc_status(),
        "relay": native_relay_status(),
        "uptime_secs": int(time.time() - node.started_at),
    }


def runtime_models(node: Node) -> dict[str, object]:
    return {
        "models": [
            {
                "name": m.name,
                "backend": "llama",
                "status": "ready"
                if m.ready
                else "starting"
                if m.state in ("starting", "restarting")
                else m.state,
                "port": m.port,
            }
            for m in node.models
        ]
    }


def runtime_processes(node: Node) -> dict[str, object]:
    return {
        "processes": [
            {
                "name": m.name,
                "role": role(node, m),
                "backend": "llama",
                "status": m.state,
                "port": m.port,
                "pid": m.pid,
            }
            for m in [*node.models, *node.embedders]
            if m.pid is not None
        ]
    }


def role(node: Node, runner: ModelRunner) -> str:
    """``chat``, or ``embeddings`` for an embedding model or a chat model's sidecar."""
    if runner in node.embedders or runner.name in node._embedding_models:
        return "embeddings"
    return "chat"
