"""Relay threads: how a relay loop's outcome reaches the request that waits for it."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from mesh_llm.errors import TransportError
from mesh_llm.network.relay import ClientGoneError, run_relay
from mesh_llm.network.relay.native import RelaySinkError, RelaySourceError

pytestmark = pytest.mark.timeout(30)


async def _run(raising: BaseException | None) -> tuple[BaseException | None, bool]:
    cleaned = threading.Event()

    def pump() -> None:
        if raising is not None:
            raise raising

    try:
        await run_relay(pump, on_cancel=lambda: None, cleanup=cleaned.set)
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        return exc, cleaned.is_set()
    return None, cleaned.is_set()


async def test_a_relay_whose_source_ends_succeeds() -> None:
    assert await _run(None) == (None, True)


async def test_source_and_sink_failures_become_the_ingress_errors() -> None:
    source, cleaned = await _run(RelaySourceError("upstream reset"))
    assert isinstance(source, TransportError)
    assert "upstream reset" in str(source)
    assert cleaned
    sink, cleaned = await _run(RelaySinkError("broken pipe"))
    assert isinstance(sink, ClientGoneError)
    assert cleaned


async def test_an_unexpected_exception_is_raised_with_its_traceback_not_counted_as_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def observe_bug() -> None:
        raise KeyError("a bug in observe")

    cleaned = threading.Event()
    with (
        caplog.at_level(logging.ERROR, logger="mesh_llm.network.relay.threads"),
        pytest.raises(KeyError, match="a bug in observe") as raised,
    ):
        await run_relay(observe_bug, on_cancel=lambda: None, cleanup=cleaned.set)
    assert cleaned.is_set()
    assert any(frame.name == "observe_bug" for frame in raised.traceback)
    failed = [r for r in caplog.records if r.getMessage() == "relay thread failed"]
    assert failed
    assert failed[0].exc_info is not None


async def test_the_relay_threads_survive_a_failed_relay() -> None:
    for _ in range(3):
        error, _ = await _run(ValueError("boom"))
        assert isinstance(error, ValueError)
    async with asyncio.timeout(5):
        assert await _run(None) == (None, True)
