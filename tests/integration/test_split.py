"""End to end: a model too big for either node is split across two real nodes over RPC tunnels.

``--max-vram 0.07`` makes SmolLM2 (98 MB, x1.1 = 108 MB) too big for one node and small enough for
two. Real mesh-llm processes, real iroh, real llama-server and rpc-server.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mesh_llm.inference import locate_backend
from tests.integration.harness import MeshNode, free_port, smollm_path, wait_for
from tests.integration.netns import netns_available, network_namespace
from tests.integration.udp_delay import UdpDelayRelay

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
MESH = ["--no-relay", "--bind-ip", "127.0.0.1", "--parallel", "1", "--ctx-size", "2048"]
PROMPT = "The three primary colors are"


def split_info(node: MeshNode) -> dict[str, Any]:
    models = node.status()["local_models"]
    split: dict[str, Any] | None = next(
        (m.get("split") for m in models if m["name"] == MODEL), None
    )
    return split or {}


def completion(port: int, path: str = "/v1/completions") -> str:
    body = json.dumps(
        {"model": MODEL, "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "seed": 1}
    ).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", body, {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            text: str = json.loads(resp.read())["choices"][0]["text"]
    except urllib.error.HTTPError as exc:
        exc.close()  # an error response holds its socket until closed
        raise
    return text


def solo_reference() -> str:
    """The same request against a plain llama-server holding the whole model."""
    bins = locate_backend()
    port = free_port()
    proc = subprocess.Popen(
        [str(bins.llama_server), "-m", str(smollm_path()), "--host", "127.0.0.1",
         "--port", str(port), "-c", "2048", "--parallel", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: completion(port), 60, "the solo llama-server")
        return completion(port)
    finally:
        proc.terminate()
        proc.wait(10)


class Pair:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.a = MeshNode("A", root / "A", ["--model", MODEL, "--max-vram", "0.07", *MESH])
        self.b: MeshNode | None = None

    def start_b(self) -> MeshNode:
        token = wait_for(lambda: self.a.status()["token"], 30, "A's token")
        self.b = MeshNode("B", self.root / "B", ["--model", MODEL, "--max-vram", "0.07",
                                                  "--join", token, *MESH]).start()  # fmt: skip
        return self.b

    def roles(self) -> dict[str, MeshNode]:
        assert self.b is not None
        out = {}
        for node in (self.a, self.b):
            role = split_info(node).get("role")
            if role:
                out[role] = node
        return out

    def logs(self) -> str:
        return "\n".join(n.log_tail(40) for n in (self.a, self.b) if n is not None)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    p = Pair(tmp_path_factory.mktemp("split"))
    try:
        p.a.start()
        wait_for(lambda: split_info(p.a).get("role") == "wait", 60, "A alone to wait for peers")
        p.start_b()
        wait_for(lambda: set(p.roles()) == {"host", "worker"}, 60, "a host and a worker")
        host = p.roles()["host"]
        wait_for(lambda: MODEL in host.model_ids(), 180, "the split host to serve")
        yield p
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{p.logs()}") from None
    finally:
        for node in (p.a, p.b):
            if node is not None:
                node.stop()


def test_split_forms_and_answers_like_solo(pair: Pair) -> None:
    roles = pair.roles()
    host, worker = roles["host"], roles["worker"]
    host_split, worker_split = split_info(host), split_info(worker)
    worker_id = worker.status()["node_id_full"]
    assert host_split["workers"] == [worker_id]
    assert host_split["tensor_split"] == "0.50,0.50"
    assert worker_split["host"] == host.status()["node_id_full"]
    assert host.status()["node_status"] == "Serving (split)"
    assert worker.status()["node_status"] == "Worker (split)"
    expected = solo_reference()
    assert completion(host.api_port) == expected
    assert completion(worker.api_port) == expected  # routed to the host through the tunnel


def test_weights_did_not_cross_the_network(pair: Pair) -> None:
    roles = pair.roles()
    host, worker = roles["host"], roles["worker"]
    tunnels = host.status()["rpc_server"]["tunnels"]
    stats = tunnels[worker.status()["node_id_full"]]
    model_bytes = smollm_path().stat().st_size
    assert stats["bytes_sent"] < 0.05 * model_bytes, stats
    # The worker loaded its half of the layers from its own copy of the file.
    assert stats["bytes_saved"] > 0.3 * model_bytes, stats


def test_client_routes_only_to_the_host(pair: Pair) -> None:
    roles = pair.roles()
    host, worker = roles["host"], roles["worker"]
    token = host.status()["token"]
    client = MeshNode("C", pair.root / "C", ["--client", "--join", token, *MESH]).start()
    try:
        client.wait_models({MODEL}, timeout=60)
        for _ in range(2):
            assert completion(client.api_port)
        peers = {p["id"]: p for p in client.status()["peers"]}
        assert peers[host.status()["node_id_full"]]["tunnel_bytes_sent"] > 0
        assert peers[worker.status()["node_id_full"]]["tunnel_bytes_sent"] == 0
    finally:
        client.stop()


class SplitStream(threading.Thread):
    """A long streamed completion from the split host, recording its ``data:`` events."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.events: list[bytes] = []
        self.started = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        body = {"model": MODEL, "prompt": "Count from one to one thousand:", "max_tokens": 1500,
                "temperature": 0, "stream": True, "ignore_eos": True}  # fmt: skip
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", "/v1/completions", json.dumps(body),
                         {"Content-Type": "application/json"})  # fmt: skip
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            for raw in resp:  # de-chunked: a reset or a truncated chunk raises here
                line = raw.strip()
                if line.startswith(b"data: "):
                    self.events.append(line)
                    if len(self.events) >= 5:
                        self.started.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.failure = exc
        finally:
            self.started.set()
            conn.close()


