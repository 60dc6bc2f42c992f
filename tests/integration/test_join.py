"""A failed join is said where people look (issue 17, item 1), on real processes.

A ``--client`` given the invite token of a node that is gone: within 20 s its stderr carries a
WARNING naming the token's node and why, ``/api/status`` shows the join state, and a chat request
gets a 503 saying it is not connected to any mesh (instead of blaming the model).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from mesh_llm.network import Transport, generate_key
from mesh_llm.protocol import encode_token
from tests.integration.harness import MeshNode, wait_for

pytestmark = pytest.mark.e2e

BUDGET_S = 20.0


async def _dead_node_token() -> tuple[str, str]:
    """The invite token of a real node that has shut down (nobody listens at its address)."""
    transport = await Transport.bind(generate_key(), no_relay=True, bind_ip="127.0.0.1")
    token = encode_token(transport.addr())
    node_id = transport.node_id
    await transport.close()
    return token, node_id


def _chat_error(node: MeshNode) -> openai.APIStatusError:
    api = openai.OpenAI(base_url=f"{node.api}/v1", api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.APIStatusError) as caught:
        api.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "hi"}]
        )
    return caught.value


def test_client_with_a_dead_token_says_why_it_is_alone(tmp_path: Path) -> None:
    token, dead_id = asyncio.run(_dead_node_token())
    short = dead_id[:10]
    node = MeshNode("lonely", tmp_path / "lonely", ["--client", "--join", token])
    node.separate_stderr = True
    started = time.monotonic()
    node.start()
    try:
        first: dict[str, Any] = wait_for(lambda: node.status()["join"], 10, "a join state")
        assert first["state"] == "joining", first
        assert first["peer"] == dead_id

        def failed() -> dict[str, Any] | None:
            join: dict[str, Any] = node.status()["join"]
            return join if join["state"] == "failed" else None

        join = wait_for(failed, BUDGET_S - (time.monotonic() - started), "join state 'failed'")
        assert join["peer"] == dead_id
        assert join["reason"]

        warnings = [
            line
            for line in node.stderr_text().splitlines()
            if "WARNING" in line and "not connected to any mesh" in line
        ]
        assert warnings, node.log_tail()
        assert (
            f"could not reach {short} (the --join token's node): {join['reason']}" in (warnings[0])
        )

        error = _chat_error(node)
        assert error.status_code == 503
        body = error.body
        assert isinstance(body, dict)
        reason = join["reason"]
        assert body["message"] == f"not connected to any mesh: could not reach {short}: {reason}"
        assert time.monotonic() - started <= BUDGET_S, "warning, status and 503 within 20 s"
        assert node.status()["node_status"] == "Client"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{node.log_tail()}") from None
    finally:
        node.stop()


def test_losing_the_only_peer_is_said(tmp_path: Path) -> None:
    """Joined through a live node (``joined``); that node SIGKILLed: ``failed`` or ``retrying``
    with why, a WARNING, and the 503 says the node is in no mesh."""
    host = MeshNode("X", tmp_path / "X", ["--client"])
    host.start()
    node: MeshNode | None = None
    try:
        token: str = wait_for(lambda: host.status()["token"], 30, "X's token")
        host_id = host.status()["node_id_full"]
        node = MeshNode("Y", tmp_path / "Y", ["--client", "--join", token])
        node.start()

        def state() -> str:
            assert node is not None
            return str(node.status()["join"]["state"])

        wait_for(lambda: state() == "joined", 20, "Y to join X")
        assert node.status()["join"]["peer"] == host_id
        host.signal(signal.SIGKILL)
        host.proc.wait(timeout=10)  # type: ignore[union-attr]
        wait_for(lambda: state() in ("failed", "retrying"), 15, "Y to notice X is gone")
        join = node.status()["join"]
        assert join["reason"] in ("it stopped answering", "the connection was lost"), join
        body = _chat_error(node).body
        assert isinstance(body, dict)
        assert body["message"].startswith("not connected to any mesh: "), body
        assert "WARNING" in node.log_tail(200)
    except AssertionError as exc:
        tails = host.log_tail() + "\n" + (node.log_tail() if node else "")
        raise AssertionError(f"{exc}\n{tails}") from None
    finally:
        if node is not None:
            node.stop()
        host.stop()
