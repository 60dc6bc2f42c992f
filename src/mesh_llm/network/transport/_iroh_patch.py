"""Speed up byte transfer into the iroh bindings (upstream n0-computer/iroh-ffi#229).

The ``iroh`` wheel's uniffi-generated glue lowers every ``bytes`` argument (each stream write,
among others) through ``_UniffiRustBufferBuilder.write``, which copies the value into the Rust
buffer one byte at a time in a Python loop; that caps a stream's writes at a few MB/s (figures:
docs/BENCHMARKS.md, "iroh stream transport"). uniffi 0.32 replaced the loop with a single
``ctypes.memmove``. :func:`apply` installs an equivalent ``write`` on the class when,
and only when, the installed bindings still carry the loop:

- the buffer still grows through the builder's own ``_reserve`` (same capacity requests, same
  ``len`` update), so the resulting ``RustBuffer`` is identical;
- ``bytes``, ``bytearray`` and byte-format ``memoryview`` values are copied with one memmove;
  anything else falls back to the original method.

Call :func:`apply` once at startup, before the first endpoint is bound; it is idempotent.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final

from iroh import iroh_ffi

__all__ = ["apply", "is_applied", "needs_patch"]

log = logging.getLogger(__name__)

_MARKER: Final = "_mesh_llm_memmove_write"
_BUILDER_NAME: Final = "_UniffiRustBufferBuilder"


def _builder_class() -> type[Any] | None:
    cls = getattr(iroh_ffi, _BUILDER_NAME, None)
    return cls if isinstance(cls, type) else None


def _has_byte_loop(write: Callable[..., Any]) -> bool:
    """True if ``write`` is the generated per-byte loop (and not a memmove copy)."""
    try:
        source = inspect.getsource(write)
    except (OSError, TypeError):
        return False  # cannot tell: leave it alone
    return "memmove" not in source and "for " in source and "enumerate(value)" in source


def _compatible(cls: type[Any]) -> bool:
    """The replacement relies on ``_reserve`` and on ``rbuf.data``/``rbuf.len``; check them."""
    reserve = getattr(cls, "_reserve", None)
    if reserve is None:
        return False
    try:
        source = inspect.getsource(reserve)
    except (OSError, TypeError):
        return False
    return "rbuf.len" in source and "yield" in source


def is_applied() -> bool:
    """True if the memmove ``write`` is installed in this process."""
    cls = _builder_class()
    return cls is not None and getattr(cls.write, _MARKER, False) is True


def needs_patch() -> bool:
    """True if the installed bindings still copy written bytes one at a time."""
    cls = _builder_class()
    if cls is None or is_applied():
        return False
    return _has_byte_loop(cls.write) and _compatible(cls)


def _make_write(original: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    def write(self: Any, value: Any) -> None:
        if type(value) is bytes:
            src: bytes = value
        else:
            try:
                view = memoryview(value)
            except TypeError:
                original(self, value)
                return
            if view.itemsize != 1 or view.format not in ("B", "c") or view.ndim != 1:
                original(self, value)
                return
            src = view.tobytes()
        size = len(src)
        with self._reserve(size):  # may reallocate self.rbuf; len is bumped on exit
            if size:
                base = ctypes.cast(self.rbuf.data, ctypes.c_void_p).value
                ctypes.memmove(base + self.rbuf.len, src, size)

    setattr(write, _MARKER, True)
    write.__doc__ = "Append ``value`` to the buffer with one memmove (mesh_llm iroh_patch)."
    write.__wrapped__ = original  # type: ignore[attr-defined]  # for inspection and tests
    return write


def apply() -> bool:
    """Install the memmove ``write`` if the bindings need it. Returns True if it patched now."""
    if not needs_patch():
        return False
    cls = _builder_class()
    assert cls is not None
    cls.write = _make_write(cls.write)
    log.debug("iroh bindings: replaced the per-byte RustBuffer write with memmove")
    return True
