"""The :9337 OpenAI-compatible ingress: a raw HTTP/1.1 proxy, one request per connection.

A thin asyncio adapter over :mod:`mesh_llm.protocol.http1` (parsing) and
:mod:`mesh_llm.network.routing` (decisions). Per connection it reads one request, answers
the intercepted paths itself, otherwise tries the routing candidates in order until one
produces a response head (the failover loop), then relays that response byte for byte and
closes. While it waits on or relays the upstream, it watches the client: a client that goes
away closes the upstream so llama-server stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mesh_llm.errors import HttpProtocolError, MeshLlmError, PortInUseError, TransportError
from mesh_llm.network.proxy.auth import UNAUTHORIZED_MESSAGE, ApiKeys
from mesh_llm.network.proxy.routing import (
    JSON_API_PATHS,
    RoutingSnapshot,
    Target,
    choose_candidates,
    extract_routing_fields,
    is_context_overflow_400,
    model_not_found_error,
    no_target_error,
    snapshot_for_path,
    substituted_name,
)
from mesh_llm.network.proxy.upstream import TcpUpstream, UpstreamStream
from mesh_llm.network.proxy.warmup import (
    COLD_START_TIMEOUT_S,
    Warmup,
    WarmupOutcome,
    wait_for_model,
    wants_stream,
)
from mesh_llm.network.relay import (
    BlockingSource,
    ClientGoneError,
    Interrupt,
    NativeEnd,
    relay_from,
)
from mesh_llm.network.transport import BiStream
from mesh_llm.protocol.cors import CorsPolicy, with_cors
from mesh_llm.protocol.event_streams import EventStreamRewriter, rewriter_for
from mesh_llm.protocol.hosts import HostPolicy
from mesh_llm.protocol.http1 import (
    CONTINUE_RESPONSE,
    DEFAULT_MAX_BODY,
    ContinueNeeded,
    PipelinedBytes,
    ReaderState,
    Request,
    RequestComplete,
    RequestReader,
    parse_response_head,
    render_response,
    serialize_forward,
)
from mesh_llm.protocol.stream_end import ChunkedTracker, stream_error_tail
from mesh_llm.protocol.stream_resume import (
    CHAT_PATH,
    ContinuationFixer,
    StreamRecorder,
    continuation_body,
    read_partial_stream,
    request_blocks_resume,
)

logger = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
LINGER_TIMEOUT = 2.0
"""After the response: how long to wait for the client to close before dropping it."""
MODEL_HEADER = "x-mesh-llm-model"
SHUTDOWN_GRACE = 3.0
"""At close: how long in-flight exchanges get to end on their own (a stream its error event)
before they are cancelled."""
SHUTDOWN_MESSAGE = "mesh-llm on this node is shutting down; the request can be retried"
MAX_SUBSTITUTED_NAMES = 64
"""Distinct unknown model names counted (and warned about) one by one; the rest only in the
total, so a client inventing names cannot grow the table."""
MAX_NAME_CHARS = 200
MAX_ACTIVE_REQUESTS = 128
"""Requests proxied at once by one ingress; past it a request is answered 503 with Retry-After at
once (rather than queueing at llama-server until the first-byte timeout)."""
RETRY_AFTER_S = 2
"""Seconds a client told 503 (overloaded or no backend answered) is asked to wait."""
MIN_BODY_RATE = 1024
"""Bytes per second a request body must average after the header timeout's grace: a client
dribbling a byte at a time (each within the idle bound) gets 408 instead of holding the
connection for as many idle bounds as the body has bytes."""

_JSON = ("Content-Type", "application/json")
_MODELS_PATHS = frozenset({"/v1/models", "/models"})


def render_openai_error(status: int, message: str, type: str, code: str) -> bytes:
    """A complete HTTP response carrying an OpenAI-shaped error object."""
    body = json.dumps({"error": {"message": message, "type": type, "code": code}}).encode()
    return render_response(status, [_JSON], body)


def render_api_error(path: str, status: int, message: str, type: str, code: str) -> bytes:
    """An error response in the dialect of the API at ``path``: Anthropic's error object for
    the Messages API, OpenAI's everywhere else."""
    if not path.startswith("/v1/messages"):
        return render_openai_error(status, message, type, code)
    kind = "api_error" if type == "server_error" else type
    body = json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    return render_response(status, [_JSON], body)


def _error_for(exc: HttpProtocolError) -> bytes:
    kind = "invalid_request_error" if exc.status < 500 else "server_error"
    return render_openai_error(exc.status, exc.message, kind, exc.code)


def _with_retry_after(response: bytes) -> bytes:
    """``response`` with a ``Retry-After`` header after its status line."""
    line_end = response.index(b"\r\n") + 2
    return response[:line_end] + b"Retry-After: %d\r\n" % RETRY_AFTER_S + response[line_end:]


def _json_response(status: int, payload: object, *extra: tuple[str, str]) -> bytes:
    return render_response(status, [_JSON, *extra], json.dumps(payload).encode())


