"""Which models this node serves beyond its ``--model`` list: assignment, promotion, cold starts.

- **Assignment** (a node given no model): after gossip settles, :func:`pick_model_assignment`
  chooses a demanded or under-served model on this node's disk, else a catalog model to download;
  nothing: the node stands by.
- **Standby promotion**: while the node serves nothing, :func:`check_unserved_model` runs every
  ``standby_poll`` seconds over the gossiped demand map; a model with demand and no server (or a
  hot one, 3x the coldest and at least 10 requests per server) is loaded here.
- **Cold starts**: a request names a model nobody serves. :func:`choose_cold_start` picks a node
  that has it on disk and room for it (this node first), else one that can download it; the load
  starts there (locally, or by ``POST /mesh/load`` through an HTTP tunnel) and the ingress holds
  the request until the model answers (:mod:`mesh_llm.network.proxy.warmup`).

The decisions are pure (``mesh_llm.inference.assignment``); this module gathers their inputs from
the node and the mesh and acts on them. Models on disk are listed every ``inventory_refresh``
seconds (in a thread) and announced, so that peers know what this node could load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING

from mesh_llm.errors import LoadRefusedError, MeshLlmError, ModelError
from mesh_llm.inference import FIT_FACTOR
from mesh_llm.inference.assignment import (
    AssignmentKind,
    ColdStart,
    DemandView,
    LoaderCandidate,
    LocalModel,
    auto_pack_assignment,
    check_unserved_model,
    choose_cold_start,
    pick_model_assignment,
)
from mesh_llm.models import (
    InstalledModel,
    catalog_entries,
    find_catalog_entry,
    installed_models,
    load_catalog,
    read_gguf_info,
)
from mesh_llm.network import UpstreamStream, Warmup
from mesh_llm.protocol import NodeRole, PeerId, parse_response_head

if TYPE_CHECKING:
    from mesh_llm.runtime.node import Node

__all__ = ["Placement"]

log = logging.getLogger(__name__)

NOT_READY = "llama.cpp is not ready on this node yet; retry shortly"
"""Why a cold start that only this node could serve cannot start while llama.cpp is prepared."""
PEER_LOAD_TIMEOUT_S = 15.0
"""How long a peer may take to accept a cold-start load (it answers 202 once begun)."""
AUTO_DECIDE_BOUND_S = 60.0
"""How long the first assignment waits for ``--auto`` to join or start a mesh."""


class Placement:
    """Assignment, standby promotion and cold starts for one node."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._inventory: tuple[tuple[str, int], ...] = ()
        self._pending: dict[str, Warmup] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self.standby_reason: str | None = None
        """Why a node with nothing to serve stands by (shown in ``/api/status``)."""

    # ------------------------------------------------------------------------------ inventory

    def available(self) -> tuple[tuple[str, int], ...]:
        """Models on this node's disk, (name, bytes), as last listed."""
        return self._inventory

    async def refresh_inventory(self) -> None:
        if self._node.config.client:
            return
        try:
            found = await asyncio.to_thread(_list_and_read, self._node.capacity)
        except OSError as exc:
            log.warning("cannot list the models on disk: %s", exc)
            return
        inventory = tuple(sorted({m.name: m.size for m in found}.items()))
        if inventory != self._inventory:
            self._inventory = inventory
            self._node.announce_changed()

    # --------------------------------------------------------------------------------- inputs

    def _demand(self) -> dict[str, DemandView]:
        mesh = self._node.mesh
        if mesh is None or mesh.membership is None:
            return {}
        membership = mesh.membership
        pinned: set[str] = set(self._node.config.models)
        for peer in membership.peer_ids():
            ann = membership.announcement(peer)
            if ann is not None:
                pinned.update(ann.catalog_models, ann.requested_models)
        return {
            d.model_name: DemandView(d.request_count, d.last_active, d.model_name in pinned)
            for d in membership.demand()
        }

    def _servers(self) -> dict[str, int]:
        return {m: len(t) for m, t in self._node.routing_snapshot().targets.items() if t}

    def _on_disk(self) -> list[LocalModel]:
        """What this node may load on its own: on disk, and not unloaded here by hand."""
        unloaded = self._node.operator_unloaded
        return [LocalModel(name, size) for name, size in self._inventory if name not in unloaded]

    def _free(self) -> int:
        return self._node.capacity - self._node.used_bytes()

    def _preparing(self) -> bool:
        """llama.cpp is still being found or built: this node will load models, not yet."""
        node = self._node
        return not node.config.client and node.binaries is None

    def _can_load(self) -> bool:
        node = self._node
        return not node.config.client and node.binaries is not None

    # ---------------------------------------------------------------------- standby promotion

    def _standing_by(self) -> bool:
        node = self._node
        return self._can_load() and node.config.standby and not node.models

    async def run(self) -> None:
        """Keep the inventory fresh; assign, then promote, while the node serves nothing."""
        timing = self._node.timing
        await self.refresh_inventory()
        await asyncio.sleep(timing.standby_settle)
        discovery = self._node.discovery
        # --auto joins or starts a mesh first: that decides what this node serves.
        if discovery is not None and discovery.auto:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(discovery.decided.wait(), AUTO_DECIDE_BOUND_S)
        first = True
        next_inventory = time.monotonic() + timing.inventory_refresh
        while True:
            if time.monotonic() >= next_inventory:
                await self.refresh_inventory()
                next_inventory = time.monotonic() + timing.inventory_refresh
            if self._standing_by():
                await self._place(first)
                first = False
            await asyncio.sleep(timing.standby_poll)

    async def _place(self, first: bool) -> None:
        node = self._node
        mesh = node.mesh
        node_id = mesh.transport.node_id_bytes if mesh and mesh.transport else b""
        now = time.time()
        if first:
            catalog = [
                LocalModel(e.name, e.size_bytes)
                for e in catalog_entries()
                if not e.is_draft and not e.embedding
            ]
        if first and node.discovery is not None and node.discovery.started_mesh:
            pack = [(t.min_vram_bytes, t.model) for t in load_catalog().auto_model_pack]
            choice = auto_pack_assignment(
                capacity=self._free(), pack=pack, catalog=catalog, on_disk=self._on_disk()
            )
        elif first:
            choice = pick_model_assignment(
                node_id=node_id,
                capacity=self._free(),
                demand=self._demand(),
                servers=self._servers(),
                on_disk=self._on_disk(),
                catalog=catalog,
                now=now,
            )
        else:
            choice = check_unserved_model(
                capacity=self._free(),
                demand=self._demand(),
                servers=self._servers(),
                on_disk=self._on_disk(),
                now=now,
            )
        if choice.kind is AssignmentKind.STANDBY or choice.model is None:
            if choice.reason != self.standby_reason:
                log.info("standby: %s", choice.reason)
                self.standby_reason = choice.reason
                node.hub.changed()
            return
        log.warning("serving %s: %s", choice.model, choice.reason)
        node.out(f"mesh-llm: serving {choice.model} ({choice.reason})")
        self.standby_reason = None
        try:
            await node.load_model(
                choice.model,
                wait=False,
                download=choice.kind is AssignmentKind.DOWNLOAD,
                automatic=True,
            )
        except LoadRefusedError as exc:
            log.warning("cannot serve %s: %s", choice.model, exc)
            self.standby_reason = f"could not load {choice.model}: {exc}"

    # ---------------------------------------------------------------------------- cold starts

    def _candidates(self, model: str) -> list[LoaderCandidate]:
        node = self._node
        out: list[LoaderCandidate] = []
        if self._can_load() and model not in node.operator_unloaded:
            size = dict(self._inventory).get(model)
            out.append(LoaderCandidate(None, self._free(), size))
        mesh = node.mesh
        if mesh is None or mesh.membership is None or mesh.service is None:
            return out
        membership, service = mesh.membership, mesh.service
        for peer in membership.peer_ids():
            ann = membership.announcement(peer)
            if ann is None or ann.role is NodeRole.CLIENT or not ann.vram_bytes:
                continue
            if not (membership.is_admitted(peer) and service.is_connected(peer)):
                continue
            sizes = dict(ann.available_models)
            used = sum(sizes.get(name, 0) for name in ann.serving_models)
            out.append(LoaderCandidate(bytes(peer), ann.vram_bytes - used, sizes.get(model)))
        return out

    async def cold_start(self, model: str) -> Warmup | str | None:
        """Start loading ``model`` where it fits, for a request waiting on it (see module doc)."""
        pending = self._pending.get(model)
        timeout = self._node.config.cold_start_timeout
        if (
            pending is not None
            and pending.failure() is None
            and time.monotonic() - pending.started < timeout
        ):
            return pending
        self._pending.pop(model, None)
        if self._node.runner_named(model) is not None:
            return None  # loaded here but not answering: routing says why
        entry = find_catalog_entry(model)
        catalog_bytes = entry.size_bytes if entry is not None and entry.name == model else None
        choice = choose_cold_start(model, self._candidates(model), catalog_bytes=catalog_bytes)
        if choice is None and model in self._node.operator_unloaded:
            return (
                f"{model} was unloaded on this node by hand and no other node can load it; "
                f"load it again with: mesh-llm load {model}"
            )
        if isinstance(choice, str) and self._preparing():
            # This node was left out (it cannot load yet), so "no room" would blame memory.
            return NOT_READY
        if choice is None or isinstance(choice, str):
            return choice
        warmup = (
            self._start_local(model, choice)
            if choice.node is None
            else await self._start_remote(model, choice)
        )
        if isinstance(warmup, Warmup):
            self._pending[model] = warmup
        return warmup

    def _start_local(self, model: str, choice: ColdStart) -> Warmup:
        node = self._node
        log.warning("cold start: loading %s here (%s)", model, choice.reason)
        task = asyncio.get_running_loop().create_task(
            node.load_model(model, wait=False, download=choice.download, automatic=True)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def failure() -> str | None:
            if not task.done():
                return None
            if task.cancelled():
                return "the load was cancelled"
            exc = task.exception()
            if isinstance(exc, LoadRefusedError) and exc.status == 409:
                return node.load_failure(model)
            if exc is not None:
                return str(exc)
            return node.load_failure(task.result())

        return Warmup(model, "this node", failure)

    async def _start_remote(self, model: str, choice: ColdStart) -> Warmup | str:
        node = self._node
        assert choice.node is not None
        peer = PeerId(choice.node)
        where = f"node {choice.node[:5].hex()}"
        mesh = node.mesh
        if mesh is None or mesh.service is None:
            return f"cannot reach {where} to load {model}"
        log.warning("cold start: asking %s to load %s (%s)", where, model, choice.reason)
        body = json.dumps({"model": model, "wait": False}).encode()
        request = (
            b"POST /mesh/load HTTP/1.1\r\nHost: mesh\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        try:
            async with asyncio.timeout(PEER_LOAD_TIMEOUT_S):
                stream = await mesh.service.open_http_tunnel(peer)
                try:
                    await stream.write(request)
                    status, payload = await _read_json_response(stream)
                finally:
                    with contextlib.suppress(OSError, MeshLlmError):
                        await stream.aclose()
        except (OSError, MeshLlmError, ValueError) as exc:  # TimeoutError is an OSError
            return f"{where} could not be asked to load {model}: {exc or 'timed out'}"
        if status in (200, 201, 202, 409):
            return Warmup(model, where)
        return f"{where} cannot load {model}: {payload.get('error', status)}"


def _list_and_read(capacity: int) -> list[InstalledModel]:
    """The models on disk; the headers of those that could load here are read now (and cached),
    so that a cold start does not spend seconds on them."""
    found = installed_models()
    for model in found:
        if model.size * FIT_FACTOR <= capacity:
            with contextlib.suppress(ModelError, OSError):
                read_gguf_info(model.path)
    return found


async def _read_json_response(stream: UpstreamStream) -> tuple[int, dict[str, object]]:
    """Read a whole small JSON response from an HTTP tunnel stream."""
    buf = bytearray()
    while len(buf) < 1 << 20:
        chunk = await stream.read(65536)
        if not chunk:
            break
        buf += chunk
        head = parse_response_head(buf)
        if head is not None and head.body_complete:
            break
    head = parse_response_head(buf)
    if head is None:
        raise ValueError("the peer closed the stream before answering")
    body = bytes(buf[head.head_length :])
    payload = json.loads(body) if body else {}
    return head.status, payload if isinstance(payload, dict) else {}
