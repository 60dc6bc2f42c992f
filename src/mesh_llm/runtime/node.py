"""The composition root: builds a node from its parts and runs it until shutdown.

Startup order: resolve and validate models -> bind :9337 and :3131 (fail fast on a taken port) ->
locate/build llama.cpp -> launch one supervised llama-server per model. The API answers from the
first second (503 until a model is ready).

Shutdown order: stop accepting, cancel client streams, stop children, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh_llm import __version__
from mesh_llm.api import ChangeHub, ManagementServer
from mesh_llm.errors import ConfigError, MeshLlmError, TransportError
from mesh_llm.inference import (
    Backend,
    BackendBinaries,
    LaunchSpec,
    PidRegistry,
    ServerFeatures,
    ServerState,
    ServerSupervisor,
    choose_ctx_size,
    ensure_backend,
    llama_server_argv,
    reap_recorded_children,
)
from mesh_llm.models import GgufInfo, ResolvedModel, identity_hash, read_gguf_info, resolve_model
from mesh_llm.network import (
    Ingress,
    RoutingSnapshot,
    Target,
    UpstreamStream,
    connect_local,
)
from mesh_llm.protocol import NodeRole, PeerAnnouncement
from mesh_llm.protocol import ServedModel as WireServedModel
from mesh_llm.runtime.config import NodeConfig
from mesh_llm.runtime.mesh_link import MeshLink
from mesh_llm.system import GB, HardwareSurvey, capacity_bytes, state_dir, survey_hardware

__all__ = ["Node", "ServedModel"]

log = logging.getLogger(__name__)

FIT_FACTOR = 1.1
SEEN_MODEL_TTL_S = 1800.0  # a model served within this window and gone now gets 503, not fallback


@dataclass(slots=True)
class ServedModel:
    """A model this node serves locally and the supervisor running its llama-server."""

    name: str
    resolved: ResolvedModel
    info: GgufInfo
    ctx_size: int
    supervisor: ServerSupervisor
    task: asyncio.Task[None] | None = None


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def server_features(binary: Path) -> ServerFeatures:
    try:
        out = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ServerFeatures()
    return ServerFeatures.from_help(out.stdout + out.stderr)


class Node:
    """One mesh-llm node."""

    def __init__(self, config: NodeConfig, *, out: Callable[[str], None] | None = None) -> None:
        self.config = config
        self._out = out or (lambda line: print(line, flush=True))  # noqa: T201 - startup summary
        self.hub = ChangeHub()
        self.state_dir = state_dir()
        self.registry = PidRegistry(self.state_dir / "children.json")
        self.survey: HardwareSurvey | None = None
        self.capacity = 0
        self.binaries: BackendBinaries | None = None
        self.models: list[ServedModel] = []
        self.ingress: Ingress | None = None
        self.tunnel_ingress: Ingress | None = None
        self.console: ManagementServer | None = None
        self.mesh: MeshLink | None = None
        self._identity: dict[str, str] = {}
        self._seen_models: dict[str, float] = {}
        self.started_at = time.time()
        self._stop = asyncio.Event()

    # -------------------------------------------------------------------------------- routing

    def routing_snapshot(self) -> RoutingSnapshot:
        """Local llama-servers first, then HOST peers reached through HTTP tunnels."""
        local = self.local_snapshot()
        if self.mesh is None:
            return local
        targets: dict[str, list[Target]] = {m: list(t) for m, t in local.targets.items()}
        for model, remote in self.mesh.remote_targets().items():
            targets.setdefault(model, []).extend(remote)
        now = time.monotonic()
        for model in targets:
            self._seen_models[model] = now
        unavailable = frozenset(
            m
            for m, seen in self._seen_models.items()
            if m not in targets and now - seen < SEEN_MODEL_TTL_S
        )
        return RoutingSnapshot(targets=targets, serving=local.serving, unavailable=unavailable)

    async def connect_target(self, target: Target) -> UpstreamStream:
        if target.local_port is not None:
            return await connect_local(target)
        if self.mesh is None or self.mesh.service is None or target.peer_id is None:
            raise TransportError(f"no route to {target.key}")
        stream: UpstreamStream = await self.mesh.service.open_http_tunnel(target.peer_id)
        return stream

    def _on_demand(self, model: str) -> None:
        if self.mesh is not None:
            self.mesh.record_request(model)

    def local_snapshot(self) -> RoutingSnapshot:
        """Only this node's own llama-servers: what requests arriving through a tunnel may use."""
        targets: dict[str, list[Target]] = {}
        for model in self.models:
            sup = model.supervisor
            if sup.state is ServerState.READY and sup.port is not None:
                targets.setdefault(model.name, []).append(
                    Target(
                        model=model.name,
                        key=f"local:{sup.port}",
                        local_port=sup.port,
                        peer_id=None,
                        context_length=model.ctx_size,
                    )
                )
        return RoutingSnapshot(targets=targets, serving=bool(targets))

    def models_listing(self) -> list[dict[str, object]]:
        """Every model the mesh can answer right now (local ones first)."""
        listing: list[dict[str, object]] = []
        for name, candidates in self.routing_snapshot().targets.items():
            if not candidates:
                continue
            listing.append(
                {
                    "id": name,
                    "object": "model",
                    "created": int(self.started_at),
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

    # --------------------------------------------------------------------------------- status

    def _changed(self) -> None:
        """Local state changed: refresh the event stream and re-announce ourselves."""
        self.hub.changed()
        if self.mesh is not None and self.mesh.transport is not None:
            self.mesh.announce(self.self_announcement())

    def self_announcement(self) -> PeerAnnouncement:
        assert self.mesh is not None
        assert self.mesh.transport is not None
        ready = [m for m in self.models if m.supervisor.state is ServerState.READY]
        if self.config.client:
            role = NodeRole.CLIENT
        elif ready:
            role = NodeRole.HOST
        else:
            role = NodeRole.WORKER
        api_port = self.ingress.port if self.ingress else self.config.port
        return PeerAnnouncement(
            endpoint_id=self.mesh.transport.node_id_bytes,
            role=role,
            http_port=api_port if role is NodeRole.HOST else None,
            version=__version__,
            addr=self.mesh.transport.addr(),
            serving_models=tuple(m.name for m in self.models),
            hosted_models=tuple(m.name for m in ready),
            hosted_models_known=True,
            catalog_models=tuple(self.config.models),
            primary_serving=self.models[0].name if self.models else None,
            served_models=tuple(
                WireServedModel(
                    m.name,
                    self._identity.get(m.name),
                    m.ctx_size,
                    m.supervisor.state is ServerState.READY,
                )
                for m in self.models
            ),
            vram_bytes=self.capacity,
            is_soc=self.survey.is_soc if self.survey else None,
        )

    def node_status(self) -> str:
        if self.config.client:
            return "Client"
        if any(m.supervisor.state is ServerState.READY for m in self.models):
            return "Serving"
        if self.models:
            return "Starting"
        return "Standby" if self.mesh is not None and self.mesh.bootstrap else "Idle"

    def status(self) -> dict[str, object]:
        survey = self.survey
        primary = self.models[0] if self.models else None
        ready = [m.name for m in self.models if m.supervisor.state is ServerState.READY]
        binaries = self.binaries
        return {
            "version": __version__,
            "node_id": self.mesh.node_id[:10] if self.mesh and self.mesh.node_id else None,
            "node_id_full": self.mesh.node_id if self.mesh else None,
            "token": self.mesh.token if self.mesh else None,
            "mesh_id": self.mesh.membership.mesh_id if self.mesh and self.mesh.membership else None,
            "node_status": self.node_status(),
            "is_host": bool(ready),
            "is_client": self.config.client,
            "llama_ready": bool(ready),
            "model_name": primary.name if primary else None,
            "models": [m.name for m in self.models],
            "available_models": [m.name for m in self.models],
            "requested_models": list(self.config.models),
            "serving_models": [m.name for m in self.models],
            "hosted_models": ready,
            "api_port": self.ingress.port if self.ingress else self.config.port,
            "console_port": self.console.port if self.console else self.config.console_port,
            "my_vram_gb": round(self.capacity / GB, 2),
            "model_size_gb": round(primary.info.file_size / GB, 3) if primary else 0.0,
            "peers": self.mesh.peers_status() if self.mesh else [],
            "mesh_models": [m["id"] for m in self.models_listing()],
            "inflight_requests": self.ingress.inflight if self.ingress else 0,
            "requests_total": self.ingress.requests_total if self.ingress else 0,
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
            "local_models": [self._model_status(m) for m in self.models],
            "uptime_secs": int(time.time() - self.started_at),
        }

    def _model_status(self, model: ServedModel) -> dict[str, object]:
        sup = model.supervisor
        return {
            "name": model.name,
            "path": str(model.resolved.path),
            "status": sup.state.value,
            "port": sup.port,
            "pid": sup.pid,
            "ctx_size": model.ctx_size,
            "restarts": sup.restarts,
            "error": sup.last_error if sup.state is not ServerState.READY else None,
            "log": str(sup.log_path) if sup.log_path else None,
            "architecture": model.info.architecture,
            "layers": model.info.block_count,
            "quantization": model.info.quantization,
            "size_bytes": model.info.file_size,
        }

    def runtime_models(self) -> dict[str, object]:
        return {
            "models": [
                {
                    "name": m.name,
                    "backend": "llama",
                    "status": "ready"
                    if m.supervisor.state is ServerState.READY
                    else "starting"
                    if m.supervisor.state in (ServerState.STARTING, ServerState.RESTARTING)
                    else m.supervisor.state.value,
                    "port": m.supervisor.port,
                }
                for m in self.models
            ]
        }

    def runtime_processes(self) -> dict[str, object]:
        return {
            "processes": [
                {
                    "name": m.name,
                    "backend": "llama",
                    "status": m.supervisor.state.value,
                    "port": m.supervisor.port,
                    "pid": m.supervisor.pid,
                }
                for m in self.models
                if m.supervisor.pid is not None
            ]
        }

    # -------------------------------------------------------------------------------- startup

    def _resolve_models(self) -> list[tuple[str, ResolvedModel, GgufInfo]]:
        refs = [str(p) for p in self.config.gguf] + list(self.config.models)
        resolved: list[tuple[str, ResolvedModel, GgufInfo]] = []
        seen: set[str] = set()
        for ref in refs:
            model = resolve_model(ref)
            info = read_gguf_info(model.path)
            if model.name in seen:
                continue
            seen.add(model.name)
            resolved.append((model.name, model, info))
        return resolved

    def _plan_models(self, resolved: list[tuple[str, ResolvedModel, GgufInfo]]) -> None:
        assert self.binaries is not None
        binaries = self.binaries
        features = server_features(binaries.llama_server)
        gpu = bool(binaries.backend and binaries.backend.is_gpu)
        used = 0
        for name, model, info in resolved:
            need = int(info.file_size * FIT_FACTOR)
            if used + need > self.capacity:
                raise ConfigError(
                    f"model {name} needs {need / GB:.2f} GB but this node offers "
                    f"{(self.capacity - used) / GB:.2f} GB "
                    "(raise --max-vram, or join a mesh to split it)"
                )
            used += info.file_size
            self._identity[name] = identity_hash(model.path)
            ctx = choose_ctx_size(
                self.capacity,
                used,
                trained_ctx=info.context_length,
                override=self.config.ctx_size,
            )
            log_path = self.state_dir / "logs" / f"llama-server-{_safe_name(name)}.log"

            def make_spec(
                port: int, model: ResolvedModel = model, ctx: int = ctx, log_path: Path = log_path
            ) -> LaunchSpec:
                argv = llama_server_argv(
                    binaries.llama_server,
                    model.path,
                    port=port,
                    ctx_size=ctx,
                    gpu=gpu,
                    features=features,
                    parallel=self.config.parallel,
                    alias=model.name,
                    extra=self.config.extra_llama_args,
                )
                return LaunchSpec(model.name, tuple(argv), port, log_path)

            supervisor = ServerSupervisor(
                name, make_spec, registry=self.registry, on_change=self._changed
            )
            self.models.append(ServedModel(name, model, info, ctx, supervisor))

    async def run(self) -> int:
        """Run until SIGINT/SIGTERM; returns the process exit code."""
        loop = asyncio.get_running_loop()
        interrupts = 0

        def on_signal() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1:
                os._exit(130)
            self._stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        reaped = reap_recorded_children(self.registry)
        if reaped:
            log.warning("stopped %d llama.cpp process(es) left by a previous run", reaped)
        if self.config.client and (self.config.models or self.config.gguf):
            raise ConfigError("--client runs no models; drop --model/--gguf or --client")
        resolved = self._resolve_models() if not self.config.client else []
        self.survey = survey_hardware()
        self.capacity = (
            0 if self.config.client else capacity_bytes(self.survey, self.config.max_vram_gb)
        )

        self.ingress = Ingress(
            host=self.config.bind_host,
            port=self.config.port,
            snapshot=self.routing_snapshot,
            connect=self.connect_target,
            models_listing=self.models_listing,
            on_demand=self._on_demand,
            on_target_failed=self._on_target_failed,
        )
        # Requests arriving through an HTTP tunnel go to this loopback-only ingress, which routes
        # to local llama-servers only: a tunnelled request is never forwarded again (no loops).
        self.tunnel_ingress = Ingress(
            host="127.0.0.1",
            port=0,
            snapshot=self.local_snapshot,
            connect=connect_local,
            models_listing=self.models_listing,
        )
        self.mesh = MeshLink(
            self.config,
            self.state_dir,
            tunnel_port=self._tunnel_port,
            on_change=self.hub.changed,
        )
        self.console = ManagementServer(
            host=self.config.bind_host,
            port=self.config.console_port,
            status=self.status,
            runtime_models=self.runtime_models,
            runtime_processes=self.runtime_processes,
            hub=self.hub,
        )
        await self.ingress.start()
        try:
            await self.console.start()
            await self.tunnel_ingress.start()
            await self.mesh.start()
        except MeshLlmError:
            await self._close_servers()
            raise
        try:
            if resolved:
                backend = Backend(self.config.backend) if self.config.backend else None
                self.binaries = await asyncio.to_thread(
                    ensure_backend,
                    self.config.bin_dir,
                    backend,
                    progress=lambda msg: self._out(f"  {msg}"),
                )
                self._plan_models(resolved)
            self._print_summary()
            async with asyncio.TaskGroup() as group:
                mesh_task = group.create_task(self.mesh.run())
                self._changed()
                for model in self.models:
                    model.task = group.create_task(model.supervisor.run())
                group.create_task(self._announce_ready())
                await self._stop.wait()
                self._out("mesh-llm: shutting down")
                await self._shutdown()
                mesh_task.cancel()
        finally:
            await self._close_servers()
        return 0

    async def _announce_ready(self) -> None:
        for model in self.models:
            ready = asyncio.ensure_future(model.supervisor.wait_ready())
            assert model.task is not None
            done, _ = await asyncio.wait({ready, model.task}, return_when=asyncio.FIRST_COMPLETED)
            if ready in done:
                self._out(
                    f"mesh-llm: {model.name} ready "
                    f"(llama-server on 127.0.0.1:{model.supervisor.port})"
                )
            else:
                ready.cancel()
                self._out(f"mesh-llm: {model.name} failed: {model.supervisor.last_error}")

    def _print_summary(self) -> None:
        assert self.ingress is not None
        assert self.console is not None
        host = "0.0.0.0" if self.config.listen_all else "127.0.0.1"
        self._out(f"mesh-llm {__version__}")
        if self.mesh is not None and self.mesh.token:
            self._out(f"Invite: {self.mesh.token}")
        self._out(f"  OpenAI API: http://{host}:{self.ingress.port}/v1")
        self._out(f"  Console:    http://{host}:{self.console.port}")
        self._out(f"  Capacity:   {self.capacity / GB:.1f} GB")
        if self.binaries:
            self._out(
                f"  llama.cpp:  {self.binaries.build_id} ({self.binaries.llama_server.parent})"
            )
        for model in self.models:
            self._out(
                f"  Model:      {model.name} ({model.info.file_size / 1e6:.0f} MB, "
                f"ctx {model.ctx_size})"
                " loading..."
            )

    def _tunnel_port(self) -> int | None:
        if self.config.client or self.tunnel_ingress is None:
            return None
        return self.tunnel_ingress.port

    def _on_target_failed(self, target: Target) -> None:
        log.info("target %s for %s failed", target.key, target.model)

    async def _shutdown(self) -> None:
        """Stop accepting, cancel client streams, announce leaving, stop children."""
        if self.ingress is not None:
            await self.ingress.close()
        if self.tunnel_ingress is not None:
            await self.tunnel_ingress.close()
        if self.mesh is not None:
            await self.mesh.leave_and_close()
        await asyncio.gather(*(m.supervisor.stop() for m in self.models))
        for model in self.models:
            if model.task is not None:
                model.task.cancel()

    async def _close_servers(self) -> None:
        for ingress in (self.ingress, self.tunnel_ingress):
            if ingress is not None:
                with contextlib.suppress(MeshLlmError):
                    await ingress.close()
        if self.mesh is not None:
            with contextlib.suppress(MeshLlmError):
                await self.mesh.leave_and_close()
        if self.console is not None:
            with contextlib.suppress(MeshLlmError):
                await self.console.close()
        await asyncio.gather(*(m.supervisor.stop() for m in self.models))
