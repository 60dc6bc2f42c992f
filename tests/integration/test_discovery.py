"""Nostr discovery on real processes against a LocalRelay the test starts (issue 14).

A host publishes; ``discover --json`` lists it; a dead listing ranked above it (named
"mesh-llm", +300) is skipped within the probe bound; a ``--client --auto`` joins the host and
answers a completion; ``/api/discover`` lists the host; the host's clean exit deletes its
listing (NIP-09). A serving ``--auto`` node joins a publisher and serves; killed with -9, the
publisher is replaced by that node's watchdog within the bound. With three live listings,
``--auto`` joins the one named "mesh-llm" (+300) over an unnamed one and a differently named one.
An ``--auto`` node alone in the mesh it started merges into a larger published one (the
unpublish-and-merge rule): its listing is deleted, it takes that mesh's id, and its watchdog then
watches that mesh (it takes over publishing it when its publisher is killed).
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


WATCHDOG_BOUND_S = 75.0
"""Dead-peer detection (seconds) + a 20-35 s watchdog check + a 3-10 s re-check + two
discoveries (up to 7 s each) + publishing."""


def test_auto_node_joins_serves_and_takes_over_a_killed_publisher(tmp_path: Path) -> None:
    with local_relay() as relay:
        publisher = MeshNode(
            "publisher",
            tmp_path / "publisher",
            ["--model", MODEL, "--parallel", "2", "--publish", "--nostr-relay", relay.url,
             *LOOPBACK_MESH],
        )  # fmt: skip
        watchdog = MeshNode(
            "watchdog",
            tmp_path / "watchdog",
            ["--auto", "--model", MODEL, "--parallel", "2", "--nostr-relay", relay.url,
             *LOOPBACK_MESH],
        )  # fmt: skip
        watchdog.separate_stderr = True
        nodes = [publisher]
        try:
            publisher.start()
            publisher.wait_models({MODEL}, timeout=180)
            first = publisher.status()
            wait_for(
                lambda: any(
                    r["listing"]["invite_token"] == first["token"]
                    for r in _discover_json(relay.url, tmp_path / "cli")
                ),
                60,
                "the publisher's listing",
            )

            nodes.append(watchdog)
            watchdog.start()
            watchdog.wait_models({MODEL}, timeout=180)

            def serving_in_the_mesh() -> dict[str, Any] | None:
                status = watchdog.status()
                joined = any(p["id"] == first["node_id_full"] for p in status["peers"])
                return status if joined and MODEL in status["hosted_models"] else None

            status = wait_for(serving_in_the_mesh, 60, "the --auto node to join and serve")
            assert status["mesh_id"] == first["mesh_id"]
            assert "--auto: joined mesh" in watchdog.stderr_text()

            assert publisher.proc is not None
            publisher.proc.kill()  # no NIP-09 deletion: its listing stays until it expires
            publisher.proc.wait(timeout=10)
            nodes.remove(publisher)
            killed = time.monotonic()

            def taken_over() -> dict[str, Any] | None:
                rows = _discover_json(relay.url, tmp_path / "cli")
                mine = [r for r in rows if r["listing"]["invite_token"] == status["token"]]
                return mine[0] if mine else None

            row = wait_for(taken_over, WATCHDOG_BOUND_S, "the watchdog to republish the mesh")
            took_s = time.monotonic() - killed
            assert row["listing"]["mesh_id"] == first["mesh_id"]
            assert row["listing"]["serving"] == [MODEL]
            assert "watchdog: no live listing" in watchdog.stderr_text()
            assert took_s < WATCHDOG_BOUND_S, took_s
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail() for n in nodes)) from None
        finally:
            for node in reversed(nodes):
                node.stop()


def test_auto_prefers_the_mesh_named_mesh_llm_per_the_scoring(tmp_path: Path) -> None:
    """Three live publishers (client-only nodes: no llama-server needed to be listed): unnamed
    (score 100), "mesh-llm" (+300) and "other-lab" (-200, not viable). ``--auto`` joins
    "mesh-llm"."""
    with local_relay() as relay:
        relay_args = ["--nostr-relay", relay.url, *LOOPBACK_MESH]
        unnamed = MeshNode("unnamed", tmp_path / "u", ["--client", "--publish", *relay_args])
        named = MeshNode(
            "named", tmp_path / "n", ["--client", "--mesh-name", "mesh-llm", *relay_args]
        )
        other = MeshNode(
            "other", tmp_path / "o", ["--client", "--mesh-name", "other-lab", *relay_args]
        )
        joiner = MeshNode("joiner", tmp_path / "j", ["--client", "--auto", *relay_args])
        joiner.separate_stderr = True
        nodes = [unnamed, named, other]
        try:
            for node in nodes:
                node.start()
            tokens = {n.name: wait_for(lambda n=n: n.status()["token"], 60, n.name) for n in nodes}

            def all_listed() -> list[dict[str, Any]] | None:
                rows = _discover_json(relay.url, tmp_path / "cli")
                listed = {r["listing"]["invite_token"] for r in rows}
                return rows if set(tokens.values()) <= listed else None

            rows = wait_for(all_listed, 60, "the three listings")
            names = {r["listing"]["invite_token"]: r["listing"].get("name") for r in rows}
            assert names[tokens["named"]] == "mesh-llm"
            assert names[tokens["unnamed"]] is None

            nodes.append(joiner)
            joiner.start()
            named_id = named.status()["node_id_full"]
            wait_for(
                lambda: any(p["id"] == named_id for p in joiner.status()["peers"]),
                30,
                "the --auto client to join the mesh named mesh-llm",
            )
            status = joiner.status()
            assert status["mesh_id"] == named.status()["mesh_id"]
            peer_ids = {p["id"] for p in status["peers"]}
            assert unnamed.status()["node_id_full"] not in peer_ids
            assert other.status()["node_id_full"] not in peer_ids
            assert "--auto: joined mesh mesh-llm" in joiner.stderr_text()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail() for n in nodes)) from None
        finally:
            for node in reversed(nodes):
                node.stop()


FAST_DISCOVERY = {"MESH_LLM_DISCOVERY_TIME_SCALE": "0.1"}
"""Publish every 6 s, watchdog every 2-3.5 s (re-check 0.3-1 s) instead of 60 s and 20-35 s."""
MERGE_BOUND_S = 30.0
"""From the larger mesh's listing (2 nodes) to the merge: a 6 s publish interval on each side, a
discovery (up to 7 s), a probe (3 s) and the join."""
FAST_WATCHDOG_BOUND_S = 45.0
"""Dead-peer detection (up to 15 s) + a 2-3.5 s watchdog check + a 0.3-1 s re-check + two
discoveries (up to 7 s each) + publishing."""


def test_a_lonely_auto_mesh_unpublishes_and_merges_into_a_larger_one(tmp_path: Path) -> None:
    """X (``--auto``) finds nothing and starts its own mesh, published. A larger mesh appears (A
    publishes and serves, B joins it): X, with no serving peer, deletes its listing, joins A's
    mesh and takes its mesh id, and answers requests there. Its watchdog then watches A's mesh:
    it does not republish its old one, and when A is killed (-9) it publishes A's mesh id."""
    with local_relay() as relay:
        mesh_args = ["--nostr-relay", relay.url, *LOOPBACK_MESH]
        x = MeshNode(
            "x-auto",
            tmp_path / "x",
            ["--auto", "--model", MODEL, "--parallel", "2", *mesh_args],
            env=FAST_DISCOVERY,
        )
        x.separate_stderr = True
        a = MeshNode(
            "a-publisher",
            tmp_path / "a",
            ["--model", MODEL, "--parallel", "2", "--publish", *mesh_args],
            env=FAST_DISCOVERY,
        )
        nodes = [x]
        try:
            x.start()
            x.wait_models({MODEL}, timeout=180)
            x_first = x.status()
            assert "--auto: starting a new mesh" in x.stderr_text(), x.stderr_text()

            def listed(token: str) -> list[dict[str, Any]]:
                rows = _discover_json(relay.url, tmp_path / "cli")
                return [r for r in rows if r["listing"]["invite_token"] == token]

            x_row = wait_for(lambda: listed(x_first["token"]), 30, "X's own listing")[0]
            assert x_row["listing"]["node_count"] == 1
            old_mesh = x_first["mesh_id"]
            assert old_mesh
            assert x_row["listing"]["mesh_id"] == old_mesh

            nodes.append(a)
            a.start()
            a.wait_models({MODEL}, timeout=180)
            a_status = a.status()
            b = MeshNode(
                "b-worker",
                tmp_path / "b",
                ["--join", a_status["token"], "--no-standby", *mesh_args],
                env=FAST_DISCOVERY,
            )
            nodes.append(b)
            b.start()
            a_mesh = a_status["mesh_id"]
            assert a_mesh
            assert a_mesh != old_mesh
            a_row = wait_for(
                lambda: [r for r in listed(a_status["token"]) if r["listing"]["node_count"] >= 2],
                60,
                "the larger mesh's listing (A and B)",
            )[0]
            assert a_row["listing"]["mesh_id"] == a_mesh
            larger_listed = time.monotonic()

            def merged() -> dict[str, Any] | None:
                status = x.status()
                joined = any(p["id"] == a_status["node_id_full"] for p in status["peers"])
                return status if joined and status["mesh_id"] == a_mesh else None

            x_status = wait_for(merged, MERGE_BOUND_S, "X to merge into A's mesh and take its id")
            merged_at = time.monotonic()
            assert merged_at - larger_listed < MERGE_BOUND_S
            assert "listing withdrawn, merging into the larger mesh" in x.stderr_text()
            assert x_status["token"] == x_first["token"]
            assert not listed(x_first["token"]), "X's listing was not deleted (NIP-09)"
            assert (tmp_path / "x" / "last-mesh").read_text().strip() == a_mesh
            wait_for(
                lambda: any(p["id"] == x_first["node_id_full"] for p in a.status()["peers"]),
                15,
                "A to see X in its mesh",
            )

            api = openai.OpenAI(base_url=f"{x.api}/v1", api_key="x", max_retries=0)
            reply = api.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8
            )
            assert reply.choices[0].message.content
            api.close()

            # Several watchdog rounds after the merge: A's listing carries X's new mesh id, so
            # X's watchdog finds it and stays quiet (with its old id it would republish that).
            time.sleep(max(0.0, 8.0 - (time.monotonic() - merged_at)))
            assert not listed(x_first["token"]), "X republished after merging"
            assert x.status()["mesh_id"] == a_mesh

            assert a.proc is not None
            a.proc.kill()  # no NIP-09 deletion: A's listing stays until it expires
            a.proc.wait(timeout=10)
            nodes.remove(a)
            killed = time.monotonic()
            row = wait_for(
                lambda: (listed(x_first["token"]) or [None])[0],
                FAST_WATCHDOG_BOUND_S,
                "X's watchdog to take over publishing A's mesh",
            )
            assert row["listing"]["mesh_id"] == a_mesh
            assert "watchdog: no live listing" in x.stderr_text()
            assert time.monotonic() - killed < FAST_WATCHDOG_BOUND_S
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(n.log_tail() for n in nodes)) from None
        finally:
            for node in reversed(nodes):
                node.stop()
