"""Invite tokens and endpoint-address JSON (spec §2)."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.errors import ProtocolError
from mesh_llm.protocol.token import (
    EndpointAddrInfo,
    InvalidTokenError,
    decode_addr_json,
    decode_token,
    encode_addr_json,
    encode_token,
    parse_endpoint_id,
)

ID_HEX = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_exact_json_form_and_order() -> None:
    addr = EndpointAddrInfo.create(
        ID_HEX.upper(),
        ["https://mesh-llm-relay.fly.dev./"],
        ["[2001:db8::1]:41234", "203.0.113.7:41234", "10.0.0.1:5", "10.0.0.1:4"],
    )
    assert encode_addr_json(addr) == (
        b'{"id":"' + ID_HEX.encode() + b'","addrs":[{"Relay":"https://mesh-llm-relay.fly.dev./"},'
        b'{"Ip":"10.0.0.1:4"},{"Ip":"10.0.0.1:5"},{"Ip":"203.0.113.7:41234"},'
        b'{"Ip":"[2001:db8::1]:41234"}]}'
    )


def test_token_is_base64url_without_padding() -> None:
    addr = EndpointAddrInfo.create(ID_HEX, [], ["127.0.0.1:1"])
    token = encode_token(addr)
    assert "=" not in token
    assert "+" not in token
    assert "/" not in token
    assert base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)) == encode_addr_json(addr)
    assert decode_token(token) == addr
    assert decode_token(f"  {token}\n") == addr


def test_accepts_any_order_base32_ids_and_unknown_kinds() -> None:
    raw = bytes.fromhex(ID_HEX)
    b32 = base64.b32encode(raw).decode().rstrip("=").lower()
    assert len(b32) == 52
    doc = {
        "id": b32,
        "addrs": [{"Ip": "[::1]:9"}, {"Custom": "x"}, {"Relay": "http://127.0.0.1:3340/"}],
    }
    addr = decode_token(_b64(json.dumps(doc).encode()))
    assert addr == EndpointAddrInfo(ID_HEX, ("http://127.0.0.1:3340/",), ("[::1]:9",))
    assert parse_endpoint_id(b32) == raw


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "empty"),
        ("!!!!", "base64"),
        (_b64(b"not json"), "JSON"),
        (_b64(b"[1,2]"), "object"),
        (_b64(b'{"addrs":[]}'), "id"),
        (_b64(b'{"id":"abc","addrs":[]}'), "endpoint id"),
        (_b64(b'{"id":"' + b"zz" * 32 + b'","addrs":[]}'), "hex"),
        (_b64(b'{"id":"' + ID_HEX.encode() + b'","addrs":{}}'), "list"),
        (_b64(b'{"id":"' + ID_HEX.encode() + b'","addrs":[{"Ip":"1.2.3.4"}]}'), "address"),
        (_b64(b'{"id":"' + ID_HEX.encode() + b'","addrs":[{"Ip":"1.2.3.4:70000"}]}'), "port"),
        (_b64(b'{"id":"' + ID_HEX.encode() + b'","addrs":[{"Ip":"::1:5"}]}'), "address"),
        (_b64(b'{"id":"' + ID_HEX.encode() + b'","addrs":[{"Relay":"ftp://x/"}]}'), "relay"),
        (_b64(b'{"id":"' + ID_HEX.encode() + b'","addrs":[{"Ip":1}]}'), "string"),
        ("A" * 20000, "too long"),
    ],
)
def test_malformed_tokens_give_clear_errors(token: str, reason: str) -> None:
    with pytest.raises(InvalidTokenError, match=f"(?i){reason}"):
        decode_token(token)


def test_hex_id_with_whitespace_is_rejected() -> None:
    with pytest.raises(InvalidTokenError):
        parse_endpoint_id(" " * 2 + ID_HEX[2:])


def test_invalid_token_error_is_a_protocol_error() -> None:
    assert issubclass(InvalidTokenError, ProtocolError)


@given(st.text(max_size=200))
def test_decode_token_fuzz_text(text: str) -> None:
    with contextlib.suppress(InvalidTokenError):
        decode_token(text)


@given(st.binary(max_size=200))
def test_decode_addr_json_fuzz_bytes(data: bytes) -> None:
    with contextlib.suppress(InvalidTokenError):
        decode_addr_json(data)


@st.composite
def socket_addrs(draw: st.DrawFn) -> str:
    ip = draw(st.ip_addresses())
    port = draw(st.integers(0, 65535))
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@given(
    st.binary(min_size=32, max_size=32),
    st.lists(st.sampled_from(["https://a.example./", "http://127.0.0.1:1/"]), max_size=2),
    st.lists(socket_addrs(), max_size=5),
)
def test_token_round_trip(key: bytes, relays: list[str], ips: list[str]) -> None:
    addr = EndpointAddrInfo.create(key.hex(), relays, ips)
    assert decode_token(encode_token(addr)) == addr
    assert decode_addr_json(encode_addr_json(addr)) == addr
    assert addr.id_bytes == key


def test_private_token_carries_the_mesh_key_and_old_tokens_stay_valid() -> None:
    from mesh_llm.protocol.token import decode_invite

    addr = EndpointAddrInfo.create(ID_HEX, ip_addrs=["10.0.0.1:4"])
    key = bytes(range(32))
    plain = encode_token(addr)
    private = encode_token(addr, key)
    assert decode_invite(plain).mesh_key is None
    assert decode_invite(private).mesh_key == key
    assert decode_invite(private).addr == addr
    assert decode_token(private) == addr  # readers of the address ignore the key
    doc = json.loads(base64.urlsafe_b64decode(private + "=" * (-len(private) % 4)))
    assert doc["mesh_key"] == key.hex()
    for bad in ("zz" * 32, "ab", 5):
        doc["mesh_key"] = bad
        with pytest.raises(InvalidTokenError, match="mesh_key"):
            decode_invite(_b64(json.dumps(doc).encode()))
    with pytest.raises(InvalidTokenError):
        encode_token(addr, b"short")
