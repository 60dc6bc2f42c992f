"""Request smuggling and framing strictness of the :9337 request reader.

Every case is either rejected with the status the ingress answers, or accepted in a way that
leaves nothing ambiguous for the upstream: the request we forward carries exactly one
``Content-Length`` that matches the decoded body, no ``Transfer-Encoding``, and nothing after the
body (the connection closes after one request and pipelined bytes are discarded). "Ambiguous" is
checked with an independent parser (h11) standing in for llama-server. The cases follow RFC 9112
sections 2.2 (line endings), 5 (field syntax, obs-fold), 6 (message body length) and 7.1 (chunked
coding). ``bench/bench_http_parse.py`` runs the same kinds of cases through httptools and h11.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from mesh_llm.errors import HttpProtocolError
from mesh_llm.protocol.http1 import (
    MAX_HEAD_BYTES,
    PipelinedBytes,
    ReaderState,
    Request,
    RequestComplete,
    RequestReader,
    serialize_forward,
)

POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\n"
CHUNKED = POST + b"Transfer-Encoding: chunked\r\n\r\n"
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"
SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"

REJECTED: list[tuple[str, bytes, int]] = [
    # Content-Length (RFC 9112 6.3, RFC 9110 8.6)
    (
        "CL: two different values",
        POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    ("CL: list with different values", POST + b"Content-Length: 5, 6\r\n\r\nhello!", 400),
    ("CL: list with an empty member", POST + b"Content-Length: 5,\r\n\r\nhello", 400),
    ("CL: negative", POST + b"Content-Length: -5\r\n\r\nhello", 400),
    ("CL: plus sign", POST + b"Content-Length: +5\r\n\r\nhello", 400),
    ("CL: hex", POST + b"Content-Length: 0x5\r\n\r\nhello", 400),
    ("CL: two numbers", POST + b"Content-Length: 5 5\r\n\r\nhello", 400),
    ("CL: empty", POST + b"Content-Length: \r\n\r\n", 400),
    ("CL: decimal point", POST + b"Content-Length: 5.0\r\n\r\nhello", 400),
    ("CL: non-ASCII digit", POST + b"Content-Length: \xd9\xa5\r\n\r\nhello", 400),
    ("CL: over 2^64", POST + b"Content-Length: 18446744073709551621\r\n\r\nhello", 413),
    # Transfer-Encoding (RFC 9112 6.1)
    ("TE: gzip", POST + b"Transfer-Encoding: gzip\r\n\r\nhello", 400),
    ("TE: gzip with CL", POST + b"Transfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello", 400),
    ("TE: chunked not last", POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    ("TE: chunked twice", POST + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    (
        "TE: two chunked headers",
        POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("TE: xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
    (
        "TE: chunked with a parameter",
        POST + b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("TE: VT before chunked", POST + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n", 400),
    ("TE: NUL after chunked", POST + b"Transfer-Encoding: chunked\x00\r\n\r\n0\r\n\r\n", 400),
    ("TE: empty, with CL", POST + b"Transfer-Encoding: \r\nContent-Length: 5\r\n\r\nhello", 400),
    ("TE: only commas", POST + b"Transfer-Encoding: , ,\r\n\r\n0\r\n\r\n", 400),
    ("TE: space before the colon", POST + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    (
        "TE: underscore spelling, space before the colon",
        POST + b"Transfer_Encoding : x\r\n\r\n",
        400,
    ),
    # Field syntax (RFC 9112 5)
    ("obs-fold", POST + b"X-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", 400),
    ("obs-fold with a tab", POST + b"X-A: a\r\n\tb\r\n\r\n", 400),
    (
        "obs-fold continuing Transfer-Encoding",
        POST + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\nhello",
        400,
    ),
    ("obs-fold on the first header line", b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400),
    ("space in a header name", POST + b"X A: b\r\n\r\n", 400),
    ("tab before the colon", POST + b"Content-Length\t: 5\r\n\r\nhello", 400),
    ("NUL in a header name", POST + b"X\x00A: b\r\n\r\n", 400),
    ("non-ASCII header name", POST + b"X\xe9: b\r\n\r\n", 400),
    ("empty header name", POST + b": b\r\n\r\n", 400),
    ("header line without a colon", POST + b"X-A b\r\n\r\n", 400),
    ("NUL in a header value", POST + b"X-A: a\x00b\r\n\r\n", 400),
    ("DEL in a header value", POST + b"X-A: a\x7fb\r\n\r\n", 400),
    ("ESC in a header value", POST + b"X-A: a\x1bb\r\n\r\n", 400),
    ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("two Host headers, different case", b"GET / HTTP/1.1\r\nHost: a\r\nhOST: a\r\n\r\n", 400),
    # Line endings (RFC 9112 2.2): CRLF only
    ("bare LF line endings", b"GET / HTTP/1.1\nHost: h\n\n", 400),
    ("bare LF line endings, POST", POST.replace(b"\r\n", b"\n") + b"Content-Length: 5\n\n", 400),
    ("bare LF inside the head", b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n", 400),
    ("bare LF ends the head", POST + b"Content-Length: 5\r\n\nhello\r\n\r\n", 400),
    ("bare LF before the request line", b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("bare CR in a header value", POST + b"X-A: a\rb\r\n\r\n", 400),
    ("bare CR line endings", b"GET / HTTP/1.1\rHost: h\r\r", 400),
    ("bare CR ends the request line", b"GET / HTTP/1.1\rHost: h\r\n\r\n", 400),
    # Chunked coding (RFC 9112 7.1)
    ("bare LF after a chunk size", CHUNKED + b"5\nhello\r\n0\r\n\r\n", 400),
    ("bare LF after chunk data", CHUNKED + b"5\r\nhello\n0\r\n\r\n", 400),
    ("bare LF after the last chunk", CHUNKED + b"5\r\nhello\r\n0\n\r\n", 400),
    ("bare LF ends the trailers", CHUNKED + b"5\r\nhello\r\n0\r\n\n", 400),
    ("bare LF in a chunk extension", CHUNKED + b"5;a\nb\r\nhello\r\n0\r\n\r\n", 400),
    ("bare CR in a chunk extension", CHUNKED + b"5;a\rb\r\nhello\r\n0\r\n\r\n", 400),
    ("NUL in a chunk extension", CHUNKED + b"5;a=\x00\r\nhello\r\n0\r\n\r\n", 400),
    ("whitespace after a chunk size", CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n", 400),
    ("whitespace before a chunk size", CHUNKED + b" 5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size 0x5", CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size -5", CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size +5", CHUNKED + b"+5\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size overflowing 64 bits", CHUNKED + b"1" + b"0" * 16 + b"5\r\nhello\r\n", 400),
    ("chunk longer than its size", CHUNKED + b"3\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk shorter than its size", CHUNKED + b"7\r\nhello\r\n0\r\n\r\n", 400),
    ("empty chunk size", CHUNKED + b"\r\nhello\r\n0\r\n\r\n", 400),
    ("obs-fold in a trailer", CHUNKED + b"0\r\nX-A: b\r\n c\r\n\r\n", 400),
    ("trailer without a colon", CHUNKED + b"0\r\nX-A b\r\n\r\n", 400),
    # Request line (RFC 9112 3)
    ("tab between request-line parts", b"GET\t/\tHTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("two spaces in the request line", b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("space in the target", b"GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("NUL in the target", b"GET /a\x00b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 400),
    ("lowercase http/1.1", b"GET / http/1.1\r\nHost: h\r\n\r\n", 400),
    ("HTTP/0.9 request line", b"GET /\r\n\r\n", 400),
    # Sizes
    (
        "head over 64 KiB",
        b"GET / HTTP/1.1\r\nHost: h\r\nX-A: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",
        431,
    ),
    ("100 header lines", b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", 431),
    (
        "64 KiB of empty lines before the request",
        b"\r\n" * (MAX_HEAD_BYTES // 2 + 1) + b"GET / HTTP/1.1\r\n\r\n",
        431,
    ),
    ("CL over the body limit", POST + b"Content-Length: 1048577\r\n\r\n", 413),
    ("chunk over the body limit", CHUNKED + b"100001\r\n", 413),
]


def _feed(reader: RequestReader, pieces: list[bytes], *, eof: bool) -> None:
    for piece in pieces:
        reader.feed(piece)
    if eof:
        reader.feed_eof()


def _feed_all(pieces: list[bytes]) -> HttpProtocolError:
    reader = RequestReader(max_body=1 << 20)
    with pytest.raises(HttpProtocolError) as info:
        _feed(reader, pieces, eof=True)
    assert reader.state is ReaderState.FAILED
    return info.value


@pytest.mark.parametrize(("raw", "status"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected_in_one_read(raw: bytes, status: int) -> None:
    assert _feed_all([raw]).status == status


@pytest.mark.parametrize(("raw", "status"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_rejected_byte_by_byte_before_the_end(raw: bytes, status: int) -> None:
    """Fed one byte at a time, the case fails with the same status, and at the latest when its
    last byte arrives (never by waiting for a timeout)."""
    reader = RequestReader(max_body=1 << 20)
    with pytest.raises(HttpProtocolError) as info:
        _feed(reader, [raw[i : i + 1] for i in range(len(raw))], eof=False)
    assert info.value.status == status


def test_bare_lf_head_fails_before_it_would_end() -> None:
    """A client that ends lines with LF alone gets a 400 as soon as the first LF arrives, not
    a 408 after the head timeout."""
    reader = RequestReader()
    assert reader.feed(b"GET / HTTP/1.1") == []
    with pytest.raises(HttpProtocolError) as info:
        reader.feed(b"\n")
    assert info.value.status == 400
    assert "CRLF" in info.value.message


def test_cr_split_from_its_lf_is_not_bare() -> None:
    reader = RequestReader()
    for piece in (b"GET / HTTP/1.1\r", b"\nHost: h\r", b"\n\r", b"\n"):
        events = reader.feed(piece)
    assert isinstance(events[0], RequestComplete)


# -- accepted, and unambiguous for the upstream ------------------------------------------------


ACCEPTED: list[tuple[str, bytes, bytes, int]] = [
    # (case, raw, decoded body, pipelined bytes discarded)
    (
        "CL and TE: chunked wins, CL ignored (RFC 9112 6.3)",
        POST + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + HELLO_CHUNKED,
        b"hello",
        0,
    ),
    (
        "TE then CL, CL longer than the chunked body",
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n" + HELLO_CHUNKED,
        b"hello",
        0,
    ),
    (
        "duplicate identical CL (RFC 9110 8.6)",
        POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"hello",
        0,
    ),
    ("CL list of one value", POST + b"Content-Length: 5, 5\r\n\r\nhello", b"hello", 0),
    ("CL with leading zeros", POST + b"Content-Length: 005\r\n\r\nhello", b"hello", 0),
    (
        "TE chunked in HTTP/1.0: decoded, then the connection closes (RFC 9112 6.1)",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + HELLO_CHUNKED,
        b"hello",
        0,
    ),
    ("TE in capitals", POST + b"Transfer-Encoding: CHUNKED\r\n\r\n" + HELLO_CHUNKED, b"hello", 0),
    (
        "a request smuggled after a CL body",
        POST + b"Content-Length: 5\r\n\r\nhello" + SMUGGLED,
        b"hello",
        len(SMUGGLED),
    ),
    (
        "a request smuggled after the last chunk",
        CHUNKED + HELLO_CHUNKED + SMUGGLED,
        b"hello",
        len(SMUGGLED),
    ),
    (
        "Content-Length in a trailer is dropped",
        CHUNKED + b"5\r\nhello\r\n0\r\nContent-Length: 99\r\n\r\n",
        b"hello",
        0,
    ),
    (
        "chunk extensions with BWS are dropped",
        CHUNKED + b'5 ;a=b;c\t;d="e f"\r\nhello\r\n0\r\n\r\n',
        b"hello",
        0,
    ),
    ("empty lines before the request line", b"\r\n\r\n" + POST + b"\r\n", b"", 0),
    (
        "Transfer_Encoding (underscore) is an ordinary header, not framing",
        POST + b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        b"hello",
        0,
    ),
]


def _read(raw: bytes) -> tuple[Request, int]:
    reader = RequestReader(max_body=1 << 20)
    events = reader.feed(raw)
    complete = [e.request for e in events if isinstance(e, RequestComplete)]
    pipelined = sum(e.count for e in events if isinstance(e, PipelinedBytes))
    assert len(complete) == 1
    assert reader.state is ReaderState.DONE
    return complete[0], pipelined


def _upstream_view(forwarded: bytes) -> tuple[h11.Request, bytes]:
    """How a strict, independent parser reads what we forward: exactly one request, nothing
    left over."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(forwarded)
    conn.receive_data(b"")  # we close our side after the request
    head = conn.next_event()
    assert isinstance(head, h11.Request)
    body = bytearray()
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data)
        body += event.data
    assert conn.trailing_data == (b"", True)
    return head, bytes(body)


