"""Who may read the node's HTTP answers from a web page: one CORS policy for :9337 and :3131.

Browsers let a page read a cross-origin response only if it carries a matching
``Access-Control-Allow-Origin``; non-browser clients ignore the header. So the header decides one
thing: which *web pages* may use the node. The policy (docs/DESIGN.md, "Who may read the node
from a web page"):

- ``any_origin`` (:9337 with ``--api-key``): ``*`` on every response. The key guards the API and
  a page cannot borrow the user's key (browsers never attach it on their own).
- otherwise (:9337 without a key; :3131 always, whose reads are open and carry the invite
  token): only *local* origins, echoed with ``Vary: Origin``: a page served from a loopback
  address (``localhost``, ``*.localhost``, 127.0.0.0/8, ``[::1]``) or from the very host name the
  request was sent to (the console opened as ``http://<lan-ip>:3131`` calling
  ``http://<lan-ip>:9337``). Any other page (a hostile site the user happens to visit) gets no
  header, and :func:`refuses` tells the servers to answer its mutating requests 403 before
  acting, since a browser sends a "simple" POST without asking first.

Upstream answers (llama-server echoes any ``Origin`` it is sent) have their
``Access-Control-Allow-Origin`` and ``-Allow-Credentials`` replaced by the policy's
(:func:`with_cors`), in the response head only: the body is never touched.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CorsPolicy", "with_cors"]

_ACCESS_HEADERS = (b"access-control-allow-origin:", b"access-control-allow-credentials:")
_MAX_ORIGIN_CHARS = 300


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    any_origin: bool = False
    """Answer ``*`` to every origin (a key guards the server)."""

    def allowed_origin(self, origin: str | None, host: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for a request with these ``Origin`` and
        ``Host`` headers, or None for no header."""
        if self.any_origin:
            return "*"
        if origin is None or not _is_local_origin(origin, host):
            return None
        return origin

    def refuses(self, origin: str | None, host: str | None) -> bool:
        """Whether a request from a web page of ``origin`` must not be acted on (answered 403)."""
        return origin is not None and self.allowed_origin(origin, host) is None

    def header_lines(self, origin: str | None, host: str | None) -> bytes:
        """The raw header lines (each ending in CRLF) this policy adds to a response."""
        allowed = self.allowed_origin(origin, host)
        if self.any_origin:
            return b"Access-Control-Allow-Origin: *\r\n"
        if origin is None:
            return b""  # not a browser asking across origins: nothing to say
        lines = b"Vary: Origin\r\n"
        if allowed is not None:
            lines = b"Access-Control-Allow-Origin: " + allowed.encode("latin-1") + b"\r\n" + lines
        return lines


def with_cors(response: bytes, lines: bytes) -> bytes:
    """``response`` (its head complete, any body bytes after it) with the head's
    ``Access-Control-Allow-Origin`` and ``-Allow-Credentials`` headers removed and ``lines``
    inserted after the status line. Only the head is rewritten; what follows it is kept as is.
    A response without those headers and empty ``lines`` is returned unchanged."""
    cut = response.find(b"\r\n") + 2
    if cut < 2:
        return response
    head_end = response.find(b"\r\n\r\n")
    head_end = len(response) if head_end < 0 else head_end + 2
    block = response[cut:head_end]
    lowered = block.lower()
    if not any(name in lowered for name in _ACCESS_HEADERS):
        return response[:cut] + lines + response[cut:] if lines else response
    kept: list[bytes] = []
    dropping = False
    for line in block.split(b"\r\n")[:-1]:  # every header line ends in CRLF
        if line[:1] in (b" ", b"\t"):  # obs-fold: belongs to the previous header
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(_ACCESS_HEADERS)
        if not dropping:
            kept.append(line)
    rewritten = b"".join(line + b"\r\n" for line in kept)
    return response[:cut] + lines + rewritten + response[head_end:]


def _is_local_origin(origin: str, host: str | None) -> bool:
    if len(origin) > _MAX_ORIGIN_CHARS or not origin.isascii() or not origin.isprintable():
        return False
    try:
        parts = urlsplit(origin)
        name = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not name or parts.path or parts.query:
        return False
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    return host is not None and name == _host_name(host)


def _host_name(host: str) -> str | None:
    """The name part of a ``Host`` header (``[::1]:9337`` -> ``::1``), lowercased."""
    try:
        return urlsplit("//" + host.strip()).hostname
    except ValueError:
        return None
