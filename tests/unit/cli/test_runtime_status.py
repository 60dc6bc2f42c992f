"""``mesh-llm status`` rendering for people (render_status over a status dict)."""

from __future__ import annotations

from mesh_llm.cli.commands.runtime import render_status


def test_render_status_full() -> None:
    status = {
        "node_id": "abc123",
        "node_status": "Serving",
        "my_vram_gb": 24.0,
        "standby_reason": None,
        "local_models": [
            {"name": "qwen", "status": "ready", "port": 41001},
            {"name": "llama", "status": "ready", "port": 41002, "draining": True},
            {"name": "smol", "status": "loading"},
        ],
        "mesh_models": ["llama", "qwen", "smol"],
        "demand": [
            {"model": "qwen", "request_count": 12, "last_active_secs_ago": 3},
            {"model": "llama", "request_count": 4, "last_active_secs_ago": 60},
        ],
        "peers": [{"short_id": "d75a9801", "role": "Host", "hosted_models": ["qwen", "phi"]}],
    }
    assert render_status(status).splitlines() == [
        "node abc123: Serving  (24.0 GB offered)",
        "models here:",
        "  qwen: ready on 127.0.0.1:41001",
        "  llama: ready on 127.0.0.1:41002 (draining)",
        "  smol: loading",
        "mesh serves: llama, qwen, smol",
        "  demand llama: 4 requests, last 60 s ago",
        "  demand qwen: 12 requests, last 3 s ago",
        "peers: 1",
        "  d75a9801 Host: qwen, phi",
    ]


def test_render_status_standby_and_empty() -> None:
    status = {
        "node_id": None,
        "node_status": "Standby",
        "standby_reason": "no recent demand for a model on disk here",
        "local_models": [],
        "peers": [{"short_id": "x", "role": "Worker"}],
    }
    assert render_status(status).splitlines() == [
        "node -: Standby  (0 GB offered)",
        "  standby: no recent demand for a model on disk here",
        "models here: none",
        "mesh serves: nothing",
        "peers: 1",
        "  x Worker: -",
    ]
