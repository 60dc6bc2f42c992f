from hypothesis import given
from hypothesis import strategies as st

from mesh_llm.inference.placement import Member, PlanKind, plan_model, tensor_split

MB = 1_000_000
MODEL = 98 * MB
BUILD = "0c1e570-cpu"


def member(byte: int, capacity_mb: int, rtt: float | None = 1.0, build: str = BUILD) -> Member:
    return Member(bytes([byte]) * 32, capacity_mb * MB, rtt, build)


def test_fits_solo() -> None:
    assert plan_model(member(1, 200), [], MODEL).kind is PlanKind.SOLO


def test_alone_and_too_small_waits_with_the_missing_amount() -> None:
    plan = plan_model(member(1, 70), [], MODEL)
    assert plan.kind is PlanKind.WAIT
    assert "missing" in plan.reason


def test_equal_capacity_tie_goes_to_the_larger_id() -> None:
    low, high = member(1, 70), member(2, 70)
    host_plan = plan_model(high, [low], MODEL)
    assert host_plan.kind is PlanKind.HOST
    assert host_plan.workers == (low.node_id,)
    assert host_plan.tensor_split == "0.50,0.50"
    worker_plan = plan_model(low, [high], MODEL)
    assert worker_plan.kind is PlanKind.WORKER
    assert worker_plan.host == high.node_id


def test_highest_capacity_hosts_regardless_of_id() -> None:
    big = member(1, 90)
    assert plan_model(big, [member(9, 70)], MODEL).kind is PlanKind.HOST
    assert plan_model(member(9, 70), [big], MODEL).host == big.node_id


def test_workers_by_rtt_until_enough_and_far_ones_excluded() -> None:
    me = member(9, 60)
    near, mid, far = member(1, 30, rtt=5), member(2, 30, rtt=20), member(3, 50, rtt=120)
    plan = plan_model(me, [far, mid, near], MODEL)
    assert plan.kind is PlanKind.HOST
    assert plan.workers == (near.node_id, mid.node_id)
    assert (far.node_id, "RTT 120 ms > 80 ms") in plan.excluded
    assert plan.tensor_split == "0.25,0.25,0.50"


def test_far_peer_only_means_wait() -> None:
    plan = plan_model(member(9, 70), [member(1, 70, rtt=200)], MODEL)
    assert plan.kind is PlanKind.WAIT


def test_build_mismatch_is_excluded_with_reason() -> None:
    plan = plan_model(member(9, 70), [member(1, 70, build="abc-cuda")], MODEL)
    assert plan.kind is PlanKind.WAIT
    assert "build abc-cuda" in plan.excluded[0][1]


def test_force_split_uses_a_worker_even_when_it_fits() -> None:
    plan = plan_model(member(9, 500), [member(1, 70)], MODEL, force_split=True)
    assert plan.kind is PlanKind.HOST
    assert len(plan.workers) == 1


def test_zero_capacity_worker_counts_with_host_capacity() -> None:
    assert tensor_split(60, [0]) == "0.50,0.50"


@given(st.integers(1, 10**12), st.lists(st.integers(0, 10**12), max_size=6))
def test_split_has_one_value_per_device_and_sums_to_about_one(
    host: int, workers: list[int]
) -> None:
    values = [float(v) for v in tensor_split(host, workers).split(",")]
    assert len(values) == len(workers) + 1
    assert abs(sum(values) - 1.0) <= 0.005 * len(values)


def test_idle_helpers_lend_memory_but_never_host() -> None:
    me = member(1, 70)
    helper = member(9, 500)
    plan = plan_model(me, [], MODEL, helpers=[helper])
    assert plan.kind is PlanKind.HOST
    assert plan.workers == (helper.node_id,)
