"""Runners: state from plan and server, the split runner's plan handling, and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from mesh_llm.inference import LaunchSpec, Plan, PlanKind
from mesh_llm.models import GgufInfo, ModelSourceKind, ResolvedModel
from mesh_llm.runtime.runners import SoloRunner, SplitRunner
from mesh_llm.runtime.states import ModelRole, RunnerMode, RunnerState
from mesh_llm.runtime.timing import NodeTiming

PATH = Path("/models/m.gguf")
RESOLVED = ResolvedModel("m", PATH, ModelSourceKind.LOCAL_GGUF, None)
INFO = GgufInfo(
    path=PATH,
    architecture="llama",
    name="m",
    block_count=30,
    context_length=8192,
    embedding_length=576,
    head_count=9,
    expert_count=None,
    expert_used_count=None,
    file_type=7,
    quantization="Q8_0",
    vocab_size=49152,
    tensor_count=272,
    file_size=1_000,
    split_count=1,
    has_chat_template=True,
)


def spec(port: int, rpc: Sequence[str], split: str | None) -> LaunchSpec:
    return LaunchSpec("m", ("/bin/false",), port, Path("/dev/null"))


def split_runner(plans: list[Plan], changed: asyncio.Event | None = None) -> SplitRunner:
    async def endpoint(peer: bytes) -> str:
        raise AssertionError("no worker expected")

    return SplitRunner(
        "m",
        RESOLVED,
        INFO,
        4096,
        spec,
        registry=None,
        on_change=changed.set if changed is not None else lambda: None,
        plan=lambda: plans[0],
        rpc_endpoint=endpoint,
        timing=NodeTiming().scaled(0.001),
    )


def test_a_solo_runner_before_start_is_idle_and_reports_its_view() -> None:
    runner = SoloRunner(
        "m", RESOLVED, INFO, 4096, spec, registry=None, on_change=lambda: None,
        role=ModelRole.EMBEDDINGS,
    )  # fmt: skip
    view = runner.view()
    assert (view.state, view.mode, view.role, view.plan) == (
        RunnerState.IDLE,
        RunnerMode.SOLO,
        ModelRole.EMBEDDINGS,
        None,
    )
    assert not view.ready
    assert (view.size_bytes, view.layers, view.path) == (1_000, 30, PATH)


async def wait_state(runner: SplitRunner, changed: asyncio.Event, state: RunnerState) -> None:
    async with asyncio.timeout(5):
        while runner.state is not state:
            changed.clear()
            await changed.wait()


async def test_split_runner_follows_its_plan_without_a_server_as_worker() -> None:
    plans = [Plan(PlanKind.WORKER, host=b"\2" * 32, reason="peer hosts")]
    changed = asyncio.Event()
    runner = split_runner(plans, changed)
    assert runner.state is RunnerState.STARTING  # not planned yet
    task = asyncio.create_task(runner.run())
    try:
        await wait_state(runner, changed, RunnerState.WORKER)
        assert runner.supervisor is None
        assert runner.view().plan == plans[0]
        plans[0] = Plan(PlanKind.WAIT, host=b"\1" * 32, reason="not enough")
        runner.poke()
        await wait_state(runner, changed, RunnerState.WAIT)
    finally:
        task.cancel()
        await asyncio.wait([task])
    assert task.cancelled()


async def test_stopping_never_swallows_the_callers_cancellation() -> None:
    """``stop()`` waits for the supervisor task; cancelling the caller meanwhile must cancel it
    (the old code suppressed every CancelledError, the caller's own included)."""
    runner = split_runner([Plan(PlanKind.WAIT)])
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await release.wait()  # takes its time to wind down
            raise

    runner._task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    caller = asyncio.create_task(runner.stop())
    await asyncio.sleep(0.01)
    assert not caller.done()
    caller.cancel()
    await asyncio.wait([caller], timeout=5)
    assert caller.cancelled()
    release.set()


async def test_stopping_waits_for_the_supervisor_task() -> None:
    runner = split_runner([Plan(PlanKind.WAIT)])
    ended = asyncio.Event()

    async def supervised() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            ended.set()

    runner._task = asyncio.create_task(supervised())
    await asyncio.sleep(0)
    await runner.stop()
    assert ended.is_set()
    assert runner._task is None
