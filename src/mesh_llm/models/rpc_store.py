"""A worker's bounded store of model bytes that hosts sent over RPC tunnels (TENSOR_STORE).

Layout under the root (``system.cache_dir() / "rpc-store"``)::

    <identity hex>/part-<k>.bin   sparse; bytes sit at their offset in model file part k
    <identity hex>/index.json     {"version": 1, "last_used": t, "parts": {"k": [[off, len], ...]}}

So a later load of the same model (same identity hash) can be served from disk with TENSOR_REF,
exactly like a worker that holds the GGUF itself. Only bytes the host verified against its own
file are ever stored (see :mod:`.rpc_splice`).

Trade-off: a worker without the file pays disk (what it was sent, at most ``cap_bytes`` in all,
default 20 GB) to save the network the next time. Identities are evicted least recently used
first; an identity a live tunnel uses is never evicted; a write that cannot fit even after
evicting everything else is simply not stored (the upload is forwarded as usual).

Crash safety: data is written before the index names it, and the index is replaced atomically
after an ``fsync`` of the data files, so a crash loses at most the bytes stored since the last
flush (they are re-sent). Bytes written but never indexed (a tunnel cut mid-frame) take disk space
until their identity is evicted; they are not counted against the cap.

Methods are blocking and thread-safe; the tunnel calls the writing ones through
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mesh_llm.protocol.rpc_mesh import (
    MAX_FILE_OFFSET,
    MAX_PART,
    Extent,
    merge_extents,
)

__all__ = ["DEFAULT_STORE_CAP_BYTES", "RpcStore"]

log = logging.getLogger(__name__)

DEFAULT_STORE_CAP_BYTES: Final = 20 * 1000**3
INDEX_NAME: Final = "index.json"
INDEX_VERSION: Final = 1
_IDENTITY_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(slots=True)
class _Entry:
    identity: str
    directory: Path
    extents: list[Extent] = field(default_factory=list)
    last_used: float = 0.0
    pins: int = 0
    reserved: int = 0
    dirty: bool = False
    fds: dict[int, int] = field(default_factory=dict)

    def stored(self) -> int:
        return sum(e.length for e in self.extents)


class RpcStore:
    """Per-identity byte store with an LRU cap (see module doc). ``cap_bytes == 0`` disables it."""

    def __init__(
        self,
        root: Path,
        cap_bytes: int = DEFAULT_STORE_CAP_BYTES,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.cap_bytes = max(0, cap_bytes)
        self._clock = clock
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        if self.cap_bytes:
            root.mkdir(parents=True, exist_ok=True)
            self._load()

    # -------------------------------------------------------------------------------- queries

    @property
    def enabled(self) -> bool:
        return self.cap_bytes > 0

    def usage(self) -> int:
        """Bytes stored plus bytes reserved by writes in flight."""
        with self._lock:
            return sum(e.stored() + e.reserved for e in self._entries.values())

    def identities(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def holdings(self, identity: str) -> tuple[Extent, ...]:
        """The extents stored for ``identity`` (marks it used)."""
        with self._lock:
            entry = self._entries.get(identity)
            if entry is None:
                return ()
            entry.last_used = self._clock()
            entry.dirty = True
            return tuple(entry.extents)

    def part_path(self, identity: str, part: int) -> Path:
        _check_identity(identity)
        return self.root / identity / f"part-{part}.bin"

    # ------------------------------------------------------------------------------ lifecycle

    def pin(self, identity: str) -> None:
        """A tunnel uses ``identity``: never evict it until :meth:`unpin`."""
        with self._lock:
            self._entry(identity).pins += 1

    def unpin(self, identity: str) -> None:
        with self._lock:
            entry = self._entries.get(identity)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1

    def reserve(self, identity: str, length: int) -> bool:
        """Make room for ``length`` more bytes of ``identity``; False when it cannot fit."""
        if not self.enabled or length <= 0:
            return False
        with self._lock:
            entry = self._entry(identity)
            while self.usage() + length > self.cap_bytes:
                victim = self._lru_victim(exclude=identity)
                if victim is None:
                    return False
                self._evict(victim)
            entry.reserved += length
            return True

    def release(self, identity: str, length: int) -> None:
        """Give back a reservation that will not be committed."""
        with self._lock:
            entry = self._entries.get(identity)
            if entry is not None:
                entry.reserved = max(0, entry.reserved - length)

    def write(self, identity: str, part: int, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of the stored part (within a reservation)."""
        if part >= MAX_PART or offset + len(data) > MAX_FILE_OFFSET:
            raise ValueError("store write out of bounds")
        with self._lock:
            entry = self._entry(identity)
            fd = entry.fds.get(part)
            if fd is None:
                entry.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.part_path(identity, part), os.O_RDWR | os.O_CREAT, 0o600)
                entry.fds[part] = fd
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view = view[written:]
            offset += written

    def commit(self, identity: str, part: int, offset: int, length: int) -> None:
        """The bytes of a reservation are written: record the extent (persisted at flush)."""
        with self._lock:
            entry = self._entry(identity)
            entry.reserved = max(0, entry.reserved - length)
            entry.extents = merge_extents([*entry.extents, Extent(part, offset, length)])
            entry.last_used = self._clock()
            entry.dirty = True

    def flush(self, identity: str) -> None:
        """fsync the data of ``identity`` and persist its index."""
        with self._lock:
            entry = self._entries.get(identity)
            if entry is None or not entry.dirty:
                return
            for fd in entry.fds.values():
                os.fsync(fd)
            entry.directory.mkdir(parents=True, exist_ok=True)
            index = {
                "version": INDEX_VERSION,
                "last_used": entry.last_used,
                "parts": _parts_json(entry.extents),
            }
            tmp = entry.directory / (INDEX_NAME + ".tmp")
            tmp.write_text(json.dumps(index))
            tmp.replace(entry.directory / INDEX_NAME)
            entry.dirty = False

    def close(self) -> None:
        """Flush everything and close the data files."""
        with self._lock:
            for identity, entry in list(self._entries.items()):
                try:
                    self.flush(identity)
                except OSError as exc:
                    log.warning("rpc store: cannot flush %s: %s", identity[:12], exc)
                _close_fds(entry)
                if not entry.extents and not entry.pins:
                    del self._entries[identity]

    # -------------------------------------------------------------------------------- private

    def _entry(self, identity: str) -> _Entry:
        entry = self._entries.get(identity)
        if entry is None:
            _check_identity(identity)
            entry = _Entry(identity, self.root / identity, last_used=self._clock())
            self._entries[identity] = entry
        return entry

    def _lru_victim(self, exclude: str) -> str | None:
        candidates = [
            e
            for e in self._entries.values()
            if e.identity != exclude and e.pins == 0 and e.reserved == 0 and e.stored() > 0
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda e: e.last_used).identity

    def _evict(self, identity: str) -> None:
        entry = self._entries.pop(identity)
        _close_fds(entry)
        log.info(
            "rpc store: evicting %s (%d bytes, least recently used)", identity[:12], entry.stored()
        )
        shutil.rmtree(entry.directory, ignore_errors=True)

    def _load(self) -> None:
        for directory in sorted(self.root.iterdir()):
            if not directory.is_dir():
                continue
            identity = directory.name
            try:
                _check_identity(identity)
                entry = _read_index(directory)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("rpc store: dropping unreadable entry %s (%s)", directory.name, exc)
                shutil.rmtree(directory, ignore_errors=True)
                continue
            self._entries[identity] = entry
        while self.usage() > self.cap_bytes:
            victim = self._lru_victim(exclude="")
            if victim is None:
                break
            self._evict(victim)


