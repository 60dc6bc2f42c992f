"""A cheaper driver for the iroh bindings' async calls (every stream read and write).

uniffi's generated ``_uniffi_rust_call_async`` polls the Rust future with a continuation callback
that always goes through ``loop.call_soon_threadsafe``. Most stream operations are ready at the
first poll (data already buffered, send credit available), and then Rust calls the continuation
*inline*, on the event loop's own thread, during the poll: the generated code still writes the
loop's self-pipe and spends a whole loop iteration to resume the coroutine. On a small machine
that about doubles the Python-side cost of each read and write (figures: docs/BENCHMARKS.md,
"iroh stream transport").

:func:`install` replaces the module-level driver (the generated methods look it up at each call)
with one that takes an inline continuation directly and keeps ``call_soon_threadsafe`` for
continuations that come from Rust's threads. The FFI protocol is unchanged: poll until READY,
then complete and free exactly once, also when the awaiting task is cancelled.

Continuations that come from Rust's threads are ctypes callbacks on threads Python did not start;
the driver keeps a Python thread state for each such thread instead of letting CPython create and
destroy one around every call (:func:`_keep_thread_state`). :func:`poll_blocking` is one poll
for a thread without a loop, used by :func:`run_blocking` and by :mod:`.iroh_direct`.

It is installed only if the bindings carry the expected generated driver (checked by source).
Without it (an iroh upgrade it does not recognise, or the fast path switched off),
:class:`LoopCall` makes a blocking call through the bindings' own async API instead: the call
runs as a task on the event loop that owns the stream, and the calling thread waits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final, Generic, TypeVar

from iroh import iroh_ffi

__all__ = [
    "BlockingCallCancelledError",
    "BlockingCallTimeoutError",
    "LoopCall",
    "generated_driver",
    "install",
    "is_installed",
    "needs_install",
    "poll_blocking",
    "run_blocking",
    "run_on_loop",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

_MARKER: Final = "_mesh_llm_inline_driver"
_NEEDED: Final = (
    "_uniffi_rust_call_async",
    "_uniffi_rust_call_with_error",
    "_uniffi_get_event_loop",
    "_UNIFFI_RUST_FUTURE_CONTINUATION_CALLBACK",
    "_UNIFFI_RUST_FUTURE_POLL_READY",
    "_UNIFFI_GLOBAL_EVENT_LOOP",
)


class _Continuation:
    """Where one poll's answer lands: set inline during the poll, or later via the loop (or, for
    a caller on a thread without a loop, by releasing its lock)."""

    __slots__ = ("code", "future", "lock", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop | None, thread: int) -> None:
        self.loop = loop
        self.thread = thread
        self.code: int | None = None
        self.future: asyncio.Future[int] | None = None
        self.lock: threading.Lock | None = None

    def deliver(self, code: int) -> None:
        self.code = code
        future = self.future
        if future is not None and not future.done():
            future.set_result(code)


_pending: dict[int, _Continuation] = {}
_handles = itertools.count(1)


_kept_thread_states: set[int] = set()
_MAX_KEPT: Final = 64


def _keep_thread_state(thread: int) -> None:
    """Keep a Python thread state for one of Rust's threads.

    A ctypes callback on a thread Python did not start gets a thread state created before and
    destroyed after each call (``PyGILState_Ensure``/``Release``), which is costly per continuation
    (figure: docs/BENCHMARKS.md, "iroh stream transport"). One extra ``PyGILState_Ensure`` on the
    thread's first callback, never released, keeps the state for the thread's life (a few tokio
    workers; at most :data:`_MAX_KEPT` threads, since a state outlives its thread by a few
    kilobytes).
    """
    active = getattr(threading, "_active", None)
    if (
        active is None
        or thread in active
        or thread in _kept_thread_states
        or len(_kept_thread_states) >= _MAX_KEPT
    ):
        return
    _kept_thread_states.add(thread)
    ctypes.pythonapi.PyGILState_Ensure()


def _continue(handle: int, code: int) -> None:
    continuation = _pending.pop(handle, None)
    if continuation is None:
        return
    thread = threading.get_ident()
    if thread == continuation.thread:
        continuation.deliver(code)  # inline, during the poll
        return
    if thread not in _kept_thread_states:
        _keep_thread_state(thread)
    loop = continuation.loop
    if loop is None:  # a blocking caller waits on its lock
        continuation.code = code
        assert continuation.lock is not None
        continuation.lock.release()
        return
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for the answer
        loop.call_soon_threadsafe(continuation.deliver, code)


_callback: Any = None  # the ctypes callback object; created on install, kept alive here


async def _call_async(
    rust_future: Any,
    ffi_poll: Callable[..., Any],
    ffi_complete: Callable[..., Any],
    ffi_free: Callable[..., Any],
    lift_func: Callable[[Any], Any],
    error_ffi_converter: Any,
) -> Any:
    ready = iroh_ffi._UNIFFI_RUST_FUTURE_POLL_READY
    try:
        loop = asyncio._get_running_loop() or iroh_ffi._UNIFFI_GLOBAL_EVENT_LOOP
        thread = threading.get_ident()
        while True:
            if loop is None:
                code = poll_blocking(
                    rust_future,
                    ffi_poll,
                    getattr(_local, "cancel", None),
                    getattr(_local, "deadline", None),
                )
            else:
                continuation = _Continuation(loop, thread)
                handle = next(_handles)
                _pending[handle] = continuation
                ffi_poll(rust_future, _callback, handle)
                inline = continuation.code
                if inline is None:
                    continuation.future = loop.create_future()
                    code = await continuation.future
                else:
                    code = inline
            if code == ready:
                break
        return lift_func(
            iroh_ffi._uniffi_rust_call_with_error(error_ffi_converter, ffi_complete, rust_future)
        )
    finally:
        ffi_free(rust_future)


setattr(_call_async, _MARKER, True)

_CANCEL_POLL_S = 0.2
_local = threading.local()


class BlockingCallCancelledError(Exception):
    """A blocking call was given up because its cancel event was set."""


class BlockingCallTimeoutError(Exception):
    """A blocking call was given up because its deadline passed."""


def _wait(
    continuation: _Continuation,
    handle: int,
    cancel: threading.Event | None,
    deadline: float | None,
) -> int:
    """Block this (loop-less) thread until Rust answers, the cancel event is set, or the
    ``time.monotonic()`` deadline passes."""
    lock = continuation.lock
    assert lock is not None
    while True:
        wait = _CANCEL_POLL_S
        if deadline is not None:
            wait = min(wait, max(deadline - time.monotonic(), 0.0))
        if lock.acquire(timeout=wait):
            break
        if cancel is not None and cancel.is_set():
            _pending.pop(handle, None)
            raise BlockingCallCancelledError
        if deadline is not None and time.monotonic() >= deadline:
            _pending.pop(handle, None)
            raise BlockingCallTimeoutError
    code = continuation.code
    assert code is not None
    return code


def poll_blocking(
    rust_future: int,
    ffi_poll: Callable[..., Any],
    cancel: threading.Event | None,
    deadline: float | None = None,
) -> int:
    """Poll a Rust future once from a thread without an event loop and return the code Rust
    answers with (READY or MAYBE_READY), waiting for it if it does not come during the poll.
    Setting ``cancel`` gives up with :class:`BlockingCallCancelledError`, passing the
    ``time.monotonic()`` ``deadline`` with :class:`BlockingCallTimeoutError`; the caller still
    frees the future, which cancels it. A future is only advanced by a poll, so one given up
    while waiting has taken nothing (a read consumed no bytes)."""
    continuation = _Continuation(None, threading.get_ident())
    continuation.lock = lock = threading.Lock()
    lock.acquire()
    handle = next(_handles)
    _pending[handle] = continuation
    ffi_poll(rust_future, _callback, handle)
    code = continuation.code
    if code is None:
        code = _wait(continuation, handle, cancel, deadline)
    return code


def run_blocking(
    coroutine: Coroutine[Any, Any, T],
    cancel: threading.Event | None = None,
    timeout: float | None = None,
) -> T:
    """Run one call of the bindings (``stream.read(n)``, ``send.write_all(data)``...) to the end on
    this thread, which must have no event loop: the driver then waits on a lock instead of an
    asyncio future. Setting ``cancel`` gives the call up (within :data:`_CANCEL_POLL_S`) with
    :class:`BlockingCallCancelledError`, a ``timeout`` (seconds) with
    :class:`BlockingCallTimeoutError`; the Rust future is freed, which cancels it.
    """
    if not is_installed():
        coroutine.close()
        raise RuntimeError("the inline driver is not installed")
    _local.cancel = cancel
    _local.deadline = None if timeout is None else time.monotonic() + timeout
    try:
        coroutine.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        _local.cancel = None
        _local.deadline = None
    coroutine.close()
    raise RuntimeError("the call awaited something other than a Rust future")


class LoopCall(Generic[T]):
    """One call of the bindings (``call()``, a coroutine) run as a task on ``loop`` and waited
    for from another thread: the fallback for :func:`run_blocking` when the inline driver is not
    installed. Created on ``loop``'s own thread it could never be waited for: RuntimeError. A
    closed loop counts as cancelled (:class:`BlockingCallCancelledError`).

    Giving up a wait (:meth:`wait`) leaves the call running: under the bindings' own driver a
    read can be READY (its bytes taken from the stream) before the task resumes, so cancelling
    it could lose them. The caller keeps the call and waits again, or :meth:`cancel`s it when the
    stream is abandoned.
    """

    __slots__ = ("_done", "_loop", "_task")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, call: Callable[[], Coroutine[Any, Any, T]]
    ) -> None:
        if asyncio._get_running_loop() is loop:
            raise RuntimeError("a blocking stream call on its event loop's thread never returns")
        self._loop = loop
        self._done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._task: asyncio.Task[T] | None = None
        try:
            loop.call_soon_threadsafe(self._start, call)
        except RuntimeError:  # the loop is closed: so is the stream
            raise BlockingCallCancelledError from None

    def _start(self, call: Callable[[], Coroutine[Any, Any, T]]) -> None:
        if self._done.cancelled():
            return
        self._task = self._loop.create_task(call())
        self._task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self._done.cancel()
        elif (exc := task.exception()) is not None:
            self._done.set_exception(exc)
        else:
            self._done.set_result(task.result())

    def _give_up(self) -> None:
        if self._task is not None:
            self._task.cancel()
        else:
            self._done.cancel()  # not started: it never will be

    def wait(self, cancel: threading.Event | None = None, timeout: float | None = None) -> T:
        """The call's result (or its exception), waiting on this thread. Setting ``cancel``
        gives the wait up (within :data:`_CANCEL_POLL_S`) with
        :class:`BlockingCallCancelledError`, ``timeout`` seconds with
        :class:`BlockingCallTimeoutError`; the call goes on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = _CANCEL_POLL_S
            if deadline is not None:
                wait = min(wait, max(deadline - time.monotonic(), 0.0))
            try:
                return self._done.result(timeout=wait)
            except concurrent.futures.TimeoutError:
                pass
            except concurrent.futures.CancelledError:
                raise BlockingCallCancelledError from None
            if cancel is not None and cancel.is_set():
                raise BlockingCallCancelledError
            if deadline is not None and time.monotonic() >= deadline:
                raise BlockingCallTimeoutError

    async def result(self) -> T:
        """The call's result, awaited on ``loop``."""
        return await asyncio.wrap_future(self._done)

    def cancel(self) -> None:
        """Cancel the call (its Rust future is freed); from any thread."""
        with contextlib.suppress(RuntimeError):  # a closed loop: the task will never run again
            self._loop.call_soon_threadsafe(self._give_up)


