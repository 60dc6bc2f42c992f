"""Sans-IO HTTP/1.1 for the :9337 ingress: one request in, one response out.

Nothing here touches sockets, tasks or clocks. The adapter feeds bytes into a
:class:`RequestReader` and acts on the events it returns; it serialises the request
for the upstream with :func:`serialize_forward`, renders its own answers with
:func:`render_response` and inspects the upstream's first bytes with
:func:`parse_response_head`.

Contract (one request per connection):

* head (request line + header lines) at most :data:`MAX_HEAD_BYTES` and
  :data:`MAX_HEADER_LINES` lines, else 431;
* body framed by ``Content-Length`` or ``Transfer-Encoding: chunked`` (chunked wins and is
  decoded; chunk extensions and trailers are accepted and dropped); decoded body at most
  ``max_body`` bytes and chunked wire bytes at most :func:`chunked_wire_limit`, else 413;
* anything else malformed is a 400; bytes after the request are counted and discarded.

Strict where framing could be read two ways (RFC 9112): lines end with CRLF only (a bare CR or
LF is a 400 as soon as it arrives), no obs-fold, header names are tokens, values have no
controls but HTAB; ``Content-Length`` is digits only and its duplicates must agree; any
``Transfer-Encoding`` other than exactly ``chunked`` (empty included) is a 400; more than one
``Host`` is a 400. ``Content-Length`` next to ``chunked`` is ignored (chunked wins): what goes
upstream is always re-framed by :func:`serialize_forward` with one fresh ``Content-Length`` and
the connection closes after one request, so nothing ambiguous reaches llama-server.
``docs/DESIGN.md`` ("HTTP/1.1 parsing") has the case list and the comparison with httptools
and h11.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

from mesh_llm.errors import HttpProtocolError, ProtocolError

MAX_HEAD_BYTES = 64 * 1024
"""Request line plus header lines plus the blank line."""
MAX_HEADER_LINES = 64
DEFAULT_MAX_BODY = 8 * 1024 * 1024
MAX_CHUNK_SIZE_LINE = 4096
"""A chunk-size line, extensions included."""
SMALL_BODY_LIMIT = 4096
"""Response bodies up to this size may be buffered to inspect them (context-overflow 400s)."""

CONTINUE_RESPONSE = b"HTTP/1.1 100 Continue\r\n\r\n"

_CR = 0x0D

_TCHARS = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(rb"[" + _TCHARS + rb"]+")
_REQUEST_LINE = re.compile(rb"([" + _TCHARS + rb"]+) ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])")
_TOKENS = re.compile(r"[" + _TCHARS.decode() + r"]*")
_HEAD_ALLOWED = bytes(b for b in range(256) if (b >= 0x20 and b != 0x7F) or b in b"\t\r\n")
"""Bytes that may appear in a request head: no controls but HTAB and the CRLFs."""
# Lengths of the header names _parse_head looks at: other headers skip the lower().
_FRAMING_NAME_LENGTHS = frozenset(
    map(len, ("host", "expect", "content-length", "transfer-encoding"))
)
_STATUS_LINE = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})(?: [^\x00-\x08\x0a-\x1f\x7f]*)?")
_BAD_FIELD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# A CR not followed by LF, or an LF not preceded by CR (the last byte may be a CR whose LF
# has not arrived yet: callers look at that case).
_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
# chunk = chunk-size [ chunk-ext ] CRLF; chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS
# ext-value ] ) (RFC 9112 7.1.1): no whitespace after the size without an extension, and no
# controls other than HTAB inside one.
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:[ \t]*;[^\x00-\x08\x0a-\x1f\x7f]*)?")

_NOT_FORWARDED = frozenset(
    {
        "connection",
        "expect",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "content-length",
    }
)


def chunked_wire_limit(max_body: int) -> int:
    """Most chunked-encoding bytes accepted for a body limit (1-byte chunks cost 6 bytes each)."""
    return 6 * max_body + 64 * 1024


def _bad_request(message: str) -> HttpProtocolError:
    return HttpProtocolError(400, message, "invalid_request")


def _too_large(message: str) -> HttpProtocolError:
    return HttpProtocolError(413, message, "body_too_large")


def _headers_too_large(message: str) -> HttpProtocolError:
    return HttpProtocolError(431, message, "headers_too_large")


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request; ``headers`` keep their order and spelling; ``body`` is decoded."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


class ReaderState(enum.Enum):
    HEAD = "head"
    BODY = "body"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ContinueNeeded:
    """The head asked for ``100-continue`` and the body is still to come: send
    :data:`CONTINUE_RESPONSE`."""


@dataclass(frozen=True, slots=True)
class RequestComplete:
    request: Request


@dataclass(frozen=True, slots=True)
class PipelinedBytes:
    """``count`` bytes arrived after the end of the request; they were discarded."""

    count: int


ReaderEvent = ContinueNeeded | RequestComplete | PipelinedBytes


class _Chunk(enum.Enum):
    SIZE = "size"
    DATA = "data"
    DATA_END = "data_end"
    TRAILER = "trailer"


@dataclass(frozen=True, slots=True)
class _Head:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    content_length: int
    chunked: bool
    expect_continue: bool


class RequestReader:
    """Incremental reader for exactly one request.

    Call :meth:`feed` with whatever arrived; it returns events and raises
    :class:`HttpProtocolError` (carrying the status to answer) on bad input. After an
    error the reader is :attr:`ReaderState.FAILED` and refuses further input.
    """

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._max_body = max_body
        self._wire_limit = chunked_wire_limit(max_body)
        self._state = ReaderState.HEAD
        self._buf = bytearray()
        self._scan_from = 0
        self._skipped = 0
        self._head: _Head | None = None
        self._body = bytearray()
        self._remaining = 0
        self._chunk = _Chunk.SIZE
        self._chunk_left = 0
        self._wire = 0
        self._trailer_bytes = 0
        self._request: Request | None = None
        self.bytes_received = 0
        self.discarded = 0

    @property
    def state(self) -> ReaderState:
        return self._state

    @property
    def request(self) -> Request | None:
        return self._request

    def feed(self, data: bytes) -> list[ReaderEvent]:
        if self._state is ReaderState.FAILED:
            raise ProtocolError("request reader already failed")
        self.bytes_received += len(data)
        if self._state is ReaderState.DONE:
            self.discarded += len(data)
            return [PipelinedBytes(len(data))] if data else []
        try:
            return self._feed(data)
        except ProtocolError:
            self._state = ReaderState.FAILED
            raise

    def feed_eof(self) -> None:
        """The peer closed its side; raises unless the request is complete."""
        if self._state is not ReaderState.DONE:
            self._state = ReaderState.FAILED
            raise _bad_request("connection closed before the request was complete")

    def _feed(self, data: bytes) -> list[ReaderEvent]:
        events: list[ReaderEvent] = []
        self._buf += data
        head_parsed_now = False
        if self._state is ReaderState.HEAD:
            if not self._read_head():
                return events
            head_parsed_now = True
        if self._state is ReaderState.BODY:
            if self._head is not None and self._head.chunked:
                self._read_chunked()
            else:
                self._read_fixed()
        if self._state is ReaderState.DONE:
            events.append(RequestComplete(self._finish()))
            if self._buf:
                self.discarded += len(self._buf)
                events.append(PipelinedBytes(len(self._buf)))
                self._buf.clear()
        elif head_parsed_now and self._head is not None and self._head.expect_continue:
            events.append(ContinueNeeded())
        return events

    def _read_head(self) -> bool:
        buf = self._buf
        # RFC 9112 2.2: ignore empty lines before the request line.
        while buf.startswith(b"\r\n"):
            del buf[:2]
            self._skipped += 2
            self._scan_from = 0
        end = buf.find(b"\r\n\r\n", max(0, self._scan_from - 3))
        if end < 0:
            if len(buf) + self._skipped > MAX_HEAD_BYTES:
                raise _headers_too_large("request headers exceed 64 KiB")
            # A complete head with a bare CR or LF fails in _parse_head; an incomplete one
            # (say, every line ended by LF alone) would otherwise wait for the 408.
            bare = _BARE_CR_OR_LF.search(buf, max(0, self._scan_from - 1))
            if bare is not None and (bare.start() != len(buf) - 1 or buf[-1] != _CR):
                raise _bad_request("bare CR or LF in the request head (lines end with CRLF)")
            self._scan_from = len(buf)
            return False
        if end + 4 + self._skipped > MAX_HEAD_BYTES:
            raise _headers_too_large("request headers exceed 64 KiB")
        head = _parse_head(bytes(buf[:end]), self._max_body)
        del buf[: end + 4]
        self._head = head
        self._remaining = head.content_length
        if head.chunked or head.content_length > 0:
            self._state = ReaderState.BODY
        else:
            self._state = ReaderState.DONE
        return True

    def _read_fixed(self) -> None:
        take = min(self._remaining, len(self._buf))
        if take:
            self._body += self._buf[:take]
            del self._buf[:take]
            self._remaining -= take
        if self._remaining == 0:
            self._state = ReaderState.DONE

    def _read_chunked(self) -> None:
        # Walks the buffer by index and drops the consumed prefix once: abusive bodies of
        # one-byte chunks are allowed by the wire limit, so the per-chunk cost matters.
        buf = self._buf
        pos = 0
        try:
            while self._state is ReaderState.BODY:
                if self._chunk is _Chunk.SIZE:
                    end = buf.find(b"\n", pos, pos + MAX_CHUNK_SIZE_LINE + 2)
                    if end < 0:
                        if len(buf) - pos > MAX_CHUNK_SIZE_LINE:
                            raise _bad_request("chunk size line too long")
                        return
                    if end == pos or buf[end - 1] != _CR:
                        raise _bad_request("bare LF in chunked framing")
                    match = _CHUNK_SIZE_LINE.fullmatch(buf, pos, end - 1)
                    if match is None:
                        raise _bad_request("invalid chunk size")
                    size = int(match.group(1), 16)
                    self._wire += end + 1 - pos
                    pos = end + 1
                    if size == 0:
                        self._chunk = _Chunk.TRAILER
                    elif len(self._body) + size > self._max_body:
                        raise _too_large(f"request body exceeds {self._max_body} bytes")
                    else:
                        self._chunk_left = size
                        self._chunk = _Chunk.DATA
                elif self._chunk is _Chunk.DATA:
                    take = min(self._chunk_left, len(buf) - pos)
                    if take == 0:
                        return
                    self._body += buf[pos : pos + take]
                    pos += take
                    self._wire += take
                    self._chunk_left -= take
                    if self._chunk_left == 0:
                        self._chunk = _Chunk.DATA_END
                elif self._chunk is _Chunk.DATA_END:
                    if len(buf) - pos < 2:
                        return
                    if buf[pos : pos + 2] != b"\r\n":
                        raise _bad_request("chunk data not followed by CRLF")
                    pos += 2
                    self._wire += 2
                    self._chunk = _Chunk.SIZE
                else:
                    end = buf.find(b"\n", pos)
                    if end < 0:
                        if len(buf) - pos + self._trailer_bytes > MAX_HEAD_BYTES:
                            raise _headers_too_large("chunked trailers exceed 64 KiB")
                        return
                    if end == pos or buf[end - 1] != _CR:
                        raise _bad_request("bare LF in chunked framing")
                    line = bytes(buf[pos : end - 1])
                    self._wire += end + 1 - pos
                    pos = end + 1
                    if not line:
                        self._state = ReaderState.DONE
                        return
                    self._trailer_bytes += len(line) + 2
                    if self._trailer_bytes > MAX_HEAD_BYTES:
                        raise _headers_too_large("chunked trailers exceed 64 KiB")
                    _parse_header_line(line)
                if self._wire > self._wire_limit:
                    raise _too_large("chunked request body has too much framing")
        finally:
            del buf[:pos]

    def _finish(self) -> Request:
        head = self._head
        assert head is not None
        self._request = Request(
            method=head.method,
            target=head.target,
            version=head.version,
            headers=head.headers,
            body=bytes(self._body),
        )
        self._body = bytearray()
        return self._request


def _parse_header_line(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise _bad_request("obsolete header line folding")
    name, sep, value = line.partition(b":")
    if not sep or not _TOKEN.fullmatch(name):
        raise _bad_request("malformed header line")
    value = value.strip(b" \t")
    if _BAD_FIELD_VALUE.search(value):
        raise _bad_request("control character in header value")
    return name.decode("ascii"), value.decode("latin-1")


def _parse_fields(head: bytes, lines: list[str]) -> tuple[tuple[str, str], ...]:
    """The header lines (``lines`` after the request line), names and values decoded.

    Whole-head checks with bytes methods and one regex over all names instead of per-line
    regexes: the per-line Python cost dominated the parse. A head that fails them is read
    again line by line for the precise reason.
    """
    parts = [line.partition(":") for line in lines]
    if (
        head.translate(None, _HEAD_ALLOWED)
        or head.count(b"\r") != len(lines)
        or head.count(b"\n") != len(lines)
        or not all([sep and name for name, sep, _ in parts])
        or not _TOKENS.fullmatch("".join([name for name, _, _ in parts]))
    ):
        for line in head.split(b"\r\n")[1:]:
            _parse_header_line(line)  # raises with the precise reason
        raise _bad_request("malformed header line")
    return tuple([(name, value.strip(" \t")) for name, _, value in parts])


def _parse_head(head: bytes, max_body: int) -> _Head:
    lines = head.decode("latin-1").split("\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0].encode("latin-1"))
    if match is None:
        raise _bad_request("malformed request line")
    method, target, major, minor = match.groups()
    if (major, minor) not in ((b"1", b"1"), (b"1", b"0")):
        raise _bad_request("unsupported HTTP version")
    if len(lines) - 1 > MAX_HEADER_LINES:
        raise _headers_too_large(f"more than {MAX_HEADER_LINES} request headers")
    del lines[0]
    headers = _parse_fields(head, lines)
    version = f"HTTP/{major.decode()}.{minor.decode()}"

    transfer_codings: list[str] = []
    lengths: set[int] = set()
    expect_continue = False
    hosts = 0
    for name, value in headers:
        if len(name) not in _FRAMING_NAME_LENGTHS:
            continue
        key = name.lower()
        if key == "transfer-encoding":
            codings = [c.strip().lower() for c in value.split(",") if c.strip()]
            if not codings:
                raise _bad_request("empty Transfer-Encoding")
            transfer_codings += codings
        elif key == "content-length":
            lengths.update(_parse_content_length(value, max_body))
        elif key == "host":
            hosts += 1
            if hosts > 1:
                raise _bad_request("more than one Host header")
        elif key == "expect" and value.lower() == "100-continue":
            expect_continue = version == "HTTP/1.1"

    chunked = bool(transfer_codings)
    if chunked and transfer_codings != ["chunked"]:
        raise _bad_request("unsupported Transfer-Encoding (only chunked is accepted)")
    if not chunked and len(lengths) > 1:
        raise _bad_request("conflicting Content-Length values")
    content_length = 0 if chunked or not lengths else lengths.pop()
    return _Head(
        method=method.decode("ascii"),
        target=target.decode("latin-1"),
        version=version,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        expect_continue=expect_continue,
    )


def _parse_content_length(value: str, max_body: int) -> set[int]:
    lengths: set[int] = set()
    for part in value.split(","):
        raw = part.strip().encode("latin-1")
        if raw.isdigit() and not _CONTENT_LENGTH.fullmatch(raw):
            raise _too_large(f"request body exceeds {max_body} bytes")
        if not _CONTENT_LENGTH.fullmatch(raw):
            raise _bad_request("invalid Content-Length")
        length = int(raw)
        if length > max_body:
            raise _too_large(f"request body exceeds {max_body} bytes")
        lengths.add(length)
    return lengths


def serialize_forward(request: Request, body: bytes | None = None) -> bytes:
    """The request as sent upstream: hop-by-hop and framing headers replaced by a fresh
    ``Content-Length`` of the decoded (or rewritten) body and ``Connection: close``."""
    payload = request.body if body is None else body
    parts = [f"{request.method} {request.target} {request.version}\r\n"]
    parts += [f"{n}: {v}\r\n" for n, v in request.headers if n.lower() not in _NOT_FORWARDED]
    parts.append(f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
    return "".join(parts).encode("latin-1") + payload


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def render_response(status: int, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """A complete response; ``Content-Length`` (except where a status forbids a body) and
    ``Connection: close`` are added here."""
    parts = [f"HTTP/1.1 {status} {reason_phrase(status)}\r\n"]
    parts += [
        f"{n}: {v}\r\n" for n, v in headers if n.lower() not in ("content-length", "connection")
    ]
    if status < 200 or status in (204, 304):
        if body:
            raise ValueError(f"a {status} response has no body")
    else:
        parts.append(f"Content-Length: {len(body)}\r\n")
    parts.append("Connection: close\r\n\r\n")
    return "".join(parts).encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The head of an upstream response, read from its first bytes.

    ``status_line_length`` counts the status line with its CRLF (where extra headers go);
    ``head_length`` counts everything up to and including the blank line.
    ``body_complete`` is true when the Content-Length is known, at most
    :data:`SMALL_BODY_LIMIT`, and the whole body is in the bytes given.
    """

    status: int
    headers: tuple[tuple[str, str], ...]
    status_line_length: int
    head_length: int
    content_length: int | None
    body_complete: bool

    @property
    def small_body(self) -> bool:
        """Content-Length known and at most :data:`SMALL_BODY_LIMIT`."""
        return self.content_length is not None and self.content_length <= SMALL_BODY_LIMIT


