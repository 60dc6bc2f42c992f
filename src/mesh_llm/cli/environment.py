"""Node settings taken from the environment: read here, by the CLI, and passed down as values.

The code below the CLI reads no ``MESH_LLM_*`` switch itself: a node gets them in its
:class:`~mesh_llm.runtime.NodeConfig`, a ``backend`` command as arguments. (Where files live,
``MESH_LLM_HOME``/``MESH_LLM_CACHE``/``MESH_LLM_MODELS_DIR``, stays with ``system.paths``; the
invite tokens and API keys are read by :mod:`.credentials`; the llama.cpp build options by
``BuildOptions.from_environ``.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from mesh_llm.errors import ConfigError

__all__ = [
    "BIN_DIR_ENV",
    "DISCOVERY_TIME_SCALE_ENV",
    "EPHEMERAL_KEY_ENV",
    "IROH_FAST_ENV",
    "NATIVE_RELAY_ENV",
    "FastPath",
    "bin_dir",
    "discovery_time_scale",
    "ephemeral_key",
    "fast_path",
    "switched_off",
]

IROH_FAST_ENV: Final = "MESH_LLM_IROH_FAST"
"""Off: bind the iroh endpoint without the fast path (docs/DESIGN.md "The mesh")."""
NATIVE_RELAY_ENV: Final = "MESH_LLM_NATIVE_RELAY"
"""Off: relay streamed bytes in Python instead of the C loops."""
BIN_DIR_ENV: Final = "MESH_LLM_BIN_DIR"
"""llama-server/rpc-server directory when ``--bin-dir`` is not given."""
EPHEMERAL_KEY_ENV: Final = "MESH_LLM_EPHEMERAL_KEY"
"""Non-empty: a fresh node identity for this run instead of the state dir's key."""
DISCOVERY_TIME_SCALE_ENV: Final = "MESH_LLM_DISCOVERY_TIME_SCALE"
"""Tests and benchmarks only: multiply Nostr discovery's intervals (publish every 60 s, watchdog
every 20-35 s, ...) by this positive factor, e.g. ``0.1``. Unset: the reference's intervals."""

_OFF: Final = frozenset({"0", "false", "no", "off"})


def switched_off(environ: Mapping[str, str], name: str) -> bool:
    """Whether ``name`` says ``0``/``false``/``no``/``off`` (any case, spaces ignored); unset
    or anything else leaves the switch on."""
    return environ.get(name, "").strip().lower() in _OFF


@dataclass(frozen=True, slots=True)
class FastPath:
    """The two optional speed-ups, each on unless its variable switches it off."""

    iroh_fast: bool = True
    native_relay: bool = True


def fast_path(environ: Mapping[str, str]) -> FastPath:
    """:data:`IROH_FAST_ENV` and :data:`NATIVE_RELAY_ENV` as values."""
    return FastPath(
        iroh_fast=not switched_off(environ, IROH_FAST_ENV),
        native_relay=not switched_off(environ, NATIVE_RELAY_ENV),
    )


def bin_dir(flag: Path | None, environ: Mapping[str, str]) -> Path | None:
    """``--bin-dir``, else :data:`BIN_DIR_ENV` (``~`` expanded), else None."""
    if flag is not None:
        return flag
    value = environ.get(BIN_DIR_ENV, "")
    return Path(value).expanduser() if value else None


def ephemeral_key(environ: Mapping[str, str]) -> bool:
    """:data:`EPHEMERAL_KEY_ENV` is set to anything non-empty."""
    return bool(environ.get(EPHEMERAL_KEY_ENV))


def discovery_time_scale(environ: Mapping[str, str]) -> float:
    """:data:`DISCOVERY_TIME_SCALE_ENV` as a factor (1.0 when unset or empty)."""
    raw = environ.get(DISCOVERY_TIME_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ConfigError(
            f"{DISCOVERY_TIME_SCALE_ENV}={raw!r}: expected a positive number (e.g. 0.1), "
            "or leave it unset"
        )
    return value