def _set_nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ByteCounter(Protocol):
    """Where a tunnelled request's bytes are counted (per peer); called from relay threads too."""

    def add_sent(self, n: int) -> None: ...

    def add_received(self, n: int) -> None: ...


class _Client:
    """The requesting side of one exchange: a TCP socket or an HTTP tunnel stream."""

    __slots__ = ("cors", "response_started")

    def __init__(self) -> None:
        self.response_started = False
        self.cors: bytes | None = None
        """CORS header lines the response head gets (:func:`with_cors`, which also drops the
        upstream's own); None: the head is sent as it is (a tunnelled request: the ingress it
        entered applies its policy)."""

    async def read(self, n: int) -> bytes:
        """Up to ``n`` request bytes; ``b""`` at the end or if the client failed."""
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        """Send ``data`` (an interim response too); ConnectionError if the client is gone."""
        raise NotImplementedError

    async def send(self, data: bytes) -> None:
        """Send response bytes; the first ones (a complete head) get the CORS headers."""
        if not self.response_started and self.cors is not None:
            data = with_cors(data, self.cors)
        self.response_started = True
        await self.write(data)

    async def wait_gone(self) -> None:
        """Return when the client has gone away; what it sends meanwhile is discarded."""
        raise NotImplementedError

    def socket_transport(self) -> asyncio.WriteTransport | None:
        """The client's socket transport, for :meth:`TcpUpstream.relay`; None for a stream."""
        return None

    async def finish(self) -> None:
        """End the exchange cleanly."""
        raise NotImplementedError

    async def abort(self) -> None:
        """Drop the exchange at once."""
        raise NotImplementedError


class _SocketClient(_Client):
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__()
        self.reader = reader
        self.writer = writer
        _set_nodelay(writer)

    async def read(self, n: int) -> bytes:
        try:
            return await self.reader.read(n)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def wait_gone(self) -> None:
        await _wait_client_gone(self.reader)

    def socket_transport(self) -> asyncio.WriteTransport | None:
        return self.writer.transport

    async def finish(self) -> None:
        await _linger_close(self.reader, self.writer)

    async def abort(self) -> None:
        self.writer.transport.abort()


class _StreamClient(_Client):
    """A request that came through an HTTP tunnel (stream 0x04): served right here, without a
    loopback hop. The requester never finishes its side; it resets the stream when its own
    client goes away."""

    __slots__ = ("counter", "stream")

    def __init__(self, stream: BiStream, counter: ByteCounter | None) -> None:
        super().__init__()
        self.stream = stream
        self.counter = counter

    async def read(self, n: int) -> bytes:
        try:
            data = await self.stream.read(n)
        except TransportError:
            return b""
        if self.counter is not None:
            self.counter.add_received(len(data))
        return data

    async def write(self, data: bytes) -> None:
        try:
            await self.stream.write(data)
        except TransportError as exc:
            raise ClientGoneError(f"tunnel write failed: {exc}") from exc
        if self.counter is not None:
            self.counter.add_sent(len(data))

    def write_blocking(self, data: bytes, cancel: threading.Event) -> None:
        """:meth:`write` from a relay thread."""
        self.stream.write_blocking(data, cancel)
        if self.counter is not None:
            self.counter.add_sent(len(data))

    def native_sink(self) -> NativeEnd | None:
        """The tunnel's send half and byte counter, for the C relay loop."""
        return self.stream.send_handle(), self.counter.add_sent if self.counter else None

    async def wait_gone(self) -> None:
        with contextlib.suppress(TransportError):
            while await self.stream.read(READ_SIZE):
                pass
            await asyncio.Future()  # finished, not reset: the requester is still there

    async def finish(self) -> None:
        with contextlib.suppress(TransportError):
            await self.stream.finish()
        await self.stream.aclose()

    async def abort(self) -> None:
        with contextlib.suppress(TransportError):
            await self.stream.reset(0)
        await self.stream.aclose()


class _ContextOverflowError(Exception):
    """The upstream answered a context-overflow 400 and another candidate remains."""


