"""HTTP abuse against a real node's :9337: it keeps serving, sheds abusers, memory stays bounded.

One node with the bundled model. While 1,000 idle connections, slowloris clients (a header byte
every half second), oversized heads and bodies and malformed framing hit the ingress, a normal
chat completion still succeeds; each abuser gets the documented status (or is cut off within the
header timeout); the node's RSS grows by a bounded amount.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
from collections.abc import Iterator

import openai
import psutil
import pytest

from tests.integration.harness import MeshNode, wait_for

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
IDLE_CONNECTIONS = 1000
SLOWLORIS = 20
HEADER_TIMEOUT_S = 10.0  # the ingress's default: the whole head must arrive within it
CUT_OFF_BOUND_S = HEADER_TIMEOUT_S + 20.0  # generous on a loaded 2-core machine
RSS_GROWTH_BOUND = 64 * 1024 * 1024


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshNode]:
    # Raised here so the node (a child) inherits it too.
    _raise_fd_limit(IDLE_CONNECTIONS * 2 + 512)
    n = MeshNode("abused", tmp_path_factory.mktemp("abused"), ["--model", MODEL]).start()
    try:
        n.wait_models({MODEL}, timeout=180)
        yield n
    finally:
        n.stop()


def _connect(node: MeshNode) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.api_port), timeout=10)


def _exchange(node: MeshNode, data: bytes, timeout: float = 30.0) -> bytes:
    """Send ``data`` and read until the server closes or ``timeout``."""
    with _connect(node) as sock:
        sock.settimeout(timeout)
        with contextlib.suppress(ConnectionError):
            sock.sendall(data)
        out = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
            if b"\r\n\r\n" in out and b"Connection: close" in out:
                break
        return bytes(out)


def _status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def _chat(node: MeshNode) -> str:
    client = openai.OpenAI(base_url=f"{node.api}/v1", api_key="x", max_retries=0, timeout=120)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
    )
    return reply.choices[0].message.content or ""


def _rss(node: MeshNode) -> int:
    assert node.proc is not None
    return int(psutil.Process(node.proc.pid).memory_info().rss)


def _closed_by_server(sock: socket.socket) -> bool:
    poller = select.poll()  # select() cannot take descriptors above 1023
    poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
    if not poller.poll(0):
        return False
    try:
        data = sock.recv(65536, socket.MSG_PEEK)
    except ConnectionError:
        return True
    if not data:
        return True
    # A 408 before the close counts as cut off.
    return data.startswith(b"HTTP/1.1 408")


def test_oversized_and_malformed_requests_get_their_status(node: MeshNode) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a loopback name: not refused
    )
    cases = {
        "oversized head": (head + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        "oversized body": (head + b"Content-Length: 104857600\r\n\r\n" + b"{" * 1024, 413),
        "CL and TE": (
            head + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        "bad chunk size": (head + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        "garbage request line": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
        "bare LF": (b"GET /v1/models HTTP/1.1\nHost: x\n\n", 400),
        "too many headers": (
            head + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n",
            431,
        ),
    }
    got = {name: _status(_exchange(node, data)) for name, (data, _) in cases.items()}
    assert got == {name: status for name, (_, status) in cases.items()}, node.log_tail()
    assert _chat(node), node.log_tail()


def test_idle_connections_and_slowloris_do_not_stop_service(node: MeshNode) -> None:
    rss_before = _rss(node)
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(_connect(node))
        for _ in range(SLOWLORIS):
            sock = _connect(node)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
            slow.append(sock)
        opened = time.monotonic()
        # The node still answers a real request while every abuser is connected.
        assert _chat(node), node.log_tail()
        dribble = b"X-Slow: " + b"a" * 1000

        # Slowloris clients keep dribbling; the ingress must cut them off within its bound.
        i = 0
        while time.monotonic() - opened < CUT_OFF_BOUND_S:
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(dribble[i % len(dribble) : i % len(dribble) + 1])
            i += 1
            if all(_closed_by_server(s) for s in slow) and all(_closed_by_server(s) for s in idle):
                break
            time.sleep(0.5)
        still_slow = sum(not _closed_by_server(s) for s in slow)
        still_idle = sum(not _closed_by_server(s) for s in idle)
        assert (still_slow, still_idle) == (0, 0), (
            f"{still_slow} slowloris and {still_idle} idle connections still open after "
            f"{CUT_OFF_BOUND_S:.0f} s\n{node.log_tail()}"
        )
        assert _chat(node), node.log_tail()
        growth = _rss(node) - rss_before
        assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
    finally:
        for sock in idle + slow:
            sock.close()
    # Once the abusers are gone the node is healthy and its connections drain.
    wait_for(lambda: _chat(node), 60, "a chat completion after the abuse")
