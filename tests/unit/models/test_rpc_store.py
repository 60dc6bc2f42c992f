"""The worker's RPC store: extents, persistence, LRU cap, pins, damaged entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh_llm.models.rpc_store import RpcStore
from mesh_llm.protocol.rpc_mesh import (
    Extent,
)

A, B, C = "a" * 64, "b" * 64, "c" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def put(store: RpcStore, identity: str, part: int, offset: int, data: bytes) -> bool:
    if not store.reserve(identity, len(data)):
        return False
    store.write(identity, part, offset, data)
    store.commit(identity, part, offset, len(data))
    return True


def test_stored_bytes_come_back_after_a_restart(tmp_path: Path) -> None:
    store = RpcStore(tmp_path, cap_bytes=1000)
    assert put(store, A, 0, 100, b"x" * 50)
    assert put(store, A, 0, 150, b"y" * 50)  # touching: merged
    assert put(store, A, 1, 0, b"z" * 10)
    assert store.holdings(A) == (Extent(0, 100, 100), Extent(1, 0, 10))
    store.flush(A)
    again = RpcStore(tmp_path, cap_bytes=1000)
    assert again.holdings(A) == (Extent(0, 100, 100), Extent(1, 0, 10))
    assert again.usage() == 110
    data = again.part_path(A, 0).read_bytes()
    assert data[100:200] == b"x" * 50 + b"y" * 50
    assert data[:100] == bytes(100)  # a hole


def test_unflushed_extents_are_not_trusted_after_a_crash(tmp_path: Path) -> None:
    store = RpcStore(tmp_path, cap_bytes=1000)
    put(store, A, 0, 0, b"x" * 10)
    store.flush(A)
    put(store, A, 0, 10, b"y" * 10)  # never flushed
    assert RpcStore(tmp_path, cap_bytes=1000).holdings(A) == (Extent(0, 0, 10),)


def test_least_recently_used_identity_is_evicted_for_room(tmp_path: Path) -> None:
    store = RpcStore(tmp_path, cap_bytes=100, clock=Clock())
    assert put(store, A, 0, 0, b"a" * 40)
    assert put(store, B, 0, 0, b"b" * 40)
    store.holdings(A)  # A used more recently than B
    assert put(store, C, 0, 0, b"c" * 40)
    assert store.identities() == [A, C]
    assert not (tmp_path / B).exists()


def test_pinned_identities_are_never_evicted(tmp_path: Path) -> None:
    store = RpcStore(tmp_path, cap_bytes=100, clock=Clock())
    put(store, A, 0, 0, b"a" * 60)
    store.pin(A)
    assert not put(store, B, 0, 0, b"b" * 60)  # would need A's room
    assert store.usage() == 60
    store.unpin(A)
    assert put(store, B, 0, 0, b"b" * 60)
    assert store.identities() == [B]


def test_a_write_larger_than_the_cap_is_refused(tmp_path: Path) -> None:
    store = RpcStore(tmp_path, cap_bytes=100)
    assert not store.reserve(A, 101)
    assert store.reserve(A, 100)
    store.release(A, 100)
    assert store.usage() == 0


def test_cap_zero_disables_the_store(tmp_path: Path) -> None:
    store = RpcStore(tmp_path / "off", cap_bytes=0)
    assert not store.enabled
    assert not store.reserve(A, 1)
    assert not (tmp_path / "off").exists()


def test_a_smaller_cap_evicts_at_start(tmp_path: Path) -> None:
    store = RpcStore(tmp_path, cap_bytes=1000, clock=Clock())
    put(store, A, 0, 0, b"a" * 60)
    put(store, B, 0, 0, b"b" * 60)
    store.close()
    assert RpcStore(tmp_path, cap_bytes=100).identities() == [B]


def test_damaged_entries_are_dropped(tmp_path: Path) -> None:
    store = RpcStore(tmp_path, cap_bytes=1000)
    put(store, A, 0, 0, b"a" * 60)
    put(store, B, 0, 0, b"b" * 60)
    store.close()
    (tmp_path / A / "index.json").write_text("{not json")
    index = json.loads((tmp_path / B / "index.json").read_text())
    index["parts"]["0"].append([1000, 50])  # past the end of the data file
    (tmp_path / B / "index.json").write_text(json.dumps(index))
    (tmp_path / "not-an-identity").mkdir()
    again = RpcStore(tmp_path, cap_bytes=1000)
    assert again.identities() == [B]
    assert again.holdings(B) == (Extent(0, 0, 60),)
    assert not (tmp_path / A).exists()


def test_identities_must_be_hashes(tmp_path: Path) -> None:
    store = RpcStore(tmp_path, cap_bytes=1000)
    with pytest.raises(ValueError, match="identity"):
        store.reserve("../../etc", 1)
    with pytest.raises(ValueError, match="identity"):
        store.part_path("A" * 64, 0)
