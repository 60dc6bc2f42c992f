"""The 503 for a request nothing can answer: a node that is in no mesh says so and why."""

from __future__ import annotations

from mesh_llm.network import RoutingSnapshot, Target, choose_candidates, no_target_error


def test_a_node_in_no_mesh_says_so_instead_of_blaming_the_model() -> None:
    snapshot = RoutingSnapshot(
        targets={}, serving=False, no_mesh_reason="could not reach 0202020202: no answer"
    )
    assert choose_candidates(snapshot, "m", 10, None) == ("m", [])
    assert no_target_error(snapshot, "m") == (
        "not connected to any mesh: could not reach 0202020202: no answer"
    )


def test_in_a_mesh_the_model_is_named() -> None:
    snapshot = RoutingSnapshot(targets={}, serving=False)
    assert no_target_error(snapshot, "m") == "No inference server available for model 'm'"
    assert no_target_error(snapshot, None) == "No inference server available"


def test_local_targets_still_answer_while_out_of_the_mesh() -> None:
    target = Target("m", "local:1", 1, None, 4096)
    snapshot = RoutingSnapshot(targets={"m": [target]}, serving=True, no_mesh_reason="x")
    assert choose_candidates(snapshot, "other", 10, None) == ("m", [target])


def test_a_cold_start_nobody_has_room_for_is_named_after_the_model() -> None:
    snapshot = RoutingSnapshot(targets={}, serving=False)
    why = "no node has room for m: it needs 1.00 GB and the most any node has free is 0.00 GB"
    assert no_target_error(snapshot, "m", why) == (
        f"No inference server available for model 'm': {why}"
    )


def test_out_of_the_mesh_wins_over_a_cold_start_that_cannot_fit() -> None:
    snapshot = RoutingSnapshot(targets={}, serving=False, no_mesh_reason="could not reach x: gone")
    assert no_target_error(snapshot, "m", "no node has room for m") == (
        "not connected to any mesh: could not reach x: gone"
    )
