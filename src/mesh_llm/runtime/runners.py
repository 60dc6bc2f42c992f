"""How this node takes part in serving one model: alone (solo) or in a split.

A :class:`ModelRunner` owns at most one supervised llama-server at a time. The solo runner starts it
once and lets the supervisor restart it. The split runner re-plans on every peer change (host
election, worker selection: :func:`mesh_llm.inference.plan_model`) and, when the plan changes,
tears the llama-server down and starts it again with the new ``--rpc``/``--tensor-split``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

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

__all__ = ["ModelRunner", "SoloRunner", "SplitRunner", "SplitTiming"]

log = logging.getLogger(__name__)

# (port, rpc endpoints, tensor split) -> launch spec
SpecFactory = Callable[[int, Sequence[str], str | None], LaunchSpec]


class ModelRunner:
    """Common state of a model this node serves (fully, or as a split host or worker)."""

    mode = "solo"

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
    ) -> None:
        self.name = name
        self.resolved = resolved
        self.info = info
        self.ctx_size = ctx_size
        self._make_spec = make_spec
        self._registry = registry
        self._on_change = on_change
        self.supervisor: ServerSupervisor | None = None
        self.identity: str | None = None

    @property
    def ready(self) -> bool:
        return self.supervisor is not None and self.supervisor.state is ServerState.READY

    @property
    def port(self) -> int | None:
        return self.supervisor.port if self.supervisor else None

    @property
    def pid(self) -> int | None:
        return self.supervisor.pid if self.supervisor else None

    @property
    def state(self) -> str:
        return self.supervisor.state.value if self.supervisor else "idle"

    @property
    def last_error(self) -> str | None:
        return self.supervisor.last_error if self.supervisor else None

    def status(self) -> dict[str, object]:
        sup = self.supervisor
        return {
            "name": self.name,
            "mode": self.mode,
            "path": str(self.resolved.path),
            "status": self.state,
            "port": self.port,
            "pid": self.pid,
            "ctx_size": self.ctx_size,
            "restarts": sup.restarts if sup else 0,
            "error": self.last_error if not self.ready else None,
            "log": str(sup.log_path) if sup and sup.log_path else None,
            "architecture": self.info.architecture,
            "layers": self.info.block_count,
            "quantization": self.info.quantization,
            "size_bytes": self.info.file_size,
        }

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


@dataclass(frozen=True, slots=True)
class SplitTiming:
    settle_s: float = 2.0  # wait for gossip before the first plan
    debounce_s: float = 1.0  # after a peer change, let the view settle
    replan_s: float = 5.0  # re-plan anyway (RTT changes emit no peer-change event)


class SplitRunner(ModelRunner):
    """A model too big for this node: elect a host, pick workers, (re)start on every change."""

    mode = "split"

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
        timing: SplitTiming | None = None,
    ) -> None:
        super().__init__(
            name, resolved, info, ctx_size, make_spec, registry=registry, on_change=on_change
        )
        self._plan_fn = plan
        self._rpc_endpoint = rpc_endpoint
        self._timing = timing or SplitTiming()
        self._poke = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.plan: Plan | None = None

    @property
    def state(self) -> str:
        if self.plan is None:
            return "starting"
        if self.plan.kind is PlanKind.HOST:
            return super().state
        return str(self.plan.kind.value)  # "worker" or "wait"

    def status(self) -> dict[str, object]:
        data = super().status()
        plan = self.plan
        data["split"] = (
            {
                "role": plan.kind.value,
                "host": plan.host.hex() if plan.host else None,
                "workers": [w.hex() for w in plan.workers],
                "tensor_split": plan.tensor_split,
                "reason": plan.reason,
                "excluded": [{"id": p.hex(), "reason": why} for p, why in plan.excluded],
            }
            if plan
            else None
        )
        return data

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
        await asyncio.sleep(self._timing.settle_s)
        while True:
            plan = self._plan_fn()
            crashed = self.supervisor is not None and self.supervisor.state is ServerState.FAILED
            if crashed or not self._same(self.plan, plan):
                await self._apply(plan)
            elif plan != self.plan:
                self.plan = plan  # same placement; the reasons or exclusions changed
                self._on_change()
            self._poke.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timing.replan_s):
                    await self._poke.wait()
            await asyncio.sleep(self._timing.debounce_s)

    async def _apply(self, plan: Plan) -> None:
        previous = self.plan
        log.info("%s: %s (%s)", self.name, plan.kind.value, plan.reason)
        await self._stop_server()
        self.plan = plan
        if plan.kind is PlanKind.HOST:
            try:
                endpoints = [await self._rpc_endpoint(worker) for worker in plan.workers]
            except Exception as exc:  # noqa: BLE001 - a worker tunnel failed: wait for a change
                log.warning("%s: cannot reach a worker's rpc-server: %s", self.name, exc)
                self.plan = Plan(PlanKind.WAIT, host=plan.host, reason=f"worker unreachable: {exc}")
                self._on_change()
                return
            # A split's llama-server is not restarted blindly: a crash means re-planning.
            self.supervisor = self._new_supervisor(
                endpoints, plan.tensor_split, RestartPolicy(max_crashes=1)
            )
            self._task = asyncio.get_running_loop().create_task(self.supervisor.run())
        elif previous is not None and previous.kind is PlanKind.HOST:
            log.info("%s: no longer hosting", self.name)
        self._on_change()

    async def _stop_server(self) -> None:
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.supervisor = None

    async def stop(self) -> None:
        await self._stop_server()