def revive(pair: Pair, dead: MeshNode, host: MeshNode) -> MeshNode:
    """Start ``dead`` again (same identity and disk), joining ``host``."""
    args = [*dead.args, "--join", host.status()["token"]]
    revived = MeshNode(dead.name + "+", dead.home, args).start()
    if dead is pair.b:
        pair.b = revived
    else:
        pair.a = revived
    return revived


def test_kill9_worker_mid_stream_host_recovers_then_split_reforms(pair: Pair) -> None:
    """The worker is SIGKILLed while the host streams through it: the stream ends with a clean
    error event (never a hang, a reset or a fake [DONE]), the host gives up the split within the
    detection bound and answers 503, and the split re-forms when the worker comes back."""
    roles = pair.roles()
    host, worker = roles["host"], roles["worker"]
    stream = SplitStream(host.api_port)
    stream.start()
    assert stream.started.wait(60), pair.logs()
    assert stream.failure is None, (stream.failure, pair.logs())
    worker.signal(signal.SIGKILL)
    assert worker.proc is not None
    worker.proc.wait(10)
    killed = time.monotonic()
    stream.join(30)
    assert not stream.is_alive(), "the stream hung after its worker died"
    ended = time.monotonic() - killed
    assert stream.failure is None, f"{stream.failure!r}\n{pair.logs()}"
    last = stream.events[-1]
    assert last != b"data: [DONE]", "a stream cut by a dead worker must not look complete"
    error = json.loads(last[len(b"data: ") :])["error"]
    assert error["message"], error
    assert ended <= 15, f"the stream ended {ended:.1f} s after the kill"
    wait_for(lambda: split_info(host).get("role") == "wait", 10, "the host to give up the split")
    assert time.monotonic() - killed <= 10
    assert not [p for p in host.children() if "llama-server" in p.name()]
    assert MODEL not in host.model_ids()
    with pytest.raises(urllib.error.HTTPError) as info:
        completion(host.api_port)
    assert info.value.code == 503
    # The worker comes back (same identity, joining the host): the split re-forms.
    revive(pair, worker, host)
    wait_for(lambda: MODEL in host.model_ids(), 120, "the split to re-form")
    assert completion(host.api_port)


def test_kill9_worker_during_the_split_load(pair: Pair) -> None:
    """The worker dies while the host's llama-server is loading over its rpc-server: the host
    neither hangs nor leaves a llama-server behind, goes back to waiting, and the split forms
    again with the revived worker."""
    wait_for(lambda: set(pair.roles()) == {"host", "worker"}, 30, "a host and a worker")
    roles = pair.roles()
    host, worker = roles["host"], roles["worker"]
    worker.signal(signal.SIGKILL)
    assert worker.proc is not None
    worker.proc.wait(10)
    wait_for(lambda: split_info(host).get("role") == "wait", 10, "the host to give up the split")
    worker = revive(pair, worker, host)

    def loading() -> list[psutil.Process]:
        return [p for p in host.children() if "llama-server" in p.name()]

    wait_for(loading, 120, "the host to start loading the split", 0.02)
    listed = MODEL in host.model_ids()
    worker.signal(signal.SIGKILL)
    assert worker.proc is not None
    worker.proc.wait(10)
    killed = time.monotonic()
    assert not listed, "the split was serving before the kill: not a kill during load"
    wait_for(lambda: split_info(host).get("role") == "wait", 15, "the host to give up the load")
    wait_for(lambda: not loading(), 15, "the host's llama-server to be stopped")
    assert time.monotonic() - killed <= 20
    assert MODEL not in host.model_ids()
    with pytest.raises(urllib.error.HTTPError) as info:
        completion(host.api_port)
    assert info.value.code == 503
    revive(pair, worker, host)
    wait_for(lambda: MODEL in host.model_ids(), 120, "the split to re-form")
    assert completion(host.api_port)