class Ingress:
    """The :9337 listener. ``start()`` binds, ``close()`` stops accepting and cancels
    in-flight connections."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        snapshot: Callable[[], RoutingSnapshot],
        connect: Callable[[Target], Awaitable[UpstreamStream]],
        models_listing: Callable[[], list[dict[str, object]]],
        on_demand: Callable[[str], None] | None = None,
        on_target_failed: Callable[[Target], None] | None = None,
        first_byte_timeout: float = 60.0,
        header_timeout: float = 10.0,
        max_body: int = DEFAULT_MAX_BODY,
        max_active: int = MAX_ACTIVE_REQUESTS,
        model_substitution: bool = True,
        report_substitutions: bool = True,
        api_keys: ApiKeys | None = None,
        cold_start: Callable[[str], Awaitable[Warmup | str | None]] | None = None,
        cold_start_timeout: float = COLD_START_TIMEOUT_S,
        control: Callable[[Request], Awaitable[bytes | None]] | None = None,
        hosts: HostPolicy | None = None,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._snapshot = snapshot
        self._connect = connect
        self._models_listing = models_listing
        self._on_demand = on_demand
        self._on_target_failed = on_target_failed
        self._first_byte_timeout = first_byte_timeout
        self._header_timeout = header_timeout
        self._max_body = max_body
        self._max_active = max_active
        self.active = 0
        """Requests being proxied now (bounded by ``max_active``)."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._relaying: set[Interrupt] = set()
        """One per response being relayed or request waiting for a cold start: fired at close
        to end it early (see close)."""
        self.inflight = 0
        """Connections being handled now."""
        self.requests_total = 0
        """Requests read completely since start."""
        self.model_substitution = model_substitution
        """Whether a request naming a model nobody serves is answered by another model (else
        404 ``model_not_found``). Missing, empty and ``auto`` names are always routed."""
        self._report_substitutions = report_substitutions
        self._api_keys = api_keys if api_keys is not None else ApiKeys()
        """Keys a client connecting to the listener must present (``--api-key``); requests
        arriving through a mesh tunnel were checked at their own ingress."""
        self._cors = CorsPolicy(any_origin=self._api_keys.required)
        """Which web pages may read the answers (protocol/cors): any when a key guards the API,
        else local ones only. Applied to the listener's clients; a tunnelled request's
        response head is left to the ingress it entered."""
        self._hosts = hosts
        """Which ``Host`` names the listener's clients may address (protocol/hosts: the guard
        against DNS rebinding); None: any. Tunnelled requests were checked where they entered."""
        self.substitutions_total = 0
        """Requests for an unknown model answered by another one."""
        self.substitutions: dict[str, int] = {}
        """Unknown model name -> requests substituted (the first MAX_SUBSTITUTED_NAMES names)."""
        self._cold_start = cold_start
        """Asked when a request names a model no target serves: a load it may wait for
        (:mod:`mesh_llm.network.proxy.warmup`), why none can start (503), or None (unknown)."""
        self._cold_start_timeout = cold_start_timeout
        self._control = control
        """Answers ``POST /mesh/load`` and ``/mesh/drop`` (None: not offered here)."""
        self.target_inflight: dict[str, int] = {}
        """Target key -> requests sent to it whose response has not ended (an unload drains
        these)."""

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("ingress is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._on_connection, self._host, self._requested_port
            )
        except OSError as exc:
            where = f"{self._host}:{self._requested_port}"
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {where} is already in use (is another mesh-llm running?)"
                ) from exc
            raise TransportError(f"cannot listen on {where}: {exc}") from exc
        logger.info("ingress listening on %s:%d", self._host, self.port)

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting, then drain: responses being relayed (from a local llama-server or
        through a tunnel) lose their upstream, so each ends as a dying server's would (an event
        stream with an error event saying the node shuts down, rather than a cut connection);
        whatever has not ended within ``grace`` seconds is cancelled."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for interrupt in list(self._relaying):
            interrupt.fire()
        tasks = list(self._tasks)
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- per connection -------------------------------------------------------------

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self._closing:
            writer.transport.abort()
            return
        client = _SocketClient(reader, writer)
        client.cors = self._cors.header_lines(None, None)  # until the request says more
        try:
            await self._handle(client)
        except asyncio.CancelledError:
            # This is the connection task's root. Cancelled by close() (it already cleaned up),
            # it ends quietly: asyncio 3.11's start_server callback would log the cancellation
            # as an error with a traceback.
            if not self._closing:
                raise

    async def serve_stream(self, stream: BiStream, counter: ByteCounter | None = None) -> None:
        """Serve the one request of an HTTP tunnel stream (0x04) whose type byte was read.

        Bytes in both directions are added to ``counter``. The listener need not be started.
        """
        if self._closing:
            with contextlib.suppress(TransportError):
                await stream.reset(0)
            return
        await self._handle(_StreamClient(stream, counter))

    async def _handle(self, client: _Client) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.inflight += 1
        try:
            try:
                await self._serve(client)
            except asyncio.CancelledError:
                await client.abort()
                raise
            except Exception:
                logger.exception("ingress connection handler failed")
                if not client.response_started:
                    with contextlib.suppress(ConnectionError):
                        await client.send(
                            render_openai_error(
                                500, "internal proxy error", "server_error", "internal"
                            )
                        )
            await client.finish()
        finally:
            self.inflight -= 1
            self._tasks.discard(task)

    async def _serve(self, conn: _Client) -> None:
        try:
            request = await self._read_request(conn)
        except HttpProtocolError as exc:
            logger.debug("rejecting request: %d %s", exc.status, exc.message)
            with contextlib.suppress(ConnectionError):
                await conn.send(_error_for(exc))
            return
        if request is None:
            return
        self.requests_total += 1
        if isinstance(conn, _SocketClient):
            origin, host = request.header("Origin"), request.header("Host")
            if self._hosts is not None and host is not None and not self._hosts.allows(host):
                # A page whose name was re-pointed at this machine (DNS rebinding) is
                # same-origin to the browser: only the Host it sends gives it away.
                logger.info("refused a request addressed to Host %r", host[:100])
                with contextlib.suppress(ConnectionError):
                    await conn.send(_refused(request.path, self._hosts.refusal(host), "host"))
                return
            conn.cors = self._cors.header_lines(origin, host)
            if request.method != "OPTIONS" and self._cors.refuses(origin, host):
                # A page of another site: no CORS header lets it read the answer, and this
                # keeps its "simple" requests (sent without a preflight) from using the node.
                with contextlib.suppress(ConnectionError):
                    await conn.send(_refused(request.path, ORIGIN_REFUSED_MESSAGE, "origin"))
                return
        if isinstance(conn, _SocketClient) and not self._authorized(request):
            with contextlib.suppress(ConnectionError):
                await conn.send(_unauthorized(request.path))
            return
        local = self._local_answer(request)
        if local is None and self._control is not None and request.path.startswith("/mesh/"):
            local = await self._control(request)
        if local is not None:
            with contextlib.suppress(ConnectionError):
                await conn.send(local)
            return
        if self.active >= self._max_active:
            logger.debug("overloaded (%d requests active): answering 503", self.active)
            busy = render_api_error(
                request.path, 503, "this node is overloaded; retry later", "server_error", "busy"
            )
            with contextlib.suppress(ConnectionError):
                await conn.send(_with_retry_after(busy))
            return
        self.active += 1
        try:
            await self._proxy_watched(conn, request)
        finally:
            self.active -= 1

    async def _proxy_watched(self, conn: _Client, request: Request) -> None:
        async with asyncio.TaskGroup() as tg:
            proxy = tg.create_task(self._proxy(conn, request))
            watcher = tg.create_task(conn.wait_gone())
            proxy.add_done_callback(lambda _: watcher.cancel())
            watcher.add_done_callback(lambda _: proxy.cancel())

    async def _read_request(self, conn: _Client) -> Request | None:
        parser = RequestReader(self._max_body)
        try:
            async with asyncio.timeout(self._header_timeout):
                while parser.state is ReaderState.HEAD:
                    if not await self._read_into(conn, parser):
                        return None
            loop = asyncio.get_running_loop()
            body_start, body_bytes = loop.time(), parser.bytes_received
            while parser.state is ReaderState.BODY:
                # An idle bound per read (large bodies may take longer than the header timeout),
                # and a minimum average rate (a byte per idle bound is not progress).
                received = parser.bytes_received - body_bytes
                allowed = body_start + self._header_timeout + received / MIN_BODY_RATE
                deadline = min(loop.time() + self._header_timeout, allowed)
                async with asyncio.timeout_at(deadline):
                    if not await self._read_into(conn, parser):
                        return None
        except TimeoutError:
            raise HttpProtocolError(
                408, "request not received in time", "request_timeout"
            ) from None
        return parser.request

    async def _read_into(self, conn: _Client, parser: RequestReader) -> bool:
        data = await conn.read(READ_SIZE)
        if not data:
            if parser.bytes_received == 0:
                return False
            parser.feed_eof()
        for event in parser.feed(data):
            match event:
                case ContinueNeeded():
                    with contextlib.suppress(ConnectionError):
                        await conn.write(CONTINUE_RESPONSE)
                case PipelinedBytes(count=count):
                    logger.debug("discarding %d pipelined bytes", count)
                case RequestComplete():
                    pass
        return True

    def _authorized(self, request: Request) -> bool:
        """CORS preflights and ``/health`` are open; everything else needs a key when keys
        are configured."""
        if request.method == "OPTIONS" or request.path == "/health":
            return True
        return self._api_keys.allows(request.header)

    def _local_answer(self, request: Request) -> bytes | None:
        """Responses the ingress gives itself, or None to proxy the request."""
        if request.method == "OPTIONS":
            allow_headers = request.header("Access-Control-Request-Headers") or "*"
            return render_response(
                204,
                [
                    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
                    ("Access-Control-Allow-Headers", allow_headers),
                    ("Access-Control-Max-Age", "86400"),
                ],
                b"",
            )
        if request.method == "GET" and request.path in _MODELS_PATHS:
            payload = {"object": "list", "data": self._models_listing()}
            return _json_response(200, payload)
        if request.method == "GET" and request.path == "/health":
            return _json_response(200, {"status": "ok"})
        return None

    # -- proxying -------------------------------------------------------------------

    async def _proxy(self, conn: _Client, request: Request) -> None:
        fields = extract_routing_fields(request.body)
        if (
            fields.body_error is not None
            and request.method == "POST"
            and request.path in JSON_API_PATHS
        ):
            # llama-server answers 500 to a body it cannot parse; SDKs would retry that.
            error = render_api_error(
                request.path, 400, fields.body_error, "invalid_request_error", "invalid_json"
            )
            with contextlib.suppress(ConnectionError):
                await conn.send(error)
            return
        model = fields.model
        if model and model != "auto" and self._on_demand is not None:
            self._on_demand(model)
        snapshot = snapshot_for_path(self._snapshot(), request.path)
        head_sent = False
        if model and model != "auto" and not snapshot.targets.get(model):
            warmed = await self._warm(conn, request, model)
            if warmed is not None and not warmed.ready:
                return
            if warmed is not None:
                head_sent = warmed.head_sent
                snapshot = snapshot_for_path(self._snapshot(), request.path)
        unknown = substituted_name(snapshot, model)
        if unknown is not None and not self.model_substitution and snapshot.targets:
            with contextlib.suppress(ConnectionError):
                await conn.send(_model_not_found(request.path, snapshot, unknown))
            return
        answering, candidates = choose_candidates(
            snapshot, model, len(request.body), fields.max_tokens
        )
        if unknown is not None and candidates and answering is not None:
            self._substituted(unknown, answering)
        forward = serialize_forward(request)
        timeouts: list[str] = []
        for index, target in enumerate(candidates):
            key = target.key
            self.target_inflight[key] = self.target_inflight.get(key, 0) + 1
            try:
                last = index == len(candidates) - 1
                attempt = await self._attempt(
                    target, forward, may_retry=not last, timeouts=timeouts
                )
                if attempt is None:
                    continue
                upstream, first = attempt
                fallbacks = [c for c in candidates[index + 1 :] if c.model == target.model]
                resume = _Resume(request, fallbacks) if request.path == CHAT_PATH else None
                interrupt = Interrupt(fired=self._closing)
                if isinstance(upstream, TcpUpstream):
                    interrupt.add(upstream.interrupt)
                self._relaying.add(interrupt)
                try:
                    if head_sent:
                        await self._relay_body(
                            conn, upstream, first, target.model, request.path, interrupt
                        )
                    else:
                        await self._relay(
                            conn, upstream, first, target.model, request.path, resume, interrupt
                        )
                finally:
                    self._relaying.discard(interrupt)
                    await _close_upstream(upstream)
                return
            finally:
                left = self.target_inflight.get(key, 1) - 1
                if left > 0:
                    self.target_inflight[key] = left
                else:
                    self.target_inflight.pop(key, None)
        # Say what happened: a target that timed out is not "no inference server".
        message = "; ".join(timeouts) or no_target_error(snapshot, model or answering)
        if head_sent:
            with contextlib.suppress(ConnectionError):
                await conn.write(stream_error_tail(request.path, message))
            return
        with contextlib.suppress(ConnectionError):
            await conn.send(
                _with_retry_after(
                    render_api_error(request.path, 503, message, "server_error", "no_backend")
                )
            )

    async def _warm(self, conn: _Client, request: Request, model: str) -> WarmupOutcome | None:
        """A request for ``model``, which no target serves: have it loaded somewhere and wait
        (:mod:`~mesh_llm.network.proxy.warmup`). None: no load applies (route as before);
        not ready: the client was answered (a 503, or an error event ending the stream)."""
        if self._cold_start is None or model in self._snapshot().down:
            return None
        warmup = await self._cold_start(model)
        if warmup is None:
            return None
        if isinstance(warmup, str):
            message = no_target_error(self._snapshot(), model, warmup)
            error = render_api_error(request.path, 503, message, "server_error", "no_backend")
            with contextlib.suppress(ConnectionError):
                await conn.send(_with_retry_after(error))
            return WarmupOutcome(False, False, message)
        label = model.replace("\r", "").replace("\n", "")
        logger.info("waiting for %s to load on %s", label, warmup.where)

        def ready() -> bool:
            return bool(self._snapshot().targets.get(model))

        interrupt = Interrupt(fired=self._closing)
        self._relaying.add(interrupt)  # close() ends the wait at once (not at its grace deadline)
        try:
            async with _interruptible(interrupt):
                outcome = await wait_for_model(
                    warmup,
                    ready=ready,
                    send=conn.send,
                    stream=request.path in JSON_API_PATHS and wants_stream(request.body),
                    model_header=f"{MODEL_HEADER}: {label}\r\n".encode(),
                    limit_s=self._cold_start_timeout,
                )
        except ConnectionError:
            return WarmupOutcome(False, True, "the client went away")
        except TimeoutError:  # interrupted: the node shuts down
            outcome = WarmupOutcome(False, conn.response_started, SHUTDOWN_MESSAGE)
        finally:
            self._relaying.discard(interrupt)
        if outcome.error is not None:
            with contextlib.suppress(ConnectionError):
                if outcome.head_sent:
                    await conn.write(stream_error_tail(request.path, outcome.error))
                else:
                    code = "shutting_down" if outcome.error == SHUTDOWN_MESSAGE else "model_loading"
                    error = render_api_error(request.path, 503, outcome.error, "server_error", code)
                    await conn.send(_with_retry_after(error))
        return outcome

    async def _relay_body(
        self,
        conn: _Client,
        upstream: UpstreamStream,
        first: bytes,
        model: str,
        path: str,
        interrupt: Interrupt | None = None,
    ) -> None:
        """Relay an answer into an event stream whose head the client already has (after a
        cold start's comments): the body only, or an error event for a non-stream answer.
        ``interrupt`` (node shutdown) ends it early with an error event saying so."""
        body_at = _event_stream_body_at(first)
        if body_at is None:
            head = parse_response_head(first)
            status = head.status if head is not None else 502
            text = first[head.head_length :][:300] if head is not None else b""
            message = f"the server for {model} answered {status}: " + text.decode(
                "utf-8", "replace"
            )
            with contextlib.suppress(ConnectionError):
                await conn.write(stream_error_tail(path, message))
            return
        rewriter = rewriter_for(path, model)
        tracker = ChunkedTracker()
        data = first[body_at:]
        try:
            async with _interruptible(interrupt):
                while True:
                    if data and rewriter is not None:
                        await conn.write(rewriter.feed(data))
                    elif data:
                        tracker.feed(data)
                        await conn.write(data)
                    if rewriter.done if rewriter is not None else tracker.done:
                        break
                    data = await upstream.read(READ_SIZE)
                    if not data:
                        break
        except ConnectionError:
            return
        except (OSError, MeshLlmError) as exc:  # TimeoutError: interrupted (see _interruptible)
            if not self._closing:
                logger.warning("upstream failed mid-response: %s", exc)
        done = rewriter.done if rewriter is not None else tracker.done
        if not done and (rewriter is not None or tracker.at_boundary):
            message = (
                SHUTDOWN_MESSAGE
                if self._closing
                else f"the inference server for '{model}' stopped in the middle of the response"
            )
            with contextlib.suppress(ConnectionError):
                await conn.write(stream_error_tail(path, message))

    def _substituted(self, requested: str, answering: str) -> None:
        if not self._report_substitutions:
            return  # a tunnelled request: the requesting node has counted it
        self.substitutions_total += 1
        name = requested[:MAX_NAME_CHARS]
        if name in self.substitutions:
            self.substitutions[name] += 1
        elif len(self.substitutions) < MAX_SUBSTITUTED_NAMES:
            self.substitutions[name] = 1
            logger.warning(
                "no node serves model %r: answering with %r instead (said once per name; "
                "run with --no-model-substitution to answer 404 model_not_found)",
                name,
                answering,
            )

    async def _attempt(
        self, target: Target, forward: bytes, *, may_retry: bool, timeouts: list[str]
    ) -> tuple[UpstreamStream, bytes] | None:
        """Send the request to ``target`` and read the response's first bytes; None if the
        target failed (or overflowed its context while another candidate remains). A target
        that did not answer within the first-byte timeout is described in ``timeouts``."""
        upstream: UpstreamStream | None = None
        limit = self._first_byte_timeout
        bound = asyncio.timeout(limit)
        try:
            async with bound:
                upstream = await self._connect(target)
                await upstream.write(forward)
                return upstream, await _read_decision(upstream, check_overflow=may_retry)
        except _ContextOverflowError:
            logger.info("context overflow on %s, trying the next candidate", target.key)
        except (OSError, MeshLlmError) as exc:  # TimeoutError is an OSError
            logger.warning("target %s failed before responding: %r", target.key, exc)
            if bound.expired():
                timeouts.append(f"timed out waiting for {_describe(target)} after {limit:g} s")
            if self._on_target_failed is not None:
                self._on_target_failed(target)
        except BaseException:
            await _close_upstream(upstream)
            raise
        await _close_upstream(upstream)
        return None

    async def _relay(
        self,
        conn: _Client,
        upstream: UpstreamStream,
        first: bytes,
        model: str,
        path: str,
        resume: _Resume | None = None,
        interrupt: Interrupt | None = None,
    ) -> None:
        cut = first.index(b"\r\n") + 2
        head_end = first.find(b"\r\n\r\n")
        head = first[: head_end if head_end >= 0 else len(first)].lower()
        if b"\r\n" + MODEL_HEADER.encode() + b":" in head:
            extra = b""  # a mesh peer's ingress already named the model that answered
        else:
            label = model.replace("\r", "").replace("\n", "")
            extra = f"{MODEL_HEADER}: {label}\r\n".encode()
        # Chunked event streams are followed (framing only), so that one cut short can be
        # ended with an error event; Responses and Messages streams are also completed (see
        # event_streams). Everything else is relayed untouched.
        body_at = _event_stream_body_at(first)
        tracker = ChunkedTracker() if body_at is not None else None
        rewriter = rewriter_for(path, model) if body_at is not None else None
        # A chat stream is recorded as it passes (no parsing) so that, if its server dies, another
        # server of the model can continue it (protocol/stream_resume).
        recorder = StreamRecorder() if resume is not None and tracker is not None else None
        try:
            if rewriter is not None and body_at is not None:
                head = first[:cut] + extra + first[cut:body_at]
                await conn.send(head + rewriter.feed(first[body_at:]))
            else:
                if tracker is not None and body_at is not None:
                    tracker.feed(first[body_at:])
                    if recorder is not None:
                        recorder(first[body_at:])
                await conn.send(first[:cut] + extra + first[cut:])
            client_socket = conn.socket_transport()
            stream_client = conn if isinstance(conn, _StreamClient) else None
            observe = _observer(tracker, recorder)
            if rewriter is None and isinstance(upstream, TcpUpstream) and client_socket:
                await upstream.relay(client_socket, observe)
            elif rewriter is None and isinstance(upstream, TcpUpstream) and stream_client:
                await upstream.relay_into(stream_client, observe, conn.write)
            elif rewriter is None and client_socket and isinstance(upstream, BlockingSource):
                await relay_from(upstream, client_socket, observe, interrupt)
            else:
                async with _interruptible(interrupt):
                    while chunk := await upstream.read(READ_SIZE):
                        if rewriter is not None:
                            chunk = rewriter.feed(chunk)
                        elif tracker is not None:
                            tracker.feed(chunk)
                            if recorder is not None:
                                recorder(chunk)
                        await conn.write(chunk)
        except ConnectionError:
            logger.debug("client went away during the response")
            return
        except (OSError, MeshLlmError) as exc:  # TimeoutError: interrupted (see _interruptible)
            if self._closing:
                logger.info("ending a response early: the node shuts down")
            else:
                logger.warning("upstream failed mid-response: %s", exc)
        if rewriter is not None:
            broken, at_boundary = not rewriter.done, True  # it only ever sends whole chunks
        else:
            broken = tracker is not None and not tracker.done
            at_boundary = tracker is not None and tracker.at_boundary
        if broken:
            if not self._closing:
                logger.warning("the llama-server for %s ended its event stream early", model)
            if at_boundary and self._closing:
                with contextlib.suppress(ConnectionError):
                    await conn.send(stream_error_tail(path, SHUTDOWN_MESSAGE))
            elif at_boundary:
                why = None
                if resume is not None and recorder is not None:
                    why = await self._resume(conn, resume, recorder, model)
                    if why is None:
                        return
                message = (
                    f"the inference server for '{model}' stopped in the middle of the response;"
                    " the request can be retried"
                ) + (f" (not continued elsewhere: {why})" if why else "")
                with contextlib.suppress(ConnectionError):
                    await conn.send(stream_error_tail(path, message))

    async def _resume(
        self, conn: _Client, resume: _Resume, recorder: StreamRecorder, model: str
    ) -> str | None:
        """Continue a broken chat stream on another server of ``model``; None when the client's
        stream was completed that way, else why it was not."""
        try:
            body: Any = json.loads(resume.request.body)
        except ValueError:
            return "the request body is not JSON"
        if not isinstance(body, dict):
            return "the request body is not a JSON object"
        partial = read_partial_stream(recorder)
        why = request_blocks_resume(body) or partial.unsafe
        if why is not None:
            return why
        if not resume.fallbacks:
            return "no other server of the model"
        continued = continuation_body(body, partial)
        if continued is None:
            return "its token budget was spent"
        forward = serialize_forward(resume.request, continued)
        for target in resume.fallbacks:
            attempt = await self._attempt(target, forward, may_retry=False, timeouts=[])
            if attempt is None:
                continue
            upstream, first = attempt
            try:
                body_at = _event_stream_body_at(first)
                if body_at is None:
                    logger.warning("%s did not answer the continuation with a stream", target.key)
                    continue
                logger.warning(
                    "continuing a %s stream on %s after %d tokens",
                    model,
                    target.key,
                    partial.tokens,
                )
                rewriter = EventStreamRewriter(ContinuationFixer(partial))
                try:
                    await conn.write(rewriter.feed(first[body_at:]))
                    while not rewriter.done:
                        try:
                            chunk = await upstream.read(READ_SIZE)
                        except (OSError, MeshLlmError) as exc:
                            return f"the server continuing it failed too ({exc})"
                        if not chunk:
                            break
                        await conn.write(rewriter.feed(chunk))
                except ConnectionError:
                    return None  # the client went away: nobody to tell
                return None if rewriter.done else "the server continuing it stopped too"
            finally:
                await _close_upstream(upstream)
        return "no other server of the model answered"


