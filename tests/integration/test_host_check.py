"""The DNS rebinding guard on real processes (issue 17): a node bound to loopback answers only
requests addressed to a loopback name (protocol/hosts, docs/DESIGN.md).

A page at ``http://evil.example:PORT`` whose name is re-pointed at 127.0.0.1 is same-origin to
the browser, so CORS does not stop it; its ``Host`` header does. Here, against a real node with a
real llama-server: ``Host: evil.example`` is refused 403 on :9337 and :3131 and changes nothing
(no demand recorded, no model unloaded, no token read); ``localhost:PORT`` and
``127.0.0.1:PORT`` work, and so does the real ``openai`` SDK at ``http://localhost:PORT/v1``. A
client node started with ``--allow-host evil.example`` answers that name, and its request is
served by the host through the mesh tunnel although the host itself would refuse that name: a
tunnelled request is checked where it entered.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.integration.conformance import LOOPBACK_MESH, MODEL
from tests.integration.harness import MeshNode, wait_for

pytestmark = pytest.mark.e2e

PROBE = "rebind-probe-model"
"""A model nobody serves: a request for it is substituted and recorded as demand."""


def send(
    port: int, method: str, path: str, host: str, body: object = None
) -> tuple[int, dict[str, Any]]:
    """One request to 127.0.0.1:``port`` carrying ``Host: host``; status and JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Host": host}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(raw) if raw else {}


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}


def demanded(node: MeshNode) -> set[str]:
    return {d["model"] for d in node.status()["demand"]}


def test_rebound_names_are_refused_on_both_ports_and_tunnels_are_not(tmp_path: Path) -> None:
    host = MeshNode(
        "host", tmp_path / "host", ["--model", MODEL, "--parallel", "2", *LOOPBACK_MESH]
    )
    nodes = [host]
    try:
        host.start()
        host.wait_models({MODEL}, timeout=180)
        token = wait_for(lambda: host.status()["token"], 30, "the host's invite token")
        api, console = host.api_port, host.console_port
        evil_api, evil_console = f"evil.example:{api}", f"evil.example:{console}"

        # :9337: refused before it acts (a served request would record PROBE as demand).
        status, body = send(api, "POST", "/v1/chat/completions", evil_api, chat(PROBE))
        assert status == 403, body
        assert body["error"]["code"] == "host_not_allowed"
        assert "evil.example" in body["error"]["message"]
        assert "--allow-host evil.example" in body["error"]["message"]
        assert send(api, "GET", "/v1/models", evil_api)[0] == 403
        assert send(api, "GET", "/v1/models", "127.0.0.1.nip.io")[0] == 403

        # :3131: the status (with the invite token) is not read, the model not unloaded.
        status, body = send(console, "GET", "/api/status", evil_console)
        assert status == 403
        assert token not in json.dumps(body)
        assert "--allow-host evil.example" in body["error"]
        path = f"/api/runtime/models/{MODEL}"
        assert send(console, "DELETE", path, evil_console)[0] == 403
        assert send(console, "GET", "/api/events", evil_console)[0] == 403

        assert PROBE not in demanded(host)
        assert MODEL in host.model_ids()

        # Loopback names work on both ports, with and without a port.
        for name in (f"localhost:{api}", f"127.0.0.1:{api}", "localhost"):
            status, body = send(api, "POST", "/v1/chat/completions", name, chat(MODEL))
            assert status == 200, body
        for name in (f"localhost:{console}", f"127.0.0.1:{console}"):
            status, body = send(console, "GET", "/api/status", name)
            assert (status, body.get("token")) == (200, token)

        # The probe, sent under a loopback name, is recorded: the check above could fail.
        assert send(api, "POST", "/v1/chat/completions", "localhost", chat(PROBE))[0] == 200
        wait_for(lambda: PROBE in demanded(host), 10, "the probe's demand")

        # The real SDK against http://localhost:PORT/v1.
        sdk = openai.OpenAI(base_url=f"http://localhost:{api}/v1", api_key="unused", timeout=60)
        reply = sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4
        )
        assert reply.choices[0].message.content is not None
        assert MODEL in {m.id for m in sdk.models.list()}

        # A client that allows the name: served by the host through the tunnel, unchecked there.
        client = MeshNode(
            "client",
            tmp_path / "client",
            ["--client", "--join", token, "--allow-host", "evil.example", *LOOPBACK_MESH],
        )
        nodes.append(client)
        client.start()
        client.wait_models({MODEL}, timeout=60)
        evil_client = f"evil.example:{client.api_port}"
        status, body = send(
            client.api_port, "POST", "/v1/chat/completions", evil_client, chat(MODEL)
        )
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] is not None
        assert send(client.console_port, "GET", "/api/status", "EVIL.example.")[0] == 200
        assert send(client.api_port, "GET", "/v1/models", "other.example")[0] == 403
    except AssertionError as exc:
        tails = "\n".join(node.log_tail() for node in nodes)
        raise AssertionError(f"{exc}\n{tails}") from None
    finally:
        for node in nodes:
            node.stop()
