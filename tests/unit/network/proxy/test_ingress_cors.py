"""CORS at the :9337 ingress and on :3131 (protocol/cors applied by both servers).

The fake upstream answers as the pinned llama-server does: it echoes the request's ``Origin`` in
``Access-Control-Allow-Origin`` (an empty value when there is none)."""

from __future__ import annotations

import asyncio
import json

import pytest

from mesh_llm.api import ChangeHub, ManagementServer
from mesh_llm.network import ApiKeys
from tests.fakes.fake_upstream import Behaviour, Exchange, running
from tests.unit.network.proxy.test_ingress import chat, exchange, parse, serving, to

pytestmark = pytest.mark.timeout(60)

EVIL = "https://evil.example"
CONSOLE = "http://localhost:3131"
BODY = b'{"ok":true}'


def llama_like(*, stream: bool = False) -> Behaviour:
    """Echo the Origin the way llama-server's pre-routing handler does."""

    async def run(ex: Exchange) -> None:
        origin = ""
        for line in ex.request.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"origin":
                origin = value.strip().decode()
        head = f"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: {origin}\r\n"
        if stream:
            event = b"data: {}\n\n"
            chunk = b"%x\r\n%s\r\n" % (len(event), event)
            done = b"data: [DONE]\n\n"
            tail = b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
            head += "Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            await ex.send(head.encode() + chunk)
            await ex.send(tail)
        else:
            head += f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
            await ex.send(head.encode() + BODY)

    return run


def with_origin(request: bytes, origin: str) -> bytes:
    line_end = request.index(b"\r\n") + 2
    return request[:line_end] + f"Origin: {origin}\r\n".encode() + request[line_end:]


async def test_proxied_answer_without_origin_has_no_empty_cors_header() -> None:
    async with running(llama_like()) as up, serving({"m": [to("m", up)]}) as h:
        data = await exchange(h.port, chat())
    status, headers, body = parse(data)
    assert (status, body) == (200, BODY)
    assert b"access-control-allow-origin" not in data.lower()
    assert headers["x-mesh-llm-model"] == "m"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_local_page_reads_proxied_answers_and_the_body_is_untouched(stream: bool) -> None:
    async with running(llama_like(stream=stream)) as up, serving({"m": [to("m", up)]}) as h:
        data = await exchange(h.port, with_origin(chat(stream=stream), CONSOLE))
    status, headers, body = parse(data)
    assert status == 200
    assert headers["access-control-allow-origin"] == CONSOLE
    assert data.lower().count(b"access-control-allow-origin") == 1
    assert headers["vary"] == "Origin"
    if stream:
        assert body.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    else:
        assert body == BODY


async def test_a_page_of_another_site_is_refused_before_the_upstream() -> None:
    """llama-server would have echoed the hostile origin; the node never asks it."""
    async with running(llama_like()) as up, serving({"m": [to("m", up)]}) as h:
        data = await exchange(h.port, with_origin(chat(), EVIL))
        assert up.requests == []
    status, headers, body = parse(data)
    assert status == 403
    assert "access-control-allow-origin" not in headers
    assert json.loads(body)["error"]["code"] == "origin_not_allowed"


async def test_preflight_from_another_site_gets_no_allow_origin() -> None:
    preflight = (
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9337\r\n"
        b"Origin: " + EVIL.encode() + b"\r\nAccess-Control-Request-Method: POST\r\n\r\n"
    )
    async with serving({}) as h:
        status, headers, _ = parse(await exchange(h.port, preflight))
    assert status == 204
    assert "access-control-allow-origin" not in headers


async def test_own_errors_follow_the_same_policy() -> None:
    async with serving({}) as h:
        no_origin = await exchange(h.port, chat())
        local = await exchange(h.port, with_origin(chat(), CONSOLE))
    assert parse(no_origin)[0] == 503
    assert b"access-control-allow-origin" not in no_origin.lower()
    status, headers, _ = parse(local)
    assert status == 503
    assert headers["access-control-allow-origin"] == CONSOLE


async def test_with_an_api_key_every_page_may_read_but_needs_the_key() -> None:
    keys = ApiKeys(["sekrit"])
    async with (
        running(llama_like()) as up,
        serving({"m": [to("m", up)]}, api_keys=keys) as h,  # type: ignore[arg-type]
    ):
        keyed = chat().replace(b"Host: x\r\n", b"Host: x\r\nAuthorization: Bearer sekrit\r\n")
        served = await exchange(h.port, with_origin(keyed, EVIL))
        refused = await exchange(h.port, with_origin(chat(), EVIL))
        bare = await exchange(h.port, keyed)
    status, headers, body = parse(served)
    assert (status, body) == (200, BODY)
    assert headers["access-control-allow-origin"] == "*"  # not llama-server's echo
    assert served.lower().count(b"access-control-allow-origin") == 1
    status, headers, _ = parse(refused)
    assert (status, headers["access-control-allow-origin"]) == (401, "*")
    assert parse(bare)[1]["access-control-allow-origin"] == "*"


async def _console_get(port: int, path: str, origin: str | None, method: str = "GET") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = f"Origin: {origin}\r\n" if origin else ""
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(5):
        data = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return data


@pytest.mark.parametrize("keys", [(), ("sekrit",)])
async def test_console_api_never_lets_another_site_read_the_token(keys: tuple[str, ...]) -> None:
    server = ManagementServer(
        host="127.0.0.1",
        port=0,
        status=lambda: {"token": "invite"},
        runtime_models=dict,
        runtime_processes=dict,
        hub=ChangeHub(),
        api_keys=ApiKeys(keys),
    )
    await server.start()
    try:
        for path in ("/api/status", "/api/events", "/api/models"):
            head = await _console_get(server.port, path, EVIL)
            assert b" 200 " in head.split(b"\r\n")[0]
            assert b"access-control-allow-origin" not in head.lower(), path
            head = await _console_get(server.port, path, CONSOLE)
            assert f"Access-Control-Allow-Origin: {CONSOLE}\r\n".encode() in head, path
            assert (
                b"access-control-allow-origin"
                not in (await _console_get(server.port, path, None)).lower()
            )
        preflight = await _console_get(server.port, "/api/status", EVIL, method="OPTIONS")
        assert b"access-control-allow-origin" not in preflight.lower()
        posted = await _console_get(server.port, "/api/status", EVIL, method="POST")
        assert posted.startswith(b"HTTP/1.1 403 ")
    finally:
        await server.close()
