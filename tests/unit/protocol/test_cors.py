"""The CORS policy shared by :9337 and :3131 (protocol/cors): which pages may read, and the
head-only rewrite of upstream responses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.protocol.cors import CorsPolicy, with_cors

LOCAL = CorsPolicy()
KEYED = CorsPolicy(any_origin=True)


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:3131",
        "http://localhost",
        "https://localhost:8443",
        "http://app.localhost:5173",
        "http://127.0.0.1:3131",
        "http://127.8.9.10",
        "http://[::1]:3131",
    ],
)
def test_loopback_pages_may_read(origin: str) -> None:
    assert LOCAL.allowed_origin(origin, "127.0.0.1:9337") == origin
    assert LOCAL.allowed_origin(origin, None) == origin
    assert not LOCAL.refuses(origin, None)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://evil.example:3131",
        "null",
        "file://",
        "chrome-extension://abcdef",
        "http://localhost.evil.example",
        "http://127.0.0.1.evil.example",
        "http://192.168.1.5:3131",  # a LAN page, but the request went to loopback
        "http://localhost:3131/path",
        "http://localhost:99999",
        "http://local\u00e9host",
        "http://localhost:3131\x00",
        "",
    ],
)
def test_other_pages_may_not(origin: str) -> None:
    assert LOCAL.allowed_origin(origin, "127.0.0.1:9337") is None
    assert LOCAL.refuses(origin, "127.0.0.1:9337")
    assert LOCAL.header_lines(origin, "127.0.0.1:9337") == b"Vary: Origin\r\n"


def test_the_console_under_the_address_it_was_opened_at() -> None:
    """--listen-all: the console at http://<lan-ip>:3131 calls http://<lan-ip>:9337."""
    assert LOCAL.allowed_origin("http://192.168.1.5:3131", "192.168.1.5:9337") is not None
    assert LOCAL.allowed_origin("http://MyBox.lan:3131", "mybox.lan:9337") is not None
    assert LOCAL.allowed_origin("http://[fe80::1]:3131", "[fe80::1]:9337") is not None
    assert LOCAL.allowed_origin("http://192.168.1.6:3131", "192.168.1.5:9337") is None


def test_no_origin_is_no_browser_and_gets_nothing() -> None:
    assert LOCAL.allowed_origin(None, "h") is None
    assert not LOCAL.refuses(None, "h")
    assert LOCAL.header_lines(None, None) == b""


def test_a_keyed_server_is_open_to_every_page() -> None:
    for origin in (None, "https://evil.example", "http://localhost:3131"):
        assert KEYED.allowed_origin(origin, None) == "*"
        assert not KEYED.refuses(origin, None)
        assert KEYED.header_lines(origin, None) == b"Access-Control-Allow-Origin: *\r\n"


def test_allowed_origin_is_echoed_with_vary() -> None:
    assert LOCAL.header_lines("http://localhost:3131", None) == (
        b"Access-Control-Allow-Origin: http://localhost:3131\r\nVary: Origin\r\n"
    )


LLAMA_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Access-Control-Allow-Origin: https://evil.example\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"access-control-allow-credentials: true\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
BODY = b"5\r\ndata:\r\n0\r\n\r\n"


def test_upstream_cors_headers_are_replaced_and_the_body_kept() -> None:
    got = with_cors(LLAMA_HEAD + BODY, b"X-Policy: 1\r\n")
    assert got == (
        b"HTTP/1.1 200 OK\r\nX-Policy: 1\r\n"
        b"Content-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + BODY
    )


def test_empty_upstream_origin_header_is_dropped() -> None:
    """What the pinned llama-server sends to a request without Origin."""
    head = b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: \r\nContent-Length: 2\r\n\r\nok"
    assert with_cors(head, b"") == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_a_head_without_cors_headers_is_untouched_or_only_added_to() -> None:
    response = b"HTTP/1.1 200 OK\r\nx-mesh-llm-model: m\r\nContent-Length: 2\r\n\r\nok"
    assert with_cors(response, b"") is response
    cut = response.index(b"\r\n") + 2
    assert with_cors(response, b"A: b\r\n") == response[:cut] + b"A: b\r\n" + response[cut:]


def test_cors_lookalikes_in_the_body_are_not_touched() -> None:
    body = b"Access-Control-Allow-Origin: *\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    assert with_cors(response, b"") is response


def test_folded_continuation_of_a_dropped_header_goes_with_it() -> None:
    response = b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: a\r\n b\r\nX: 1\r\n\r\n"
    assert with_cors(response, b"") == b"HTTP/1.1 200 OK\r\nX: 1\r\n\r\n"


@given(st.binary(max_size=200))
def test_the_body_is_never_changed(body: bytes) -> None:
    got = with_cors(LLAMA_HEAD + body, b"Access-Control-Allow-Origin: *\r\n")
    assert got.endswith(b"\r\n\r\n" + body)
    assert got.count(b"Access-Control-Allow-Origin") == 1 + body.count(
        b"Access-Control-Allow-Origin"
    )
