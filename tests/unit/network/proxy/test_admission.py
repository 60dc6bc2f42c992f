"""Overload: past ``max_active`` proxied requests the ingress answers 503 with Retry-After at once,
and every 503 a client may retry (nothing answered) carries Retry-After."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from mesh_llm.network.proxy.ingress import RETRY_AFTER_S
from tests.fakes.fake_upstream import echo, hang, running
from tests.unit.network.proxy.test_ingress import (
    DEADLINE,
    assert_openai_error,
    chat,
    dead_port,
    exchange,
    parse,
    serving,
    target,
    to,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


async def test_requests_past_the_admission_bound_get_503_with_retry_after() -> None:
    async with running(hang()) as slow, serving({"m": [to("m", slow)]}, max_active=2) as h:
        held = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
            writer.write(chat())
            held.append((reader, writer))
        try:
            await wait_for(lambda: h.ingress.active == 2)
            start = asyncio.get_running_loop().time()
            data = await exchange(h.port, chat())
            # At once, not after the first-byte timeout.
            assert asyncio.get_running_loop().time() - start < DEADLINE
            assert_openai_error(data, 503, "server_error", "busy")
            assert parse(data)[1]["retry-after"] == str(RETRY_AFTER_S)
            # Local answers are not proxied requests: they are never refused.
            status, _, _ = parse(await exchange(h.port, b"GET /v1/models HTTP/1.1\r\n\r\n"))
            assert status == 200
        finally:
            for _, writer in held:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        await wait_for(lambda: h.ingress.active == 0)


async def test_admission_frees_its_slot_when_a_request_ends() -> None:
    async with running(echo()) as up, serving({"m": [to("m", up)]}, max_active=1) as h:
        for _ in range(3):
            status, _, _ = parse(await exchange(h.port, chat()))
            assert status == 200
        assert h.ingress.active == 0


async def test_no_backend_503_carries_retry_after() -> None:
    async with serving({"m": [target("m", dead_port())]}) as h:
        data = await exchange(h.port, chat())
        assert_openai_error(data, 503, "server_error", "no_backend")
        assert parse(data)[1]["retry-after"] == str(RETRY_AFTER_S)
