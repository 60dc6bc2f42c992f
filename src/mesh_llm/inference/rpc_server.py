"""The node's llama.cpp ``rpc-server``: one per worker node, on 127.0.0.1 only.

llama.cpp's RPC is unauthenticated, so the server never listens beyond loopback; remote hosts
reach it only through the mesh's RPC tunnel (stream 0x02, ``network.serve_rpc_tunnel``).

Facts of the pinned build (commit 0c1e570) that shape this:

- ``rpc-server --help`` lists no devices. ``-d NAME`` is checked with ``ggml_backend_dev_by_name``:
  ``CPU`` is accepted by the CPU build; an unknown name prints ``available devices:`` (on stdout)
  and exits 1. Without ``-d`` it uses every accelerator, else the CPU.
- It serves one client at a time (accept, serve until that client closes, accept the next), and
  frees everything the client allocated when it leaves: one host per worker at a time.
- ``-t`` sets the CPU backend's threads (default: half the cores).
- The readiness probe is a TCP connect: the server accepts and sees the probe close at once.
- ``GGML_RPC_NO_RDMA=1`` keeps a build with RDMA support from offering it in the HELLO reply
  (an RDMA path would bypass the tunnel); the tunnel also zeroes the client's offer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Final

from mesh_llm.errors import ProcessError
from mesh_llm.inference.children import ChildProcess, PidRegistry
from mesh_llm.inference.supervisor import free_port

__all__ = ["RpcServer", "rpc_server_argv"]

log = logging.getLogger(__name__)

READY_TIMEOUT_S: Final = 15.0
READY_POLL_S: Final = 0.1
START_ATTEMPTS: Final = 3  # a free port can be taken between our check and the child's bind


def rpc_server_argv(
    binary: Path, *, port: int, threads: int, device: str | None = None
) -> list[str]:
    """``rpc-server -H 127.0.0.1 -p PORT -t THREADS [-d DEVICE]``."""
    argv = [str(binary), "-H", "127.0.0.1", "-p", str(port), "-t", str(max(1, threads))]
    if device:
        argv += ["-d", device]
    return argv


async def _accepts(port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class RpcServer:
    """Start, await, stop one rpc-server child (own process group, pid registry, log file)."""

    def __init__(
        self,
        binary: Path,
        *,
        log_path: Path,
        registry: PidRegistry | None = None,
        device: str | None = None,
        threads: int | None = None,
    ) -> None:
        self.binary = binary
        self.log_path = log_path
        self.device = device
        self.threads = threads or os.cpu_count() or 1
        self._registry = registry
        self._child: ChildProcess | None = None
        self._port = 0

    @property
    def port(self) -> int:
        """The loopback port it listens on (0 when not started)."""
        return self._port

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.returncode is None

    async def start(self, ready_timeout: float = READY_TIMEOUT_S) -> int:
        """Start it and wait until its port accepts; the port. ProcessError on failure."""
        if self.running:
            return self._port
        self._port = 0  # a restart: never report the dead child's port as ready
        for attempt in range(1, START_ATTEMPTS + 1):
            port = free_port()
            argv = rpc_server_argv(self.binary, port=port, threads=self.threads, device=self.device)
            child = ChildProcess(
                "rpc-server", argv, self.log_path, self._registry, env={"GGML_RPC_NO_RDMA": "1"}
            )
            await child.start()
            self._child = child
            if await self._await_ready(child, port, ready_timeout):
                self._port = port
                log.info("rpc-server ready on 127.0.0.1:%d (pid %s)", port, child.pid)
                return port
            code = child.returncode
            await child.stop()
            if code is None:
                raise ProcessError(
                    f"rpc-server did not accept on port {port} within {ready_timeout:.0f} s; "
                    f"log tail:\n{child.log_tail()}"
                )
            if attempt == START_ATTEMPTS or "socket" not in child.log_tail(5):
                raise ProcessError(f"rpc-server exited with code {code}:\n{child.log_tail()}")
            log.info("rpc-server could not bind port %d, retrying", port)
        raise ProcessError("rpc-server did not start")  # pragma: no cover - loop always returns

    async def _await_ready(self, child: ChildProcess, port: int, limit_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        while loop.time() < deadline:
            if child.returncode is not None:
                return False
            if await _accepts(port):
                return True
            await asyncio.sleep(READY_POLL_S)
        return False

    async def wait(self) -> int:
        """Until the child exits; its exit code."""
        if self._child is None:
            raise ProcessError("rpc-server was never started")
        return await self._child.wait()

    async def stop(self) -> None:
        """TERM, grace, KILL (only our own child). Safe to call twice."""
        if self._child is not None:
            await self._child.stop()
        self._port = 0

    def log_tail(self, lines: int = 40) -> str:
        return self._child.log_tail(lines) if self._child else ""
