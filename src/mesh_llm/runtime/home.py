"""Which node owns a state directory, and where a node writes its own files.

Any number of nodes may run on one machine with one state directory (``MESH_LLM_HOME``), as people
try a mesh on a laptop. What must not be shared is decided here:

- the node key (``<home>/key``) is one identity: the first node holds ``<home>/node.lock``
  (``flock``, released by the kernel when the process dies, so a crash leaves no stale lock); a
  second node that would load the same key stops with an error naming the first's pid, while a
  second node with a fresh identity (``MESH_LLM_EPHEMERAL_KEY=1``, ``--client``) may run;
- child logs: the lock holder writes ``<home>/logs/``, any other node ``<home>/logs/node-<pid>/``;
- the pid registry is shared but owner-aware (``inference.children``): a live node's children are
  never stopped as leftovers by another.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO

from mesh_llm.errors import ConfigError

fcntl: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows: no flock; one node per state directory is then on the user
    fcntl = None

__all__ = ["HomeLease", "acquire_home"]

LOCK_NAME = "node.lock"


@dataclass(slots=True)
class HomeLease:
    """This node's place in its state directory; held until :meth:`release`."""

    home: Path
    log_dir: Path
    owner: bool
    """True when this node holds ``node.lock`` (and may use the state directory's key)."""
    _handle: IO[str] | None = None

    def release(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()  # closing the descriptor drops the flock
            self._handle = None


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        return "another mesh-llm"
    return f"another mesh-llm (pid {pid})" if pid.isdigit() else "another mesh-llm"


def acquire_home(home: Path, *, uses_home_key: bool) -> HomeLease:
    """Take ``home`` for this node, or share it as a second node; ConfigError when this node
    would run with the identity (the ``key`` file) a live node already uses."""
    home.mkdir(parents=True, exist_ok=True)
    lock = home / LOCK_NAME
    if fcntl is None:
        return HomeLease(home, home / "logs", owner=True)
    handle = lock.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        if uses_home_key:
            raise ConfigError(
                f"{_holder(lock)} is already running with the state directory {home} and its "
                f"node key {home / 'key'}: two nodes cannot share one identity. Give this node "
                "its own directory (MESH_LLM_HOME=/some/other/dir) or a fresh identity "
                "(MESH_LLM_EPHEMERAL_KEY=1)"
            ) from None
        return HomeLease(home, home / "logs" / f"node-{os.getpid()}", owner=False)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return HomeLease(home, home / "logs", owner=True, _handle=handle)
