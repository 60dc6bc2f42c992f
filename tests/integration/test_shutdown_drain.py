"""End to end: ctrl-c of the node a client streams from ends the stream with a clean error event."""

from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path

import pytest

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
