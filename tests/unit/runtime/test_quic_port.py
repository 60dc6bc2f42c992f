"""The QUIC port a node identity bound last is remembered, so a restart keeps the invite token."""

from __future__ import annotations

from mesh_llm.runtime.mesh_link import port_record, remembered_port

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_the_record_round_trips_for_the_same_identity() -> None:
    record = port_record(KEY, ["0.0.0.0:47123", "[::]:5555"])
    assert record is not None
    assert record.endswith(" 47123\n")
    assert KEY.hex() not in record
    assert remembered_port(record, KEY) == 47123


def test_another_identity_does_not_reuse_it() -> None:
    record = port_record(KEY, ["127.0.0.1:47123"])
    assert remembered_port(record, OTHER) is None


def test_ipv6_first_socket() -> None:
    assert remembered_port(port_record(KEY, ["[::1]:6000"]), KEY) == 6000


def test_garbage_is_ignored() -> None:
    for text in (None, "", "x", "abc 12 34", "abc notaport", "abc 0", "abc 70000"):
        assert remembered_port(text, KEY) is None
    tag = (port_record(KEY, ["0.0.0.0:1"]) or "").split()[0]
    assert remembered_port(f"{tag} 70000", KEY) is None
    assert port_record(KEY, ["weird"]) is None
