"""The node's configuration, built by the CLI from flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mesh_llm.discovery import DiscoveryTiming
from mesh_llm.inference import BuildOptions

__all__ = ["NodeConfig"]


@dataclass(frozen=True, slots=True)
class NodeConfig:
    models: tuple[str, ...] = ()
    gguf: tuple[Path, ...] = ()
    port: int = 9337
    console_port: int = 3131
    listen_all: bool = False
    allowed_hosts: tuple[str, ...] = ()
    """``--allow-host``: more ``Host`` names the loopback-bound API and console answer
    (protocol/hosts; ``*``: any)."""
    max_vram_gb: float | None = None
    ctx_size: int | None = None
    bin_dir: Path | None = None
    device: str | None = None
    backend: str | None = None
    build: BuildOptions = field(default_factory=BuildOptions)
    """How llama.cpp is built when no binaries are found (``MESH_LLM_LLAMA_*`` variables)."""
    parallel: int = 8
    split: bool = False
    client: bool = False
    join: tuple[str, ...] = ()
    """Invite tokens to try in order (``--join``, ``--join-file``, ``MESH_LLM_JOIN``)."""
    mesh_secret: str | None = None
    """``--mesh-secret`` (or its file or environment variable): the mesh is private; None: the
    invite tokens' mesh key if they carry one, else an open mesh."""
    api_keys: tuple[str, ...] = ()
    """Keys :9337 and :3131's mutating routes require (``--api-key``); empty: open."""
    relays: tuple[str, ...] = ()
    no_relay: bool = False
    bind_ip: str | None = None
    bind_port: int | None = None
    mesh_name: str | None = None
    publish: bool = False
    """Publish the mesh on Nostr (``--publish``; ``--mesh-name`` implies it)."""
    auto: bool = False
    """Discover a mesh on Nostr and join it, or start one (``--auto``)."""
    nostr_relays: tuple[str, ...] = ()
    """``--nostr-relay``; empty: the default public relays."""
    max_clients: int = 0
    """Withdraw the listing while this many clients are connected (0: unlimited)."""
    region: str | None = None
    discovery_timing: DiscoveryTiming = field(default_factory=DiscoveryTiming)
    """Publish, watchdog and rediscovery intervals (``MESH_LLM_DISCOVERY_TIME_SCALE`` scales
    them, for tests and benchmarks)."""
    extra_llama_args: tuple[str, ...] = field(default_factory=tuple)
    chat_template_file: Path | None = None
    """Overrides every model's chat template (``--chat-template-file``)."""
    embeddings: bool = False
    """Also run an embedding llama-server per chat model (``--embeddings``)."""
    model_substitution: bool = True
    """Answer a request for a model nobody serves with another model (``x-mesh-llm-model``
    names it); False (``--no-model-substitution``): 404 ``model_not_found``."""
    cold_start_timeout: float = 120.0
    """How long a request for a model nobody serves (but some node can load) waits for it
    (``--cold-start-timeout``; 0: no cold starts, such requests are answered at once)."""
    standby: bool = True
    """A node given no model picks one, or stands by and promotes on demand (``--no-standby``:
    it only relays)."""
    ephemeral_key: bool = False
    """Use a fresh identity for this run instead of the state dir's key
    (``MESH_LLM_EPHEMERAL_KEY``; a ``--client`` always does)."""
    iroh_fast: bool = True
    """Install the iroh fast path when binding the endpoint (``MESH_LLM_IROH_FAST=0``: off;
    docs/DESIGN.md "The mesh")."""
    native_relay: bool = True
    """Relay streamed bytes with the C loops when they build (``MESH_LLM_NATIVE_RELAY=0``: off,
    the relays stay in Python)."""

    @property
    def bind_host(self) -> str:
        return "0.0.0.0" if self.listen_all else "127.0.0.1"
