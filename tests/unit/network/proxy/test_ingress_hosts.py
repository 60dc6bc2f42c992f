"""The DNS rebinding guard (protocol/hosts) at the :9337 ingress and on :3131: requests addressed
to a name that is not this machine's are refused before they act; tunnelled ones are not
checked."""

from __future__ import annotations

import asyncio
import json

import pytest

from mesh_llm.api import ChangeHub, ManagementServer
from mesh_llm.network.proxy.ingress import Ingress
from mesh_llm.network.proxy.routing import RoutingSnapshot
from mesh_llm.network.proxy.upstream import connect_local
from mesh_llm.network.transport import Transport
from mesh_llm.protocol import HostPolicy
from tests.fakes.fake_upstream import echo, running
from tests.unit.network.conftest import open_stream
from tests.unit.network.proxy.test_ingress import (
    assert_openai_error,
    chat,
    exchange,
    parse,
    serving,
    to,
)

pytestmark = pytest.mark.timeout(60)

LOOPBACK = HostPolicy.for_listener("127.0.0.1")
EVIL = "evil.example:9337"


def addressed(request: bytes, host: str | None) -> bytes:
    """``request`` with its ``Host: x`` replaced (None: removed, and HTTP/1.0)."""
    if host is None:
        return request.replace(b"Host: x\r\n", b"").replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    return request.replace(b"Host: x\r\n", f"Host: {host}\r\n".encode())


def get(path: str, host: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def test_a_rebound_name_is_refused_before_the_upstream() -> None:
    async with running(echo()) as up, serving({"m": [to("m", up)]}, hosts=LOOPBACK) as h:  # type: ignore[arg-type]
        refused = await exchange(h.port, addressed(chat(), EVIL))
        assert up.requests == []
        message = assert_openai_error(refused, 403, "invalid_request_error", "host_not_allowed")
        assert "'evil.example:9337'" in message
        assert "--allow-host evil.example" in message
        for path in ("/v1/models", "/health"):
            status, _, body = parse(await exchange(h.port, get(path, "evil.example")))
            assert status == 403, path
            assert json.loads(body)["error"]["code"] == "host_not_allowed"
        preflight = b"OPTIONS /v1/models HTTP/1.1\r\nHost: evil.example\r\n\r\n"
        assert parse(await exchange(h.port, preflight))[0] == 403
        assert up.requests == []
        assert h.ingress.requests_total == 4


async def test_the_refusal_on_messages_is_anthropic_shaped() -> None:
    body = b'{"model":"m","max_tokens":5,"messages":[]}'
    request = (
        b"POST /v1/messages HTTP/1.1\r\nHost: evil.example\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    async with serving({}, hosts=LOOPBACK) as h:  # type: ignore[arg-type]
        status, _, answer = parse(await exchange(h.port, request))
    assert status == 403
    payload = json.loads(answer)
    assert payload["type"] == "error"
    assert payload["error"]["type"] == "permission_error"
    assert "evil.example" in payload["error"]["message"]


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", None])
async def test_loopback_names_and_no_host_are_served(host: str | None) -> None:
    async with running(echo()) as up, serving({"m": [to("m", up)]}, hosts=LOOPBACK) as h:  # type: ignore[arg-type]
        named = host.format(port=h.port) if host is not None else None
        status, headers, _ = parse(await exchange(h.port, addressed(chat(), named)))
        assert status == 200
        assert headers["x-mesh-llm-model"] == "m"
        assert len(up.requests) == 1


async def test_a_port_beyond_loopback_answers_any_name() -> None:
    open_policy = HostPolicy.for_listener("0.0.0.0")
    async with running(echo()) as up, serving({"m": [to("m", up)]}, hosts=open_policy) as h:  # type: ignore[arg-type]
        assert parse(await exchange(h.port, addressed(chat(), "my-box.lan:9337")))[0] == 200
    allowed = HostPolicy.for_listener("127.0.0.1", ["my-box.lan"])
    async with running(echo()) as up, serving({"m": [to("m", up)]}, hosts=allowed) as h:  # type: ignore[arg-type]
        assert parse(await exchange(h.port, addressed(chat(), "My-Box.lan:9337")))[0] == 200
        assert parse(await exchange(h.port, addressed(chat(), "other.lan")))[0] == 403


@pytest.mark.usefixtures("relay_loops")
async def test_a_tunnelled_request_is_not_checked_against_this_nodes_names(
    pair: tuple[Transport, Transport],
) -> None:
    """It was checked at the ingress it entered; the Host it carries is that node's."""
    out, inbound = await open_stream(*pair, b"\x04")
    async with running(echo()) as up:
        ingress = Ingress(
            host="127.0.0.1",
            port=0,
            snapshot=lambda: RoutingSnapshot({"m": [to("m", up)]}, True),
            connect=connect_local,
            models_listing=list,
            hosts=LOOPBACK,
        )
        serving_task = asyncio.ensure_future(ingress.serve_stream(inbound))
        await out.write(addressed(chat(), "evil.example"))
        async with asyncio.timeout(10):
            response = bytearray()
            while chunk := await out.read(65536):
                response += chunk
            await serving_task
        await ingress.close()
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nHost: evil.example\r\n" in response  # the echo of what reached the upstream
    assert len(up.requests) == 1


async def _console(server: ManagementServer, method: str, path: str, host: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.readuntil(b"\r\n\r\n")
        head = data.decode("latin-1")
        length = next(
            (
                int(line.split(":")[1])
                for line in head.split("\r\n")
                if "content-length" in line.lower()
            ),
            0,
        )
        body = await reader.readexactly(length)
    writer.close()
    return data + body


async def test_console_refuses_a_rebound_name_before_any_route() -> None:
    calls: list[str] = []

    def status() -> dict[str, object]:
        calls.append("status")
        return {"token": "invite"}

    async def load(name: str) -> tuple[int, dict[str, object]]:
        calls.append(f"load {name}")
        return 201, {"loaded": name}

    server = ManagementServer(
        host="127.0.0.1",
        port=0,
        status=status,
        runtime_models=dict,
        runtime_processes=dict,
        hub=ChangeHub(),
        load_model=load,
        unload_model=load,
        hosts=LOOPBACK,
    )
    await server.start()
    try:
        for method, path in [
            ("GET", "/api/status"),
            ("GET", "/api/events"),
            ("GET", "/"),
            ("POST", "/api/runtime/models"),
            ("DELETE", "/api/runtime/models/m"),
            ("OPTIONS", "/api/status"),
        ]:
            status_code, headers, body = parse(
                await _console(server, method, path, "evil.example:3131")
            )
            assert status_code == 403, (method, path)
            assert headers["content-type"] == "application/json"
            error = json.loads(body)["error"]
            assert "'evil.example:3131'" in error
            assert "--allow-host evil.example" in error
        assert calls == []
        status_code, _, body = parse(
            await _console(server, "GET", "/api/status", f"localhost:{server.port}")
        )
        assert (status_code, json.loads(body)) == (200, {"token": "invite"})
        status_code, _, body = parse(
            await _console(server, "GET", "/api/status", f"127.0.0.1:{server.port}")
        )
        assert status_code == 200
        assert calls == ["status", "status"]
    finally:
        await server.close()
