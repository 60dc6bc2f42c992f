"""``--auto``'s candidate walk: probe each listing's token (a dial with a short bound) before it
is chosen, skip dead ones, report each step. The dial is passed in, so this stays testable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from mesh_llm.discovery.listing import DiscoveredMesh
from mesh_llm.errors import MeshLlmError

__all__ = ["PROBE_TIMEOUT_S", "first_live"]

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
"""How long one listing's node may take to answer a dial before the next is tried."""


PARALLEL_PROBES = 8
"""Candidates dialled at once: dead listings ranked first cost one probe bound together, not
one each."""


async def _probe(
    token: str, dial: Callable[[str], Awaitable[None]], timeout_s: float
) -> str | None:
    """None if ``dial`` reached the token's node within ``timeout_s``, else why not."""
    try:
        async with asyncio.timeout(timeout_s):
            await dial(token)
    except TimeoutError:
        return f"did not answer within {timeout_s:g} s"
    except MeshLlmError as exc:
        return f"unreachable ({exc})"
    return None


async def first_live(
    candidates: Sequence[DiscoveredMesh],
    dial: Callable[[str], Awaitable[None]],
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
    say: Callable[[str], None] = logger.info,
    parallel: int = PARALLEL_PROBES,
) -> DiscoveredMesh | None:
    """The best-ranked candidate whose token ``dial`` reaches within ``timeout_s``; None if none.

    Up to ``parallel`` candidates are dialled at once; their answers are taken in rank order, so
    a live mesh ranked below dead ones is chosen as soon as the dead ones' bound has passed."""
    for start in range(0, len(candidates), parallel):
        batch = candidates[start : start + parallel]
        async with asyncio.TaskGroup() as group:
            probes = []
            for mesh in batch:
                say(f"--auto: trying mesh {_label(mesh)} ({mesh.listing.node_count} nodes)")
                probes.append(group.create_task(_probe(mesh.listing.invite_token, dial, timeout_s)))
            chosen = None
            for mesh, probe in zip(batch, probes, strict=True):
                why_not = await probe
                if why_not is None:
                    chosen = mesh
                    break
                say(f"--auto: mesh {_label(mesh)} {why_not}; skipping it")
            for probe in probes:
                probe.cancel()
        if chosen is not None:
            return chosen
    return None


def _label(mesh: DiscoveredMesh) -> str:
    return mesh.listing.name or mesh.publisher_npub[:16]
