"""A seeded mutation fuzzer over the wire codecs in ``mesh_llm.protocol``.

Each case takes a valid encoding (gossip, route table, peer down/leaving, tunnel map, invite
token and address JSON, HTTP/1.1 requests, RPC frames and tunnel preambles), mutates it (bit
flips, byte inserts and deletes, truncation, splices of two seeds, "interesting" integers written
over length fields, random bytes) and feeds it to the decoder, cut into random pieces where the
decoder is incremental. The only acceptable failure is the documented :class:`ProtocolError`
family; anything else is a finding. Incremental decoders also keep their invariants (the RPC
parser passes every byte on exactly once; the HTTP reader's events match its state).

Used by ``tests/unit/protocol/test_codec_fuzz.py`` (a small budget in ``make test``) and by
``bench/bench_fuzz.py`` (>= 10^5 cases).
"""

from __future__ import annotations

import contextlib
import random
import struct
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh_llm.errors import ProtocolError
from mesh_llm.protocol import frames, http1, rpc, rpc_mesh, token

KEY_A = bytes.fromhex("3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
_KEY_B = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")

_ADDR = token.EndpointAddrInfo.create(
    KEY_A.hex(), ["https://relay.example.org./"], ["127.0.0.1:4433", "[::1]:4433"]
)


def _gossip_seed() -> bytes:
    peer = frames.PeerAnnouncement(
        endpoint_id=KEY_A,
        role=frames.NodeRole.HOST,
        http_port=9337,
        version="0.1.0",
        addr=_ADDR,
        serving_models=("SmolLM2-135M-Instruct",),
        hosted_models=("SmolLM2-135M-Instruct",),
        hosted_models_known=True,
        requested_models=("Qwen3-8B",),
        served_models=(frames.ServedModel("SmolLM2-135M-Instruct", "ab" * 32, 8192, True),),
        vram_bytes=8 << 30,
        mesh_id="m1",
        demand=(frames.DemandEntry("SmolLM2-135M-Instruct", 1_700_000_000, 3),),
        rpc_ready=True,
        hostname="h",
    )
    return frames.encode_gossip_frame(frames.GossipFrame(KEY_A, (peer,)))


def _http_seeds() -> list[bytes]:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}'
    fixed = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:9337\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    chunked = (
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: y\r\n\r\n"
    )
    get = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    return [fixed, chunked, get, fixed + get]


def _rpc_seeds() -> list[bytes]:
    set_head = bytes(rpc.SET_TENSOR_HEAD_SIZE)
    ref = rpc_mesh.TensorRef(part=0, file_offset=4096, length=128, set_head=set_head)
    hello = rpc.encode_frame_header(rpc.RpcCommand.HELLO, 0)
    set_tensor = rpc.encode_set_tensor_header(set_head, 64) + bytes(range(64))
    return [hello + set_tensor, rpc_mesh.encode_tensor_ref(ref), hello]


def _preamble_seeds() -> list[bytes]:
    host = rpc_mesh.encode_host_preamble(rpc_mesh.HostPreamble(bytes(range(32))))
    worker = rpc_mesh.encode_worker_preamble(
        rpc_mesh.WorkerPreamble(
            rpc_mesh.Holding.FILE, True, (rpc_mesh.Extent(0, 0, 4096), rpc_mesh.Extent(1, 8, 9))
        )
    )
    return [host, worker]


_INTERESTING = (
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0xFFFFFFFF,
    2**63 - 1,
    2**64 - 1,
)


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to four stacked mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 2 and buf:  # delete a run
            del buf[pos : pos + rng.randint(1, 16)]
        elif op == 3:  # truncate
            del buf[pos:]
        elif op == 4:  # splice with another seed
            other = rng.choice(pool)
            cut = rng.randrange(len(other) + 1)
            buf[pos:] = other[cut:]
        elif op == 5:  # an interesting integer over whatever is there
            fmt = rng.choice(("<B", "<H", "<I", "<Q", ">I", ">H"))
            size = struct.calcsize(fmt)
            value = rng.choice(_INTERESTING) & ((1 << (8 * size)) - 1)
            buf[pos : pos + size] = struct.pack(fmt, value)
        elif op == 6 and buf:  # set a byte to a framing character
            buf[rng.randrange(len(buf))] = rng.choice(b'\r\n:; \t\x00\xff{}"0-+')
        elif op == 7 and buf:  # duplicate a run
            run = bytes(buf[pos : pos + rng.randint(1, 32)])
            buf[pos:pos] = run * rng.randint(1, 4)
        else:  # random bytes replace the tail
            buf[pos:] = rng.randbytes(rng.randint(0, 64))
    return bytes(buf)


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 2, 3, 7, 64, len(data)))
        out.append(data[pos : pos + step])
        pos += step
    return out


# --- targets: each takes (rng, mutated bytes) and raises only ProtocolError on bad input -------


def _t_gossip(rng: random.Random, data: bytes) -> None:
    frames.decode_gossip_frame(data, remote_id=rng.choice((KEY_A, _KEY_B)))


