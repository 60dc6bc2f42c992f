"""``GET /api/models``: the mesh's models, warm and cold, derived from the status JSON and catalog.

Pure: takes the ``/api/status`` dict and the catalog entries, returns ``{"mesh_models": [...]}``.
Warm models are the ones some node answers right now (``mesh_models``); cold ones are models on
some node's disk (``models_on_disk``: a request for one cold-starts it) and catalog entries nobody
serves. ``request_count``/``last_active_secs_ago`` come from the mesh's demand map (cumulative
counts over the 24 h activity window, not rates). The fit label compares a model's size with
this node's offered memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mesh_llm.models import CatalogEntry

__all__ = ["fit_label", "mesh_models"]

GB = 1e9


def fit_label(size_gb: float | None, vram_gb: float | None) -> tuple[str, str]:
    """Whether a model of ``size_gb`` fits in ``vram_gb`` (label, detail)."""
    if not size_gb or not vram_gb:
        return "Unknown", "no size or memory figure"
    detail = f"{size_gb:.2f} GB model, {vram_gb:.2f} GB offered here"
    if size_gb * 1.2 <= vram_gb:
        return "Likely comfortable", detail
    if size_gb * 1.05 <= vram_gb:
        return "Likely fits", detail
    if size_gb * 0.8 <= vram_gb:
        return "Possible with tradeoffs", detail
    return "Likely too large", detail


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def mesh_models(status: Mapping[str, Any], catalog: Iterable[CatalogEntry]) -> dict[str, object]:
    token = status.get("token") or "TOKEN"
    vram = status.get("my_vram_gb")
    vram_gb = float(vram) if isinstance(vram, int | float) else None
    warm = _names(status.get("mesh_models"))
    local: dict[str, Mapping[str, Any]] = {
        str(m.get("name")): m for m in status.get("local_models") or [] if isinstance(m, Mapping)
    }
    active: dict[str, list[str]] = {}
    me = status.get("node_id") or "self"
    for name in _names(status.get("hosted_models")):
        active.setdefault(name, []).append(str(me))
    for peer in status.get("peers") or []:
        if not isinstance(peer, Mapping):
            continue
        pid = str(peer.get("short_id") or peer.get("id") or "?")
        served = {*_names(peer.get("hosted_models")), *_names(peer.get("serving_models"))}
        for name in served:
            active.setdefault(name, []).append(pid)
    by_name: dict[str, CatalogEntry] = {e.name: e for e in catalog if not e.is_draft}
    demand: dict[str, Mapping[str, Any]] = {
        str(d.get("model")): d for d in status.get("demand") or [] if isinstance(d, Mapping)
    }
    on_disk: dict[str, Mapping[str, Any]] = {
        str(m.get("name")): m for m in status.get("models_on_disk") or [] if isinstance(m, Mapping)
    }
    order: Sequence[str] = list(
        dict.fromkeys([*warm, *(n for n in on_disk if n not in warm), *by_name])
    )
    out: list[dict[str, object]] = []
    for name in order:
        entry = by_name.get(name)
        loc = local.get(name)
        size_bytes = loc.get("size_bytes") if loc else None
        disk = on_disk.get(name)
        if not isinstance(size_bytes, int) and disk is not None:
            size_bytes = disk.get("size_bytes")
        if not isinstance(size_bytes, int) and entry is not None:
            size_bytes = entry.size_bytes
        wanted = demand.get(name)
        size_gb = round(size_bytes / GB, 3) if isinstance(size_bytes, int) else None
        label, detail = fit_label(size_gb, vram_gb)
        nodes = active.get(name, [])
        is_warm = name in warm
        out.append(
            {
                "name": name,
                "display_name": name,
                "status": "warm" if is_warm else "cold",
                "node_count": len(nodes) if nodes or not is_warm else 1,
                "active_nodes": nodes,
                "size_gb": size_gb,
                "mesh_vram_gb": None,
                "architecture": loc.get("architecture") if loc else None,
                "context_length": loc.get("ctx_size") if loc else None,
                "quantization": loc.get("quantization") if loc else None,
                "description": entry.description if entry else None,
                "multimodal": bool(entry and entry.mmproj),
                "vision": bool(entry and entry.mmproj),
                "audio": False,
                "reasoning": False,
                "tool_use": bool(entry and entry.chat_template),
                "moe": bool(entry and entry.moe),
                "embedding": bool(entry and entry.embedding),
                "draft_model": entry.draft if entry else None,
                "request_count": wanted.get("request_count") if wanted else None,
                "last_active_secs_ago": wanted.get("last_active_secs_ago") if wanted else None,
                "on_disk_nodes": list(disk.get("nodes") or []) if disk else [],
                "fit_label": label,
                "fit_detail": detail,
                "download_command": f"mesh-llm models download {name}" if entry else None,
                "load_command": f"mesh-llm load {name}",
                "run_command": f"mesh-llm --join {token} --model {name}",
                "auto_command": f"mesh-llm --model {name}",
            }
        )
    return {"mesh_models": out}
