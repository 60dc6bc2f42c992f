"""A throwaway network namespace joined to the host by a veth pair (root only).

Used where loopback cannot model the network: a node inside the namespace can reach the host only
through addresses the test chooses (e.g. a UDP delay relay), never the host's 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class NetNs:
    name: str
    host_ip: str  # the host's end of the veth pair
    ns_ip: str  # the namespace's end

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


def netns_available() -> str | None:
    """None when namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"mlt-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=20)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20, check=False)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@contextlib.contextmanager
def network_namespace(tag: str) -> Iterator[NetNs]:
    k = (os.getpid() + sum(tag.encode())) % 250 + 1
    name = f"mlt-{os.getpid()}-{tag}"
    host_if, ns_if = f"mh{os.getpid() % 100000}{tag[:3]}", f"mn{os.getpid() % 100000}{tag[:3]}"
    ns = NetNs(name, f"10.213.{k}.1", f"10.213.{k}.2")
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{ns.host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", name, "ip", "addr", "add", f"{ns.ns_ip}/30", "dev", ns_if)
        _ip("netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield ns
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", host_if)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "del", name)
