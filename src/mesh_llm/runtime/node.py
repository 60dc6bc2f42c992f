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
import json
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
from mesh_llm.errors import (
    ConfigError,
    LoadRefusedError,
    MeshLlmError,
    ModelError,
    TransportError,
)
from mesh_llm.inference import (
    EMBEDDING_BATCH,
    EMBEDDING_PARALLEL,
    FIT_FACTOR,
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
    fits_solo,
    llama_server_argv,
    plan_model,
    reap_recorded_children,
)
from mesh_llm.mesh import JoinState
from mesh_llm.models import (
    GgufInfo,
    ResolvedModel,
    bundled_chat_template,
    find_catalog_entry,
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
    Warmup,
    connect_local,
    native_relay_status,
    prepare_native_relay,
)
from mesh_llm.protocol import HostPolicy, PeerAnnouncement, PeerId, Request, render_response
from mesh_llm.runtime import status as status_json
from mesh_llm.runtime.announce import self_announcement
from mesh_llm.runtime.config import NodeConfig
from mesh_llm.runtime.discovery_link import DiscoveryLink
from mesh_llm.runtime.home import acquire_home
from mesh_llm.runtime.launch_plan import LaunchInputs, ModelFacts, ModelLaunch, plan_launches
from mesh_llm.runtime.mesh_link import MeshLink
from mesh_llm.runtime.placement import Placement
from mesh_llm.runtime.rpc_link import RpcLink
from mesh_llm.runtime.runners import ModelRunner, SoloRunner, SplitRunner
from mesh_llm.runtime.split_group import split_group
from mesh_llm.runtime.states import ModelRole, RunnerMode, RunnerState
from mesh_llm.runtime.timing import NodeTiming
from mesh_llm.runtime.view import DemandRow, NodeView, OnDiskRow
from mesh_llm.system import GB, HardwareSurvey, capacity_bytes, state_dir, survey_hardware

__all__ = ["Node"]

log = logging.getLogger(__name__)


def _json_reply(status: int, payload: object) -> bytes:
    headers = (("Content-Type", "application/json"),)  # CORS: the ingress's policy adds it
    return render_response(status, headers, json.dumps(payload).encode())


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


