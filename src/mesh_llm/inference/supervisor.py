"""Supervise one llama-server: start, await ``/health``, restart after crashes with backoff, stop.

The restart decision is the pure :class:`RestartPolicy`; the supervisor only applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh_llm.errors import ProcessError
from mesh_llm.inference.children import ChildProcess, PidRegistry, describe_exit
from mesh_llm.inference.launch import LaunchSpec

__all__ = ["RestartPolicy", "ServerState", "ServerSupervisor", "free_port", "probe_health"]

log = logging.getLogger(__name__)

HEALTH_POLL_S = 0.25
HEALTH_TIMEOUT_S = 600.0
HEALTH_REQUEST_TIMEOUT_S = 2.0


class ServerState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Backoff 1, 2, 4, 8, 16 s (capped); give up after ``max_crashes`` in a row.

    A run that stayed up ``stable_after_s`` resets the count.
    """

    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    max_crashes: int = 5
    stable_after_s: float = 60.0

    def next_delay(self, consecutive_crashes: int) -> float | None:
        """Delay before restart number ``consecutive_crashes`` (1-based), or None to give up."""
        if consecutive_crashes > self.max_crashes:
            return None
        return float(min(self.max_delay_s, self.base_delay_s * 2 ** (consecutive_crashes - 1)))

    def crashes_after_exit(self, previous: int, uptime_s: float) -> int:
        return 1 if uptime_s >= self.stable_after_s else previous + 1


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def probe_health(port: int, limit_s: float = HEALTH_REQUEST_TIMEOUT_S) -> bool:
    """True when ``GET /health`` on 127.0.0.1:port answers 200 (503 while the model loads)."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = status_line.split()
    return len(parts) >= 2 and parts[1] == b"200"


class ServerSupervisor:
    """Runs one llama-server until :meth:`stop`, restarting it per :class:`RestartPolicy`.

    ``make_spec(port)`` builds the launch spec for a fresh port at each (re)start.
    ``on_change()`` is called after every state change (the node re-publishes its status).
    """

    def __init__(
        self,
        name: str,
        make_spec: Callable[[int], LaunchSpec],
        *,
        registry: PidRegistry | None = None,
        on_change: Callable[[], None] | None = None,
        policy: RestartPolicy | None = None,
        health_timeout_s: float = HEALTH_TIMEOUT_S,
    ) -> None:
        self.name = name
        self._make_spec = make_spec
        self._registry = registry
        self._on_change = on_change or (lambda: None)
        self._policy = policy or RestartPolicy()
        self._health_timeout_s = health_timeout_s
        self.state = ServerState.STARTING
        self.port: int | None = None
        self.last_error: str | None = None
        self.restarts = 0
        self.log_path: Path | None = None
        self._child: ChildProcess | None = None
        self._stopping = False
        self._ready_event = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    def _set(self, state: ServerState, error: str | None = None) -> None:
        self.state = state
        if error is not None:
            self.last_error = error
        if state is ServerState.READY:
            self._ready_event.set()
        else:
            self._ready_event.clear()
        self._on_change()

    async def wait_ready(self) -> None:
        await self._ready_event.wait()

    async def run(self) -> None:
        """Start and keep running until stopped or given up (then state is FAILED)."""
        crashes = 0
        while not self._stopping:
            started = time.monotonic()
            try:
                await self._start_once()
                assert self._child is not None
                code = await self._child.wait()
            except ProcessError as exc:
                code = None
                self.last_error = str(exc)
            if self._stopping:
                break
            uptime = time.monotonic() - started
            crashes = self._policy.crashes_after_exit(crashes, uptime)
            tail = self._child.log_tail(8) if self._child else ""
            reason = (
                self.last_error
                if code is None
                else f"llama-server {describe_exit(code)}; log: {self.log_path}"
            )
            delay = self._policy.next_delay(crashes)
            if delay is None:
                msg = (
                    f"{self.name}: llama-server crashed {crashes - 1} times in a row, "
                    f"giving up ({reason})"
                )
                log.error("%s\n%s", msg, tail)
                self._set(ServerState.FAILED, msg)
                return
            log.warning(
                "%s: %s; restart %d in %.0f s\n%s",
                self.name,
                reason,
                crashes,
                delay,
                tail,
            )
            self.restarts += 1
            self._set(ServerState.RESTARTING, reason)
            await asyncio.sleep(delay)
        self._set(ServerState.STOPPED)

    async def _start_once(self) -> None:
        port = free_port()
        spec = self._make_spec(port)
        self.port = port
        self.log_path = spec.log_path
        self._child = ChildProcess(
            f"llama-server[{self.name}]", list(spec.argv), spec.log_path, self._registry, spec.env
        )
        self._set(ServerState.STARTING)
        await self._child.start()
        deadline = time.monotonic() + self._health_timeout_s
        while True:
            if self._child.returncode is not None:
                raise ProcessError(
                    f"llama-server {describe_exit(self._child.returncode)} while loading; "
                    f"log: {spec.log_path}"
                )
            if await probe_health(port):
                break
            if time.monotonic() > deadline:
                await self._child.stop()
                raise ProcessError(
                    f"llama-server not healthy after {self._health_timeout_s:.0f} s; "
                    f"log: {spec.log_path}"
                )
            await asyncio.sleep(HEALTH_POLL_S)
        log.info(
            "%s: llama-server ready on 127.0.0.1:%d (pid %s)", self.name, port, self._child.pid
        )
        self._set(ServerState.READY)

    async def stop(self) -> None:
        self._stopping = True
        if self._child is not None:
            await self._child.stop()
