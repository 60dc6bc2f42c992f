"""The sans-IO HTTP/1.1 request reader, forward serialisation and response helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh_llm.errors import HttpProtocolError, ProtocolError
from mesh_llm.protocol.http1 import (
    CONTINUE_RESPONSE,
    MAX_HEAD_BYTES,
    MAX_HEADER_LINES,
    ContinueNeeded,
    PipelinedBytes,
    ReaderEvent,
    ReaderState,
    Request,
    RequestComplete,
    RequestReader,
    chunked_wire_limit,
    parse_response_head,
    render_response,
    serialize_forward,
)


def encode_chunked(
    body: bytes, sizes: list[int], *, ext: bool = False, trailer: bool = False
) -> bytes:
    """Chunked transfer encoding of ``body`` cut into ``sizes`` (the rest in one chunk)."""
    out = bytearray()
    pos = 0
    for size in [*sizes, len(body)]:
        piece = body[pos : pos + size]
        if not piece:
            continue
        pos += len(piece)
        out += f"{len(piece):x}".encode() + (b";name=value" if ext else b"") + b"\r\n"
        out += piece + b"\r\n"
    out += b"0\r\n"
    if trailer:
        out += b"X-Trailer: done\r\n"
    out += b"\r\n"
    return bytes(out)


def read_all(data: bytes, cuts: list[int] | None = None, max_body: int = 1 << 20) -> Request:
    reader = RequestReader(max_body)
    request = None
    for piece in split(data, cuts or []):
        for event in reader.feed(piece):
            if isinstance(event, RequestComplete):
                request = event.request
    assert request is not None
    assert reader.state is ReaderState.DONE
    return request


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    pieces = []
    start = 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


def feed_expecting(data: bytes, status: int, max_body: int = 1 << 20) -> HttpProtocolError:
    reader = RequestReader(max_body)
    with pytest.raises(HttpProtocolError) as info:
        reader.feed(data)
    assert info.value.status == status, info.value.message
    assert reader.state is ReaderState.FAILED
    return info.value


# -- happy paths ---------------------------------------------------------------------


def test_get_without_body() -> None:
    request = read_all(b"GET /v1/models?x=1 HTTP/1.1\r\nHost: a\r\nX-Case: KeEp\r\n\r\n")
    assert request == Request(
        method="GET",
        target="/v1/models?x=1",
        version="HTTP/1.1",
        headers=(("Host", "a"), ("X-Case", "KeEp")),
        body=b"",
    )
    assert request.path == "/v1/models"
    assert request.header("host") == "a"
    assert request.header("missing") is None


def test_post_with_content_length_byte_by_byte() -> None:
    raw = b'POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 11\r\n\r\n{"a":"bc"}\n'
    request = read_all(raw, list(range(len(raw))))
    assert request.body == b'{"a":"bc"}\n'


def test_chunked_with_extensions_and_trailers_wins_over_content_length() -> None:
    body = b"hello chunked world"
    raw = (
        b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        + encode_chunked(body, [5, 1, 7], ext=True, trailer=True)
    )
    assert read_all(raw).body == body


def test_leading_empty_lines_are_ignored() -> None:
    assert read_all(b"\r\n\r\nGET / HTTP/1.0\r\n\r\n").version == "HTTP/1.0"


def test_duplicate_identical_content_length_is_accepted() -> None:
    raw = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok"
    assert read_all(raw).body == b"ok"


def test_header_values_are_trimmed_and_bytes_kept() -> None:
    request = read_all(b"GET /caf\xc3\xa9 HTTP/1.1\r\nX-A:   v\xe9 \t\r\n\r\n")
    assert request.headers == (("X-A", "v\xe9"),)
    assert serialize_forward(request).startswith(b"GET /caf\xc3\xa9 HTTP/1.1\r\nX-A: v\xe9\r\n")


# -- 100-continue and pipelining ------------------------------------------------------


def test_continue_needed_once_head_is_accepted_and_body_pending() -> None:
    reader = RequestReader()
    events = reader.feed(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n")
    assert events == [ContinueNeeded()]
    assert reader.state is ReaderState.BODY
    events = reader.feed(b"abcd")
    assert len(events) == 1
    assert isinstance(events[0], RequestComplete)
    assert CONTINUE_RESPONSE == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab",
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
        b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    ],
    ids=["body-already-sent", "no-body", "http-1.0"],
)
def test_no_continue_when_not_needed(raw: bytes) -> None:
    events = RequestReader().feed(raw)
    assert not any(isinstance(e, ContinueNeeded) for e in events)


def test_expect_is_stripped_from_the_forwarded_request() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab"
    forwarded = serialize_forward(read_all(raw))
    assert b"expect" not in forwarded.lower()


def test_pipelined_bytes_are_reported_and_discarded() -> None:
    reader = RequestReader()
    events = reader.feed(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n")
    assert isinstance(events[0], RequestComplete)
    assert events[0].request.target == "/a"
    assert events[1:] == [PipelinedBytes(17)]
    assert reader.feed(b"\r\n") == [PipelinedBytes(2)]
    assert reader.discarded == 19
    assert reader.request is not None
    assert reader.request.target == "/a"


def test_eof_before_complete_is_a_bad_request() -> None:
    reader = RequestReader()
    reader.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    with pytest.raises(HttpProtocolError) as info:
        reader.feed_eof()
    assert info.value.status == 400


# -- limits ----------------------------------------------------------------------------


def test_header_line_limit() -> None:
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADER_LINES))
    read_all(b"GET / HTTP/1.1\r\n" + lines + b"\r\n")
    feed_expecting(b"GET / HTTP/1.1\r\n" + lines + b"X-last: v\r\n\r\n", 431)


def test_header_bytes_limit_without_terminator() -> None:
    reader = RequestReader()
    reader.feed(b"GET / HTTP/1.1\r\nX-Big: ")
    for _ in range(15):
        reader.feed(b"a" * 4096)
    with pytest.raises(HttpProtocolError) as info:
        reader.feed(b"a" * 4096)
    assert info.value.status == 431


def test_header_bytes_limit_with_terminator() -> None:
    feed_expecting(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", 431)


def test_content_length_over_limit_is_413_before_the_body() -> None:
    err = feed_expecting(b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 413, max_body=100)
    assert err.code == "body_too_large"
    feed_expecting(b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n", 413)


def test_chunked_decoded_over_limit_is_413() -> None:
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + encode_chunked(
        b"x" * 101, [50]
    )
    feed_expecting(raw, 413, max_body=100)


def test_chunked_wire_limit_is_413() -> None:
    max_body = 100
    ext = b";" + b"e" * 1000
    chunks = (b"1" + ext + b"\r\nx\r\n") * 99
    assert len(chunks) > chunked_wire_limit(max_body)
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    feed_expecting(raw, 413, max_body=max_body)


def test_one_byte_chunks_up_to_the_limit_are_accepted() -> None:
    body = bytes(range(256)) * 4
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + encode_chunked(
        body, [1] * len(body)
    )
    assert read_all(raw, max_body=len(body)).body == body


# -- malformed input -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.2\r\n\r\n",
        b"GET / HTTP/0.9\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\nName : v\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\nC: d\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: \r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXX",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nbad trailer\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1" + b" " * 5000,
    ],
)
def test_malformed_requests_are_400(raw: bytes) -> None:
    err = feed_expecting(raw, 400)
    assert err.code == "invalid_request"


def test_failed_reader_refuses_more_input() -> None:
    reader = RequestReader()
    with pytest.raises(HttpProtocolError):
        reader.feed(b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(ProtocolError):
        reader.feed(b"GET / HTTP/1.1\r\n\r\n")


# -- forwarding and rendering (golden bytes) -----------------------------------------------


def test_serialize_forward_golden() -> None:
    raw = (
        b"POST /v1/chat/completions?a=b HTTP/1.1\r\n"
        b"Host: localhost:9337\r\n"
        b"Connection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Expect: 100-continue\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"Authorization: Bearer x\r\n"
        b"\r\n" + encode_chunked(b'{"model":"m"}', [4])
    )
    request = read_all(raw)
    assert serialize_forward(request) == (
        b"POST /v1/chat/completions?a=b HTTP/1.1\r\n"
        b"Host: localhost:9337\r\n"
        b"Authorization: Bearer x\r\n"
        b"Content-Length: 13\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b'{"model":"m"}'
    )
    rewritten = serialize_forward(request, b"{}")
    assert rewritten.endswith(b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")


def test_render_response_golden() -> None:
    rendered = render_response(
        503, [("Content-Type", "application/json"), ("Content-Length", "999")], b"{}"
    )
    assert rendered == (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: 2\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"{}"
    )
    assert render_response(599, [], b"").startswith(b"HTTP/1.1 599 Unknown\r\n")


def test_render_response_without_body_status() -> None:
    rendered = render_response(204, [("Content-Length", "0")], b"")
    assert rendered == b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
    with pytest.raises(ValueError, match="no body"):
        render_response(304, [], b"x")


# -- upstream response heads ----------------------------------------------------------------


def test_response_head_incomplete() -> None:
    assert parse_response_head(b"") is None
    assert parse_response_head(b"HTT") is None
    assert parse_response_head(b"HTTP/1.1 200 OK\r\nA: b\r\n") is None


def test_response_head_streaming() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\n"
    head = parse_response_head(data)
    assert head is not None
    assert head.status == 200
    assert head.status_line_length == len(b"HTTP/1.1 200 OK\r\n")
    assert head.head_length == data.index(b"\r\n\r\n") + 4
    assert head.content_length is None
    assert not head.small_body
    assert not head.body_complete


def test_response_head_small_body_completion() -> None:
    head_bytes = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 10\r\n\r\n"
    partial = parse_response_head(head_bytes + b"01234")
    assert partial is not None
    assert partial.small_body
    assert not partial.body_complete
    full = parse_response_head(head_bytes + b"0123456789")
    assert full is not None
    assert full.body_complete
    assert full.headers == (("Content-Length", "10"),)
    big = parse_response_head(b"HTTP/1.1 400 X\r\nContent-Length: 5000\r\n\r\n")
    assert big is not None
    assert not big.small_body


def test_response_head_without_reason_phrase() -> None:
    head = parse_response_head(b"HTTP/1.1 204\r\n\r\n")
    assert head is not None
    assert head.status == 204


@pytest.mark.parametrize(
    "data",
    [
        b"SSH-2.0-OpenSSH\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEAD_BYTES,
    ],
)
def test_response_head_malformed(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_response_head(data)


# -- properties ---------------------------------------------------------------------------

_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
_header_names = st.text(_TOKEN_ALPHABET, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in ("content-length", "transfer-encoding", "expect")
)
_header_values = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=20
)
_targets = st.from_regex(r"/[a-z0-9/._-]{0,20}(\?[a-z0-9=&]{0,10})?", fullmatch=True)


@st.composite
def valid_requests(draw: st.DrawFn) -> tuple[bytes, Request]:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "M-SEARCH"]))
    target = draw(_targets)
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0"]))
    headers = draw(st.lists(st.tuples(_header_names, _header_values), max_size=8))
    body = draw(st.binary(max_size=600))
    chunked = draw(st.booleans())
    if chunked:
        headers.append(("Transfer-Encoding", "chunked"))
        sizes = draw(st.lists(st.integers(1, 50), max_size=10))
        framed = encode_chunked(body, sizes, ext=draw(st.booleans()), trailer=draw(st.booleans()))
    else:
        if body or draw(st.booleans()):
            headers.append(("Content-Length", str(len(body))))
        else:
            body = b""
        framed = body
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    raw = head.encode() + b"\r\n" + framed
    return raw, Request(method, target, version, tuple(headers), body)


@settings(max_examples=300, deadline=None)
@given(st.data(), valid_requests())
def test_valid_request_parses_identically_split_anywhere(
    data: st.DataObject, case: tuple[bytes, Request]
) -> None:
    raw, expected = case
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert read_all(raw) == expected
    assert read_all(raw, cuts) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 64), max_size=8), st.booleans())
def test_chunked_round_trip(body: bytes, sizes: list[int], ext: bool) -> None:
    raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + encode_chunked(
        body, sizes, ext=ext
    )
    assert read_all(raw).body == body


def _feed_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    reader = RequestReader(max_body=256)
    events: list[ReaderEvent] = []
    try:
        for piece in split(data, cuts):
            events += reader.feed(piece)
        reader.feed_eof()
    except ProtocolError:
        return
    assert any(isinstance(e, RequestComplete) for e in events)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=10))
def test_arbitrary_bytes_raise_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    _feed_only_protocol_errors(data, cuts)


@settings(max_examples=500, deadline=None)
@given(st.data(), valid_requests())
def test_mutated_requests_raise_only_protocol_errors(
    data: st.DataObject, case: tuple[bytes, Request]
) -> None:
    raw = bytearray(case[0])
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.sampled_from(b"\r\n :;0aZ\x00\xff\t-,"))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    _feed_only_protocol_errors(bytes(raw), cuts)