def parse_response_head(data: bytes | bytearray) -> ResponseHead | None:
    """Parse an upstream response head; None while incomplete, ProtocolError if malformed."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD_BYTES:
            raise ProtocolError("upstream response head exceeds 64 KiB")
        if not b"HTTP/".startswith(bytes(data[:5])):
            raise ProtocolError("upstream response is not HTTP")
        return None
    lines = bytes(data[:end]).split(b"\r\n")
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise ProtocolError("malformed upstream status line")
    headers: list[tuple[str, str]] = []
    content_length: int | None = None
    chunked = False
    for line in lines[1:]:
        try:
            name, value = _parse_header_line(line)
        except HttpProtocolError as exc:
            raise ProtocolError(f"malformed upstream header: {exc.message}") from exc
        headers.append((name, value))
        key = name.lower()
        if key == "content-length" and _CONTENT_LENGTH.fullmatch(value.encode("latin-1")):
            content_length = int(value)
        elif key == "transfer-encoding":
            chunked = True
    if chunked:
        content_length = None
    head_length = end + 4
    body_complete = (
        content_length is not None
        and content_length <= SMALL_BODY_LIMIT
        and len(data) - head_length >= content_length
    )
    return ResponseHead(
        status=int(match.group(1)),
        headers=tuple(headers),
        status_line_length=len(lines[0]) + 2,
        head_length=head_length,
        content_length=content_length,
        body_complete=body_complete,
    )