def _describe(target: Target) -> str:
    """A target as a 503 message names it."""
    if target.local_port is not None:
        return f"this node's llama-server for '{target.model}' (port {target.local_port})"
    return f"node {target.key.partition(':')[2][:10]} for '{target.model}'"


def _model_not_found(path: str, snapshot: RoutingSnapshot, model: str) -> bytes:
    message = model_not_found_error(snapshot, model)
    if path.startswith("/v1/messages"):
        body = json.dumps(
            {"type": "error", "error": {"type": "not_found_error", "message": message}}
        )
        return render_response(404, [_JSON], body.encode())
    return render_openai_error(404, message, "invalid_request_error", "model_not_found")


ORIGIN_REFUSED_MESSAGE = (
    "requests from web pages of other sites are refused: without an API key (--api-key) only "
    "pages served from this machine, or from the address the request was sent to, may use it"
)


def _refused(path: str, message: str, what: str) -> bytes:
    """403 in the dialect of the API at ``path``; OpenAI's code is ``{what}_not_allowed``."""
    if path.startswith("/v1/messages"):
        body = json.dumps(
            {"type": "error", "error": {"type": "permission_error", "message": message}}
        ).encode()
        return render_response(403, [_JSON], body)
    return render_openai_error(403, message, "invalid_request_error", f"{what}_not_allowed")


