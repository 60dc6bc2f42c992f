"""Demand table: max-per-field merge (order-independent) and garbage collection."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.mesh import DemandTable, ModelDemand
from mesh_llm.protocol.frames import DemandEntry

entries = st.lists(
    st.builds(
        DemandEntry,
        st.sampled_from(["a", "b", "c"]),
        st.integers(0, 2**40),
        st.integers(0, 2**40),
    ),
    max_size=12,
)


@given(entries, entries)
def test_merge_is_order_independent(x: list[DemandEntry], y: list[DemandEntry]) -> None:
    one, two = DemandTable(), DemandTable()
    one.merge(x)
    one.merge(y)
    two.merge(y)
    two.merge(x)
    assert one.entries() == two.entries()


def test_merge_takes_max_of_each_field_and_reports_change() -> None:
    t = DemandTable()
    assert t.merge([DemandEntry("m", 10, 1)])
    assert t.merge([DemandEntry("m", 5, 9)])
    assert not t.merge([DemandEntry("m", 10, 9), DemandEntry("", 99, 99)])
    assert t.get("m") == ModelDemand(10, 9)
    assert "" not in t


def test_record_request_counts_and_stamps() -> None:
    t = DemandTable()
    t.record_request("m", 100.7)
    t.record_request("m", 50.0)
    assert t.get("m") == ModelDemand(100, 2)


def test_gc_keeps_fresh_and_still_requested_entries() -> None:
    t = DemandTable()
    t.merge([DemandEntry("old", 0, 1), DemandEntry("wanted", 0, 1), DemandEntry("new", 90, 1)])
    assert t.gc(100.0, 50.0, frozenset({"wanted"})) == ["old"]
    assert [e.model_name for e in t.entries()] == ["new", "wanted"]
