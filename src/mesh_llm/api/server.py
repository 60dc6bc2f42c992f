"""Management API and console on :3131.

Raw HTTP/1.1, one request per connection, 5 s to send the request (then the connection is closed
silently, as in the original). Routes:

- ``GET /api/status``: the node's status JSON (built synchronously from in-memory state);
- ``GET /api/events``: SSE; the full status on connect, again on every change, ``: keepalive`` after
  15 s idle;
- ``GET /api/runtime``, ``GET /api/runtime/processes``;
- ``POST /api/runtime/models`` ``{"model"}``: load a model here (201 ``{"loaded"}``; 400, 409
  already loaded, 422 does not fit, 503); ``DELETE /api/runtime/models/{name}``: unload it after
  its in-flight requests (200 ``{"dropped"}``, 404);
- ``GET /api/discover``: the meshes listed on Nostr (``DiscoveredMesh[]``), 502 if the relays fail;
- ``GET /api/models``: warm and cold models with fit labels and commands (``models_view``);
- ``GET /`` (and ``/dashboard``, ``/chat``, ``/chat/*``): the console page; ``/assets/*`` its
  scripts and styles (hand-written, no build step), cached as immutable (the page asks for them
  with ``?v=<version>``).

Errors are ``{"error": msg}`` with a matching status; unknown routes 404. Bound to loopback,
requests addressed to another ``Host`` name are refused (403) before any route
(``protocol/hosts``: DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from mesh_llm import __version__
from mesh_llm.api.hub import ChangeHub
from mesh_llm.api.models_view import mesh_models
from mesh_llm.errors import HttpProtocolError, MeshLlmError, PortInUseError, ProtocolError
from mesh_llm.models import catalog_entries
from mesh_llm.network import UNAUTHORIZED_MESSAGE, ApiKeys
from mesh_llm.protocol import (
    CorsPolicy,
    HostPolicy,
    Request,
    RequestComplete,
    RequestReader,
    render_response,
    with_cors,
)

__all__ = ["ManagementServer"]

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0
KEEPALIVE_S = 15.0
MAX_BODY = 1024 * 1024

JsonFn = Callable[[], dict[str, object]]
ModelAction = Callable[[str], Awaitable[tuple[int, dict[str, object]]]]
"""Load or unload a model by name: (HTTP status, JSON body)."""

CORS = CorsPolicy(any_origin=False)
"""Reads are open and carry the invite token, so whatever the keys, only local pages (and the
console under the address it was opened at) may read them; the console itself is same-origin."""

_ASSET_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}


def _asset(name: str) -> bytes | None:
    """A console file from the package (``assets/<name>``), or None; no paths outside it."""
    if not name or "/" in name or name.startswith("."):
        return None
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix not in _ASSET_TYPES:
        return None
    node = resources.files("mesh_llm.api").joinpath("assets", name)
    if not node.is_file():
        return None
    return node.read_bytes()


def _page() -> bytes:
    page = resources.files("mesh_llm.api").joinpath("assets/index.html").read_bytes()
    return page.replace(b"__VERSION__", __version__.encode())


def _json(status: int, payload: object, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    body = json.dumps(payload).encode()
    headers = (("Content-Type", "application/json"), *extra)
    return render_response(status, headers, body)


def _error(status: int, message: str) -> bytes:
    return _json(status, {"error": message})


class ManagementServer:
    """The :3131 server; data comes from callbacks, so the API stays independent of the runtime."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        status: JsonFn,
        runtime_models: JsonFn,
        runtime_processes: JsonFn,
        hub: ChangeHub,
        keepalive_s: float = KEEPALIVE_S,
        api_keys: ApiKeys | None = None,
        discover: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
        load_model: ModelAction | None = None,
        unload_model: ModelAction | None = None,
        hosts: HostPolicy | None = None,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._status = status
        self._runtime_models = runtime_models
        self._runtime_processes = runtime_processes
        self._hub = hub
        self._keepalive_s = keepalive_s
        self._api_keys = api_keys if api_keys is not None else ApiKeys()
        self._discover = discover
        self._load_model = load_model
        self._unload_model = unload_model
        """``--api-key``: required by every method other than GET and OPTIONS."""
        self._hosts = hosts
        """Which ``Host`` names may be addressed (protocol/hosts: the guard against DNS
        rebinding, checked before every route, the event stream included); None: any."""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = port

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._on_client, self._host, self._requested_port
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"console port {self._requested_port} is already in use "
                    "(choose another with --console)"
                ) from exc
            raise PortInUseError(
                f"cannot listen on {self._host}:{self._requested_port}: {exc}"
            ) from exc
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("management API handler failed")
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> Request | None:
        parser = RequestReader(max_body=MAX_BODY)
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                while True:
                    data = await reader.read(65536)
                    if not data:
                        parser.feed_eof()
                    for event in parser.feed(data):
                        if isinstance(event, RequestComplete):
                            return event.request
        except TimeoutError:
            return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await self._read_request(reader)
        except HttpProtocolError as exc:
            writer.write(_error(exc.status, exc.message))
            await writer.drain()
            return
        except ProtocolError:
            return
        if request is None:
            return  # too slow: close silently
        method, path = request.method, request.path
        origin, host = request.header("Origin"), request.header("Host")
        cors = CORS.header_lines(origin, host)

        def send(response: bytes) -> None:
            writer.write(with_cors(response, cors))

        if self._hosts is not None and host is not None and not self._hosts.allows(host):
            # A page whose name was re-pointed at this machine (DNS rebinding) is same-origin
            # to the browser and would read the invite token: only its Host gives it away.
            log.info("refused a request addressed to Host %r", host[:100])
            send(_error(403, self._hosts.refusal(host)))
        elif method == "OPTIONS":
            send(
                render_response(
                    204,
                    (
                        ("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS"),
                        ("Access-Control-Allow-Headers", "*"),
                    ),
                    b"",
                )
            )
        elif method != "GET" and CORS.refuses(origin, host):
            # A page of another site: its "simple" requests arrive without a preflight.
            send(_error(403, f"requests from web pages of {origin} are refused"))
        elif method != "GET" and not self._api_keys.allows(request.header):
            send(_error(401, UNAUTHORIZED_MESSAGE))
        elif path == "/api/runtime/models" and method == "POST":
            send(await self._load(request.body))
        elif path.startswith("/api/runtime/models/") and method == "DELETE":
            send(await self._unload(path[len("/api/runtime/models/") :]))
        elif method != "GET":
            send(_error(405, f"method {method} not allowed on {path}"))
        elif path == "/api/status":
            send(await self._status_response())
        elif path == "/api/events":
            await self._events(writer, cors)
            return
        elif path == "/api/discover":
            send(await self._discover_response())
        elif path == "/api/runtime":
            send(_json(200, self._runtime_models()))
        elif path == "/api/runtime/processes":
            send(_json(200, self._runtime_processes()))
        elif path == "/api/models":
            send(_json(200, mesh_models(self._status(), catalog_entries())))
        elif path in ("/", "/index.html", "/dashboard", "/chat") or path.startswith("/chat/"):
            headers = (("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-cache"))
            send(render_response(200, headers, _page()))
        elif path.startswith("/assets/") and (body := _asset(path[len("/assets/") :])):
            suffix = path[path.rfind(".") :]
            headers = (
                ("Content-Type", _ASSET_TYPES[suffix]),
                ("Cache-Control", "public, max-age=31536000, immutable"),
            )
            send(render_response(200, headers, body))
        else:
            send(_error(404, f"no route for {path}"))
        await writer.drain()

    async def _load(self, body: bytes) -> bytes:
        if self._load_model is None:
            return _error(503, "this node cannot load models")
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            payload = None
        name = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(name, str) or not name.strip():
            return _error(400, 'the body must be {"model": "NAME"}')
        status, result = await self._load_model(name)
        return _json(status, result)

    async def _unload(self, quoted: str) -> bytes:
        name = urllib.parse.unquote(quoted)
        if self._unload_model is None:
            return _error(503, "this node cannot unload models")
        if not name:
            return _error(400, "name the model: DELETE /api/runtime/models/NAME")
        status, result = await self._unload_model(name)
        return _json(status, result)

    async def _discover_response(self) -> bytes:
        """``DiscoveredMesh[]`` from the Nostr relays (bounded by the callback)."""
        if self._discover is None:
            return _error(503, "discovery is not available on this node")
        try:
            return _json(200, await self._discover())
        except (MeshLlmError, TimeoutError) as exc:
            return _error(502, f"Nostr discovery failed: {exc or 'timed out'}")

    async def _status_response(self) -> bytes:
        return _json(200, self._status())

    async def _events(self, writer: asyncio.StreamWriter, cors: bytes) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\n"
            b"X-Accel-Buffering: no\r\n"
            b"Connection: close\r\n\r\n"
        )
        writer.write(with_cors(head, cors))
        version = self._hub.version
        writer.write(b"data: " + json.dumps(self._status()).encode() + b"\n\n")
        await writer.drain()
        while True:
            new_version = await self._hub.wait_after(version, self._keepalive_s)
            if new_version == version:
                writer.write(b": keepalive\n\n")
            else:
                version = new_version
                writer.write(b"data: " + json.dumps(self._status()).encode() + b"\n\n")
            await writer.drain()
