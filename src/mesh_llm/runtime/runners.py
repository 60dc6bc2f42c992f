"""How this node takes part in serving one model: alone (solo) or in a split.

A :class:`ModelRunner` owns at most one supervised llama-server at a time. The solo runner starts it
once and lets the supervisor restart it. The split runner re-plans on every peer change (host
election, worker selection: :func:`mesh_llm.inference.plan_model`) and, when the plan changes,
tears the llama-server down and starts it again with the new ``--rpc``/``--tensor-split``.

What a runner reports is a frozen :class:`~mesh_llm.runtime.view.RunnerView` (:meth:`view`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import assert_never

from mesh_llm.errors import MeshLlmError
from mesh_llm.inference import (
    LaunchSpec,
    PidRegistry,
    Plan,
    PlanKind,
    RestartPolicy,
    ServerState,
    ServerSupervisor,
)
from mesh_llm.models import GgufInfo, ResolvedModel
from mesh_llm.runtime.states import ModelRole, RunnerMode, RunnerState, runner_state
from mesh_llm.runtime.timing import NodeTiming
from mesh_llm.runtime.view import RunnerView

__all__ = ["ModelRunner", "SoloRunner", "SplitRunner"]

log = logging.getLogger(__name__)

# (port, rpc endpoints, tensor split) -> launch spec
SpecFactory = Callable[[int, Sequence[str], str | None], LaunchSpec]


class ModelRunner:
    """Common state of a model this node serves (fully, or as a split host or worker)."""

    mode = RunnerMode.SOLO

    def __init__(
        self,
        name: str,
        resolved: ResolvedModel,
        info: GgufInfo,
        ctx_size: int,
        make_spec: SpecFactory,
        *,
        registry: PidRegistry | None,
        on_change: Callable[[], None],
        role: ModelRole = ModelRole.CHAT,
    ) -> None:
        self.name = name
        self.resolved = resolved
        self.info = info
        self.ctx_size = ctx_size
        self.role = role
        self._make_spec = make_spec
        self._registry = registry
        self._on_change = on_change
        self.supervisor: ServerSupervisor | None = None
        self.identity: str | None = None
        self.draining_since: float | None = None
        """Monotonic time the unload of this model began (None: not being unloaded)."""

    @property
    def ready(self) -> bool:
        return self.state is RunnerState.READY

    @property
    def port(self) -> int | None:
        return self.supervisor.port if self.supervisor else None

    @property
    def pid(self) -> int | None:
        return self.supervisor.pid if self.supervisor else None

    @property
    def plan(self) -> Plan | None:
        """The split plan (None for a solo runner)."""
        return None

    @property
    def state(self) -> RunnerState:
        server = self.supervisor.state if self.supervisor else None
        plan = self.plan
        return runner_state(
            server, plan.kind if plan else None, split=self.mode is RunnerMode.SPLIT
        )

    @property
    def last_error(self) -> str | None:
        return self.supervisor.last_error if self.supervisor else None

    def view(self) -> RunnerView:
        sup = self.supervisor
        return RunnerView(
            name=self.name,
            mode=self.mode,
            role=self.role,
            path=self.resolved.path,
            state=self.state,
            ctx_size=self.ctx_size,
            port=self.port,
            pid=self.pid,
            restarts=sup.restarts if sup else 0,
            last_error=self.last_error,
            log_path=sup.log_path if sup else None,
            identity=self.identity,
            architecture=self.info.architecture,
            layers=self.info.block_count,
            quantization=self.info.quantization,
            size_bytes=self.info.file_size,
            plan=self.plan,
            draining=self.draining_since is not None,
        )

    def _new_supervisor(
        self, rpc: Sequence[str] = (), split: str | None = None, policy: RestartPolicy | None = None
    ) -> ServerSupervisor:
        return ServerSupervisor(
            self.name,
            lambda port: self._make_spec(port, rpc, split),
            registry=self._registry,
            on_change=self._on_change,
            policy=policy,
        )

    async def run(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()


class SoloRunner(ModelRunner):
    """The whole model on this node; the supervisor restarts llama-server after crashes."""

    async def run(self) -> None:
        self.supervisor = self._new_supervisor()
        await self.supervisor.run()


class SplitRunner(ModelRunner):
    """A model too big for this node: elect a host, pick workers, (re)start on every change."""

    mode = RunnerMode.SPLIT

    def __init__(
        self,
        name: str,
        resolved: ResolvedModel,
        info: GgufInfo,
        ctx_size: int,
        make_spec: SpecFactory,
        *,
        registry: PidRegistry | None,
        on_change: Callable[[], None],
        plan: Callable[[], Plan],
        rpc_endpoint: Callable[[bytes], Awaitable[str]],
        timing: NodeTiming | None = None,
    ) -> None:
        super().__init__(
            name, resolved, info, ctx_size, make_spec, registry=registry, on_change=on_change
        )
        self._plan_fn = plan
        self._rpc_endpoint = rpc_endpoint
        self._timing = timing or NodeTiming()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._plan: Plan | None = None

    @property
    def plan(self) -> Plan | None:
        return self._plan

    def poke(self) -> None:
        """The peer view changed: re-plan soon."""
        self._poke.set()

    @staticmethod
    def _same(a: Plan | None, b: Plan) -> bool:
        return (
            a is not None
            and a.kind is b.kind
            and a.host == b.host
            and a.workers == b.workers
            and a.tensor_split == b.tensor_split
        )

    async def run(self) -> None:
        await asyncio.sleep(self._timing.split_settle)
        while True:
            plan = self._plan_fn()
            crashed = self.supervisor is not None and self.supervisor.state is ServerState.FAILED
            if crashed or not self._same(self._plan, plan):
                await self._apply(plan)
            elif plan != self._plan:
                self._plan = plan  # same placement; the reasons or exclusions changed
                self._on_change()
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timing.split_replan):
                    await self._poke.wait()
            await asyncio.sleep(self._timing.split_debounce)

    async def _apply(self, plan: Plan) -> None:
        previous = self._plan
        log.info("%s: %s (%s)", self.name, plan.kind.value, plan.reason)
        if plan.kind is PlanKind.WAIT:
            for peer, why in plan.excluded:
                log.info("%s: peer %s left out of the split: %s", self.name, peer[:5].hex(), why)
        await self._stop_server()
        self._plan = plan
        match plan.kind:
            case PlanKind.HOST | PlanKind.SOLO:
                try:
                    endpoints = [await self._rpc_endpoint(worker) for worker in plan.workers]
                except (MeshLlmError, OSError) as exc:  # a worker tunnel failed: wait for a change
                    log.warning("%s: cannot reach a worker's rpc-server: %s", self.name, exc)
                    reason = f"worker unreachable: {exc}"
                    self._plan = Plan(PlanKind.WAIT, host=plan.host, reason=reason)
                    self._on_change()
                    return
                # A split's llama-server is not restarted blindly: a crash means re-planning.
                self.supervisor = self._new_supervisor(
                    endpoints, plan.tensor_split, RestartPolicy(max_crashes=1)
                )
                self._task = asyncio.get_running_loop().create_task(self.supervisor.run())
            case PlanKind.WORKER | PlanKind.WAIT:
                if previous is not None and previous.kind is PlanKind.HOST:
                    log.info("%s: no longer hosting", self.name)
            case _:
                assert_never(plan.kind)
        self._on_change()

    async def _stop_server(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Wait for the supervisor task to end without taking its cancellation for ours:
            # asyncio.wait never raises the task's outcome, and a cancellation of *this* task
            # while it waits propagates as it should.
            await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                log.warning("%s: llama-server supervisor failed: %r", self.name, task.exception())
        self.supervisor = None

    async def stop(self) -> None:
        await self._stop_server()
