"""Nostr discovery on real processes against a LocalRelay the test starts (issue 14).

A host publishes; ``discover --json`` lists it; a dead listing ranked above it (named
"mesh-llm", +300) is skipped within the probe bound; a ``--client --auto`` joins the host and
answers a completion; ``/api/discover`` lists the host; the host's clean exit deletes its
listing (NIP-09).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nostr_sdk
import openai
import pytest

from mesh_llm.discovery import MeshListing, NostrDirectory
from tests.integration.conformance import LOOPBACK_MESH, MODEL
from tests.integration.harness import MeshNode, http_json, wait_for
from tests.integration.nostr_relay import RelayThread, dead_token, local_relay

pytestmark = pytest.mark.e2e

PROBE_BOUND_S = 3.0


def _discover_json(relay: str, home: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "mesh_llm", "discover", "--json", "--nostr-relay", relay],
        capture_output=True,
        text=True,
        timeout=30,
        env={"MESH_LLM_HOME": str(home), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def _publish_dead(relay: RelayThread) -> str:
    async def go() -> str:
        token = await dead_token()
        directory = NostrDirectory([relay.url], nostr_sdk.Keys.generate())
        await directory.publish(MeshListing(token, serving=(MODEL,), node_count=5, name="mesh-llm"))
        await directory.close()
        return token

    return relay.call(go)


def test_publish_discover_auto_join_and_unpublish(tmp_path: Path) -> None:
    with local_relay() as relay:
        host = MeshNode(
            "host",
            tmp_path / "host",
            ["--model", MODEL, "--parallel", "2", "--publish", "--nostr-relay", relay.url,
             "--region", "lab", *LOOPBACK_MESH],
        )  # fmt: skip
        client = MeshNode(
            "auto-client", tmp_path / "client", ["--client", "--auto", "--nostr-relay", relay.url]
        )
        client.separate_stderr = True
        nodes = [host]
        try:
            host.start()
            host.wait_models({MODEL}, timeout=180)
            token = host.status()["token"]

            def host_listed() -> list[dict[str, Any]]:
                rows = _discover_json(relay.url, tmp_path / "cli")
                return [r for r in rows if r["listing"]["invite_token"] == token]

            row = wait_for(host_listed, 60, "the host's listing")[0]
            assert row["listing"]["serving"] == [MODEL]
            assert row["listing"]["node_count"] == 1
            assert row["listing"]["region"] == "lab"
            assert row["freshness"] == "fresh"
            assert row["publisher_npub"].startswith("npub1")
            assert 110 <= row["expires_at"] - row["published_at"] <= 130

            dead = _publish_dead(relay)
            rows = _discover_json(relay.url, tmp_path / "cli")
            assert [r["listing"]["invite_token"] for r in rows][:2] == [dead, token]

            started = time.monotonic()
            nodes.append(client)
            client.start()
            client.wait_models({MODEL}, timeout=60)
            joined_s = time.monotonic() - started
            stderr = client.stderr_text()
            assert "did not answer" in stderr or "unreachable" in stderr, stderr
            assert "--auto: joined mesh" in stderr, stderr
            assert joined_s < 30, joined_s

            api = openai.OpenAI(base_url=f"{client.api}/v1", api_key="x", max_retries=0)
            reply = api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
            )
            assert reply.choices[0].message.content
            api.close()

            listed = http_json(f"{client.console}/api/discover", timeout=15)
            assert token in {m["listing"]["invite_token"] for m in listed}

            assert host.stop() == 0
            nodes.remove(host)
            left = _discover_json(relay.url, tmp_path / "cli")
            assert token not in {r["listing"]["invite_token"] for r in left}
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail() for n in nodes)) from None
        finally:
            for node in reversed(nodes):
                node.stop()
