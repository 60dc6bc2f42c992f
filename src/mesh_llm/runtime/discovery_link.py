"""The node's Nostr side (docs/DESIGN.md, "Discovery"): publish the mesh's listing, or find a
mesh to join with ``--auto``; ``/api/discover``.

Every phase is bounded and said on stderr; the node's ports are already open when this runs, and
nothing here can stop the node: a relay that never answers costs its timeout, then the node goes
on (standalone, or retrying by the rules below).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mesh_llm.discovery import (
    LISTING_TTL_S,
    PROBE_TIMEOUT_S,
    DiscoveredMesh,
    DiscoveryError,
    Join,
    MeshListing,
    NostrDirectory,
    first_live,
    load_or_create_nostr_keys,
    merge_target,
    needs_takeover,
    newest_per_publisher,
    smart_auto,
    watchdog_delay,
)
from mesh_llm.errors import MeshLlmError
from mesh_llm.protocol import decode_token
from mesh_llm.runtime.config import NodeConfig
from mesh_llm.runtime.mesh_link import MeshLink

__all__ = ["DiscoveryLink", "listing_from_status"]

log = logging.getLogger(__name__)

UNPUBLISH_TIMEOUT_S = 3.0
DISCOVER_TIMEOUT_S = 5.0
CLIENT_RETRIES = 20
LLAMA_WAIT_S = 60.0
READY_POLL_S = 0.5

StatusFn = Callable[[], dict[str, Any]]


def listing_from_status(
    status: dict[str, Any], *, name: str | None, region: str | None, max_clients: int
) -> MeshListing | None:
    """The listing a publishing node sends, from its own ``/api/status``; None without a token.

    serving = models hosted by serving nodes; wanted = requested but unserved; node count and
    VRAM count non-client peers plus self; client_count counts client peers."""
    token = status.get("token")
    if not isinstance(token, str) or not token:
        return None
    peers = [p for p in status.get("peers", []) if isinstance(p, dict)]
    servers = [p for p in peers if p.get("role") != "Client"]
    serving = set(status.get("hosted_models") or [])
    for peer in servers:
        serving.update(peer.get("hosted_models") or peer.get("serving_models") or [])
    requested = set(status.get("requested_models") or [])
    for peer in peers:
        requested.update(peer.get("requested_models") or [])
    vram_gb = float(status.get("my_vram_gb") or 0) + sum(
        float(p.get("vram_gb") or 0) for p in servers
    )
    mesh_id = status.get("mesh_id")
    return MeshListing(
        invite_token=token,
        serving=tuple(sorted(serving)),
        wanted=tuple(sorted(requested - serving)),
        total_vram_bytes=int(vram_gb * 1e9),
        node_count=len(servers) + (0 if status.get("is_client") else 1),
        client_count=len(peers) - len(servers),
        max_clients=max_clients,
        name=name,
        region=region,
        mesh_id=mesh_id if isinstance(mesh_id, str) else None,
    )


class DiscoveryLink:
    """Publishing (``--publish``/``--mesh-name``, or ``--auto`` starting a mesh) and ``--auto``."""

    def __init__(
        self,
        config: NodeConfig,
        state: Path,
        *,
        mesh: MeshLink,
        status: StatusFn,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.timing = config.discovery_timing
        self._mesh = mesh
        self._status = status
        self._say = say or log.info
        """Progress lines (default: the log, on stderr)."""
        self._private = mesh.mesh_key is not None
        """A private mesh is never published (the CLI refuses --publish and --auto with it)."""
        self.publishing = (config.publish or config.mesh_name is not None) and not self._private
        self._auto = config.auto and not config.join
        self._directory: NostrDirectory | None = None
        self._listed = False
        self._started_mesh = False
        """``--auto`` found nothing and started this mesh: it merges into a larger one when
        alone (the unpublish-and-merge rule)."""
        self._rng = random.Random()
        self.decided = asyncio.Event()
        """Set once ``--auto`` has joined a mesh or started one (at once without ``--auto``):
        the node's first model assignment waits for it."""

    @property
    def active(self) -> bool:
        return self.publishing or self._auto

    @property
    def auto(self) -> bool:
        """``--auto`` looks for a mesh to join (not given ``--join``)."""
        return self._auto

    @property
    def started_mesh(self) -> bool:
        """``--auto`` found no mesh to join and this node started one."""
        return self._started_mesh

    def _dir(self) -> NostrDirectory:
        if self._directory is None:
            keys = load_or_create_nostr_keys(self.state / "nostr.nsec")
            self._directory = NostrDirectory(self.config.nostr_relays, keys)
        return self._directory

    async def run(self) -> None:
        if self._auto:
            try:
                await self._auto_join()
            finally:
                self.decided.set()
        self.decided.set()
        while True:
            if self.publishing:
                await self._publish_loop()  # returns after a merge into a larger mesh
            elif not self._auto:
                return
            elif self.config.client or self._private:
                await self._rediscover_when_lonely()
                return
            else:
                async with asyncio.TaskGroup() as group:
                    lonely = group.create_task(self._rediscover_when_lonely())
                    await self._watchdog()
                    lonely.cancel()
                self.publishing = True

    async def _watchdog(self) -> None:
        """Returns when this node should take over publishing its mesh (see
        :mod:`mesh_llm.discovery.watchdog`). After a merge it watches the mesh it merged into:
        it has taken that mesh's id."""
        while True:
            await asyncio.sleep(watchdog_delay(self.timing.watchdog_interval, self._rng))
            if not await self._orphaned():
                continue
            await asyncio.sleep(watchdog_delay(self.timing.watchdog_recheck, self._rng))
            if await self._orphaned():
                self._say("--auto watchdog: no live listing of this mesh; publishing it")
                return

    async def _listings(self) -> list[DiscoveredMesh] | None:
        try:
            async with asyncio.timeout(DISCOVER_TIMEOUT_S + 2):
                found = await self._dir().discover(DISCOVER_TIMEOUT_S)
        except (TimeoutError, DiscoveryError) as exc:
            log.info("discovery failed: %s", exc or "timed out")
            return None
        return newest_per_publisher(found, time.time())

    async def _orphaned(self) -> bool:
        membership = self._mesh.membership
        if membership is not None and membership.merging:
            return False  # our mesh id is still the old mesh's until the merge target gossips
        meshes = await self._listings()
        if meshes is None:
            return False  # relays unreachable: publishing would fail too
        status = self._status()
        mesh_id = status.get("mesh_id")
        peers = [p for p in status.get("peers", []) if isinstance(p, dict)]
        members = {str(p.get("id")) for p in peers} | {str(status.get("node_id_full"))}
        return needs_takeover(
            meshes,
            mesh_id=mesh_id if isinstance(mesh_id, str) else None,
            members=members,
            has_peers=bool(peers),
            serves=bool(status.get("hosted_models")),
        )

    async def close(self) -> None:
        """NIP-09 deletion of our listing (bounded), then the relay connections."""
        directory, self._directory = self._directory, None
        if directory is None:
            return
        if self._listed:
            try:
                async with asyncio.timeout(UNPUBLISH_TIMEOUT_S):
                    await directory.unpublish()
                self._say("listing removed from Nostr")
            except (TimeoutError, DiscoveryError) as exc:
                log.warning("could not remove the Nostr listing: %s", exc or "timed out")
        await directory.close()

    async def discover_json(self) -> list[dict[str, Any]]:
        """``GET /api/discover``: the current listings, newest per publisher."""
        async with asyncio.timeout(DISCOVER_TIMEOUT_S + 2):
            found = await self._dir().discover(DISCOVER_TIMEOUT_S)
        return [m.to_dict() for m in newest_per_publisher(found, time.time())]

    # -- --auto ---------------------------------------------------------------------------

    async def _dial(self, token: str) -> None:
        transport = self._mesh.transport
        assert transport is not None
        conn = await transport.connect(decode_token(token), timeout=PROBE_TIMEOUT_S)
        conn.close()

    async def _find(self) -> bool:
        """One discovery round: join the best live mesh. True if one was joined."""
        self._say("--auto: discovering meshes on Nostr...")
        try:
            async with asyncio.timeout(DISCOVER_TIMEOUT_S + 2):
                found = await self._dir().discover(DISCOVER_TIMEOUT_S)
        except (TimeoutError, DiscoveryError) as exc:
            self._say(f"--auto: discovery failed ({exc or 'timed out'})")
            return False
        meshes = newest_per_publisher(found, time.time())
        choice = smart_auto(meshes, self.config.mesh_name, self._last_mesh())
        if not isinstance(choice, Join):
            self._say(f"--auto: {len(meshes)} mesh(es) listed, none to join")
            return False
        self._say(f"--auto: {len(choice.candidates)} candidate mesh(es)")
        chosen = await first_live(choice.candidates, self._dial, say=self._say)
        if chosen is None:
            self._say("--auto: no listed mesh answered")
            return False
        assert self._mesh.service is not None
        self._mesh.service.join(decode_token(chosen.listing.invite_token))
        label = chosen.listing.name or chosen.publisher_npub[:16]
        self._say(f"--auto: joined mesh {label}")
        return True

    async def _auto_join(self) -> None:
        if await self._find():
            return
        if not self.config.client and not self._private:
            self._say("--auto: starting a new mesh (published on Nostr)")
            self.publishing = True
            self._started_mesh = True
            self._mesh.originate_mesh()
            return
        for attempt in range(1, CLIENT_RETRIES + 1):
            retry = self.timing.client_retry
            self._say(f"--auto: retrying in {retry:g} s ({attempt}/{CLIENT_RETRIES})")
            await asyncio.sleep(retry)
            if await self._find():
                return
        minutes = CLIENT_RETRIES * self.timing.client_retry / 60
        self._say(f"--auto: no mesh found in {minutes:g} minutes; this client stays alone")

    async def _rediscover_when_lonely(self) -> None:
        """After 90 s with no peers (checked every 30 s), discover again."""
        check, after = self.timing.lonely_check, self.timing.lonely_after
        lonely_since: float | None = None
        while True:
            await asyncio.sleep(check)
            if self._status().get("peers"):
                lonely_since = None
                continue
            now = time.monotonic()
            lonely_since = lonely_since if lonely_since is not None else now
            if now - lonely_since >= after - check:
                self._say(f"--auto: no peers for {after:g} s; rediscovering")
                lonely_since = None
                await self._find()

    def _last_mesh(self) -> str | None:
        try:
            return (self.state / "last-mesh").read_text().strip() or None
        except OSError:
            return None

    # -- publishing -----------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        # Waits up to 60 s for the models to load, so the first listing says what it serves.
        deadline = time.monotonic() + LLAMA_WAIT_S
        while (  # noqa: ASYNC110 - polls the status until the models load, bounded by LLAMA_WAIT_S
            (self.config.models or self.config.gguf)
            and not self._status().get("hosted_models")
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(READY_POLL_S)
        while True:
            if self._started_mesh and await self._merge_if_alone():
                return
            await self._publish_once()
            await asyncio.sleep(self.timing.publish_interval)

    async def _merge_if_alone(self) -> bool:
        """The unpublish-and-merge rule: a mesh this node started, with no serving peer, joins a
        larger one (ours by mesh id, or any unnamed one when we are unnamed), and takes its mesh
        id (:meth:`Membership.merge`). True if merged."""
        status = self._status()
        peers = [p for p in status.get("peers", []) if isinstance(p, dict)]
        serving = [p for p in peers if p.get("role") != "Client"]
        if serving:
            return False
        meshes = await self._listings()
        if not meshes:
            return False
        mesh_id = status.get("mesh_id")
        target = merge_target(
            meshes,
            mesh_id=mesh_id if isinstance(mesh_id, str) else None,
            named=self.config.mesh_name is not None,
            own_node_id=str(status.get("node_id_full")),
            serving_peers=len(serving),
        )
        if target is None:
            return False
        chosen = await first_live([target], self._dial, say=self._say)
        if chosen is None:
            return False
        await self._withdraw()
        assert self._mesh.service is not None
        self._mesh.service.merge(decode_token(chosen.listing.invite_token))
        label = chosen.listing.name or chosen.publisher_npub[:16]
        self._say(f"no serving peers: listing withdrawn, merging into the larger mesh {label}")
        self.publishing = False
        self._started_mesh = False
        return True

    async def _withdraw(self) -> None:
        if not self._listed or self._directory is None:
            return
        try:
            async with asyncio.timeout(UNPUBLISH_TIMEOUT_S):
                await self._directory.unpublish()
        except (TimeoutError, DiscoveryError) as exc:
            log.warning("could not remove the Nostr listing: %s", exc or "timed out")
        self._listed = False

    async def _publish_once(self) -> None:
        listing = listing_from_status(
            self._status(),
            name=self.config.mesh_name,
            region=self.config.region,
            max_clients=self.config.max_clients,
        )
        if listing is None:
            return
        try:
            directory = self._dir()
            if listing.max_clients and listing.client_count >= listing.max_clients:
                if self._listed:
                    await directory.unpublish()
                    self._listed = False
                    self._say("mesh full (--max-clients): listing withdrawn")
                return
            async with asyncio.timeout(DISCOVER_TIMEOUT_S + 2):
                await directory.publish(listing, LISTING_TTL_S)
        except (TimeoutError, MeshLlmError) as exc:
            log.warning("could not publish the mesh on Nostr: %s", exc or "timed out")
            return
        if not self._listed:
            self._say(f"published on Nostr ({', '.join(directory.relays)})")
        self._listed = True
