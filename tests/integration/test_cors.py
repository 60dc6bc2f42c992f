"""Who may read the node from a web page, on a real node with a real llama-server (issue 17,
item 6): one CORS policy on :9337 and :3131 (protocol/cors, docs/DESIGN.md).

Without ``--api-key``: pages served from this machine (the console at ``localhost:3131``) get their
origin echoed; any other site gets no ``Access-Control-Allow-Origin`` and its requests to :9337 are
refused 403; a request without ``Origin`` (curl, SDKs) gets no CORS header at all (not the empty
one llama-server sends). The keyed case (``*``) is in test_access.py.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.conformance import LOOPBACK_MESH, MODEL
from tests.integration.harness import MeshNode

pytestmark = pytest.mark.e2e

CONSOLE = "http://localhost:3131"
EVIL = "https://evil.example"
ACAO = "access-control-allow-origin"


def request(
    base: str,
    method: str,
    path: str,
    origin: str | None,
    body: object = None,
    key: str | None = None,
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request, like ``curl -i``: status, every header line (duplicates kept), body."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    headers = {"Origin": origin} if origin else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if method == "OPTIONS":
        headers["Access-Control-Request-Method"] = "POST"
        headers["Access-Control-Request-Headers"] = "content-type"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name]


def chat(stream: bool = False) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
        "stream": stream,
    }


def test_one_cors_policy_on_both_ports(tmp_path: Path) -> None:
    node = MeshNode(
        "node", tmp_path / "node", ["--model", MODEL, "--parallel", "2", *LOOPBACK_MESH]
    )
    try:
        node.start()
        node.wait_models({MODEL}, timeout=180)
        api, console = node.api, node.console

        # A served request, plain and streamed: the local page's origin, once; body intact.
        for stream in (False, True):
            status, headers, body = request(
                api, "POST", "/v1/chat/completions", CONSOLE, chat(stream)
            )
            assert status == 200, body
            assert values(headers, ACAO) == [CONSOLE]
            assert values(headers, "vary") == ["Origin"]
            assert values(headers, "x-mesh-llm-model") == [MODEL]
            if stream:
                assert body.rstrip().endswith(b"data: [DONE]")
            else:
                assert json.loads(body)["choices"][0]["message"]["content"] is not None

        # curl / SDKs (no Origin): no CORS header at all, not llama-server's empty one.
        status, headers, _ = request(api, "POST", "/v1/chat/completions", None, chat())
        assert status == 200
        assert values(headers, ACAO) == []

        # Another site: refused before llama-server sees it (which would echo its origin).
        status, headers, body = request(api, "POST", "/v1/chat/completions", EVIL, chat())
        assert status == 403
        assert values(headers, ACAO) == []
        assert json.loads(body)["error"]["code"] == "origin_not_allowed"

        # Errors: the node's own (bad JSON) and llama-server's (a bad field) alike.
        status, headers, _ = request(api, "POST", "/v1/chat/completions", CONSOLE, b"{nope")
        assert status == 400
        assert values(headers, ACAO) == [CONSOLE]
        bad = {"model": MODEL, "messages": "not a list"}
        status, headers, _ = request(api, "POST", "/v1/chat/completions", CONSOLE, bad)
        assert 400 <= status < 600, status
        assert values(headers, ACAO) == [CONSOLE]

        # /v1/models and the preflight.
        status, headers, body = request(api, "GET", "/v1/models", CONSOLE)
        assert (status, values(headers, ACAO)) == (200, [CONSOLE])
        assert MODEL in {m["id"] for m in json.loads(body)["data"]}
        assert request(api, "GET", "/v1/models", EVIL)[0] == 403
        status, headers, _ = request(api, "OPTIONS", "/v1/chat/completions", CONSOLE)
        assert (status, values(headers, ACAO)) == (204, [CONSOLE])
        assert "POST" in values(headers, "access-control-allow-methods")[0]
        status, headers, _ = request(api, "OPTIONS", "/v1/chat/completions", EVIL)
        assert (status, values(headers, ACAO)) == (204, [])

        # :3131: the status carries the invite token; only local pages may read it.
        status, headers, body = request(console, "GET", "/api/status", CONSOLE)
        assert (status, values(headers, ACAO)) == (200, [CONSOLE])
        assert "token" in json.loads(body)
        status, headers, _ = request(console, "GET", "/api/status", EVIL)
        assert (status, values(headers, ACAO)) == (200, [])
        assert values(request(console, "GET", "/api/status", None)[1], ACAO) == []
        status, headers, _ = request(console, "OPTIONS", "/api/status", EVIL)
        assert values(headers, ACAO) == []
        assert request(console, "POST", "/api/runtime/models", EVIL, {})[0] == 403
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{node.log_tail()}") from None
    finally:
        node.stop()
