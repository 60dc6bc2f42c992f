"""Child processes that never outlive mesh-llm.

Three layers of protection:

1. Every child runs in its own process group and, on Linux, with ``PR_SET_PDEATHSIG = SIGKILL``:
   when mesh-llm dies, even by SIGKILL, the kernel kills the child.
2. Shutdown stops each child TERM -> grace -> KILL, by pid, only children we started.
3. A pid registry (``<state>/children.json``) records each child with its start time. At the next
   start :func:`reap_recorded_children` kills only recorded children still alive with the same
   start time (a reused pid is never touched). Never by process name.
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
from dataclasses import dataclass
from pathlib import Path

import psutil

from mesh_llm.errors import ProcessError

__all__ = ["ChildProcess", "PidRegistry", "reap_recorded_children", "stop_pid"]

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 5.0


def _linux_pdeathsig() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class _Record:
    pid: int
    create_time: float
    name: str


class PidRegistry:
    """A JSON file of the children this state dir's node started (concurrency: one node per dir)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def _load(self) -> list[_Record]:
        try:
            raw = json.loads(self._path.read_text())
            return [_Record(int(r["pid"]), float(r["create_time"]), str(r["name"])) for r in raw]
        except (OSError, ValueError, KeyError, TypeError):
            return []

    def _save(self, records: list[_Record]) -> None:
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps([_as_dict(r) for r in records]))
        tmp.replace(self._path)

    def add(self, pid: int, name: str) -> None:
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        with self._lock:
            records = [r for r in self._load() if r.pid != pid]
            records.append(_Record(pid, create_time, name))
            self._save(records)

    def remove(self, pid: int) -> None:
        with self._lock:
            self._save([r for r in self._load() if r.pid != pid])

    def records(self) -> list[_Record]:
        with self._lock:
            return self._load()

    def clear(self) -> None:
        with self._lock:
            self._save([])


def _as_dict(record: _Record) -> dict[str, object]:
    return {"pid": record.pid, "create_time": record.create_time, "name": record.name}


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
    """Kill children a previous run of this node left behind; returns how many were stopped."""
    stopped = 0
    for record in registry.records():
        try:
            proc = psutil.Process(record.pid)
            same = abs(proc.create_time() - record.create_time) < 0.01
        except psutil.Error:
            continue
        if same:
            log.warning(
                "stopping leftover %s (pid %d) from a previous run", record.name, record.pid
            )
            stop_pid(record.pid)
            stopped += 1
    registry.clear()
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
