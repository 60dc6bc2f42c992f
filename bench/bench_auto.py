"""``--auto`` client start -> first token, against a LocalRelay this benchmark starts (never a
public relay) and a serving mesh of one SmolLM2 host.

    .venv/bin/python bench/bench_auto.py [--rounds 3]

Two cases: the host's listing is the only one (goal <= 5 s), and three dead listings (nodes that
have shut down, named "mesh-llm" so they score 300 above the host) are ranked first (goal
<= 10 s: each costs one probe bound). Time = from spawning ``mesh-llm --client --auto`` to the
first streamed token of a chat completion sent through it (retried until the client has a
route). Writes JSON to ``bench/results/auto.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import nostr_sdk  # noqa: E402

from mesh_llm.discovery import MeshListing, NostrDirectory  # noqa: E402
from tests.integration.conformance import LOOPBACK_MESH, MODEL  # noqa: E402
from tests.integration.harness import MeshNode, wait_for  # noqa: E402
from tests.integration.nostr_relay import RelayThread, dead_token, local_relay  # noqa: E402

DEADLINE_S = 60.0


def _publish_dead(relay: RelayThread, count: int) -> None:
    async def go() -> None:
        for _ in range(count):
            directory = NostrDirectory([relay.url], nostr_sdk.Keys.generate())
            token = await dead_token()
            await directory.publish(
                MeshListing(token, serving=(MODEL,), node_count=5, name="mesh-llm")
            )
            await directory.close()

    relay.call(go)


def _first_token(api: str, deadline: float) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
        "stream": True,
    }
    while time.monotonic() < deadline:
        try:
            with (
                httpx.Client(timeout=10) as http,
                http.stream("POST", f"{api}/v1/chat/completions", json=body) as resp,
            ):
                if resp.status_code == 200:
                    for line in resp.iter_lines():
                        if line.startswith("data: ") and '"content"' in line:
                            return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError("no first token before the deadline")


def _one_round(relay: RelayThread, root: Path, n: int) -> float:
    client = MeshNode(f"client{n}", root / f"client{n}", ["--client", "--auto",
                                                         "--nostr-relay", relay.url])  # fmt: skip
    started = time.monotonic()
    client.start()
    try:
        _first_token(client.api, started + DEADLINE_S)
        return time.monotonic() - started
    finally:
        client.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, local_relay() as relay:
        root = Path(tmp)
        host = MeshNode(
            "host", root / "host",
            ["--model", MODEL, "--parallel", "2", "--publish", "--nostr-relay", relay.url,
             *LOOPBACK_MESH],
        )  # fmt: skip
        host.start()
        try:
            host.wait_models({MODEL}, timeout=180)
            wait_for(lambda: "published on Nostr" in host.stderr_text(), 60, "the listing")
            n = 0
            for case, dead in (("live listing only", 0), ("3 dead listings ranked first", 3)):
                if dead:
                    _publish_dead(relay, dead)
                times = []
                for _ in range(args.rounds):
                    n += 1
                    times.append(_one_round(relay, root, n))
                results[case] = times
        finally:
            host.stop()
    print(f"{'case':<32}{'median s':>10}{'max s':>10}")
    for case, times in results.items():
        print(f"{case:<32}{statistics.median(times):>10.2f}{max(times):>10.2f}")
    out = REPO / "bench" / "results" / "auto.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": platform.node(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