def test_kill9_of_the_workers_rpc_server_is_restarted_and_the_split_reforms(pair: Pair) -> None:
    """The worker's rpc-server is SIGKILLed (its mesh-llm lives on): the worker restarts it, the
    host re-plans with the new one, and the split answers again, with no orphan left behind."""
    wait_for(lambda: set(pair.roles()) == {"host", "worker"}, 30, "a host and a worker")
    roles = pair.roles()
    host, worker = roles["host"], roles["worker"]
    wait_for(lambda: MODEL in host.model_ids(), 120, "the split host to serve")

    def rpc_servers() -> list[psutil.Process]:
        return [p for p in worker.children() if "rpc-server" in p.name()]

    def llama_servers() -> list[int]:
        return [p.pid for p in host.children() if "llama-server" in p.name()]

    (victim,) = rpc_servers()
    (old_llama,) = llama_servers()
    victim.kill()
    victim.wait(10)
    killed = time.monotonic()
    wait_for(lambda: [p for p in rpc_servers() if p.pid != victim.pid], 30, "a new rpc-server")
    restarted = time.monotonic() - killed

    def reformed() -> bool:
        pids = llama_servers()
        return bool(pids) and old_llama not in pids and MODEL in host.model_ids()

    wait_for(reformed, 120, "the host to re-plan the split on the new rpc-server")
    assert split_info(host).get("workers") == [worker.status()["node_id_full"]]
    assert completion(host.api_port) == completion(worker.api_port)
    assert not psutil.pid_exists(victim.pid) or victim.status() == psutil.STATUS_ZOMBIE
    print(f"rpc-server restarted {restarted:.1f} s after the kill; split back "
          f"{time.monotonic() - killed:.1f} s after it")  # fmt: skip


def test_a_peer_beyond_the_rtt_cap_is_left_out(tmp_path: Path) -> None:
    """B reaches A only through a relay adding 60 ms each way (RTT > 80 ms): A will not use it."""
    unavailable = netns_available()
    if unavailable is not None:
        pytest.skip(unavailable)
    a = MeshNode("A", tmp_path / "A", ["--model", MODEL, "--max-vram", "0.08", *MESH]).start()
    try:
        token = wait_for(lambda: a.status()["token"], 30, "A's token")
        from mesh_llm.protocol import EndpointAddrInfo, decode_token, encode_token

        addr = decode_token(token)
        ip, port = addr.ip_addrs[0].rsplit(":", 1)
        with network_namespace("rtt") as ns:
            relay = UdpDelayRelay((ip, int(port)), 0.06, listen_host=ns.host_ip)
            try:
                via = encode_token(
                    EndpointAddrInfo.create(addr.id_hex, (), [f"{ns.host_ip}:{relay.port}"])
                )
                b_args = ["--model", MODEL, "--max-vram", "0.07", "--join", via,
                          "--no-relay", "--bind-ip", ns.ns_ip, "--ctx-size", "2048"]  # fmt: skip
                b = MeshNode("B", tmp_path / "B", b_args, prefix=ns.prefix()).start()
                try:
                    peers = wait_for(lambda: a.status()["peers"], 60, "B to join A via the relay")
                    b_id = peers[0]["id"]

                    def slow() -> bool:
                        rows = [p for p in a.status()["peers"] if p["id"] == b_id]
                        return bool(rows) and (rows[0]["rtt_ms"] or 0) > 80

                    wait_for(slow, 30, "A to measure an RTT above 80 ms to B")

                    def excluded() -> bool:
                        info = split_info(a)
                        return info.get("role") == "wait" and any(
                            e["id"] == b_id and "RTT" in e["reason"]
                            for e in info.get("excluded", [])
                        )

                    wait_for(excluded, 30, "A to leave B out for its RTT")
                finally:
                    b.stop()
            finally:
                relay.close()
    finally:
        a.stop()


