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


async def first_live(
    candidates: Sequence[DiscoveredMesh],
    dial: Callable[[str], Awaitable[None]],
    *,
    timeout_s: float = PROBE_TIMEOUT_S,
    say: Callable[[str], None] = logger.info,
) -> DiscoveredMesh | None:
    """The first candidate whose token ``dial`` reaches within ``timeout_s``; None if none."""
    for mesh in candidates:
        label = mesh.listing.name or mesh.publisher_npub[:16]
        say(f"--auto: trying mesh {label} ({mesh.listing.node_count} nodes)")
        try:
            async with asyncio.timeout(timeout_s):
                await dial(mesh.listing.invite_token)
        except TimeoutError:
            say(f"--auto: mesh {label} did not answer within {timeout_s:g} s; skipping it")
            continue
        except MeshLlmError as exc:
            say(f"--auto: mesh {label} unreachable ({exc}); skipping it")
            continue
        return mesh
    return None
