"""End to end: real mesh-llm processes meshed over real iroh on loopback, real llama-server.

A serves SmolLM2, B joins A serving the same weights under a second name, C is a --client of A.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from mesh_llm.cli.environment import fast_path
from mesh_llm.network import Transport
from mesh_llm.protocol import (
    GossipFrame,
    NodeRole,
    PeerAnnouncement,
    StreamType,
    decode_token,
    encode_frame,
    encode_gossip_frame,
)
from tests.integration.harness import MeshNode, smollm_path, wait_for

pytestmark = pytest.mark.e2e

MODEL_A = "SmolLM2-135M-Instruct"
MODEL_B = "smollm-b"
MESH_ARGS = ["--no-relay", "--bind-ip", "127.0.0.1", "--parallel", "2"]


def client(node: MeshNode) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{node.api}/v1", api_key="x", max_retries=0, timeout=120)


def chat(node: MeshNode, model: str) -> tuple[str, str]:
    raw = client(node).chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8,
        temperature=0,
    )
    reply = raw.parse()
    assert reply.choices[0].message.content
    return raw.headers["x-mesh-llm-model"], reply.choices[0].message.content


def peer_ids(node: MeshNode) -> set[str]:
    return {p["id"] for p in node.status()["peers"]}


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root
        model_b = root / f"{MODEL_B}.gguf"
        model_b.symlink_to(smollm_path())
        self.model_b_path = model_b
        self.a = MeshNode("A", root / "A", ["--model", MODEL_A, *MESH_ARGS])
        self.b: MeshNode | None = None
        self.c: MeshNode | None = None

    def token(self, node: MeshNode) -> str:
        token: str = wait_for(lambda: node.status()["token"], 30, f"{node.name}'s token")
        return token

    def start_b(self, name: str = "B") -> MeshNode:
        args = ["--gguf", str(self.model_b_path), "--join", self.token(self.a), *MESH_ARGS]
        self.b = MeshNode(name, self.root / "B", args).start()
        return self.b

    def start_c(self) -> MeshNode:
        args = ["--client", "--join", self.token(self.a), *MESH_ARGS]
        self.c = MeshNode("C", self.root / "C", args).start()
        return self.c

    def nodes(self) -> list[MeshNode]:
        return [n for n in (self.a, self.b, self.c) if n is not None]

    def logs(self) -> str:
        return "\n".join(n.log_tail(40) for n in self.nodes())


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("mesh"))
    try:
        m.a.start()
        m.a.wait_models({MODEL_A}, timeout=180)
        m.start_b()
        m.start_c()
        for node in (m.a, m.b, m.c):
            assert node is not None
            node.wait_models({MODEL_A, MODEL_B}, timeout=180)
        yield m
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{m.logs()}") from None
    finally:
        for node in m.nodes():
            node.stop()


def fast_path_on() -> bool:
    """Whether the nodes run with the iroh fast path and the C relay (``MESH_LLM_IROH_FAST``,
    ``MESH_LLM_NATIVE_RELAY``, read by the nodes' CLI as here; ``make test`` switches both off
    for a second run)."""
    switches = fast_path(os.environ)
    return switches.iroh_fast and switches.native_relay


def test_client_lists_and_chats_through_tunnel(mesh: Mesh) -> None:
    assert mesh.c is not None
    if not fast_path_on():  # make test runs the tunnel tests once more with it off
        switches = fast_path(os.environ)  # what the nodes' CLI passed down
        for node in (mesh.a, mesh.c):
            relay = node.status()["relay"]
            assert relay["native_streams"] is False, relay
            assert relay["reason"] or relay["streams_reason"], relay
            if not switches.native_relay:
                assert relay["native"] is False, relay
                assert "switched off" in relay["reason"], relay
    elif shutil.which("cc") or shutil.which("gcc"):  # the tunnel relays below run in C
        for node in (mesh.a, mesh.c):
            wait_for(
                lambda node=node: node.status()["relay"]["native_streams"],
                30,
                f"{node.name}'s C relay loops",
            )
    ids = [m.id for m in client(mesh.c).models.list().data]
    assert set(ids) == {MODEL_A, MODEL_B}
    answered, _ = chat(mesh.c, MODEL_A)
    assert answered == MODEL_A
    stream = client(mesh.c).chat.completions.create(
        model=MODEL_A,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 3


def test_each_node_routes_the_others_model(mesh: Mesh) -> None:
    assert mesh.b is not None
    assert chat(mesh.a, MODEL_B)[0] == MODEL_B
    assert chat(mesh.b, MODEL_A)[0] == MODEL_A


def test_status_shows_the_mesh(mesh: Mesh) -> None:
    assert mesh.b is not None
    assert mesh.c is not None
    chat(mesh.c, MODEL_A)
    status_a, status_b, status_c = (n.status() for n in (mesh.a, mesh.b, mesh.c))
    assert status_a["mesh_id"]
    assert status_a["mesh_id"] == status_b["mesh_id"] == status_c["mesh_id"]
    assert status_c["node_status"] == "Client"
    peers = {p["id"]: p for p in status_a["peers"]}
    assert set(peers) == {status_b["node_id_full"], status_c["node_id_full"]}
    assert peers[status_b["node_id_full"]]["role"] == "Host"
    assert peers[status_b["node_id_full"]]["hosted_models"] == [MODEL_B]
    # What the console's peers table shows: each peer's host name and llama.cpp build.
    assert peers[status_b["node_id_full"]]["hostname"] == status_b["my_hostname"]
    assert peers[status_b["node_id_full"]]["llama_build"] == status_b["llama_cpp"]["build_id"]
    assert peers[status_c["node_id_full"]]["role"] == "Client"
    c_to_a = next(p for p in status_c["peers"] if p["id"] == status_a["node_id_full"])
    assert c_to_a["rtt_ms"] is not None
    assert c_to_a["tunnel_bytes_sent"] > 0
    assert c_to_a["tunnel_bytes_received"] > c_to_a["tunnel_bytes_sent"]
    assert decode_token(status_a["token"]).id_hex == status_a["node_id_full"]


async def _garbage_session(token: str) -> dict[str, bool]:
    """A raw iroh client that breaks every rule; returns whether each attempt was refused."""
    transport = await Transport.bind(None, no_relay=True, bind_ip="127.0.0.1")
    refused: dict[str, bool] = {}
    try:
        conn = await transport.connect(decode_token(token), timeout=10)

        async def exchange(name: str, payload: bytes) -> None:
            stream = await conn.open_bi()
            try:
                await stream.write(payload)
                await stream.finish()
                async with asyncio.timeout(5):
                    reply = await stream.read(65536)
                refused[name] = reply == b""
            except Exception:  # noqa: BLE001 - a reset stream is a refusal
                refused[name] = True

        await exchange(
            "tunnel before gossip", bytes([StreamType.TUNNEL_HTTP]) + b"GET / HTTP/1.1\r\n\r\n"
        )
        await exchange(
            "oversized length", bytes([StreamType.GOSSIP]) + (64 << 20).to_bytes(4, "little")
        )
        await exchange("undecodable body", encode_frame(StreamType.GOSSIP, b"\xff" * 64))
        own = transport.node_id_bytes
        gen0 = encode_gossip_frame(GossipFrame(own, (PeerAnnouncement(own, NodeRole.WORKER),)))
        # Flip the generation field (field 1, varint) from 1 to 2.
        assert gen0.startswith(b"\x08\x01")
        await exchange("gen != 1", encode_frame(StreamType.GOSSIP, b"\x08\x02" + gen0[2:]))
        spoofed = bytes(32 * [7])
        frame = GossipFrame(spoofed, (PeerAnnouncement(spoofed, NodeRole.HOST, http_port=1),))
        await exchange(
            "spoofed sender", encode_frame(StreamType.GOSSIP, encode_gossip_frame(frame))
        )
        await exchange(
            "tunnel after garbage", bytes([StreamType.TUNNEL_HTTP]) + b"GET / HTTP/1.1\r\n\r\n"
        )
        conn.close(0, b"bye")
    finally:
        await transport.close()
    return refused


def test_garbage_from_a_raw_iroh_client_is_refused(mesh: Mesh) -> None:
    assert mesh.c is not None
    before = peer_ids(mesh.a)
    refused = asyncio.run(_garbage_session(mesh.token(mesh.a)))
    assert refused == dict.fromkeys(refused, True), refused
    assert len(refused) == 6
    assert peer_ids(mesh.a) == before, "the rogue client must never be admitted"
    assert chat(mesh.c, MODEL_A)[0] == MODEL_A, "the node keeps serving everyone else"


def test_kill9_peer_disappears_within_5s_and_rejoins(mesh: Mesh) -> None:
    assert mesh.b is not None
    assert mesh.c is not None
    b_id = mesh.b.status()["node_id_full"]
    mesh.b.signal(signal.SIGKILL)
    killed = time.monotonic()
    assert mesh.b.proc is not None
    mesh.b.proc.wait(timeout=10)
    for node in (mesh.a, mesh.c):
        wait_for(lambda n=node: MODEL_B not in n.model_ids(), 5.0, f"{node.name} to drop {MODEL_B}")
    assert time.monotonic() - killed <= 5.5
    wait_for(lambda: b_id not in peer_ids(mesh.a), 2, "A to drop B from its peers")
    with pytest.raises(openai.APIStatusError) as info:
        chat(mesh.c, MODEL_B)
    assert info.value.status_code == 503
    # B comes back with the same identity and rejoins.
    b = mesh.start_b("B2")
    b.wait_models({MODEL_A, MODEL_B}, timeout=180)
    for node in (mesh.a, mesh.c):
        node.wait_models({MODEL_B}, timeout=60)
    assert b.status()["node_id_full"] == b_id
    assert chat(mesh.c, MODEL_B)[0] == MODEL_B


def test_ctrl_c_host_is_gone_from_the_client_within_1s(mesh: Mesh) -> None:
    assert mesh.c is not None
    a_id = mesh.a.status()["node_id_full"]
    assert a_id in peer_ids(mesh.c)
    mesh.a.signal(signal.SIGINT)
    sent = time.monotonic()
    wait_for(lambda: a_id not in peer_ids(mesh.c), 3.0, "C to drop A", interval=0.05)
    assert time.monotonic() - sent <= 1.0 + 0.2, "ctrl-c must be seen within about 1 s"
    assert MODEL_A not in mesh.c.model_ids()


def test_malformed_token_is_a_one_line_error(tmp_path: Path) -> None:

    result = subprocess.run(
        [sys.executable, "-m", "mesh_llm", "--client", "--join", "not-a-token", "--no-relay"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MESH_LLM_HOME": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: invalid --join token")


def test_unreachable_join_target_still_serves_at_once(tmp_path: Path) -> None:
    """A node whose bootstrap peer is down answers :9337 at once (503 JSON, empty model list)."""
    from mesh_llm.protocol import EndpointAddrInfo, encode_token

    ghost = encode_token(EndpointAddrInfo.create("ab" * 32, (), ["127.0.0.1:9"]))
    node = MeshNode("lonely", tmp_path / "lonely", ["--client", "--join", ghost, *MESH_ARGS])
    node.start()
    try:
        assert wait_for(lambda: node.model_ids() == [], 15, ":9337 to answer") is True
        with pytest.raises(openai.APIStatusError) as info:
            chat(node, MODEL_A)
        assert info.value.status_code == 503
        assert node.status()["node_status"] == "Client"
    finally:
        node.stop()
