"""Many concurrent clients against one real node: each completes or gets 503 with Retry-After.

The bench (``bench/bench_load.py --clients 256``) runs the full count; this runs a count the
2-core CI machine can finish in about a minute. No client may hang, see a reset or a truncated
stream; the node's RSS stays bounded and it serves normally afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest

from tests.integration.harness import MeshNode
from tests.integration.load import MODEL, one_stream, run_concurrent

pytestmark = pytest.mark.e2e

CLIENTS = 48
MAX_TOKENS = 8
CLIENT_DEADLINE_S = 150.0  # past the ingress's 60 s first-byte timeout: a hang, not a queue
RSS_GROWTH_BOUND = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshNode]:
    n = MeshNode("loaded", tmp_path_factory.mktemp("loaded"), ["--model", MODEL]).start()
    try:
        n.wait_models({MODEL}, timeout=180)
        yield n
    finally:
        n.stop()


def test_concurrent_clients_complete_or_get_503_with_retry_after(node: MeshNode) -> None:
    assert node.proc is not None
    proc = psutil.Process(node.proc.pid)
    rss_before = proc.memory_info().rss
    result = run_concurrent(node.api_port, CLIENTS, MAX_TOKENS, CLIENT_DEADLINE_S)
    counts = result.counts()
    assert set(counts) <= {"ok", "busy"}, f"{dict(counts)}\n{node.log_tail()}"
    assert counts["ok"] > 0, f"{dict(counts)}\n{node.log_tail()}"
    assert all(o.tokens > 0 for o in result.outcomes if o.kind == "ok")
    growth = proc.memory_info().rss - rss_before
    assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MiB"
    after = one_stream(node.api_port, MAX_TOKENS, CLIENT_DEADLINE_S, "Say hi.")
    assert after.kind == "ok", node.log_tail()
