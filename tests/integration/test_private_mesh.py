"""Private meshes on real processes (issue 14, item 6): admission by mesh secret.

A serves SmolLM2 in a mesh whose secret comes from ``--mesh-secret-file``; its invite token
carries the mesh key (never the secret's words). B joins with that token alone and answers a
chat completion through the mesh. C joins with the token stripped of its key and is refused
("this mesh requires a mesh secret"); D joins with a wrong ``--mesh-secret`` and is refused
("wrong mesh secret"). Both say so in ``/api/status`` and on stderr, see no peer and no model;
A logs a WARNING naming each one's id, never lists them, and its mesh keeps serving.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import openai
import pytest

from mesh_llm.protocol import decode_invite
from tests.integration.conformance import LOOPBACK_MESH, MODEL
from tests.integration.harness import MeshNode, wait_for

pytestmark = pytest.mark.e2e

SECRET = "correct horse battery staple"


def _token_json(token: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return doc


def _strip_key(token: str) -> str:
    doc = _token_json(token)
    del doc["mesh_key"]
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _chat(node: MeshNode) -> str:
    api = openai.OpenAI(base_url=f"{node.api}/v1", api_key="x", max_retries=0, timeout=60)
    reply = api.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    )
    api.close()
    return reply.choices[0].message.content or ""


def _refused(node: MeshNode, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        join = node.status().get("join") or {}
        return join if join.get("reason") == reason else None

    join: dict[str, Any] = wait_for(check, 30, f"{node.name}'s join state to say {reason!r}")
    return join


def test_private_mesh_admits_the_token_and_refuses_without_the_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    host = MeshNode(
        "host",
        tmp_path / "host",
        ["--model", MODEL, "--parallel", "2", "--mesh-secret-file", str(secret_file),
         *LOOPBACK_MESH],
    )  # fmt: skip
    nodes = [host]
    try:
        host.start()
        host.wait_models({MODEL}, timeout=180)
        token = host.status()["token"]
        assert decode_invite(token).mesh_key is not None
        assert SECRET not in json.dumps(_token_json(token))

        member = MeshNode("member", tmp_path / "member", ["--client", *LOOPBACK_MESH])
        member.env = {"MESH_LLM_JOIN": token}
        nodes.append(member)
        member.start()
        member.wait_models({MODEL}, timeout=60)
        assert _chat(member)
        assert member.status()["join"]["state"] == "joined"

        keyless = MeshNode(
            "keyless", tmp_path / "keyless", ["--client", "--join", _strip_key(token)]
        )
        keyless.separate_stderr = True
        wrong = MeshNode(
            "wrong",
            tmp_path / "wrong",
            ["--client", "--join", _strip_key(token), "--mesh-secret", "not the right one"],
        )
        wrong.separate_stderr = True
        nodes += [keyless, wrong]
        keyless.start()
        wrong.start()

        join = _refused(keyless, "refused: this mesh requires a mesh secret")
        assert join["state"] == "failed"
        _refused(wrong, "refused: wrong mesh secret")
        for outsider in (keyless, wrong):
            status = outsider.status()
            assert status["peers"] == []
            assert status["mesh_models"] == []
            assert outsider.model_ids() == []
        assert "this mesh requires a mesh secret" in keyless.stderr_text()
        assert "wrong mesh secret" in wrong.stderr_text()

        host_log = host.log_path.read_text(errors="replace")
        for outsider, reason in ((keyless, "requires a mesh secret"), (wrong, "wrong mesh")):
            outsider_id = outsider.status()["node_id_full"]
            lines = [line for line in host_log.splitlines() if outsider_id in line]
            assert any("WARNING" in line and reason in line for line in lines), lines

        host_peers = {p["id"] for p in host.status()["peers"]}
        assert keyless.status()["node_id_full"] not in host_peers
        assert wrong.status()["node_id_full"] not in host_peers
        assert member.status()["node_id_full"] in host_peers
        assert _chat(member)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail() for n in nodes)) from None
    finally:
        for node in reversed(nodes):
            node.stop()


def test_a_private_node_does_not_join_an_open_mesh(tmp_path: Path) -> None:
    """The reverse case: a node with a secret dialling an open mesh's node is refused by it (the
    open node does not know the ADMIT stream's secret) and says so; neither lists the other."""
    open_node = MeshNode("open", tmp_path / "open", ["--client", *LOOPBACK_MESH])
    nodes = [open_node]
    try:
        open_node.start()
        token = wait_for(lambda: open_node.status()["token"], 60, "the open node's token")
        assert decode_invite(token).mesh_key is None
        private = MeshNode(
            "private",
            tmp_path / "private",
            ["--client", "--join", token, *LOOPBACK_MESH],
            env={"MESH_LLM_MESH_SECRET": SECRET},
        )
        nodes.append(private)
        private.start()
        _refused(private, "refused: this mesh uses no mesh secret")
        assert private.status()["peers"] == []
        assert open_node.status()["peers"] == []
        assert decode_invite(private.status()["token"]).mesh_key is not None
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail() for n in nodes)) from None
    finally:
        for node in reversed(nodes):
            node.stop()