def _assert_unambiguous(request: Request, forwarded: bytes) -> None:
    head, _, _ = forwarded.partition(b"\r\n\r\n")
    names = [line.split(b":", 1)[0].lower() for line in head.split(b"\r\n")[1:]]
    assert names.count(b"content-length") == 1
    assert b"transfer-encoding" not in names
    assert f"Content-Length: {len(request.body)}\r\n".encode() in head
    upstream, body = _upstream_view(forwarded)
    assert body == request.body
    assert upstream.method.decode() == request.method
    assert upstream.target.decode("latin-1") == request.target


@pytest.mark.parametrize(
    ("raw", "body", "pipelined"), [c[1:] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED]
)
def test_accepted_and_forwarded_unambiguously(raw: bytes, body: bytes, pipelined: int) -> None:
    request, discarded = _read(raw)
    assert request.body == body
    assert discarded == pipelined
    _assert_unambiguous(request, serialize_forward(request))


# -- differential: whatever we accept, the upstream reads the same way ---------------------------

_NAMES = st.sampled_from(
    [
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "Host",
        "Expect",
        "Connection",
        "X-A",
        "Accept",
        "TE",
        "Trailer",
    ]
)
_VALUES = st.sampled_from(
    ["5", "0", "5, 5", "chunked", "gzip", "chunked, chunked", "", "100-continue", "close", "a b"]
)
_BODIES = st.sampled_from(
    [b"hello", HELLO_CHUNKED, b"", b"5;x=y\r\nhello\r\n0\r\nX: y\r\n\r\n", b"hello" + HELLO_CHUNKED]
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["GET", "POST"]),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    st.lists(st.tuples(_NAMES, _VALUES), max_size=5),
    _BODIES,
    st.lists(st.tuples(st.integers(0, 400), st.sampled_from(b"\r\n \t:,\x00\x0b")), max_size=3),
)
def test_whatever_we_accept_the_upstream_reads_the_same(
    method: str,
    version: str,
    headers: list[tuple[str, str]],
    body: bytes,
    mutations: list[tuple[int, int]],
) -> None:
    head = f"{method} /v1/x {version}\r\nHost: h\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    raw = bytearray(head.encode() + b"\r\n" + body)
    for pos, byte in mutations:
        raw[pos % len(raw)] = byte
    reader = RequestReader(max_body=1 << 20)
    try:
        events = reader.feed(bytes(raw))
        reader.feed_eof()
    except HttpProtocolError as exc:
        event(f"rejected {exc.status}")
        return
    event("accepted")
    request = next(e.request for e in events if isinstance(e, RequestComplete))
    if request.header("host") is None and request.version == "HTTP/1.1":
        return  # mutated away; h11 insists on Host, llama-server does not
    _assert_unambiguous(request, serialize_forward(request))