def _ready_targets(
    runners: Sequence[ModelRunner], *, draining_until: float | None = None
) -> dict[str, list[Target]]:
    """Targets of the ready runners. A runner being unloaded is left out, except that requests
    through a tunnel may still use it until ``draining_until`` (monotonic) after its unload
    began: peers route with the view they had."""
    targets: dict[str, list[Target]] = {}
    now = time.monotonic()
    for runner in runners:
        port = runner.port
        began = runner.draining_since
        if began is not None and (draining_until is None or now - began >= draining_until):
            continue
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
        self._features: ServerFeatures | None = None
        self._gpu = False
        self._load_lock = asyncio.Lock()
        self._runner_tasks: dict[ModelRunner, asyncio.Task[None]] = {}
        """Runners started at run time (``load``, promotion, cold start)."""
        self._downloads: dict[str, asyncio.Task[None]] = {}
        """Catalog models being downloaded to be loaded (assignment, cold start)."""
        self._load_errors: dict[str, str] = {}
        self.operator_unloaded: set[str] = set()
        """Models unloaded by hand (``unload``): never loaded here again on their own (cold
        start, promotion) until someone loads them explicitly."""
        self.placement = Placement(self)
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
        """This node's own llama-servers, for this node's clients."""
        return self._local_snapshot(None)

    def tunnel_snapshot(self) -> RoutingSnapshot:
        """Only this node's own llama-servers: what requests arriving through a tunnel may use
        (a model being unloaded for a short grace too)."""
        return self._local_snapshot(self.timing.withdraw_grace)

    def _local_snapshot(self, draining_until: float | None) -> RoutingSnapshot:
        targets = _ready_targets(self.models, draining_until=draining_until)
        embedding_targets = _ready_targets(
            [m for m in self.models if m.role is ModelRole.EMBEDDINGS] + self.embedders,
            draining_until=draining_until,
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
            demand=self._demand_rows(),
            standby_reason=self.placement.standby_reason if not self.models else None,
            on_disk=self._on_disk_rows(),
        )

    def _demand_rows(self) -> tuple[DemandRow, ...]:
        membership = self.mesh.membership if self.mesh is not None else None
        if membership is None:
            return ()
        rows = [
            DemandRow(d.model_name, d.request_count, d.last_active) for d in membership.demand()
        ]
        rows.sort(key=lambda r: (-r.request_count, r.model))
        return tuple(rows)

    def _on_disk_rows(self) -> tuple[OnDiskRow, ...]:
        found: dict[str, tuple[int, list[str]]] = {
            name: (size, ["self"]) for name, size in self.placement.available()
        }
        membership = self.mesh.membership if self.mesh is not None else None
        for peer in membership.peer_ids() if membership is not None else ():
            ann = membership.announcement(peer) if membership is not None else None
            for name, size in ann.available_models if ann is not None else ():
                found.setdefault(name, (size, []))[1].append(bytes(peer)[:5].hex())
        return tuple(OnDiskRow(n, size, tuple(nodes)) for n, (size, nodes) in sorted(found.items()))

    def models_listing(self) -> list[dict[str, object]]:
        return status_json.models_listing(self.routing_snapshot(), self.started_at)

    def status(self) -> dict[str, object]:
        return status_json.status(self.view())

    def out(self, line: str) -> None:
        """A line for the person who started the node (stdout)."""
        self._out(line)

    def announce_changed(self) -> None:
        """Something this node announces changed (its models on disk)."""
        self._changed()

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
            runners=[m.view() for m in self.models if m.draining_since is None],
            api_port=self._api_port,
            catalog_models=self.config.models,
            capacity=self.capacity,
            is_soc=self.survey.is_soc if self.survey else None,
            llama_build=self.binaries.build_id if self.binaries else None,
            rpc_ready=self._rpc_port() is not None,
            hostname=self.survey.hostname if self.survey else None,
            available_models=self.placement.available(),
        )

    # ---------------------------------------------------------------------------- runtime models

    def used_bytes(self) -> int:
        """Memory this node's models take (what a load must fit beside)."""
        used = 0
        for runner in self.models:
            size = runner.info.file_size
            used += size if runner.mode is RunnerMode.SOLO else min(self.capacity, size)
        return used

    def runner_named(self, name: str) -> ModelRunner | None:
        return next((m for m in self.models if m.name == name), None)

    async def load_model(
        self, ref: str, *, wait: bool = True, download: bool = True, automatic: bool = False
    ) -> str:
        """Load a model (a name, path or reference) as a solo llama-server beside the others;
        the model's name. Raises :class:`LoadRefusedError` with the API's status: 400 (not a
        model, or a client), 409 (already loaded), 422 (does not fit, with the figures),
        503 (cannot load now, or it failed to start)."""
        ref = ref.strip()
        if self.config.client:
            raise LoadRefusedError(400, "a --client node runs no models")
        if not ref:
            raise LoadRefusedError(400, 'give the model to load: {"model": "NAME"}')
        if self.binaries is None or self._features is None:
            raise LoadRefusedError(503, "llama.cpp is not ready on this node yet; retry shortly")
        if (existing := self.runner_named(ref)) is not None:
            raise LoadRefusedError(409, f"{ref} is already loaded ({existing.state.value})")
        if automatic and ref in self.operator_unloaded:
            raise LoadRefusedError(
                409, f"{ref} was unloaded on this node by hand; load it again with mesh-llm load"
            )
        if not automatic:
            self.operator_unloaded.discard(ref)
        try:
            model = await asyncio.to_thread(resolve_model, ref, download=False, progress=False)
        except ModelError as exc:
            entry = find_catalog_entry(ref) if download else None
            if entry is None:
                raise LoadRefusedError(400, str(exc)) from exc
            self._check_fits(entry.name, entry.size_bytes)
            if not wait:  # a cold start or an assignment: download in the background
                self._start_download(entry.name)
                return entry.name
            model = await self._download(entry.name)
        try:
            info = await asyncio.to_thread(read_gguf_info, model.path)
        except ModelError as exc:
            raise LoadRefusedError(400, str(exc)) from exc
        async with self._load_lock:
            if (existing := self.runner_named(model.name)) is not None:
                raise LoadRefusedError(
                    409, f"{model.name} is already loaded ({existing.state.value})"
                )
            free = self._check_fits(model.name, info.file_size)
            launch = plan_launches(
                LaunchInputs(
                    capacity=free,
                    models=(_model_facts(model.name, model, info),),
                    gpu=self._gpu,
                    ctx_override=self.config.ctx_size,
                    chat_template_file=self.config.chat_template_file,
                )
            )[0]
            runner = self._runner(launch, model, info, self._features, self._gpu)
            self.models.append(runner)
            self._start_runner(runner)
        log.info("loading %s (%s)", runner.name, model.path)
        self._changed()
        if wait:
            await self._wait_loaded(runner)
        return runner.name

    def _check_fits(self, name: str, size: int) -> int:
        """The bytes free here; 422 when a model of ``size`` does not fit in them."""
        free = self.capacity - self.used_bytes()
        if not fits_solo(free, size):
            serving = ", ".join(m.name for m in self.models) or "nothing"
            raise LoadRefusedError(
                422,
                f"{name} does not fit: it needs {size * FIT_FACTOR / GB:.2f} GB and only "
                f"{max(free, 0) / GB:.2f} GB of this node's {self.capacity / GB:.2f} GB is free "
                f"(serving {serving}); unload a model or raise --max-vram",
            )
        return free

    async def _download(self, name: str) -> ResolvedModel:
        try:
            return await asyncio.to_thread(resolve_model, name, download=True, progress=False)
        except ModelError as exc:
            raise LoadRefusedError(503, f"cannot download {name}: {exc}") from exc

    def _start_download(self, name: str) -> None:
        if name in self._downloads:
            return

        async def fetch_and_load() -> None:
            try:
                await self._download(name)
                await self.load_model(name, wait=False, download=False, automatic=True)
            except LoadRefusedError as exc:
                self._load_errors[name] = str(exc)
                log.warning("loading %s failed: %s", name, exc)
            finally:
                self._downloads.pop(name, None)

        self._load_errors.pop(name, None)
        log.info("downloading %s to serve it", name)
        self._downloads[name] = asyncio.get_running_loop().create_task(fetch_and_load())

    def _start_runner(self, runner: ModelRunner) -> None:
        task = asyncio.get_running_loop().create_task(runner.run(), name=f"runner {runner.name}")
        self._runner_tasks[runner] = task

    def load_failure(self, name: str) -> str | None:
        """Why a model started at run time is not coming up (None while it may)."""
        runner = self.runner_named(name)
        if runner is None and name in self._downloads:
            return None
        if runner is None:
            return self._load_errors.get(name, "it was unloaded")
        if runner.state is RunnerState.FAILED:
            return runner.last_error or "llama-server failed"
        return None

    async def _wait_loaded(self, runner: ModelRunner) -> None:
        deadline = time.monotonic() + self.timing.load_timeout
        while not runner.ready:
            why = self.load_failure(runner.name)
            if why is not None:
                if runner in self.models:
                    await self._remove_runner(runner)
                raise LoadRefusedError(503, f"{runner.name} failed to start: {why}")
            if time.monotonic() > deadline:
                raise LoadRefusedError(
                    503,
                    f"{runner.name} is still loading after {self.timing.load_timeout:.0f} s "
                    "(it keeps loading; see GET /api/runtime)",
                )
            await self.hub.wait_after(self.hub.version, 0.5)

    async def unload_model(self, name: str) -> str:
        """Stop serving ``name``: withdraw it from the mesh, let in-flight requests finish
        (new ones go to other nodes), then stop its llama-server. 404 when not loaded."""
        runner = self.runner_named(name)
        if runner is None:
            raise LoadRefusedError(404, f"{name} is not loaded on this node")
        self.operator_unloaded.add(name)
        if runner.draining_since is None:
            runner.draining_since = time.monotonic()
            log.info("unloading %s: draining in-flight requests", name)
            self._changed()
        await asyncio.sleep(self.timing.withdraw_grace)
        deadline = runner.draining_since + self.timing.unload_drain
        while self._inflight_to(runner) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)  # the ingress counts requests; polled, no event per end
        if runner in self.models:
            await self._remove_runner(runner)
            log.info("unloaded %s", name)
        return name

    def _inflight_to(self, runner: ModelRunner) -> int:
        port = runner.port
        if port is None:
            return 0
        key = f"local:{port}"
        return sum(
            ingress.target_inflight.get(key, 0)
            for ingress in (self.ingress, self.tunnel_ingress)
            if ingress is not None
        )

    async def _remove_runner(self, runner: ModelRunner) -> None:
        with contextlib.suppress(ValueError):
            self.models.remove(runner)
        sidecars = [e for e in self.embedders if e.name == runner.name]
        for sidecar in sidecars:
            self.embedders.remove(sidecar)
        await asyncio.gather(*(r.stop() for r in [runner, *sidecars]))
        task = self._runner_tasks.pop(runner, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._changed()

    async def mesh_control(self, request: Request) -> bytes | None:
        """``POST /mesh/load`` and ``POST /mesh/drop`` with ``{"model"}`` on :9337 (and through
        tunnels: how a peer asks this node to load a model for a cold start). ``"wait": false``
        answers 202 as soon as the load has begun."""
        if request.path not in ("/mesh/load", "/mesh/drop"):
            return None
        if request.method != "POST":
            return _json_reply(405, {"error": f"use POST for {request.path}"})
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _json_reply(400, {"error": 'the body must be {"model": "NAME"}'})
        name: str = body["model"]
        try:
            if request.path == "/mesh/drop":
                return _json_reply(200, {"dropped": await self.unload_model(name)})
            wait = body.get("wait", True) is not False
            loaded = await self.load_model(name, wait=wait, automatic=not wait)
            return _json_reply(200 if wait else 202, {"loaded" if wait else "loading": loaded})
        except LoadRefusedError as exc:
            return _json_reply(exc.status, {"error": str(exc)})

    async def api_load(self, name: str) -> tuple[int, dict[str, object]]:
        """``POST /api/runtime/models``: 201 ``{"loaded"}`` once the model answers."""
        try:
            return 201, {"loaded": await self.load_model(name)}
        except LoadRefusedError as exc:
            return exc.status, {"error": str(exc)}

    async def api_unload(self, name: str) -> tuple[int, dict[str, object]]:
        """``DELETE /api/runtime/models/{name}``: 200 ``{"dropped"}`` once drained, or 404."""
        try:
            return 200, {"dropped": await self.unload_model(name)}
        except LoadRefusedError as exc:
            return exc.status, {"error": str(exc)}

    async def cold_start(self, model: str) -> Warmup | str | None:
        return await self.placement.cold_start(model)

    # ---------------------------------------------------------------------------------- split

    def _on_mesh_change(self) -> None:
        self.hub.changed()
        for model in self.models:
            if isinstance(model, SplitRunner):
                model.poke()

    def _split_plan(self, model: str, size: int) -> Plan:
        """Election and worker selection for ``model`` over the current mesh view."""
        mesh = self.mesh
        own = mesh.transport.node_id_bytes if mesh and mesh.transport else PeerId(b"\0" * 32)
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
        self._features, self._gpu = features, gpu
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

        # Loopback-bound ports answer loopback Host names only (DNS rebinding); the tunnel
        # ingress below checks none: its requests were checked at the node they entered.
        hosts = HostPolicy.for_listener(self.config.bind_host, self.config.allowed_hosts)
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
            cold_start=self.cold_start if self.config.cold_start_timeout > 0 else None,
            cold_start_timeout=self.config.cold_start_timeout,
            control=self.mesh_control,
            hosts=hosts,
        )
        # Requests arriving through an HTTP tunnel are served from the stream by this second
        # ingress (never listening), which routes to local llama-servers only: a tunnelled
        # request is never forwarded again (no loops).
        self.tunnel_ingress = Ingress(
            host="127.0.0.1",
            port=0,
            snapshot=self.tunnel_snapshot,
            connect=connect_local,
            models_listing=self.models_listing,
            report_substitutions=False,
            control=self.mesh_control,
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
            load_model=self.api_load,
            unload_model=self.api_unload,
            hosts=hosts,
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
                if not self.config.client:
                    tasks.append(group.create_task(self.placement.run()))
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
        await self._stop_runners()
        if self.rpc is not None:
            await self.rpc.stop()

    async def _stop_runners(self) -> None:
        tasks: list[asyncio.Task[None]] = list(self._downloads.values())
        await asyncio.gather(*(m.stop() for m in [*self.models, *self.embedders]))
        tasks += self._runner_tasks.values()
        self._runner_tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

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
        await self._stop_runners()
        if self.rpc is not None:
            await self.rpc.stop()