def _unauthorized(path: str) -> bytes:
    """401 in the dialect of the API at ``path`` (what OpenAI and Anthropic answer)."""
    if path.startswith("/v1/messages"):
        body = json.dumps(
            {
                "type": "error",
                "error": {"type": "authentication_error", "message": UNAUTHORIZED_MESSAGE},
            }
        ).encode()
        return render_response(401, [_JSON], body)
    return render_openai_error(
        401, UNAUTHORIZED_MESSAGE, "invalid_request_error", "invalid_api_key"
    )


def _event_stream_body_at(first: bytes) -> int | None:
    """Where the body starts in ``first`` for a chunked ``text/event-stream`` response, else
    None."""
    try:
        head = parse_response_head(first)
    except MeshLlmError:
        return None
    if head is None or head.content_length is not None:
        return None
    values = {name.lower(): value.lower() for name, value in head.headers}
    if "chunked" not in values.get("transfer-encoding", "") or not values.get(
        "content-type", ""
    ).startswith("text/event-stream"):
        return None
    return head.head_length


async def _read_decision(upstream: UpstreamStream, *, check_overflow: bool) -> bytes:
    """Read until the response head is complete (and, for a small 400 that may be a context
    overflow, its body). Raises if the upstream closes or misbehaves before that, and
    :class:`_ContextOverflowError` for a context-overflow 400 when ``check_overflow``."""
    buf = bytearray()
    while True:
        chunk = await upstream.read(READ_SIZE)
        if not chunk:
            if not buf:
                raise TransportError("upstream closed without responding")
            if parse_response_head(buf) is None:
                raise TransportError("upstream closed in the middle of the response head")
            return bytes(buf)
        buf += chunk
        head = parse_response_head(buf)
        if head is None:
            continue
        if not (check_overflow and head.status == 400 and head.small_body):
            return bytes(buf)
        if not head.body_complete:
            continue
        body = bytes(buf[head.head_length : head.head_length + (head.content_length or 0)])
        if is_context_overflow_400(head.status, body):
            raise _ContextOverflowError
        return bytes(buf)


