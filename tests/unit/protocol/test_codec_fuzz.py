"""Mutation fuzzing of the wire codecs (a small budget; ``bench/bench_fuzz.py`` runs >= 10^5)."""

from __future__ import annotations

import random

from mesh_llm.protocol import frames, http1
from tests.unit.protocol import codec_fuzz

CASES = 18_000  # 2,000 per codec target: about a second


def test_codecs_raise_only_protocol_errors_on_mutated_input() -> None:
    report = codec_fuzz.run(CASES, seed=20261205)
    assert report.findings == [], "\n\n".join(report.findings)
    assert sum(report.cases.values()) == CASES
    for name, count in report.cases.items():
        # The mutator must reach both outcomes: some inputs rejected, some still decoded.
        assert 0 < report.rejected.get(name, 0) < count, name


def test_every_seed_decodes_cleanly() -> None:
    """The unmutated seeds are valid: a fuzzer starting from garbage would find nothing."""
    rng = random.Random(0)
    for target in codec_fuzz.targets():
        for seed in target.seeds:
            if target.name not in ("gossip", "tunnel_map"):
                continue  # the others also probe fixed-size, capped or other-message decoders
            if target.name == "gossip":  # the target picks the connection's peer at random
                frames.decode_gossip_frame(seed, remote_id=codec_fuzz.KEY_A)
                continue
            target.run(rng, seed)
        if target.name == "http1":
            for seed in target.seeds:
                events = http1.RequestReader().feed(seed)
                assert any(isinstance(e, http1.RequestComplete) for e in events)


def test_a_non_protocol_exception_is_reported() -> None:
    """The harness itself can fail: an exception outside the ProtocolError family is a finding."""

    def crash(_rng: random.Random, data: bytes) -> None:
        raise IndexError(len(data))

    original = codec_fuzz.targets
    try:
        codec_fuzz.targets = lambda: [codec_fuzz.Target("crash", (b"x",), crash)]  # type: ignore[assignment]
        report = codec_fuzz.run(10, seed=1)
    finally:
        codec_fuzz.targets = original  # type: ignore[assignment]
    assert len(report.findings) == 10
    assert "IndexError" in report.findings[0]
