"""Which ``Host`` names a node's HTTP ports answer: the guard against DNS rebinding.

A hostile page at ``http://evil.example:3131`` whose name is re-pointed at 127.0.0.1 after the
page loads is *same-origin* to the browser with the node on the visitor's machine: no CORS rule
stops it from reading ``/api/status`` (which carries the invite token) or using the API. What
gives it away is the ``Host`` header, which the browser fills with the attacker's name. So
(docs/DESIGN.md, "DNS rebinding"):

- a port that listens on **loopback only** answers requests addressed to a loopback name:
  ``localhost``, ``*.localhost``, any 127.0.0.0/8 address, ``[::1]`` (any port, any case, one
  trailing dot allowed), plus the names given with ``--allow-host``; every other ``Host``,
  malformed ones included, is refused (403) before the request acts;
- a port that listens **beyond loopback** (``--listen-all``) is meant to be reached under other
  names (a LAN address, a DNS name): any ``Host`` is answered;
- a request **without** ``Host`` (HTTP/1.0 clients; an empty value) is answered: browsers always
  send one, so its absence is never a rebinding page.

The check applies to the node's own listeners only: a request that arrives through a mesh
tunnel was checked at the node it entered.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ANY_HOST",
    "HostPolicy",
    "allowed_host_name",
    "host_name",
    "is_loopback_name",
    "listens_beyond_loopback",
]

ANY_HOST = "*"
"""``--allow-host '*'``: answer every ``Host`` (e.g. behind a reverse proxy on this machine)."""

_MAX_SHOWN = 100
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
_PORT = re.compile(r"[0-9]{0,5}")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    any_host: bool = False
    """Answer every ``Host`` (the port listens beyond loopback, or ``--allow-host '*'``)."""
    extra: frozenset[str] = frozenset()
    """More names answered on a loopback-only port (normalised by :func:`allowed_host_name`)."""

    @classmethod
    def for_listener(cls, bind: str, allow: Iterable[str] = ()) -> HostPolicy:
        """The policy of a port bound to ``bind`` with ``--allow-host`` names ``allow`` (each
        must pass :func:`allowed_host_name`)."""
        names = frozenset(allowed_host_name(name) for name in allow)
        return cls(any_host=listens_beyond_loopback(bind) or ANY_HOST in names, extra=names)

    def allows(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` header (None: none) may be answered."""
        if self.any_host or host is None or not host.strip(" \t"):
            return True
        name = host_name(host)
        if name is None:
            return False
        return is_loopback_name(name) or name in self.extra

    def refusal(self, host: str) -> str:
        """Why a request addressed to ``host`` is refused, and how to allow it."""
        shown = ascii(host[:_MAX_SHOWN])[1:-1]
        name = host_name(host)
        why = (
            f"requests addressed to host '{shown}' are refused: this port listens on loopback "
            "only and answers requests sent to localhost, 127.0.0.1 or [::1] (a guard against "
            "DNS rebinding)"
        )
        if name is None:
            return f"{why}; the Host header is malformed"
        shown_name = f"[{name}]" if ":" in name else name
        return (
            f"{why}; to reach it under that name start mesh-llm with --allow-host {shown_name} "
            "(or --listen-all to answer every name)"
        )


def listens_beyond_loopback(bind: str) -> bool:
    """Whether a socket bound to ``bind`` (an address or a name) is reachable from other
    machines: anything but a loopback address or ``localhost``."""
    name = bind.strip().strip("[]").lower().rstrip(".")
    if name == "localhost":
        return False
    try:
        return not _loopback_ip(ipaddress.ip_address(name))
    except ValueError:
        return True  # a host name: it may resolve anywhere


def allowed_host_name(name: str) -> str:
    """``name`` (an ``--allow-host`` value: a host name or an IP address, no port) normalised
    for comparison with :func:`host_name`; ``*`` stays ``*``. ValueError says what is wrong."""
    text = name.strip()
    if text == ANY_HOST:
        return ANY_HOST
    if not text:
        raise ValueError("an empty host name")
    if "%" in text:
        raise ValueError(f"{name!r}: zone ids are not sent in Host headers")
    if "[" in text or text.count(":") > 1:
        try:
            return str(ipaddress.IPv6Address(text.strip("[]")))
        except ValueError:
            raise ValueError(f"{name!r} is not a host name or an IP address") from None
    if ":" in text or "/" in text:
        raise ValueError(f"{name!r}: give the name only, without a scheme, port or path")
    parsed = host_name(text)
    if parsed is None:
        raise ValueError(f"{name!r} is not a host name or an IP address")
    return parsed


def host_name(host: str) -> str | None:
    """The name in a ``Host`` header value, lowercased and without its port and trailing dot
    (``[::1]`` gives ``::1``, in compressed form), or None when the value is malformed."""
    text = host.strip(" \t").lower()
    if not text.isascii() or len(text) > 300:
        return None
    if text.startswith("["):
        literal, bracket, port = text[1:].partition("]")
        if not bracket or not _valid_port(port) or "%" in literal:
            return None  # zone ids ("%eth0") are never sent by browsers
        try:
            return str(ipaddress.IPv6Address(literal))
        except ValueError:
            return None
    name, colon, port = text.partition(":")
    if not _valid_port(colon + port):
        return None
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or _NAME.fullmatch(name) is None:
        return None
    return name


def is_loopback_name(name: str) -> bool:
    """Whether a name from :func:`host_name` can only mean this machine."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return _loopback_ip(ipaddress.ip_address(name))
    except ValueError:
        return False


def _loopback_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _valid_port(port: str) -> bool:
    """``""`` (no port) or ``":"`` followed by up to five digits at most 65535 (RFC 3986 allows
    an empty port)."""
    if not port:
        return True
    if not port.startswith(":") or _PORT.fullmatch(port[1:]) is None:
        return False
    return not port[1:] or int(port[1:]) <= 65535
