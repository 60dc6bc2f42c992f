"""Control-frame codec: framing, golden bytes, validation (spec §8) and fuzzing."""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh_llm.errors import ProtocolError
from mesh_llm.protocol.frames import (
    DemandEntry,
    FrameDecoder,
    FrameError,
    GossipFrame,
    NodeRole,
    PeerAnnouncement,
    PeerDown,
    PeerLeaving,
    RouteEntry,
    RouteTable,
    RouteTableRequest,
    ServedModel,
    TunnelEntry,
    TunnelMap,
    decode_gossip_frame,
    decode_peer_down,
    decode_peer_leaving,
    decode_route_table,
    decode_route_table_request,
    decode_tunnel_map,
    encode_frame,
    encode_gossip_frame,
    encode_peer_down,
    encode_peer_leaving,
    encode_reply,
    encode_route_table,
    encode_route_table_request,
    encode_tunnel_map,
    is_valid_endpoint_id,
    parse_frame_length,
    parse_stream_type,
)
from mesh_llm.protocol.generated import node_pb2 as pb
from mesh_llm.protocol.streams import MAX_CONTROL_FRAME_BYTES, StreamType
from mesh_llm.protocol.token import EndpointAddrInfo, encode_addr_json

# The Ed25519 base point and two other valid keys (real public keys).
KEY_A = bytes.fromhex("58" + "66" * 31)
KEY_B = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
KEY_C = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
# y = 2 gives x^2 = 3/(4d+1), a non-square mod p: 32 bytes that are not a valid key.
NOT_A_POINT = (2).to_bytes(32, "little")


def test_test_keys() -> None:
    assert all(is_valid_endpoint_id(k) for k in (KEY_A, KEY_B, KEY_C))
    assert not is_valid_endpoint_id(NOT_A_POINT)
    assert not is_valid_endpoint_id(KEY_A[:31])


# ---------------------------------------------------------------------------------------------
# Framing