def _t_route_table(rng: random.Random, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        frames.decode_route_table_request(data)
    frames.decode_route_table(data)


def _t_small_frames(rng: random.Random, data: bytes) -> None:
    frames.decode_peer_down(data)
    frames.decode_peer_leaving(data, remote_id=KEY_A)


def _t_tunnel_map(rng: random.Random, data: bytes) -> None:
    frames.decode_tunnel_map(data, remote_id=KEY_A)


def _t_frame_decoder(rng: random.Random, data: bytes) -> None:
    if data:
        with contextlib.suppress(ProtocolError):
            frames.parse_stream_type(data[0])
    frames.parse_frame_length(data[:4])
    decoder = frames.FrameDecoder(max_bytes=rng.choice((64, 4096, frames.MAX_CONTROL_FRAME_BYTES)))
    for piece in _pieces(rng, data):
        for body in decoder.feed(piece):
            assert isinstance(body, bytes)


def _t_token(rng: random.Random, data: bytes) -> None:
    text = data.decode("latin-1")
    with contextlib.suppress(ProtocolError):
        token.decode_token(text)
    token.decode_addr_json(data)


def _t_http(rng: random.Random, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        http1.parse_response_head(data)
    reader = http1.RequestReader(max_body=rng.choice((16, 1024, http1.DEFAULT_MAX_BODY)))
    for piece in _pieces(rng, data):
        for event in reader.feed(piece):
            if isinstance(event, http1.RequestComplete):
                assert reader.state is http1.ReaderState.DONE
                assert event.request is reader.request
                http1.serialize_forward(event.request)
    if reader.state is not http1.ReaderState.DONE:
        reader.feed_eof()


def _t_rpc(rng: random.Random, data: bytes) -> None:
    policy = rng.choice((rpc.request_prefix_len, rpc.tunnel_prefix_len))
    parser = rpc.RpcFrameParser(policy)
    seen = bytearray()
    for piece in _pieces(rng, data):
        for event in parser.feed(piece):
            if isinstance(event, rpc.FrameStart):
                seen += event.header + event.prefix
                if event.cmd == rpc.RpcCommand.SET_TENSOR and len(event.prefix) >= 305:
                    rpc.decode_set_tensor_head(event.prefix[: rpc.SET_TENSOR_HEAD_SIZE])
                if event.cmd in (
                    rpc_mesh.MeshCommand.TENSOR_REF,
                    rpc_mesh.MeshCommand.TENSOR_STORE,
                ):
                    with contextlib.suppress(ProtocolError):
                        rpc_mesh.decode_tensor_ref(event.cmd, event.size, event.prefix)
            elif isinstance(event, rpc.FrameBody):
                seen += event.data
    assert bytes(seen) == data[: len(data) - parser.pending], "RPC bytes lost"
    rpc.decode_rpc_tensor(data)


def _t_preamble(rng: random.Random, data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        rpc_mesh.decode_host_preamble(data[: rpc_mesh.HOST_PREAMBLE_SIZE])
    head, count = rpc_mesh.decode_worker_preamble_head(data[: rpc_mesh.WORKER_PREAMBLE_HEAD_SIZE])
    rpc_mesh.decode_worker_extents(data[rpc_mesh.WORKER_PREAMBLE_HEAD_SIZE :], count)
    assert head.extents == ()


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    seeds: tuple[bytes, ...]
    run: Callable[[random.Random, bytes], None]


def targets() -> list[Target]:
    peer_down = frames.encode_peer_down(frames.PeerDown(KEY_A))
    leaving = frames.encode_peer_leaving(frames.PeerLeaving(KEY_A))
    table = frames.encode_route_table(
        frames.RouteTable((frames.RouteEntry(KEY_A, "SmolLM2-135M-Instruct"),), "m1")
    )
    request = frames.encode_route_table_request(frames.RouteTableRequest(_KEY_B))
    tunnels = frames.encode_tunnel_map(
        frames.TunnelMap(KEY_A, (frames.TunnelEntry(_KEY_B, 40001, KEY_A),))
    )
    gossip = _gossip_seed()
    framed = frames.encode_frame(frames.StreamType.GOSSIP, gossip)
    return [
        Target("gossip", (gossip,), _t_gossip),
        Target("route_table", (table, request), _t_route_table),
        Target("peer_down_leaving", (peer_down, leaving), _t_small_frames),
        Target("tunnel_map", (tunnels,), _t_tunnel_map),
        Target("frame_decoder", (framed, frames.encode_reply(table)), _t_frame_decoder),
        Target(
            "token", (token.encode_token(_ADDR).encode(), token.encode_addr_json(_ADDR)), _t_token
        ),
        Target("http1", tuple(_http_seeds()), _t_http),
        Target("rpc", tuple(_rpc_seeds()), _t_rpc),
        Target("preamble", tuple(_preamble_seeds()), _t_preamble),
    ]


@dataclass
class Report:
    cases: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)


def run(cases: int, seed: int, max_findings: int = 20) -> Report:
    """``cases`` mutated inputs spread round-robin over every target; findings are non-ProtocolError
    exceptions (with the input, hex, for reproduction)."""
    rng = random.Random(seed)
    all_targets = targets()
    pool = [s for t in all_targets for s in t.seeds]
    report = Report()
    for i in range(cases):
        target = all_targets[i % len(all_targets)]
        data = mutate(rng, rng.choice(target.seeds), pool)
        case_rng = random.Random(rng.getrandbits(64))
        report.cases[target.name] = report.cases.get(target.name, 0) + 1
        try:
            target.run(case_rng, data)
        except ProtocolError:
            report.rejected[target.name] = report.rejected.get(target.name, 0) + 1
        except Exception:  # noqa: BLE001 - every other exception is what the fuzzer looks for
            if len(report.findings) < max_findings:
                report.findings.append(
                    f"{target.name} input={data.hex()}\n{traceback.format_exc(limit=4)}"
                )
    return report
