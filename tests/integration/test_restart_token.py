"""End to end: a restarted node binds its last QUIC port again and so prints the same token."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.integration.harness import MeshNode, wait_for

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"


def _token(node: MeshNode) -> str:
    def ready() -> str | None:
        assert node.proc is not None
        if node.proc.poll() is not None:
            raise AssertionError(f"{node.name} exited\n{node.log_tail()}")
        token = node.status().get("token")
        return token if isinstance(token, str) and token else None

    token: str = wait_for(ready, 60, f"{node.name}'s token")
    return token


def _printed_tokens(node: MeshNode) -> list[str]:
    return re.findall(r"Invite: (\S+)", node.log_path.read_text(errors="replace"))


def test_restart_keeps_the_token(tmp_path: Path) -> None:
    home = tmp_path / "host"
    first = MeshNode("host", home, ["--model", MODEL]).start()
    try:
        token = _token(first)
    finally:
        assert first.stop() == 0, first.log_tail()
    second = MeshNode("host", home, ["--model", MODEL]).start()
    try:
        assert _token(second) == token, second.log_tail()
    finally:
        second.stop()
    assert _printed_tokens(second) == [token, token]


def test_a_taken_port_gets_a_new_one_and_says_so(tmp_path: Path) -> None:
    home = tmp_path / "host"
    first = MeshNode("host", home, ["--model", MODEL]).start()
    try:
        token = _token(first)
    finally:
        first.stop()
    port = int((home / "quic-port").read_text().split()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        second = MeshNode("host", home, ["--model", MODEL]).start()
        try:
            assert _token(second) != token
        finally:
            second.stop()
    log = second.log_path.read_text(errors="replace")
    assert f"UDP port {port} (this node's last) is taken" in log