def test_encode_frame_layout() -> None:
    assert encode_frame(StreamType.GOSSIP, b"abc") == b"\x01\x03\x00\x00\x00abc"
    assert encode_reply(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(StreamType.PEER_LEAVING, b"\xff" * 258)[:5] == b"\x07\x02\x01\x00\x00"


def test_parse_stream_type() -> None:
    assert parse_stream_type(0x05) is StreamType.ROUTE_REQUEST
    assert parse_stream_type(0x0A) is StreamType.PLUGIN_BULK_TRANSFER
    assert parse_stream_type(0x0B) is StreamType.ADMIT
    for bad in (0x00, 0x0C, 0xFF):
        with pytest.raises(FrameError):
            parse_stream_type(bad)


def test_parse_frame_length_cap() -> None:
    assert parse_frame_length(struct.pack("<I", MAX_CONTROL_FRAME_BYTES)) == 8 * 1024 * 1024
    with pytest.raises(FrameError):
        parse_frame_length(struct.pack("<I", MAX_CONTROL_FRAME_BYTES + 1))
    with pytest.raises(FrameError):
        parse_frame_length(b"\x00\x00\x00")


def test_decoder_byte_at_a_time_and_multiple_frames() -> None:
    data = encode_reply(b"hello") + encode_reply(b"") + encode_reply(b"x" * 300)
    dec = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    assert out == [b"hello", b"", b"x" * 300]
    assert dec.at_boundary()
    assert FrameDecoder().feed(data) == [b"hello", b"", b"x" * 300]


def test_decoder_reports_what_it_needs() -> None:
    dec = FrameDecoder()
    assert dec.bytes_needed == 4
    assert dec.feed(b"\x0a\x00") == []
    assert dec.bytes_needed == 2
    assert dec.feed(b"\x00\x00abc") == []
    assert dec.bytes_needed == 7
    assert not dec.at_boundary()
    assert dec.feed(b"defghij") == [b"abcdefghij"]


def test_decoder_rejects_oversized_length_before_the_body() -> None:
    dec = FrameDecoder(max_bytes=16)
    with pytest.raises(FrameError):
        dec.feed(struct.pack("<I", 17) + b"z" * 10)
    assert dec.buffered <= 4  # nothing of the body was kept
    with pytest.raises(FrameError):
        dec.feed(b"more")  # stays failed
    big = FrameDecoder()
    with pytest.raises(FrameError):
        big.feed(struct.pack("<I", 0xFFFFFFFF))


@given(st.binary(max_size=64), st.lists(st.integers(1, 16), max_size=20))
def test_decoder_fuzz(data: bytes, cuts: list[int]) -> None:
    dec = FrameDecoder(max_bytes=32)
    pos = 0
    try:
        for n in [*cuts, len(data)]:
            dec.feed(data[pos : pos + n])
            pos += n
    except FrameError:
        pass


# ---------------------------------------------------------------------------------------------
# Golden bytes


def _golden_gossip_bytes() -> bytes:
    # PeerAnnouncement: endpoint_id(1)=KEY_A, role(2)=HOST, http_port(3)=9337,
    # hosted_models_known(24)=true. Hand-assembled from the protobuf wire format.
    peer = (
        b"\x0a\x20"
        + KEY_A  # field 1, length-delimited, 32 bytes
        + b"\x10\x02"  # field 2, varint 2 (HOST)
        + b"\x18\xf9\x48"  # field 3, varint 9337 = 0x79|0x80, 9337>>7 = 0x48
        + b"\xc0\x01\x01"  # field 24 -> tag 24<<3 = 192 = varint c0 01; value 1
    )
    assert len(peer) == 42
    return (
        b"\x08\x01"  # field 1 gen = 1
        + b"\x12\x2a" + peer  # field 2 peers, 42 bytes
        + b"\x1a\x20" + KEY_A  # field 3 sender_id
    )  # fmt: skip


GOLDEN_FRAME = GossipFrame(
    sender_id=KEY_A,
    peers=(
        PeerAnnouncement(
            endpoint_id=KEY_A, role=NodeRole.HOST, http_port=9337, hosted_models_known=True
        ),
    ),
)


def test_gossip_golden_bytes() -> None:
    assert encode_gossip_frame(GOLDEN_FRAME) == _golden_gossip_bytes()
    assert decode_gossip_frame(_golden_gossip_bytes(), remote_id=KEY_A) == GOLDEN_FRAME
    framed = encode_frame(StreamType.GOSSIP, _golden_gossip_bytes())
    assert framed[:5] == b"\x01\x50\x00\x00\x00"  # body: 2 + 2 + 42 + 2 + 32 = 80 bytes


def test_small_message_golden_bytes() -> None:
    assert encode_peer_down(PeerDown(KEY_B)) == b"\x0a\x20" + KEY_B + b"\x10\x01"
    assert encode_peer_leaving(PeerLeaving(KEY_B)) == b"\x0a\x20" + KEY_B + b"\x10\x01"
    assert encode_route_table_request(RouteTableRequest()) == b"\x10\x01"
    assert encode_tunnel_map(TunnelMap(KEY_A, (TunnelEntry(KEY_B, 443),))) == (
        b"\x0a\x20" + KEY_A + b"\x12\x25" + b"\x0a\x20" + KEY_B + b"\x18\xbb\x03"
    )


# ---------------------------------------------------------------------------------------------
# Validation


def _announcement(**fields: object) -> pb.PeerAnnouncement:
    msg = pb.PeerAnnouncement(endpoint_id=KEY_B, role=pb.NODE_ROLE_WORKER)
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def _gossip(*peers: pb.PeerAnnouncement, gen: int | None = 1, sender: bytes = KEY_A) -> bytes:
    msg = pb.GossipFrame(sender_id=sender)
    if gen is not None:
        msg.gen = gen
    msg.peers.extend(peers)
    return bytes(msg.SerializeToString())


@pytest.mark.parametrize("gen", [None, 0, 2])
def test_gossip_rejects_wrong_generation(gen: int | None) -> None:
    with pytest.raises(FrameError, match="generation"):
        decode_gossip_frame(_gossip(gen=gen), remote_id=KEY_A)


def test_gossip_sender_must_be_the_tls_peer() -> None:
    assert decode_gossip_frame(_gossip(), remote_id=KEY_A).peers == ()
    with pytest.raises(FrameError, match="sender_id"):
        decode_gossip_frame(_gossip(), remote_id=KEY_B)
    with pytest.raises(FrameError, match="sender_id"):
        decode_gossip_frame(_gossip(sender=KEY_A[:31]), remote_id=KEY_A)
    with pytest.raises(ValueError, match="remote_id"):
        decode_gossip_frame(_gossip(), remote_id=b"short")


def test_gossip_bad_entry_id_rejects_whole_frame() -> None:
    good = _announcement()
    bad = _announcement(endpoint_id=b"\x01" * 33)
    with pytest.raises(FrameError, match="endpoint_id"):
        decode_gossip_frame(_gossip(good, bad), remote_id=KEY_A)


def test_gossip_host_needs_http_port() -> None:
    with pytest.raises(FrameError, match="http_port"):
        decode_gossip_frame(_gossip(_announcement(role=pb.NODE_ROLE_HOST)), remote_id=KEY_A)
    ok = decode_gossip_frame(
        _gossip(_announcement(role=pb.NODE_ROLE_HOST, http_port=0)), remote_id=KEY_A
    )
    assert ok.peers[0].http_port == 0
    with pytest.raises(FrameError, match="http_port"):
        decode_gossip_frame(
            _gossip(_announcement(role=pb.NODE_ROLE_HOST, http_port=70000)), remote_id=KEY_A
        )


def test_gossip_unknown_role_is_worker() -> None:
    for role in (pb.NODE_ROLE_UNSPECIFIED, 9):
        frame = decode_gossip_frame(_gossip(_announcement(role=role)), remote_id=KEY_A)
        assert frame.peers[0].role is NodeRole.WORKER


def test_gossip_serialized_addr_must_name_the_entry() -> None:
    own = EndpointAddrInfo.create(KEY_B.hex(), ["https://relay.example./"], ["10.0.0.1:7"])
    other = EndpointAddrInfo.create(KEY_C.hex(), [], ["10.0.0.2:7"])
    frame = decode_gossip_frame(
        _gossip(
            _announcement(serialized_addr=encode_addr_json(own)),
            _announcement(endpoint_id=KEY_C, serialized_addr=encode_addr_json(own)),  # forged
            _announcement(endpoint_id=KEY_C, serialized_addr=encode_addr_json(other)),
        ),
        remote_id=KEY_A,
    )
    assert [(p.endpoint_id, p.addr) for p in frame.peers] == [(KEY_B, own), (KEY_C, other)]


def test_gossip_unparsable_addr_keeps_entry_without_address() -> None:
    frame = decode_gossip_frame(
        _gossip(_announcement(serialized_addr=b"{not json")), remote_id=KEY_A
    )
    assert frame.peers[0].endpoint_id == KEY_B
    assert frame.peers[0].addr is None


def test_gossip_drops_entries_that_are_not_curve_points() -> None:
    frame = decode_gossip_frame(
        _gossip(_announcement(endpoint_id=NOT_A_POINT), _announcement()), remote_id=KEY_A
    )
    assert [p.endpoint_id for p in frame.peers] == [KEY_B]


def test_gossip_hosted_models_known_defaults_to_non_empty() -> None:
    msg = _announcement()
    msg.hosted_models.append("m")
    absent_with_models = decode_gossip_frame(_gossip(msg), remote_id=KEY_A)
    assert absent_with_models.peers[0].hosted_models_known is True
    absent_empty = decode_gossip_frame(_gossip(_announcement()), remote_id=KEY_A)
    assert absent_empty.peers[0].hosted_models_known is False
    explicit = decode_gossip_frame(
        _gossip(_announcement(hosted_models_known=False)), remote_id=KEY_A
    )
    assert explicit.peers[0].hosted_models_known is False


def test_gossip_decodes_served_runtime_and_ignores_dead_fields() -> None:
    msg = _announcement(rtt_ms=5, mesh_id="abc", vram_bytes=2**40)
    msg.available_models.append("dead")
    msg.available_model_sizes["dead"] = 1
    msg.served_model_runtime.add(model_name="Qwen", identity_hash="h1", context_length=4096)
    msg.served_model_runtime.add(model_name="Tiny", ready=True)
    msg.demand.add(model_name="Qwen", last_active=1_700_000_000, request_count=3)
    peer = decode_gossip_frame(_gossip(msg), remote_id=KEY_A).peers[0]
    assert peer.served_models == (
        ServedModel("Qwen", "h1", 4096, False),
        ServedModel("Tiny", None, None, True),
    )
    assert peer.demand == (DemandEntry("Qwen", 1_700_000_000, 3),)
    assert peer.mesh_id == "abc"
    assert peer.vram_bytes == 2**40


@pytest.mark.parametrize(
    ("decode", "message"),
    [
        (decode_route_table_request, pb.RouteTableRequest()),
        (decode_route_table, pb.RouteTable()),
        (decode_peer_down, pb.PeerDown(peer_id=KEY_B)),
    ],
)
def test_other_messages_reject_missing_generation(
    decode: Callable[[bytes], object], message: pb.PeerDown
) -> None:
    with pytest.raises(FrameError, match="generation"):
        decode(message.SerializeToString())
    message.gen = 2
    with pytest.raises(FrameError, match="generation"):
        decode(message.SerializeToString())


def test_peer_leaving_must_come_from_the_leaver() -> None:
    body = encode_peer_leaving(PeerLeaving(KEY_B))
    assert decode_peer_leaving(body, remote_id=KEY_B) == PeerLeaving(KEY_B)
    with pytest.raises(FrameError, match="peer_id"):
        decode_peer_leaving(body, remote_id=KEY_A)
    with pytest.raises(FrameError, match="generation"):
        decode_peer_leaving(pb.PeerLeaving(peer_id=KEY_B).SerializeToString(), remote_id=KEY_B)


def test_peer_down_needs_a_32_byte_id() -> None:
    assert decode_peer_down(encode_peer_down(PeerDown(KEY_C))) == PeerDown(KEY_C)
    with pytest.raises(FrameError):
        decode_peer_down(pb.PeerDown(peer_id=b"x", gen=1).SerializeToString())


def test_route_table_request_id_empty_or_32_bytes() -> None:
    assert decode_route_table_request(b"\x10\x01") == RouteTableRequest(None)
    full = encode_route_table_request(RouteTableRequest(KEY_A))
    assert decode_route_table_request(full) == RouteTableRequest(KEY_A)
    with pytest.raises(FrameError):
        decode_route_table_request(
            pb.RouteTableRequest(requester_id=b"12345", gen=1).SerializeToString()
        )


def test_route_table_rejects_short_entry_ids() -> None:
    table = RouteTable((RouteEntry(KEY_A, "m1"), RouteEntry(KEY_B, "m2")), mesh_id="abcd")
    assert decode_route_table(encode_route_table(table)) == table
    msg = pb.RouteTable(gen=1)
    msg.entries.add(endpoint_id=b"short", model="m")
    with pytest.raises(FrameError):
        decode_route_table(msg.SerializeToString())


def test_tunnel_map_validation() -> None:
    tmap = TunnelMap(KEY_A, (TunnelEntry(KEY_B, 0), TunnelEntry(KEY_C, 65535, KEY_B)))
    assert decode_tunnel_map(encode_tunnel_map(tmap), remote_id=KEY_A) == tmap
    with pytest.raises(FrameError, match="owner"):
        decode_tunnel_map(encode_tunnel_map(tmap), remote_id=KEY_B)
    for entry in (
        pb.TunnelEntry(target_peer_id=KEY_B, tunnel_port=65536),
        pb.TunnelEntry(target_peer_id=KEY_B[:-1], tunnel_port=1),
        pb.TunnelEntry(target_peer_id=NOT_A_POINT, tunnel_port=1),
        pb.TunnelEntry(target_peer_id=KEY_B, tunnel_port=1, relay_peer_id=b"r"),
    ):
        msg = pb.TunnelMap(owner_peer_id=KEY_A)
        msg.entries.append(entry)
        with pytest.raises(FrameError):
            decode_tunnel_map(msg.SerializeToString(), remote_id=KEY_A)


def test_malformed_protobuf_and_bad_utf8() -> None:
    with pytest.raises(FrameError, match="malformed"):
        decode_peer_down(b"\x0a\x40" + b"x" * 10)  # length runs past the end
    bad_utf8 = b"\x08\x01\x12\x06\x0a\x00\x52\x02\xff\xfe\x1a\x20" + KEY_A  # serving_models
    with pytest.raises(FrameError):
        decode_gossip_frame(bad_utf8, remote_id=KEY_A)


def test_frame_error_is_a_protocol_error() -> None:
    assert issubclass(FrameError, ProtocolError)


# ---------------------------------------------------------------------------------------------
# Property tests

KEY_POOL = [
    k
    for k in (hashlib.sha256(i.to_bytes(2, "little")).digest() for i in range(64))
    if is_valid_endpoint_id(k)
]
valid_keys = st.sampled_from(KEY_POOL)
texts = st.text(max_size=12)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
ports = st.integers(0, 65535)


@st.composite
def socket_addrs(draw: st.DrawFn) -> str:
    ip = draw(st.ip_addresses())
    port = draw(ports)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


@st.composite
def announcements(draw: st.DrawFn) -> PeerAnnouncement:
    key = draw(valid_keys)
    role = draw(st.sampled_from(NodeRole))
    port = draw(ports) if role is NodeRole.HOST else draw(st.none() | ports)
    addr = draw(
        st.none()
        | st.builds(
            EndpointAddrInfo.create,
            st.just(key.hex()),
            st.lists(st.sampled_from(["https://r1.example./", "http://127.0.0.1:3340/"])),
            st.lists(socket_addrs(), max_size=3),
        )
    )
    return PeerAnnouncement(
        endpoint_id=key,
        role=role,
        http_port=port,
        version=draw(st.none() | texts),
        addr=addr,
        serving_models=tuple(draw(st.lists(texts, max_size=3))),
        hosted_models=tuple(draw(st.lists(texts, max_size=3))),
        hosted_models_known=draw(st.booleans()),
        requested_models=tuple(draw(st.lists(texts, max_size=2))),
        catalog_models=tuple(draw(st.lists(texts, max_size=2))),
        primary_serving=draw(st.none() | texts),
        served_models=tuple(
            draw(
                st.lists(
                    st.builds(
                        ServedModel, texts, st.none() | texts, st.none() | u32, st.booleans()
                    ),
                    max_size=2,
                )
            )
        ),
        vram_bytes=draw(u64),
        mesh_id=draw(st.none() | texts),
        demand=tuple(draw(st.lists(st.builds(DemandEntry, texts, u64, u64), max_size=2))),
        model_source=draw(st.none() | texts),
        gpu_name=draw(st.none() | texts),
        gpu_vram=draw(st.none() | texts),
        hostname=draw(st.none() | texts),
        is_soc=draw(st.none() | st.booleans()),
    )


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(valid_keys, st.lists(announcements(), max_size=4))
def test_gossip_round_trip(sender: bytes, peers: list[PeerAnnouncement]) -> None:
    frame = GossipFrame(sender, tuple(peers))
    body = encode_gossip_frame(frame)
    assert decode_gossip_frame(body, remote_id=sender) == frame
    assert FrameDecoder().feed(encode_frame(StreamType.GOSSIP, body)[1:]) == [body]


@given(
    st.lists(st.builds(RouteEntry, st.binary(min_size=32, max_size=32), texts), max_size=4),
    st.none() | texts,
    st.none() | st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
)
def test_small_messages_round_trip(
    entries: list[RouteEntry], mesh_id: str | None, requester: bytes | None, peer: bytes
) -> None:
    table = RouteTable(tuple(entries), mesh_id)
    assert decode_route_table(encode_route_table(table)) == table
    request = RouteTableRequest(requester)
    assert decode_route_table_request(encode_route_table_request(request)) == request
    assert decode_peer_down(encode_peer_down(PeerDown(peer))) == PeerDown(peer)
    assert decode_peer_leaving(encode_peer_leaving(PeerLeaving(peer)), remote_id=peer) == (
        PeerLeaving(peer)
    )


@given(valid_keys, st.lists(st.tuples(valid_keys, ports, st.none() | valid_keys), max_size=4))
def test_tunnel_map_round_trip(
    owner: bytes, entries: list[tuple[bytes, int, bytes | None]]
) -> None:
    tmap = TunnelMap(owner, tuple(TunnelEntry(t, p, r) for t, p, r in entries))
    assert decode_tunnel_map(encode_tunnel_map(tmap), remote_id=owner) == tmap


def _all_decoders() -> list[Callable[[bytes], object]]:
    return [
        lambda b: decode_gossip_frame(b, remote_id=KEY_A),
        decode_route_table_request,
        decode_route_table,
        decode_peer_down,
        lambda b: decode_peer_leaving(b, remote_id=KEY_A),
        lambda b: decode_tunnel_map(b, remote_id=KEY_A),
    ]


@settings(max_examples=300)
@given(st.binary(max_size=256))
def test_decoders_fuzz_arbitrary_bytes(data: bytes) -> None:
    for decode in _all_decoders():
        with contextlib.suppress(FrameError):
            decode(data)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(announcements(), st.data())
def test_decoders_fuzz_mutated_valid_frames(peer: PeerAnnouncement, data: st.DataObject) -> None:
    body = bytearray(encode_gossip_frame(GossipFrame(KEY_A, (peer,))))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(body) - 1))
        body[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    for decode in _all_decoders():
        with contextlib.suppress(FrameError):
            decode(bytes(body[:cut]))


# ---------------------------------------------------------------------------------------------
# available_models (fields 9 and 21): models on a node's disk with their sizes


def test_available_models_round_trip() -> None:
    from mesh_llm.protocol.frames import MAX_AVAILABLE_MODELS

    models = (("llama", 4_000_000_000), ("qwen", 1_234_567_890_123))
    frame = GossipFrame(
        sender_id=KEY_A,
        peers=(PeerAnnouncement(endpoint_id=KEY_A, role=NodeRole.WORKER, available_models=models),),
    )
    decoded = decode_gossip_frame(encode_gossip_frame(frame), remote_id=KEY_A)
    assert decoded.peers[0].available_models == models
    assert MAX_AVAILABLE_MODELS == 256


def test_available_models_names_without_sizes_and_sizes_without_names() -> None:
    msg = _announcement()
    msg.available_models.extend(["b", "a", "", "b"])
    msg.available_model_sizes["c"] = 7
    msg.available_model_sizes["a"] = 5
    peers = decode_gossip_frame(_gossip(msg), remote_id=KEY_A).peers
    assert peers[0].available_models == (("a", 5), ("b", 0), ("c", 7))


def test_available_models_capped() -> None:
    from mesh_llm.protocol.frames import MAX_AVAILABLE_MODELS

    msg = _announcement()
    msg.available_models.extend(f"m{i:04d}" for i in range(MAX_AVAILABLE_MODELS + 50))
    peers = decode_gossip_frame(_gossip(msg), remote_id=KEY_A).peers
    assert len(peers[0].available_models) == MAX_AVAILABLE_MODELS
    assert peers[0].available_models[-1] == (f"m{MAX_AVAILABLE_MODELS - 1:04d}", 0)
