"""The Host-header policy shared by :9337 and :3131 (protocol/hosts): the DNS rebinding guard."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.protocol.hosts import (
    HostPolicy,
    allowed_host_name,
    host_name,
    listens_beyond_loopback,
)

LOOPBACK = HostPolicy.for_listener("127.0.0.1")
OPEN = HostPolicy.for_listener("0.0.0.0")


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:9337",
        "LOCALHOST:3131",
        "localhost.",
        "localhost.:3131",
        "app.localhost",
        "a.b.LocalHost:5173",
        "127.0.0.1",
        "127.0.0.1:9337",
        "127.8.9.10:1",
        "127.255.255.254",
        "127.0.0.1.",
        "[::1]",
        "[::1]:3131",
        "[0:0:0:0:0:0:0:1]:9337",
        "[::ffff:127.0.0.1]:9337",
        " localhost:9337 ",
        "localhost:",
        "localhost:65535",
    ],
)
def test_loopback_names_are_answered_on_a_loopback_port(host: str) -> None:
    assert LOOPBACK.allows(host)
    assert OPEN.allows(host)


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:3131",
        "EVIL.example.",
        "localhost.evil.example",
        "localhost.evil.example:9337",
        "evillocalhost",
        "127.0.0.1.evil.example",
        "127.0.0.1.nip.io:9337",
        "0.0.0.0:9337",
        "10.0.0.5:9337",
        "192.168.1.2",
        "[::]:9337",
        "[fe80::1]:9337",
        "[::ffff:10.0.0.1]",
        "[::1%lo]:9337",
        "::1",
        "::1:9337",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "2130706433",
        "localhost:99999",
        "localhost:123456",
        "localhost:-1",
        "localhost:abc",
        "localhost:80:80",
        "[::1",
        "[::1]x",
        "[::1]:80:80",
        "[localhost]",
        "local host",
        "localhost/",
        "user@localhost",
        "localhost..",
        ".localhost",
        "xn--lcalhost-\u00f6",
        "l\u00f6calhost",
        "localhost\x00",
        "a" * 400,
        ":9337",
        ".",
    ],
)
def test_other_and_malformed_names_are_refused_on_a_loopback_port(host: str) -> None:
    assert not LOOPBACK.allows(host)
    assert OPEN.allows(host)  # beyond loopback, the node is meant to be reached by any name
    message = LOOPBACK.refusal(host)
    assert "DNS rebinding" in message
    assert ("--allow-host" in message) != message.endswith("the Host header is malformed")


def test_a_missing_or_empty_host_is_answered() -> None:
    """Browsers always send Host: a request without one (HTTP/1.0) is not a rebinding page."""
    assert LOOPBACK.allows(None)
    assert LOOPBACK.allows("")
    assert LOOPBACK.allows("  ")


@pytest.mark.parametrize(
    ("bind", "beyond"),
    [
        ("127.0.0.1", False),
        ("127.0.0.2", False),
        ("::1", False),
        ("[::1]", False),
        ("localhost", False),
        ("LocalHost.", False),
        ("0.0.0.0", True),
        ("::", True),
        ("192.168.1.2", True),
        ("10.0.0.1", True),
        ("fe80::1", True),
        ("my-host.lan", True),
    ],
)
def test_what_listens_beyond_loopback(bind: str, beyond: bool) -> None:
    assert listens_beyond_loopback(bind) is beyond
    assert HostPolicy.for_listener(bind).any_host is beyond


def test_allowed_names_are_added_on_a_loopback_port() -> None:
    policy = HostPolicy.for_listener("127.0.0.1", ["My-Box.lan", "10.0.0.5", "[FE80::1]", "::2"])
    for host in ("my-box.lan", "MY-BOX.LAN:9337", "my-box.lan.", "10.0.0.5:3131"):
        assert policy.allows(host), host
    assert policy.allows("[fe80::1]:9337")
    assert policy.allows("[::2]")
    assert policy.allows("localhost:9337")
    for host in ("other.lan", "sub.my-box.lan", "10.0.0.6", "[fe80::2]"):
        assert not policy.allows(host), host
    assert HostPolicy.for_listener("127.0.0.1", ["*"]).allows("evil.example")


def test_the_refusal_names_the_host_and_the_flag() -> None:
    message = LOOPBACK.refusal("Evil.Example:3131")
    assert "'Evil.Example:3131'" in message
    assert "--allow-host evil.example " in message
    assert "--allow-host [fe80::1] " in LOOPBACK.refusal("[FE80::1]:9337")
    shown = LOOPBACK.refusal("x\x00\u00e9" + "y" * 500)
    assert "\x00" not in shown
    assert "\\x00" in shown
    assert len(shown) < 400


@pytest.mark.parametrize(
    ("name", "normalised"),
    [
        ("My-Box.LAN", "my-box.lan"),
        ("my-box.lan.", "my-box.lan"),
        (" box ", "box"),
        ("10.0.0.5", "10.0.0.5"),
        ("[FE80::1]", "fe80::1"),
        ("fe80:0::1", "fe80::1"),
        ("*", "*"),
    ],
)
def test_allow_host_values_are_normalised(name: str, normalised: str) -> None:
    assert allowed_host_name(name) == normalised


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "box:9337",
        "http://box",
        "box/",
        "[nope]",
        "a:b:c",
        "b\u00f6x",
        "two words",
        "*.lan",
    ],
)
def test_bad_allow_host_values_say_why(name: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        allowed_host_name(name)


@given(st.text(max_size=80))
def test_any_host_value_gets_an_answer_and_never_raises(host: str) -> None:
    allowed = LOOPBACK.allows(host)
    name = host_name(host)
    if allowed and host.strip(" \t"):
        assert name is not None
    if not allowed:
        assert LOOPBACK.refusal(host)
    assert OPEN.allows(host)
