"""rpc-server argv and lifecycle (with a stand-in binary); the tunnel's view of GGUF files."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import psutil
import pytest

from mesh_llm.errors import InvalidGgufError, ProcessError
from mesh_llm.inference import (
    PidRegistry,
    RpcServer,
    host_weights,
    local_weight_files,
    rpc_server_argv,
)
from mesh_llm.models import identity_hash

FAKE_RPC_SERVER = """\
import os, socket, sys, time
args = sys.argv[1:]
port = int(args[args.index("-p") + 1])
print("args", args, "rdma", os.environ.get("GGML_RPC_NO_RDMA"), flush=True)
if "-d" in args and args[args.index("-d") + 1] == "NOPE":
    print("error: unknown device: NOPE", flush=True)
    sys.exit(1)
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
sock.listen()
while True:
    conn, _ = sock.accept()
    conn.close()
"""


@pytest.fixture
def fake_binary(tmp_path: Path) -> Path:
    path = tmp_path / "ggml-rpc-server"
    path.write_text(f"#!{sys.executable}\n{FAKE_RPC_SERVER}")
    path.chmod(0o755)
    return path


def test_argv_binds_loopback_only() -> None:
    argv = rpc_server_argv(Path("/bin/rpc"), port=5000, threads=4, device="CUDA0")
    assert argv == ["/bin/rpc", "-H", "127.0.0.1", "-p", "5000", "-t", "4", "-d", "CUDA0"]
    assert "-d" not in rpc_server_argv(Path("/bin/rpc"), port=5000, threads=0)


async def test_start_waits_for_the_port_and_stop_ends_it(fake_binary: Path, tmp_path: Path) -> None:
    registry = PidRegistry(tmp_path / "children.json")
    server = RpcServer(
        fake_binary, log_path=tmp_path / "rpc.log", registry=registry, device="CPU", threads=2
    )
    port = await server.start(ready_timeout=20)
    assert port == server.port > 0
    assert server.running
    pid = server.pid
    assert pid is not None
    assert [r.pid for r in registry.records()] == [pid]
    await server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert registry.records() == []
    log = (tmp_path / "rpc.log").read_text()
    assert "'-H', '127.0.0.1'" in log
    assert "'-d', 'CPU'" in log
    assert "rdma 1" in log


async def test_an_early_exit_is_reported_with_the_log(fake_binary: Path, tmp_path: Path) -> None:
    server = RpcServer(fake_binary, log_path=tmp_path / "rpc.log", device="NOPE")
    with pytest.raises(ProcessError, match="unknown device: NOPE"):
        await server.start(ready_timeout=20)
    assert not server.running


def write_model(path: Path, tensors: int = 3) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    rng = np.random.default_rng(0)
    for i in range(tensors):
        writer.add_tensor(f"blk.{i}.weight", rng.random((8, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_host_weights_locate_every_tensor(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf")
    weights = host_weights(path)
    assert weights.identity.hex() == identity_hash(path)
    assert weights.part_sizes == (path.stat().st_size,)
    assert sorted(weights.tensors) == [b"blk.0.weight", b"blk.1.weight", b"blk.2.weight"]
    raw = path.read_bytes()
    reader = gguf.GGUFReader(path)
    for t in reader.tensors:
        loc = weights.tensors[t.name.encode()]
        assert loc.size == 8 * 16 * 4
        assert raw[loc.offset : loc.offset + loc.size] == t.data.tobytes()


def test_host_weights_rejects_a_non_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(InvalidGgufError):
        host_weights(bad)


def test_local_weight_files_by_identity(tmp_path: Path) -> None:
    good = write_model(tmp_path / "a.gguf")
    missing = tmp_path / "gone.gguf"
    files = local_weight_files([good, missing])
    assert files == {identity_hash(good): (good,)}