@dataclass(frozen=True, slots=True)
class _Resume:
    """What continuing a broken chat stream needs: the request and the other servers to try."""

    request: Request
    fallbacks: Sequence[Target]


@contextlib.asynccontextmanager
async def _interruptible(interrupt: Interrupt | None) -> AsyncIterator[None]:
    """Reads in the block end with TimeoutError once ``interrupt`` fires (and not after the
    block is left)."""
    async with asyncio.timeout(None) as scope:
        inside = True

        def stop() -> None:
            if inside:
                scope.reschedule(asyncio.get_running_loop().time())

        if interrupt is not None:
            interrupt.add(stop)
        try:
            yield
        finally:
            inside = False


def _observer(
    tracker: ChunkedTracker | None, recorder: StreamRecorder | None = None
) -> Callable[[bytes], None] | None:
    if tracker is None:
        return None
    if recorder is None:
        return tracker.feed
    feed = tracker.feed

    def observe(data: bytes) -> None:
        feed(data)
        recorder(data)

    return observe


async def _close_upstream(upstream: UpstreamStream | None) -> None:
    if upstream is not None:
        with contextlib.suppress(OSError, MeshLlmError):
            await upstream.aclose()


async def _wait_client_gone(reader: asyncio.StreamReader) -> None:
    """Return when the client closes its side; bytes it sends meanwhile are discarded."""
    with contextlib.suppress(OSError):
        while await reader.read(READ_SIZE):
            pass


async def _linger_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Flush, half-close, drain what the client still sends (so closing does not reset the
    connection under unread data), then close; bounded by :data:`LINGER_TIMEOUT`."""
    try:
        async with asyncio.timeout(LINGER_TIMEOUT):
            if writer.can_write_eof():
                writer.write_eof()
            while await reader.read(READ_SIZE):
                pass
            writer.close()
            await writer.wait_closed()
    except (OSError, TimeoutError):
        pass
    finally:
        writer.transport.abort()
