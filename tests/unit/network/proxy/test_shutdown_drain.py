"""Closing the ingress mid-stream: the client gets an error event and the final chunk, at once."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from mesh_llm.network.proxy.ingress import SHUTDOWN_MESSAGE
from tests.fakes.fake_upstream import running, sse
from tests.unit.network.proxy.test_ingress import DEADLINE, chat, serving, to

pytestmark = pytest.mark.timeout(60)


@pytest.mark.usefixtures("relay_loops")
async def test_close_ends_a_stream_with_an_error_event(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gate = asyncio.Event()  # the last event never comes: the stream is in the middle
    async with (
        running(sse([b"first", b"second", b"last"], gate=gate)) as up,
        serving({"m": [to("m", up)]}) as h,
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(chat(stream=True))
        seen = b""
        async with asyncio.timeout(DEADLINE):
            while b"data: second" not in seen:
                chunk = await reader.read(65536)
                assert chunk, "closed before the first events arrived"
                seen += chunk
        started = time.monotonic()
        closing = asyncio.create_task(h.ingress.close())
        async with asyncio.timeout(DEADLINE):
            seen += await reader.read()
        writer.close()
        await writer.wait_closed()
        await closing
        assert time.monotonic() - started < 2.0  # drained, not cut at the grace deadline
        gate.set()
    assert b"data: last" not in seen
    assert seen.endswith(b"\r\n0\r\n\r\n"), seen[-200:]
    error_line = seen.split(b"data: ")[-1].split(b"\n")[0]
    assert json.loads(error_line)["error"]["message"] == SHUTDOWN_MESSAGE
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
