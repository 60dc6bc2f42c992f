"""A far node behind a lossy, jittery UDP relay, for the fault harness and ``bench_faults.py``.

Topology (real mesh-llm processes, real iroh, real llama-server)::

    A  (host, 127.0.0.1, serves SmolLM2)  <-- loopback -->  B  (host, --client of A)
    ^
    | UdpDelayRelay on the veth's host end: delay +- jitter each way, loss, partition switch
    v
    C  (its own network namespace, serves the same weights as "smollm-far")

A and B bind 127.0.0.1, so nothing reaches C except through the relay, and C reaches the host only
through it (inside its namespace 127.0.0.1 is its own). B learns of C through A and cannot dial it.
Needs root (network namespaces): see :func:`tests.integration.netns.netns_available`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mesh_llm.mesh import Timing
from mesh_llm.protocol import EndpointAddrInfo, decode_token, encode_token
from tests.integration.harness import MeshNode, smollm_path, wait_for
from tests.integration.netns import NetNs, network_namespace
from tests.integration.udp_delay import UdpDelayRelay

MODEL = "SmolLM2-135M-Instruct"
FAR = "smollm-far"
MESH = ["--parallel", "2", "--ctx-size", "2048"]
DELAY_S, JITTER_S, LOSS = 0.02, 0.01, 0.02
SLACK_S = 2.0
"""Beyond the membership's own bound: one probe round (1 s) plus this test's 0.1 s polling and a
loaded 2-core machine."""
PARTITION_S = 10.0
"""How long the partition lasts: requests at A and B keep starting throughout it."""
HEAL_BOUND_S = Timing().dead_after_max
"""The issue's "the mesh converges within the detection bound after heal": the bound's cap."""


def detection_bound(rtt_ms: float | None) -> float:
    srtt = rtt_ms / 1000.0 if rtt_ms is not None else None
    return Timing().dead_after_for(srtt) + SLACK_S


def ask(host: str, port: int, model: str, max_tokens: int = 8, timeout: float = 60) -> str:
    """One streamed chat completion: ``ok`` (ended with [DONE]) or what went wrong."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "x"})
        resp = conn.getresponse()
        if resp.status != 200:
            return f"status_{resp.status}: {resp.read()[:200]!r}"
        served = resp.getheader("x-mesh-llm-model")
        last = b""
        for raw in resp:
            if raw.strip():
                last = raw.strip()
        if last != b"data: [DONE]":
            return f"truncated: {last[:200]!r}"
        return "ok" if served == model else f"served_by_{served}"
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


@dataclass
class Traffic:
    """Requests for A's model sent back to back at A and at B from two threads; each one's
    (node, start, end, outcome) on the monotonic clock."""

    targets: list[tuple[str, MeshNode]]
    log: list[tuple[str, float, float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def _loop(self, name: str, node: MeshNode) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            outcome = ask(node.host, node.api_port, MODEL, max_tokens=4)
            self.log.append((name, start, time.monotonic(), outcome))

    def __enter__(self) -> Traffic:
        for name, node in self.targets:
            t = threading.Thread(target=self._loop, args=(name, node), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)

    def outcomes(self) -> Counter[str]:
        return Counter(f"{name}:{outcome}" for name, _, _, outcome in self.log)

    def failures(self) -> dict[str, int]:
        return {k: v for k, v in self.outcomes().items() if not k.endswith(":ok")}

    def started_between(self, name: str, start: float, end: float) -> int:
        return sum(1 for n, s, _, _ in self.log if n == name and start <= s <= end)


@dataclass
class FarMesh:
    a: MeshNode
    b: MeshNode
    c: MeshNode
    relay: UdpDelayRelay
    ns: NetNs
    started: list[MeshNode] = field(default_factory=list)
    """Every node started, restarted ones included (all stopped at the end)."""

    def restart_c(self) -> MeshNode:
        """C again, same home (same identity), same namespace and relay, after it died."""
        self.c = MeshNode("C2", self.c.home, self.c.args, prefix=self.c.prefix, host=self.c.host)
        self.started.append(self.c.start())
        return self.c

    def logs(self) -> str:
        return "\n".join(n.log_tail(40) for n in (self.a, self.b, self.c))

    def c_id(self) -> str:
        node_id: str = self.c.status()["node_id_full"]
        return node_id

    def rtt_a_to_c(self) -> float | None:
        c_id = self.c_id()
        rows = [p for p in self.a.status()["peers"] if p["id"] == c_id]
        return rows[0]["rtt_ms"] if rows else None


@contextlib.contextmanager
def far_mesh(root: Path) -> Iterator[FarMesh]:
    """Start A, B and C (C behind the relay) and wait until each lists what it should."""
    far_gguf = root / f"{FAR}.gguf"
    far_gguf.symlink_to(smollm_path())
    a = MeshNode("A", root / "A", ["--model", MODEL, *MESH]).start()
    nodes = [a]
    try:
        token = wait_for(lambda: a.status()["token"], 30, "A's token")
        b = MeshNode("B", root / "B", ["--client", "--join", token]).start()
        nodes.append(b)
        addr = decode_token(token)
        ip, port = addr.ip_addrs[0].rsplit(":", 1)
        with network_namespace("far") as ns:
            relay = UdpDelayRelay(
                (ip, int(port)), DELAY_S, ns.host_ip, jitter_s=JITTER_S, loss=LOSS, seed=16
            )
            try:
                via = encode_token(
                    EndpointAddrInfo.create(addr.id_hex, (), [f"{ns.host_ip}:{relay.port}"])
                )
                c_args = ["--gguf", str(far_gguf), "--join", via, "--no-relay",
                          "--bind-ip", ns.ns_ip, "--listen-all", *MESH]  # fmt: skip
                c = MeshNode("C", root / "C", c_args, prefix=ns.prefix(), host=ns.ns_ip).start()
                nodes.append(c)
                mesh = FarMesh(a, b, c, relay, ns, nodes)
                try:
                    a.wait_models({MODEL, FAR}, timeout=240)
                    c.wait_models({MODEL, FAR}, timeout=60)
                    b.wait_models({MODEL}, timeout=60)
                    c_id = mesh.c_id()
                    wait_for(
                        lambda: c_id in {p["id"] for p in b.status()["peers"]}, 30, "B to know C"
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{mesh.logs()}") from None
                yield mesh
            finally:
                for node in reversed(nodes):
                    node.stop()
                relay.close()
    finally:
        for node in nodes:
            node.stop()
