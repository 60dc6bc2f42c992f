"""The ingress serving a request straight from an HTTP tunnel stream (0x04), over real iroh on
loopback, a fake upstream standing in for llama-server."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from mesh_llm.errors import TransportError
from mesh_llm.network.ingress import Ingress
from mesh_llm.network.routing import RoutingSnapshot
from mesh_llm.network.transport import BiStream, Transport
from mesh_llm.network.upstream import connect_local
from tests.fakes.fake_upstream import FakeUpstream, running, sse
from tests.unit.network.conftest import open_stream
from tests.unit.network.test_ingress import MODELS, chat, to, wait_for

pytestmark = pytest.mark.timeout(60)
STEP = 10.0


@dataclass
class Counter:
    sent: int = 0
    received: int = 0


async def _read_all(stream: BiStream) -> None:
    async with asyncio.timeout(STEP):
        while await stream.read(65536):
            pass


def _ingress(up: FakeUpstream) -> Ingress:
    return Ingress(
        host="127.0.0.1",
        port=0,
        snapshot=lambda: RoutingSnapshot({"m": [to("m", up)]}, True),
        connect=connect_local,
        models_listing=lambda: MODELS,
    )


async def test_a_tunnelled_stream_is_answered_and_counted(
    pair: tuple[Transport, Transport],
) -> None:
    out, inbound = await open_stream(*pair, b"\x04")
    async with running(sse([b"one", b"two"])) as up:
        ingress, counter = _ingress(up), Counter()
        serving = asyncio.ensure_future(ingress.serve_stream(inbound, counter))
        request = chat(stream=True)
        await out.write(request)  # the requester never finishes its side
        async with asyncio.timeout(STEP):
            response = bytearray()
            while chunk := await out.read(65536):
                response += chunk
            await serving
        await ingress.close()
    assert response.startswith(b"HTTP/1.1 200 OK\r\nx-mesh-llm-model: m\r\n")
    assert response.endswith(b"data: two\n\n\r\n0\r\n\r\n")
    assert counter.received == len(request)
    assert counter.sent == len(response)
    assert ingress.inflight == 0


async def test_a_requester_that_resets_cancels_the_generation(
    pair: tuple[Transport, Transport],
) -> None:
    out, inbound = await open_stream(*pair, b"\x04")
    gate = asyncio.Event()  # the last event never comes: only the reset can end this
    async with running(sse([b"tok"] * 3, gate=gate)) as up:
        ingress = _ingress(up)
        serving = asyncio.ensure_future(ingress.serve_stream(inbound))
        await out.write(chat(stream=True))
        async with asyncio.timeout(STEP):
            seen = b""
            while seen.count(b"data: tok") < 2:
                seen += await out.read(65536)
            await out.reset(0)
            await wait_for(up.gone.is_set)
            await serving
        await ingress.close()
    assert not up.finished.is_set()
    assert ingress.inflight == 0


async def test_a_closing_ingress_refuses_new_streams(pair: tuple[Transport, Transport]) -> None:
    out, inbound = await open_stream(*pair, b"\x04")
    async with running(sse([b"x"])) as up:
        ingress = _ingress(up)
        await ingress.close()
        await ingress.serve_stream(inbound)
        await out.write(chat())
        with pytest.raises(TransportError):
            await _read_all(out)
    assert up.requests == []
