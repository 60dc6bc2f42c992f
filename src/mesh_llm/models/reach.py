"""Fail fast when a download's server cannot be reached at all.

``huggingface_hub`` retries a failed request five times with backoff (about 23 s offline, each
retry logged as a warning), and :mod:`mesh_llm.models.direct` retries for minutes: right for a
flaky link, pointless without one. :func:`ensure_reachable` resolves the host and opens one TCP
connection (to the proxy, when the environment names one for that URL) within a few seconds and
raises one :class:`~mesh_llm.errors.DownloadError` line when that fails, before any retry loop.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable
from urllib.parse import urlsplit

from mesh_llm.errors import DownloadError

__all__ = ["PROBE_TIMEOUT_S", "ensure_reachable"]

PROBE_TIMEOUT_S = 5.0

#: ``socket.create_connection``'s signature; tests pass their own.
Connector = Callable[[tuple[str, int], float], socket.socket]

_OFFLINE_HINT = "models already on disk still work offline; `mesh-llm models installed` lists them"


def _target(url: str) -> tuple[str, int, str]:
    """(host, port, description) to probe for ``url``: its proxy's, if the environment has one."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if proxy_parts.hostname:
            return proxy_parts.hostname, proxy_parts.port or 80, f"the proxy {proxy_parts.netloc}"
    return host, port, host if port == default else f"{host}:{port}"


def ensure_reachable(
    url: str,
    what: str,
    *,
    timeout: float = PROBE_TIMEOUT_S,
    connect: Connector = socket.create_connection,
) -> None:
    """Raise :class:`DownloadError` (one line, with the reason) if ``url``'s server is away."""
    host, port, name = _target(url)
    fail = f"cannot reach {name} to download {what}"
    if not host:
        raise DownloadError(f"cannot download {what} from {url}: no host in the URL")
    try:
        connect((host, port), timeout).close()
    except socket.gaierror as exc:
        raise DownloadError(
            f"{fail} (name lookup failed: {exc.strerror or exc}); {_OFFLINE_HINT}"
        ) from exc
    except TimeoutError as exc:
        raise DownloadError(f"{fail} (no answer within {timeout:.0f} s); {_OFFLINE_HINT}") from exc
    except OSError as exc:
        raise DownloadError(f"{fail} ({exc.strerror or exc}); {_OFFLINE_HINT}") from exc
