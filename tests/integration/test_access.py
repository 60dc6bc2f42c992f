"""Invite tokens kept out of ``ps`` and API keys, on real processes (issue 14, items 5 and 7).

A host serves SmolLM2 with an API key from ``MESH_LLM_API_KEY``: the real ``openai`` SDK is
refused without it (401) and answered with it; :3131 refuses a mutation without it. Two clients
join the host, one with ``--join-file``, one with ``MESH_LLM_JOIN``; neither has the token on its
command line, and both answer a chat completion through the mesh.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import openai
import psutil
import pytest

from tests.integration.conformance import LOOPBACK_MESH, MODEL
from tests.integration.harness import MeshNode, wait_for
from tests.integration.test_cors import ACAO, CONSOLE, EVIL, chat, request, values

pytestmark = pytest.mark.e2e

KEY = "sk-mesh-test-0123456789"


def _keyed_models(node: MeshNode) -> list[str]:
    request = urllib.request.Request(
        f"{node.api}/v1/models", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return [m["id"] for m in json.loads(resp.read())["data"]]


def _status_code(url: str, method: str) -> int:
    request = urllib.request.Request(url, method=method, data=b"{}")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def _chat(node: MeshNode, api_key: str) -> str:
    api = openai.OpenAI(base_url=f"{node.api}/v1", api_key=api_key, max_retries=0, timeout=60)
    reply = api.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    api.close()
    return reply.choices[0].message.content or ""


def _argv_of(node: MeshNode) -> str:
    assert node.proc is not None
    return " ".join(psutil.Process(node.proc.pid).cmdline())


def test_api_key_and_tokens_out_of_argv(tmp_path: Path) -> None:
    host = MeshNode(
        "host",
        tmp_path / "host",
        ["--model", MODEL, "--parallel", "2", *LOOPBACK_MESH],
        env={"MESH_LLM_API_KEY": KEY},
    )
    nodes = [host]
    try:
        host.start()
        wait_for(lambda: MODEL in _keyed_models(host), 180, "the host to serve with its key")

        with pytest.raises(openai.AuthenticationError) as refused:
            _chat(host, "wrong-key")
        assert refused.value.status_code == 401
        body = refused.value.body
        assert isinstance(body, dict)
        assert body["code"] == "invalid_api_key"
        assert _chat(host, KEY)
        # A key guards the API, so any page may read it (CORS "*"), llama-server's echo replaced.
        keyed = request(host.api, "POST", "/v1/chat/completions", EVIL, chat(), key=KEY)
        assert (keyed[0], values(keyed[1], ACAO)) == (200, ["*"])
        unkeyed = request(host.api, "POST", "/v1/chat/completions", EVIL, chat())
        assert (unkeyed[0], values(unkeyed[1], ACAO)) == (401, ["*"])
        assert _status_code(f"{host.console}/api/runtime/models", "POST") == 401

        token: str = wait_for(lambda: host.status()["token"], 30, "the host's invite token")
        join_file = tmp_path / "invite.txt"
        join_file.write_text(f"# the lab mesh\n{token}\n")
        by_file = MeshNode(
            "by-file", tmp_path / "by-file", ["--client", "--join-file", str(join_file)]
        )
        by_env = MeshNode("by-env", tmp_path / "by-env", ["--client"], env={"MESH_LLM_JOIN": token})
        nodes += [by_file, by_env]
        for client in (by_file, by_env):
            client.start()
        for client in (by_file, by_env):
            client.wait_models({MODEL}, timeout=60)
            assert token not in _argv_of(client)
            # The clients have no key of their own: their API is open, the host's tunnel
            # serves them.
            assert _chat(client, "anything")
        # Through the tunnel: the client's own policy (open, so local pages only) decides, and
        # the host's llama-server's echo of the origin does not come along.
        for stream in (False, True):
            served = request(by_file.api, "POST", "/v1/chat/completions", CONSOLE, chat(stream))
            assert (served[0], values(served[1], ACAO)) == (200, [CONSOLE])
        assert request(by_file.api, "POST", "/v1/chat/completions", EVIL, chat())[0] == 403
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail() for n in nodes)) from None
    finally:
        for node in reversed(nodes):
            node.stop()