def test_split_nodes_shut_down_cleanly(pair: Pair) -> None:
    """Ctrl-C on a split host and worker: both exit 0 promptly and leave no llama.cpp child."""
    nodes = [n for n in (pair.a, pair.b) if n is not None]
    children = [c for n in nodes for c in n.children()]
    assert any("rpc-server" in c.name() for c in children)
    for node in nodes:
        node.signal(signal.SIGINT)
    for node in nodes:
        assert node.proc is not None
        assert node.proc.wait(timeout=15) == 0, node.log_tail()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive


def test_worker_without_the_file_is_sent_the_weights_once(tmp_path: Path) -> None:
    """An idle worker (no model) gets the weights on the first load and keeps them in its store:
    after the host restarts, the second load sends under 5% of the model."""
    bins = locate_backend()
    model_bytes = smollm_path().stat().st_size
    host = MeshNode("H", tmp_path / "H", ["--model", MODEL, "--max-vram", "0.07", *MESH]).start()
    worker: MeshNode | None = None
    try:
        token = wait_for(lambda: host.status()["token"], 30, "H's token")
        worker_args = ["--join", token, "--max-vram", "0.07",
                       "--bin-dir", str(bins.llama_server.parent), *MESH]  # fmt: skip
        worker = MeshNode("W", tmp_path / "W", worker_args,
                          env={"MESH_LLM_CACHE": str(tmp_path / "W-cache")}).start()  # fmt: skip
        host.wait_models({MODEL}, timeout=180)

        def sent(node: MeshNode) -> int:
            tunnels = node.status()["rpc_server"]["tunnels"]
            return int(sum(t["bytes_sent"] for t in tunnels.values()))

        assert sent(host) > 0.3 * model_bytes  # the first load carried the worker's layers
        expected = completion(host.api_port)
        host.stop()
        again = [*host.args, "--join", worker.status()["token"]]
        host = MeshNode("H2", tmp_path / "H", again).start()
        host.wait_models({MODEL}, timeout=180)
        assert sent(host) < 0.05 * model_bytes
        assert completion(host.api_port) == expected
    finally:
        host.stop()
        if worker is not None:
            worker.stop()


def test_two_nodes_sharing_one_state_dir_form_a_split(tmp_path: Path) -> None:
    """Issue 16's report: two nodes on one machine with the same MESH_LLM_HOME (fresh identities)
    form a split; the second's start-up does not stop the first's rpc-server, and each node's
    children log to their own files. A third node wanting the home's own key is refused."""
    home = tmp_path / "shared-home"
    ephemeral = {"MESH_LLM_EPHEMERAL_KEY": "1"}
    split_args = ["--model", MODEL, "--max-vram", "0.07", *MESH]
    a = MeshNode("A", home, split_args, env=ephemeral).start()
    b: MeshNode | None = None
    try:
        wait_for(lambda: split_info(a).get("role") == "wait", 60, "A alone to wait for peers")
        a_rpc = a.status()["rpc_server"]
        assert a_rpc["running"]
        token = a.status()["token"]
        b = MeshNode("B", home, [*split_args, "--join", token], env=ephemeral)
        b.start()
        nodes = (a, b)

        def roles() -> set[str]:
            return {split_info(n).get("role") for n in nodes} - {None}

        wait_for(lambda: roles() == {"host", "worker"}, 60, "a host and a worker")
        assert psutil.pid_exists(a_rpc["pid"]), "B's start-up stopped A's rpc-server"
        assert a.status()["rpc_server"]["pid"] == a_rpc["pid"]
        host = next(n for n in nodes if split_info(n).get("role") == "host")
        wait_for(lambda: MODEL in host.model_ids(), 180, "the split host to serve")
        assert completion(host.api_port)
        logs = sorted(p.relative_to(home).as_posix() for p in home.glob("logs/**/rpc-server.log"))
        assert len(logs) == 2, logs
        assert any(log.startswith("logs/node-") for log in logs), logs
        keyed = subprocess.run(
            [sys.executable, "-m", "mesh_llm", "--model", MODEL, "--port", str(free_port()),
             "--console", str(free_port()), *MESH],
            env={**os.environ, "MESH_LLM_HOME": str(home)},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert keyed.returncode != 0
        assert "already running with the state directory" in keyed.stderr, keyed.stderr
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{a.log_tail(40)}\n{b.log_tail(40) if b else ''}") from None
    finally:
        for node in (a, b):
            if node is not None:
                node.stop()
