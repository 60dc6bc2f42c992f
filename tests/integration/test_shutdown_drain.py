"""End to end: ctrl-c of the node a client streams from ends the stream with a clean error event."""

from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path

import pytest

from tests.integration.conformance import LOOPBACK_MESH
from tests.integration.harness import MeshNode, wait_for

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"


def test_ctrl_c_mid_stream_sends_an_error_event_and_logs_no_traceback(tmp_path: Path) -> None:
    node = MeshNode("solo", tmp_path / "solo", ["--model", MODEL]).start()
    try:
        node.wait_models({MODEL}, timeout=180)
        body = json.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Write a very long story."}],
                "max_tokens": 4000,
                "stream": True,
                "ignore_eos": True,
            }
        )
        conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=60)
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.readline()
        assert first.startswith(b"data: ")
        started = time.monotonic()
        node.signal(signal.SIGINT)
        events: list[bytes] = []
        clean_end = True
        try:
            while line := resp.readline():
                if line.startswith(b"data: "):
                    events.append(line[6:].strip())
        except http.client.IncompleteRead:
            clean_end = False
        elapsed = time.monotonic() - started
        conn.close()
        assert clean_end, "the chunked stream was cut without its last chunk"
        assert elapsed < 10
        last = json.loads(events[-1])
        assert "error" in last, events[-3:]
        assert "shutting down" in last["error"]["message"]
        assert node.proc is not None
        wait_for(lambda: node.proc is not None and node.proc.poll() is not None, 20, "exit")
        assert node.proc.returncode == 0
    finally:
        node.stop()
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log, node.log_tail(80)
    assert "CancelledError" not in log, node.log_tail(80)


LONG_STREAM = json.dumps(
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story."}],
        "max_tokens": 4000,
        "stream": True,
        "ignore_eos": True,
    }
)


def _stream_until_end(node: MeshNode, kill: MeshNode) -> tuple[list[bytes], bool, float]:
    """Start a long stream through ``node``, SIGINT ``kill`` after the first event, read to the
    end: the events, whether the chunked body ended properly, the seconds after the signal."""
    conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=60)
    try:
        conn.request(
            "POST", "/v1/chat/completions", LONG_STREAM, {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.readline().startswith(b"data: ")
        started = time.monotonic()
        kill.signal(signal.SIGINT)
        events: list[bytes] = []
        clean_end = True
        try:
            while line := resp.readline():
                if line.startswith(b"data: "):
                    events.append(line[6:].strip())
        except (http.client.IncompleteRead, ConnectionError):
            clean_end = False
        return events, clean_end, time.monotonic() - started
    finally:
        conn.close()


def _assert_quiet_exit(node: MeshNode) -> None:
    wait_for(lambda: node.proc is not None and node.proc.poll() is not None, 20, "exit")
    assert node.proc is not None
    assert node.proc.returncode == 0, node.log_tail(80)
    log = node.log_path.read_text(errors="replace")
    assert "Traceback" not in log, node.log_tail(80)
    assert "CancelledError" not in log, node.log_tail(80)


@pytest.mark.parametrize("stop", ["client", "host"])
def test_ctrl_c_mid_tunnelled_stream_ends_it_with_an_error_event(tmp_path: Path, stop: str) -> None:
    """A client streams through node A from the model on node B; ctrl-c on A (the node it
    streams from) or on B (the host): the stream ends with a clean error event, not a cut."""
    host = MeshNode("host", tmp_path / "host", ["--model", MODEL, *LOOPBACK_MESH])
    nodes = [host]
    try:
        host.start()
        host.wait_models({MODEL}, timeout=180)
        token = wait_for(lambda: host.status()["token"], 30, "the host's token")
        client = MeshNode("client", tmp_path / "client", ["--client", "--join", token])
        nodes.append(client)
        client.start()
        client.wait_models({MODEL}, timeout=60)
        victim = client if stop == "client" else host
        events, clean_end, elapsed = _stream_until_end(client, victim)
        assert clean_end, "the chunked stream was cut without its last chunk"
        assert elapsed < 10
        last = json.loads(events[-1])
        assert "error" in last, events[-3:]
        assert (
            "shutting down" in last["error"]["message"] or "stopped" in last["error"]["message"]
        ), last
        _assert_quiet_exit(victim)
        for node in nodes:  # the node that stayed up logged no crash either
            log = node.log_path.read_text(errors="replace")
            assert "Traceback" not in log, node.log_tail(80)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail(80) for n in nodes)) from None
    finally:
        for node in reversed(nodes):
            node.stop()
