"""Child processes that never outlive mesh-llm.

Three layers of protection:

1. Every child runs in its own process group and, on Linux, with ``PR_SET_PDEATHSIG = SIGKILL``:
   when mesh-llm dies, even by SIGKILL, the kernel kills the child.
2. Shutdown stops each child TERM -> grace -> KILL, by pid, only children we started.
3. A pid registry (``<state>/children.json``) records each child with its start time and its
   owner (the mesh-llm process that started it, with that process's start time). At start
   :func:`reap_recorded_children` kills only recorded children whose owner is dead and that are
   still alive with the same start time (a reused pid is never touched). Any number of nodes may
   share a state directory: a live node's children are never taken for leftovers. Never by
   process name. Writers serialise on ``children.json.lock`` (``flock``), across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from mesh_llm.errors import ProcessError
from mesh_llm.system.locks import file_lock

__all__ = ["ChildProcess", "PidRegistry", "describe_exit", "reap_recorded_children", "stop_pid"]

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 5.0


def _linux_pdeathsig() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


CREATE_TIME_TOLERANCE_S = 0.01


@dataclass(frozen=True, slots=True)
class _Record:
    pid: int
    create_time: float
    name: str
    owner_pid: int | None = None
    owner_create_time: float | None = None


def _same_process(pid: int | None, create_time: float | None) -> bool:
    """True when ``pid`` is alive and is the process that started at ``create_time``."""
    if pid is None or create_time is None:
        return False
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < CREATE_TIME_TOLERANCE_S
    except psutil.Error:
        return False


def _own_create_time() -> float:
    return psutil.Process(os.getpid()).create_time()


class PidRegistry:
    """A JSON file of the children started by the nodes of one state directory."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._owner = (os.getpid(), _own_create_time())

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This thread and every other process using the file, one at a time."""
        with self._lock, file_lock(self._path.with_name(self._path.name + ".lock")):
            yield

    def _load(self) -> list[_Record]:
        try:
            raw = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return []
        records = []
        for item in raw if isinstance(raw, list) else []:
            try:
                owner = item.get("owner_pid")
                owner_time = item.get("owner_create_time")
                records.append(
                    _Record(
                        int(item["pid"]),
                        float(item["create_time"]),
                        str(item["name"]),
                        int(owner) if owner is not None else None,
                        float(owner_time) if owner_time is not None else None,
                    )
                )
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
        return records

    def _save(self, records: list[_Record]) -> None:
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps([_as_dict(r) for r in records]))
        tmp.replace(self._path)

    def add(self, pid: int, name: str) -> None:
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        with self._exclusive():
            records = [r for r in self._load() if r.pid != pid]
            records.append(_Record(pid, create_time, name, *self._owner))
            self._save(records)

    def remove(self, pid: int) -> None:
        with self._exclusive():
            self._save([r for r in self._load() if r.pid != pid])

    def records(self) -> list[_Record]:
        with self._exclusive():
            return self._load()

    def mine(self) -> list[_Record]:
        """The records of children this process started."""
        return [r for r in self.records() if (r.owner_pid, r.owner_create_time) == self._owner]

    def clear(self) -> None:
        """Forget this process's children (other live nodes' records stay)."""
        with self._exclusive():
            self._save(
                [r for r in self._load() if (r.owner_pid, r.owner_create_time) != self._owner]
            )

    def take_leftovers(self) -> list[_Record]:
        """Remove and return the records whose owner is dead: what a crashed node left behind.
        Records of live owners (other nodes sharing this state directory) stay untouched."""
        with self._exclusive():
            records = self._load()
            keep = [r for r in records if _same_process(r.owner_pid, r.owner_create_time)]
            self._save(keep)
        return [r for r in records if r not in keep]


def _as_dict(record: _Record) -> dict[str, object]:
    return {
        "pid": record.pid,
        "create_time": record.create_time,
        "name": record.name,
        "owner_pid": record.owner_pid,
        "owner_create_time": record.owner_create_time,
    }


def describe_exit(code: int) -> str:
    """``exited with code 1`` or ``was killed by SIGSEGV`` (negative codes are signals)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def stop_pid(pid: int, grace: float = STOP_GRACE_S) -> None:
    """TERM the process group of ``pid``, wait up to ``grace`` seconds, then KILL (blocking)."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except psutil.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.Error):
            proc.wait(timeout=grace)
    except psutil.Error:
        pass


def reap_recorded_children(registry: PidRegistry) -> int:
    """Kill children that dead mesh-llm processes left behind; returns how many were stopped.

    Children of a live mesh-llm (another node sharing the state directory) are never touched.
    """
    stopped = 0
    for record in registry.take_leftovers():
        if not _same_process(record.pid, record.create_time):
            continue
        owner = f"pid {record.owner_pid}" if record.owner_pid is not None else "an older mesh-llm"
        log.warning(
            "stopping leftover %s (pid %d) left by a mesh-llm that is gone (%s)",
            record.name,
            record.pid,
            owner,
        )
        stop_pid(record.pid)
        stopped += 1
    return stopped


class ChildProcess:
    """One running child: argv list (no shell), own process group, output appended to a log file."""

    TAIL_LINES = 40

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        registry: PidRegistry | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._registry = registry
        self._env = env
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self._env:
            env.update(self._env)
        with self.log_path.open("ab") as sink:
            sink.write(f"\n=== mesh-llm starting {self.name}: {' '.join(self.argv)}\n".encode())
            sink.flush()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=sink,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_linux_pdeathsig if sys.platform == "linux" else None,
                )
            except OSError as exc:
                raise ProcessError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        if self._registry is not None:
            self._registry.add(self._proc.pid, self.name)
        log.info("started %s pid %d (log %s)", self.name, self._proc.pid, self.log_path)

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """TERM, wait ``grace``, KILL. Safe to call twice or after the child exited."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if self._registry is not None:
            self._registry.remove(proc.pid)

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 16384))
                data = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(deque(data.splitlines(), maxlen=lines))