def _check_identity(identity: str) -> None:
    if not _IDENTITY_RE.match(identity):
        raise ValueError(f"not an identity hash: {identity[:80]!r}")


def _parts_json(extents: list[Extent]) -> dict[str, list[list[int]]]:
    parts: dict[str, list[list[int]]] = {}
    for e in extents:
        parts.setdefault(str(e.part), []).append([e.offset, e.length])
    return parts


def _read_index(directory: Path) -> _Entry:
    """An entry from its index; extents past the end of their data file are dropped."""
    raw: Any = json.loads((directory / INDEX_NAME).read_text())
    if raw.get("version") != INDEX_VERSION:
        raise ValueError(f"index version {raw.get('version')!r}")
    extents: list[Extent] = []
    for part_key, pairs in dict(raw["parts"]).items():
        part = int(part_key)
        if not 0 <= part < MAX_PART:
            raise ValueError(f"part {part}")
        path = directory / f"part-{part}.bin"
        size = path.stat().st_size if path.exists() else 0
        for offset, length in pairs:
            offset, length = int(offset), int(length)
            if offset < 0 or length <= 0 or offset + length > size:
                continue
            extents.append(Extent(part, offset, length))
    return _Entry(
        directory.name,
        directory,
        extents=merge_extents(extents),
        last_used=float(raw.get("last_used", 0.0)),
    )


def _close_fds(entry: _Entry) -> None:
    for fd in entry.fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    entry.fds.clear()