def run_on_loop(
    loop: asyncio.AbstractEventLoop,
    call: Callable[[], Coroutine[Any, Any, T]],
    cancel: threading.Event | None = None,
) -> T:
    """Run ``call()`` to the end as a :class:`LoopCall`; setting ``cancel`` cancels it (for a
    write: the stream is abandoned)."""
    running = LoopCall(loop, call)
    try:
        return running.wait(cancel)
    except BlockingCallCancelledError:
        running.cancel()
        raise


def is_installed() -> bool:
    driver = getattr(iroh_ffi, "_uniffi_rust_call_async", None)
    return driver is not None and getattr(driver, _MARKER, False) is True


def needs_install() -> bool:
    """True if the bindings carry the generated driver this module knows how to replace."""
    if is_installed() or not all(hasattr(iroh_ffi, name) for name in _NEEDED):
        return False
    try:
        source = inspect.getsource(iroh_ffi._uniffi_rust_call_async)
    except (OSError, TypeError):
        return False
    return all(
        part in source
        for part in ("ffi_poll(", "_uniffi_continuation_callback", "ffi_free(rust_future)")
    )


_generated: Any = None  # the bindings' own driver, kept when it is replaced


def generated_driver() -> Any:
    """The bindings' generated ``_uniffi_rust_call_async`` (replaced or not), for tests that run
    the bindings as shipped."""
    return _generated if is_installed() else iroh_ffi._uniffi_rust_call_async


def install() -> bool:
    """Install the inline-continuation driver if the bindings need it; True if it did now."""
    global _callback, _generated
    if not needs_install():
        return False
    _callback = iroh_ffi._UNIFFI_RUST_FUTURE_CONTINUATION_CALLBACK(_continue)
    _generated = iroh_ffi._uniffi_rust_call_async
    iroh_ffi._uniffi_rust_call_async = _call_async
    log.debug("iroh bindings: async calls resume inline when Rust answers during the poll")
    return True
