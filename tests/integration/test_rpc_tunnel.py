"""End to end: a split through mesh-llm's RPC tunnel ends (no mesh), real llama.cpp binaries.

llama-server --rpc 127.0.0.1:<host end> -> RpcTunnelHost -> in-process stream pair ->
serve_rpc_tunnel -> ggml-rpc-server. On a CPU build the only GPU-type device is the RPC one, so
``--tensor-split`` has nothing to split between; ``-ngl 16`` puts 15 of 30 layers and the output
layer on the worker and keeps the rest on the host's CPU.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from mesh_llm.inference import RpcServer, host_weights, locate_backend
from mesh_llm.models import RpcStore
from mesh_llm.network import WorkerSources
from tests.integration.harness import smollm_path
from tests.integration.rpc_rig import LlamaServer, TunnelRig

pytestmark = pytest.mark.e2e

N_PREDICT = 32
WORKER_LAYERS = 16


@pytest.fixture(scope="module")
def model() -> Path:
    return smollm_path()


@pytest.fixture(scope="module")
def size(model: Path) -> int:
    return model.stat().st_size


@pytest.fixture(scope="module")
def binaries() -> Any:
    return locate_backend()


@pytest.fixture(scope="module")
def solo_text(binaries: Any, model: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("solo") / "llama-server.log"

    async def run() -> str:
        async with LlamaServer(binaries.llama_server, model, log) as solo:
            result = await solo.complete(N_PREDICT)
            tok_s = result["timings"]["predicted_per_second"]
            print(f"\nsolo: load {solo.load_s:.2f} s, {tok_s:.1f} tok/s")
            return str(result["content"])

    return asyncio.run(run())


async def load_split(
    binaries: Any, model: Path, tmp: Path, sources: WorkerSources, name: str
) -> tuple[str, dict[str, object], float]:
    """Start an rpc-server and a split llama-server; the completion, host counters after the
    load, and the load time."""
    rpc = RpcServer(binaries.rpc_server, log_path=tmp / f"rpc-{name}.log", threads=1)
    port = await rpc.start()
    try:
        async with TunnelRig(port, host_weights(model), sources) as rig:
            log = tmp / f"llama-{name}.log"
            server = LlamaServer(
                binaries.llama_server, model, log, rpc=rig.host.endpoint, ngl=WORKER_LAYERS
            )
            async with server:
                at_load = rig.host.stats.snapshot()
                trips = rig.host.stats.round_trips
                result = await server.complete(N_PREDICT)
                tokens = int(result["timings"]["predicted_n"])
                print(
                    f"\n{name}: load {server.load_s:.2f} s, host->worker during load "
                    f"{at_load['bytes_sent']} B, saved {at_load['bytes_saved']} B, stored "
                    f"{at_load['bytes_stored']} B; {result['timings']['predicted_per_second']:.1f}"
                    f" tok/s; {(rig.host.stats.round_trips - trips) / tokens:.2f} round trips "
                    "per generated token (prompt included)"
                )
                return str(result["content"]), at_load, server.load_s
    finally:
        await rpc.stop()


async def test_split_with_the_file_on_the_worker(
    binaries: Any, model: Path, size: int, solo_text: str, tmp_path: Path
) -> None:
    identity = host_weights(model).identity.hex()
    sources = WorkerSources(files={identity: (model,)})
    text, at_load, _ = await load_split(binaries, model, tmp_path, sources, "with-file")
    assert text == solo_text
    assert int(str(at_load["bytes_saved"])) > 0.4 * size  # about half the model is on the worker
    assert int(str(at_load["bytes_sent"])) < 0.05 * size


async def test_split_without_the_file_stores_once_then_loads_from_the_store(
    binaries: Any, model: Path, size: int, solo_text: str, tmp_path: Path
) -> None:
    root = tmp_path / "rpc-store"
    store = RpcStore(root, cap_bytes=10**9)
    text, first, _ = await load_split(
        binaries, model, tmp_path, WorkerSources(store=store), "first"
    )
    assert text == solo_text
    assert int(str(first["bytes_stored"])) > 0.4 * size
    assert int(str(first["bytes_sent"])) > int(str(first["bytes_stored"]))
    store.close()

    restarted = RpcStore(root, cap_bytes=10**9)  # a worker restart: the index is read back
    assert restarted.usage() == int(str(first["bytes_stored"]))
    text, second, _ = await load_split(
        binaries, model, tmp_path, WorkerSources(store=restarted), "second"
    )
    assert text == solo_text
    assert int(str(second["bytes_sent"])) < 0.05 * size
    assert second["bytes_saved"] == first["bytes_stored"]
    restarted.close()
