"""The composition root: builds a node from its parts and runs it until shutdown.

Startup order: resolve and validate models -> bind :9337 and :3131 (fail fast on a taken port) ->
locate/build llama.cpp -> launch one supervised llama-server per model. The API answers from the
first second (503 until a model is ready).

Shutdown order: stop accepting, cancel client streams, stop children, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import assert_never

from mesh_llm import __version__
from mesh_llm.api import ChangeHub, ManagementServer
from mesh_llm.errors import ConfigError, MeshLlmError, TransportError
from mesh_llm.inference import (
    EMBEDDING_BATCH,
    EMBEDDING_PARALLEL,
    Backend,
    BackendBinaries,
    LaunchSpec,
    Member,
    PidRegistry,
    Plan,
    PlanKind,
    ServerFeatures,
    cpu_host_offload,
    ensure_backend,
    llama_server_argv,
    plan_model,
    reap_recorded_children,
)
from mesh_llm.mesh import JoinState
from mesh_llm.models import (
    GgufInfo,
    ResolvedModel,
    bundled_chat_template,
    identity_hash,
    read_gguf_info,
    resolve_model,
)
from mesh_llm.network import (
    ApiKeys,
    Ingress,
    RoutingSnapshot,
    Target,
    UpstreamStream,
    connect_local,
    native_relay_status,
    prepare_native_relay,
)
from mesh_llm.protocol import PeerAnnouncement
from mesh_llm.runtime import status as status_json
from mesh_llm.runtime.announce import self_announcement
from mesh_llm.runtime.config import NodeConfig
from mesh_llm.runtime.discovery_link import DiscoveryLink
from mesh_llm.runtime.home import acquire_home
from mesh_llm.runtime.launch_plan import LaunchInputs, ModelFacts, ModelLaunch, plan_launches
from mesh_llm.runtime.mesh_link import MeshLink
from mesh_llm.runtime.rpc_link import RpcLink
from mesh_llm.runtime.runners import ModelRunner, SoloRunner, SplitRunner
from mesh_llm.runtime.split_group import split_group
from mesh_llm.runtime.states import ModelRole, RunnerMode, RunnerState
from mesh_llm.runtime.timing import NodeTiming
from mesh_llm.runtime.view import NodeView
from mesh_llm.system import GB, HardwareSurvey, capacity_bytes, state_dir, survey_hardware

__all__ = ["Node"]

log = logging.getLogger(__name__)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80]


def _down_reasons(runners: Sequence[ModelRunner]) -> dict[str, str]:
    """Models whose llama-server crashed (restarting, or given up), with the reason: the 503 a
    request for one gets says why instead of a generic "not available"."""
    down: dict[str, str] = {}
    for runner in runners:
        if runner.state in (RunnerState.RESTARTING, RunnerState.FAILED) and runner.last_error:
            down[runner.name] = runner.last_error
    return down


def _ready_targets(runners: Sequence[ModelRunner]) -> dict[str, list[Target]]:
    targets: dict[str, list[Target]] = {}
    for runner in runners:
        port = runner.port
        if runner.ready and port is not None:
            targets.setdefault(runner.name, []).append(
                Target(
                    model=runner.name,
                    key=f"local:{port}",
                    local_port=port,
                    peer_id=None,
                    context_length=runner.ctx_size,
                )
            )
    return targets


def server_features(binary: Path, timeout: float = 30.0) -> ServerFeatures:
    try:
        out = subprocess.run(
            [str(binary), "--help"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ServerFeatures()
    return ServerFeatures.from_help(out.stdout + out.stderr)


def _model_facts(name: str, model: ResolvedModel, info: GgufInfo) -> ModelFacts:
    entry = model.catalog_entry
    template = entry.chat_template if entry is not None else None
    return ModelFacts(
        name=name,
        file_size=info.file_size,
        trained_ctx=info.context_length,
        architecture=info.architecture,
        pooling_type=info.pooling_type,
        catalog_embedding=entry is not None and entry.embedding,
        bundled_template=bundled_chat_template(template) if template else None,
    )


class Node:
    """One mesh-llm node."""

    def __init__(
        self,
        config: NodeConfig,
        *,
        out: Callable[[str], None] | None = None,
        timing: NodeTiming | None = None,
    ) -> None:
        self.config = config
        self.timing = timing or NodeTiming()
        self._out = out or (lambda line: print(line, flush=True))  # noqa: T201 - startup summary
        self.hub = ChangeHub()
        self.state_dir = state_dir()
        self.log_dir = self.state_dir / "logs"
        """Where this node's children log: per node when several share the state directory."""
        self.registry = PidRegistry(self.state_dir / "children.json")
        self.survey: HardwareSurvey | None = None
        self.capacity = 0
        self.binaries: BackendBinaries | None = None
        self.models: list[ModelRunner] = []
        self.embedders: list[ModelRunner] = []
        """``--embeddings``: a second llama-server per chat model that answers /v1/embeddings."""
        self.ingress: Ingress | None = None
        self.tunnel_ingress: Ingress | None = None
        self.console: ManagementServer | None = None
        self.mesh: MeshLink | None = None
        self.discovery: DiscoveryLink | None = None
        self.rpc: RpcLink | None = None
        self._seen_models: dict[str, float] = {}
        self._api_port = config.port
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
            if m not in targets and now - seen < self.timing.seen_model_ttl
        )
        join = self.mesh.join_status()
        return RoutingSnapshot(
            targets=targets,
            serving=local.serving,
            unavailable=unavailable,
            embedding_targets=local.embedding_targets,
            down=local.down,
            no_mesh_reason=join.describe() if join and join.state is not JoinState.JOINED else None,
        )

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
        targets = _ready_targets(self.models)
        embedding_targets = _ready_targets(
            [m for m in self.models if m.role is ModelRole.EMBEDDINGS] + self.embedders
        )
        return RoutingSnapshot(
            targets=targets,
            serving=bool(targets),
            embedding_targets=embedding_targets,
            down=_down_reasons(self.models),
        )

    # --------------------------------------------------------------------------------- status

    def view(self) -> NodeView:
        """This node at this moment, frozen (what ``/api/status`` renders)."""
        mesh, ingress = self.mesh, self.ingress
        membership = mesh.membership if mesh is not None else None
        return NodeView(
            client=self.config.client,
            runners=tuple(m.view() for m in self.models),
            sidecars=tuple(m.view() for m in self.embedders),
            requested_models=self.config.models,
            api_port=self._api_port,
            console_port=self.console.port if self.console else self.config.console_port,
            capacity=self.capacity,
            routing=self.routing_snapshot(),
            started_at=self.started_at,
            now=time.time(),
            node_id=mesh.node_id if mesh is not None else None,
            token=mesh.token if mesh is not None else None,
            mesh_id=membership.mesh_id if membership is not None else None,
            bootstrap=bool(mesh.bootstrap) if mesh is not None else False,
            join=mesh.join_status() if mesh is not None else None,
            peers=mesh.peer_rows() if mesh is not None else (),
            inflight=ingress.inflight if ingress is not None else 0,
            requests_total=ingress.requests_total if ingress is not None else 0,
            model_substitution=self.config.model_substitution,
            substitutions_total=ingress.substitutions_total if ingress is not None else 0,
            substitutions=tuple(ingress.substitutions.items()) if ingress is not None else (),
            survey=self.survey,
            binaries=self.binaries,
            rpc=self.rpc.status() if self.rpc is not None else None,
            relay=native_relay_status(),
        )

    def models_listing(self) -> list[dict[str, object]]:
        return status_json.models_listing(self.routing_snapshot(), self.started_at)

    def status(self) -> dict[str, object]:
        return status_json.status(self.view())

    def _changed(self) -> None:
        """Local state changed: refresh the event stream and re-announce ourselves."""
        self.hub.changed()
        if self.mesh is not None and self.mesh.transport is not None and not self._stop.is_set():
            self.mesh.announce(self.self_announcement())

    def self_announcement(self) -> PeerAnnouncement:
        assert self.mesh is not None
        assert self.mesh.transport is not None
        return self_announcement(
            endpoint_id=self.mesh.transport.node_id_bytes,
            addr=self.mesh.transport.addr(),
            client=self.config.client,
            runners=[m.view() for m in self.models],
            api_port=self._api_port,
            catalog_models=self.config.models,
            capacity=self.capacity,
            is_soc=self.survey.is_soc if self.survey else None,
            llama_build=self.binaries.build_id if self.binaries else None,
            rpc_ready=self._rpc_port() is not None,
            hostname=self.survey.hostname if self.survey else None,
        )

    # ---------------------------------------------------------------------------------- split

    def _on_mesh_change(self) -> None:
        self.hub.changed()
        for model in self.models:
            if isinstance(model, SplitRunner):
                model.poke()

    def _split_plan(self, model: str, size: int) -> Plan:
        """Election and worker selection for ``model`` over the current mesh view."""
        mesh = self.mesh
        own = mesh.transport.node_id_bytes if mesh and mesh.transport else b"\0" * 32
        build = self.binaries.build_id if self.binaries else None
        me = Member(own, self.capacity, None, build, self._rpc_port() is not None)
        group = split_group(model, mesh.peer_snapshots() if mesh is not None else ())
        plan = plan_model(
            me, group.peers, size, helpers=group.helpers, force_split=self.config.split
        )
        if plan.kind in (PlanKind.WAIT, PlanKind.HOST) and group.ignored:
            # Say what a split that does not form waits for: every peer, and why it is left out.
            plan = dataclasses.replace(plan, excluded=(*plan.excluded, *group.ignored))
        return plan

    def _rpc_port(self) -> int | None:
        return self.rpc.port if self.rpc is not None else None

    async def _rpc_endpoint(self, model_path: Path, peer: bytes) -> str:
        if self.rpc is None:
            raise TransportError("this node runs no RPC tunnels")
        return await self.rpc.endpoint(peer, model_path)

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
        """Decide each model's launch (:func:`plan_launches`, pure) and build its runners."""
        assert self.binaries is not None
        binaries = self.binaries
        gpu = bool(binaries.backend and binaries.backend.is_gpu)
        facts = tuple(_model_facts(name, model, info) for name, model, info in resolved)
        launches = plan_launches(
            LaunchInputs(
                capacity=self.capacity,
                models=facts,
                gpu=gpu,
                force_split=self.config.split,
                ctx_override=self.config.ctx_size,
                embeddings=self.config.embeddings,
                chat_template_file=self.config.chat_template_file,
            )
        )
        features = server_features(binaries.llama_server, self.timing.help_timeout)
        for launch, (_, model, info) in zip(launches, resolved, strict=True):
            self.models.append(self._runner(launch, model, info, features, gpu))
            if launch.sidecar_ctx is not None:
                self.embedders.append(
                    self._embedder(launch.name, model, info, launch.sidecar_ctx, features, gpu)
                )

    def _runner(
        self,
        launch: ModelLaunch,
        model: ResolvedModel,
        info: GgufInfo,
        features: ServerFeatures,
        gpu: bool,
    ) -> ModelRunner:
        assert self.binaries is not None
        binary = self.binaries.llama_server
        log_path = self.log_dir / f"llama-server-{_safe_name(launch.name)}.log"
        ctx = launch.ctx_size
        layers = info.block_count or 0

        def make_spec(port: int, rpc: Sequence[str], split: str | None) -> LaunchSpec:
            argv = llama_server_argv(
                binary,
                model.path,
                port=port,
                ctx_size=ctx,
                gpu=gpu,
                features=features,
                parallel=self.config.parallel,
                rpc=rpc,
                tensor_split=split,
                gpu_layers=None if gpu or not rpc else cpu_host_offload(layers, split),
                chat_template_file=launch.chat_template,
                embeddings=launch.embedding,
                batch_size=min(ctx, EMBEDDING_BATCH) if launch.embedding else None,
                alias=model.name,
                extra=self.config.extra_llama_args,
            )
            env = {"GGML_RPC_NO_RDMA": "1"} if rpc else {}
            return LaunchSpec(model.name, tuple(argv), port, log_path, env)

        role = ModelRole.EMBEDDINGS if launch.embedding else ModelRole.CHAT
        runner: ModelRunner
        match launch.mode:
            case RunnerMode.SOLO:
                runner = SoloRunner(
                    launch.name,
                    model,
                    info,
                    ctx,
                    make_spec,
                    registry=self.registry,
                    on_change=self._changed,
                    role=role,
                )
            case RunnerMode.SPLIT:
                runner = SplitRunner(
                    launch.name,
                    model,
                    info,
                    ctx,
                    make_spec,
                    registry=self.registry,
                    on_change=self._changed,
                    plan=functools.partial(self._split_plan, launch.name, info.file_size),
                    rpc_endpoint=functools.partial(self._rpc_endpoint, model.path),
                    timing=self.timing,
                )
            case _:
                assert_never(launch.mode)
        runner.identity = identity_hash(model.path)
        return runner

    def _embedder(
        self,
        name: str,
        model: ResolvedModel,
        info: GgufInfo,
        ctx: int,
        features: ServerFeatures,
        gpu: bool,
    ) -> ModelRunner:
        """The embedding sidecar of chat model ``name``: the same file with ``--embeddings
        --pooling mean``. A separate process, because ``--embeddings`` makes llama-server
        compute an output for every prompt token and caps its batch, slowing chat."""
        assert self.binaries is not None
        binary = self.binaries.llama_server
        log_path = self.log_dir / f"llama-server-{_safe_name(name)}-embeddings.log"

        def make_spec(port: int, rpc: Sequence[str], split: str | None) -> LaunchSpec:
            argv = llama_server_argv(
                binary,
                model.path,
                port=port,
                ctx_size=ctx,
                gpu=gpu,
                features=features,
                parallel=EMBEDDING_PARALLEL,
                embeddings=True,
                pooling="mean",
                batch_size=min(ctx, EMBEDDING_BATCH),
                alias=model.name,
                extra=self.config.extra_llama_args,
            )
            return LaunchSpec(model.name, tuple(argv), port, log_path)

        return SoloRunner(
            name,
            model,
            info,
            ctx,
            make_spec,
            registry=self.registry,
            on_change=self._changed,
            role=ModelRole.EMBEDDINGS,
        )

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
        uses_home_key = not (self.config.client or self.config.ephemeral_key)
        lease = acquire_home(self.state_dir, uses_home_key=uses_home_key)
        self.log_dir = lease.log_dir
        if not lease.owner:
            log.info("another node uses %s: this one logs to %s", self.state_dir, self.log_dir)
        try:
            return await self._run_with_home()
        finally:
            lease.release()

    async def _run_with_home(self) -> int:
        prepare_native_relay(enabled=self.config.native_relay)
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
            model_substitution=self.config.model_substitution,
            api_keys=ApiKeys(self.config.api_keys),
        )
        # Requests arriving through an HTTP tunnel are served from the stream by this second
        # ingress (never listening), which routes to local llama-servers only: a tunnelled
        # request is never forwarded again (no loops).
        self.tunnel_ingress = Ingress(
            host="127.0.0.1",
            port=0,
            snapshot=self.local_snapshot,
            connect=connect_local,
            models_listing=self.models_listing,
            report_substitutions=False,
        )
        self.mesh = MeshLink(
            self.config,
            self.state_dir,
            serve_http=None if self.config.client else self.tunnel_ingress.serve_stream,
            on_change=self._on_mesh_change,
            timing=self.timing.mesh,
        )
        self.discovery = DiscoveryLink(
            self.config, self.state_dir, mesh=self.mesh, status=self.status
        )
        self.console = ManagementServer(
            host=self.config.bind_host,
            port=self.config.console_port,
            status=self.status,
            runtime_models=lambda: status_json.runtime_models(self.view()),
            runtime_processes=lambda: status_json.runtime_processes(self.view()),
            hub=self.hub,
            api_keys=ApiKeys(self.config.api_keys),
            discover=self.discovery.discover_json,
        )
        await self.ingress.start()
        self._api_port = self.ingress.port
        try:
            await self.console.start()
            await self.mesh.start()
        except MeshLlmError:
            await self._close_servers()
            raise
        try:
            if not self.config.client:
                backend = Backend(self.config.backend) if self.config.backend else None
                self.binaries = await asyncio.to_thread(
                    ensure_backend,
                    self.config.bin_dir,
                    backend,
                    options=self.config.build,
                    progress=lambda msg: self._out(f"  {msg}"),
                )
                self._plan_models(resolved)
                if self.capacity > 0 and self.mesh.service is not None:
                    self.rpc = RpcLink(
                        self.binaries.rpc_server,
                        log_dir=self.log_dir,
                        model_paths=[m.path for _, m, _ in resolved],
                        device=self.config.device,
                        registry=self.registry,
                        on_change=self._changed,
                    )
                    await self.rpc.start(self.mesh.service)
            self._print_summary()
            async with asyncio.TaskGroup() as group:
                mesh_task = group.create_task(self.mesh.run())
                self._changed()
                tasks = [mesh_task]
                tasks += [group.create_task(m.run()) for m in [*self.models, *self.embedders]]
                tasks.append(group.create_task(self._announce_ready()))
                if self.rpc is not None:
                    tasks.append(group.create_task(self.rpc.run()))
                if self.discovery.active:
                    tasks.append(group.create_task(self.discovery.run()))
                await self._stop.wait()
                self._out("mesh-llm: shutting down")
                await self._shutdown()
                # Split runners and the ready announcer loop until cancelled; the group must not
                # wait for them.
                for task in tasks:
                    task.cancel()
        finally:
            await self._close_servers()
        return 0

    async def _announce_ready(self) -> None:
        """Print one line when each model becomes ready, or fails to."""
        pending = {m.name: m for m in self.models}
        while pending:
            await self.hub.wait_after(self.hub.version, self.timing.ready_poll)
            for name, model in list(pending.items()):
                if model.ready:
                    self._out(f"mesh-llm: {name} ready (llama-server on 127.0.0.1:{model.port})")
                    del pending[name]
                elif model.state is RunnerState.FAILED:
                    self._out(f"mesh-llm: {name} failed: {model.last_error}")
                    del pending[name]

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
        for model in self.embedders:
            self._out(f"  Embeddings: {model.name} (a second llama-server, ctx {model.ctx_size})")

    def _on_target_failed(self, target: Target) -> None:
        log.info("target %s for %s failed", target.key, target.model)
        if self.mesh is not None:
            self.mesh.refresh_after_failure(target.peer_id)

    async def _shutdown(self) -> None:
        """Stop accepting, cancel client streams, announce leaving, stop children."""
        if self.ingress is not None:
            await self.ingress.close()
        if self.tunnel_ingress is not None:
            await self.tunnel_ingress.close()
        if self.discovery is not None:
            await self.discovery.close()
        if self.mesh is not None:
            await self.mesh.leave_and_close()
        await asyncio.gather(*(m.stop() for m in [*self.models, *self.embedders]))
        if self.rpc is not None:
            await self.rpc.stop()

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
        await asyncio.gather(*(m.stop() for m in [*self.models, *self.embedders]))
        if self.rpc is not None:
            await self.rpc.stop()
