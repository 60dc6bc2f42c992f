import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mesh_llm.inference import (
    LaunchSpec,
    PidRegistry,
    RestartPolicy,
    ServerState,
    ServerSupervisor,
    reap_recorded_children,
)

FAKE = Path(__file__).resolve().parents[2] / "fakes" / "fake_llama_server.py"


def spec_factory(tmp_path: Path, env: dict[str, str] | None = None) -> Callable[[int], LaunchSpec]:
    def make(port: int) -> LaunchSpec:
        argv = (sys.executable, str(FAKE), "--port", str(port))
        return LaunchSpec("m", argv, port, tmp_path / "m.log", env or {})

    return make


def test_policy_backoff_and_give_up() -> None:
    p = RestartPolicy(base_delay_s=1, max_delay_s=10, max_crashes=4)
    assert [p.next_delay(n) for n in range(1, 6)] == [1, 2, 4, 8, None]
    assert p.crashes_after_exit(3, uptime_s=5) == 4
    assert p.crashes_after_exit(3, uptime_s=3600) == 1


async def test_starts_waits_for_health_and_stops(tmp_path: Path) -> None:
    registry = PidRegistry(tmp_path / "children.json")
    sup = ServerSupervisor(
        "m", spec_factory(tmp_path, {"FAKE_LLAMA_LOAD_S": "0.5"}), registry=registry
    )
    task = asyncio.create_task(sup.run())
    async with asyncio.timeout(20):
        await sup.wait_ready()
    assert sup.state is ServerState.READY
    pid = sup.pid
    assert pid is not None
    assert psutil.pid_exists(pid)
    assert [r.pid for r in registry.records()] == [pid]
    await sup.stop()
    await asyncio.wait_for(task, 10)
    assert sup.state is ServerState.STOPPED
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert registry.records() == []


async def test_restarts_after_crash(tmp_path: Path) -> None:
    sup = ServerSupervisor(
        "m",
        spec_factory(tmp_path, {"FAKE_LLAMA_EXIT_AFTER_S": "1"}),
        policy=RestartPolicy(base_delay_s=0.05, max_crashes=10),
    )
    task = asyncio.create_task(sup.run())
    async with asyncio.timeout(30):
        while sup.restarts < 2:  # noqa: ASYNC110 - polls a counter the supervisor bumps
            await asyncio.sleep(0.05)
        await sup.wait_ready()
    await sup.stop()
    await asyncio.wait_for(task, 10)
    assert sup.restarts >= 2


async def test_gives_up_after_repeated_crashes(tmp_path: Path) -> None:
    crash = tmp_path / "crash"
    crash.write_text("")
    changes: list[ServerState] = []
    sup = ServerSupervisor(
        "m",
        spec_factory(tmp_path, {"FAKE_LLAMA_CRASH_FILE": str(crash)}),
        policy=RestartPolicy(base_delay_s=0.01, max_crashes=3),
    )
    sup._on_change = lambda: changes.append(sup.state)  # observe transitions
    await asyncio.wait_for(sup.run(), 30)
    assert sup.state is ServerState.FAILED
    assert sup.last_error is not None
    assert "giving up" in sup.last_error
    assert ServerState.RESTARTING in changes


async def test_a_crash_by_signal_names_the_signal_and_the_log(tmp_path: Path) -> None:
    """What a user sees when llama-server segfaults (an AMX CPU with the old build)."""
    script = tmp_path / "segv.sh"
    script.write_text("#!/bin/sh\nkill -SEGV $$\n")
    script.chmod(0o755)

    def make(port: int) -> LaunchSpec:
        return LaunchSpec("m", (str(script), "--port", str(port)), port, tmp_path / "m.log", {})

    sup = ServerSupervisor("m", make, policy=RestartPolicy(base_delay_s=0.01, max_crashes=2))
    await asyncio.wait_for(sup.run(), 30)
    assert sup.state is ServerState.FAILED
    assert sup.last_error is not None
    assert "giving up (llama-server was killed by SIGSEGV while loading" in sup.last_error
    assert f"log: {tmp_path / 'm.log'}" in sup.last_error


def test_reap_only_recorded_children(tmp_path: Path) -> None:
    registry = PidRegistry(tmp_path / "children.json")
    ours = subprocess.Popen(["sleep", "60"], start_new_session=True)
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        registry.add(ours.pid, "sleep")
        # As a crashed node leaves it: the record's owner is gone.
        record = registry.records()[0]
        registry._save([type(record)(record.pid, record.create_time, record.name, 999_999, 1.0)])
        assert reap_recorded_children(registry) == 1
        ours.wait(timeout=10)  # psutil may already have reaped it: then the code reads 0
        assert not psutil.pid_exists(ours.pid) or psutil.Process(ours.pid).status() == "zombie"
        assert other.poll() is None, "an unrecorded process must never be touched"
        assert registry.records() == []
    finally:
        for p in (ours, other):
            if p.poll() is None:
                p.kill()
                p.wait()


OWNER = """
import subprocess, sys, time
from pathlib import Path
from mesh_llm.inference import PidRegistry
child = subprocess.Popen(["sleep", "60"], start_new_session=True)
PidRegistry(Path(sys.argv[1])).add(child.pid, "rpc-server")
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_live_nodes_children_are_never_leftovers(tmp_path: Path) -> None:
    """Two nodes sharing a state directory: the second one's start must not stop the first's
    rpc-server (issue 16). Once the first node is gone, its child is a leftover."""
    path = tmp_path / "children.json"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(path)], stdout=subprocess.PIPE, text=True
    )
    child_pid: int | None = None
    try:
        assert owner.stdout is not None
        child_pid = int(owner.stdout.readline())
        second_node = PidRegistry(path)
        assert reap_recorded_children(second_node) == 0
        assert psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE
        assert [r.pid for r in second_node.records()] == [child_pid]
        owner.kill()
        owner.wait(timeout=10)
        assert reap_recorded_children(second_node) == 1
        assert second_node.records() == []
        assert wait_gone(child_pid)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
        if child_pid is not None and psutil.pid_exists(child_pid):
            with contextlib.suppress(psutil.Error):
                psutil.Process(child_pid).kill()


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    try:
        proc = psutil.Process(pid)
        proc.wait(timeout=timeout)
    except psutil.NoSuchProcess:
        return True
    except psutil.TimeoutExpired:
        return False
    return True


def test_clear_forgets_only_this_process_children(tmp_path: Path) -> None:
    registry = PidRegistry(tmp_path / "children.json")
    proc = subprocess.Popen(["sleep", "60"])
    try:
        registry.add(proc.pid, "sleep")
        record = registry.records()[0]
        other_owner = type(record)(4242, record.create_time, "other", os.getppid(), 1.0)
        registry._save([record, other_owner])
        registry.clear()
        assert registry.records() == [other_owner]
        assert registry.mine() == []
    finally:
        proc.kill()
        proc.wait()


def test_reap_skips_reused_pid(tmp_path: Path) -> None:
    registry = PidRegistry(tmp_path / "children.json")
    proc = subprocess.Popen(["sleep", "60"])
    try:
        registry.add(proc.pid, "sleep")
        # Pretend the record is of an older process with the same pid.
        data = registry.records()[0]
        registry._save([type(data)(data.pid, data.create_time - 100, data.name)])
        assert reap_recorded_children(registry) == 0
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("bad", ["", "not json", "[{}]"])
def test_registry_tolerates_corrupt_file(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "children.json"
    path.write_text(bad)
    assert PidRegistry(path).records() == []
