"""Mesh ids: the Rust-compatible named derivation and random ids."""

from __future__ import annotations

import re

from mesh_llm.protocol.meshid import named_mesh_id, random_mesh_id, siphash13


def test_named_mesh_id_matches_rust_vectors() -> None:
    assert named_mesh_id("poker-night") == "a1bcbf45bc983045"
    assert named_mesh_id("poker-night", "abcdef") == "91708720bae4e358"


def test_siphash13_reference_shape() -> None:
    # Different inputs, lengths across the 8-byte block boundary, all distinct and 64-bit.
    values = {siphash13(bytes(range(n))) for n in range(20)}
    assert len(values) == 20
    assert all(0 <= v < 2**64 for v in values)


def test_named_id_depends_on_name_and_publisher() -> None:
    assert named_mesh_id("a") != named_mesh_id("b")
    assert named_mesh_id("a") != named_mesh_id("a", "")
    assert re.fullmatch(r"[0-9a-f]{16}", named_mesh_id("ünïcode"))


def test_random_mesh_id() -> None:
    a, b = random_mesh_id(), random_mesh_id()
    assert re.fullmatch(r"[0-9a-f]{32}", a)
    assert a != b
