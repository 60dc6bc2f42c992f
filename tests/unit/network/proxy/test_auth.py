"""API keys (``--api-key``) on :9337 and on :3131's mutating routes."""

from __future__ import annotations

import asyncio
import json

import anthropic
import openai
import pytest

from mesh_llm.api import ChangeHub, ManagementServer
from mesh_llm.network import ApiKeys
from tests.fakes.fake_upstream import echo, running
from tests.unit.network.proxy.test_ingress import exchange, parse, serving, to

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("headers", "allowed"),
    [
        ({}, False),
        ({"authorization": "Bearer k1"}, True),
        ({"authorization": "bearer   k2 "}, True),
        ({"authorization": "Basic k1"}, False),
        ({"authorization": "Bearer k3"}, False),
        ({"x-api-key": "k2"}, True),
        ({"x-api-key": "k1x"}, False),
        ({"authorization": "Bearer nope", "x-api-key": "k1"}, False),
    ],
)
def test_keys_from_bearer_or_x_api_key(headers: dict[str, str], allowed: bool) -> None:
    keys = ApiKeys(["k1", "k2"])
    assert keys.required
    assert keys.allows(headers.get) is allowed


def test_no_keys_means_open() -> None:
    keys = ApiKeys()
    assert not keys.required
    assert keys.allows({}.get)


async def test_ingress_requires_a_key_in_each_dialect() -> None:
    async with (
        running(echo()) as up,
        serving({"m": [to("m", up)]}, api_keys=ApiKeys(["sekrit"])) as h,  # type: ignore[arg-type]
    ):
        body = b'{"model":"m"}'
        plain = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 13\r\n\r\n" + body
        )
        status, _, payload = parse(await exchange(h.port, plain))
        assert status == 401
        error = json.loads(payload)["error"]
        assert error["code"] == "invalid_api_key"
        assert error["type"] == "invalid_request_error"

        messages = plain.replace(b"/v1/chat/completions", b"/v1/messages")
        status, _, payload = parse(await exchange(h.port, messages))
        assert status == 401
        assert json.loads(payload)["error"]["type"] == "authentication_error"

        models = b"GET /v1/models HTTP/1.1\r\nHost: h\r\n\r\n"
        assert parse(await exchange(h.port, models))[0] == 401
        health = b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n"
        assert parse(await exchange(h.port, health))[0] == 200
        preflight = b"OPTIONS /v1/models HTTP/1.1\r\nHost: h\r\n\r\n"
        assert parse(await exchange(h.port, preflight))[0] == 204

        keyed = plain.replace(b"Host: h\r\n", b"Host: h\r\nAuthorization: Bearer sekrit\r\n")
        assert parse(await exchange(h.port, keyed))[0] == 200
        x_key = messages.replace(b"Host: h\r\n", b"Host: h\r\nx-api-key: sekrit\r\n")
        assert parse(await exchange(h.port, x_key))[0] == 200


async def test_sdks_get_their_authentication_error() -> None:
    async with (
        running(echo()) as up,
        serving(
            {"m": [to("m", up)]},
            api_keys=ApiKeys(["sekrit"]),  # type: ignore[arg-type]
        ) as h,
    ):
        base = f"http://127.0.0.1:{h.port}"
        wrong = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        right = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sekrit", max_retries=0)
        assert [m.id for m in (await right.models.list()).data] == ["m"]
        claude = anthropic.AsyncAnthropic(base_url=base, api_key="wrong", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError):
            await claude.messages.create(
                model="m", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
            )
        await wrong.close()
        await right.close()
        await claude.close()


async def _request(port: int, method: str, path: str, extra: str = "") -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 0\r\n\r\n".encode()
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    return int(data.split()[1])


async def test_console_mutations_need_the_key_reads_do_not() -> None:
    server = ManagementServer(
        host="127.0.0.1",
        port=0,
        status=lambda: {"ok": True},
        runtime_models=lambda: {"models": []},
        runtime_processes=lambda: {"processes": []},
        hub=ChangeHub(),
        api_keys=ApiKeys(["sekrit"]),
        unload_model=_dropped,
    )
    await server.start()
    try:
        assert await _request(server.port, "GET", "/api/status") == 200
        assert await _request(server.port, "POST", "/api/runtime/models") == 401
        assert await _request(server.port, "DELETE", "/api/runtime/models/x") == 401
        keyed = "Authorization: Bearer sekrit\r\n"
        # Authorised, the route decides.
        assert await _request(server.port, "DELETE", "/api/runtime/models/x", keyed) == 200
        assert await _request(server.port, "POST", "/api/status", keyed) == 405
    finally:
        await server.close()


async def _dropped(name: str) -> tuple[int, dict[str, object]]:
    return 200, {"dropped": name}
