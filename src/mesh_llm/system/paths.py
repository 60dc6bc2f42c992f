"""Where mesh-llm keeps its files.

- State (keys, pid registry, child logs): ``$MESH_LLM_HOME`` or ``~/.mesh-llm``; tests give
  every node its own.
- Cache (llama.cpp builds, RPC tensor cache): ``$MESH_LLM_CACHE`` or ``$XDG_CACHE_HOME/mesh-llm``
  (``~/.cache/mesh-llm``). Shared by every node of a user.
- Model store (models we download or extract ourselves): ``$MESH_LLM_MODELS_DIR`` or ``~/.models``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "hf_hub_cache", "models_dir", "state_dir"]


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def state_dir() -> Path:
    """The node's state directory, created on first use."""
    env = os.environ.get("MESH_LLM_HOME")
    path = Path(env).expanduser() if env else _home() / ".mesh-llm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """The per-user cache directory (builds, tensor caches), created on first use."""
    env = os.environ.get("MESH_LLM_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else _home() / ".cache") / "mesh-llm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """The local model store (``~/.models``), created on first use."""
    env = os.environ.get("MESH_LLM_MODELS_DIR")
    path = Path(env).expanduser() if env else _home() / ".models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def hf_hub_cache() -> Path:
    """The HF hub cache: ``HF_HUB_CACHE`` > ``HF_HOME/hub`` > ``~/.cache/huggingface/hub``."""
    if env := os.environ.get("HF_HUB_CACHE"):
        return Path(env).expanduser()
    if env := os.environ.get("HF_HOME"):
        return Path(env).expanduser() / "hub"
    return _home() / ".cache" / "huggingface" / "hub"
