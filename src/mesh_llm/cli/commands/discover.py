"""``mesh-llm discover``: list the meshes published on Nostr, best first."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from mesh_llm.discovery import (
    DiscoveredMesh,
    Join,
    NostrDirectory,
    filter_meshes,
    freshness,
    newest_per_publisher,
    score_mesh,
    smart_auto,
)
from mesh_llm.system import state_dir

__all__ = ["add_parser", "run"]

TOKEN_SHOWN = 24


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("discover", help="list meshes published on Nostr")
    parser.add_argument("--model", dest="filter_model", metavar="M",
                        help="only meshes serving, wanting or holding model M")  # fmt: skip
    parser.add_argument("--min-vram", dest="filter_min_vram", type=float, metavar="GB",
                        help="only meshes with at least this much VRAM")  # fmt: skip
    parser.add_argument("--region", dest="filter_region", metavar="R", help="only this region")
    parser.add_argument("--json", dest="as_json", action="store_true",
                        help="print the list as JSON (with scores)")  # fmt: skip
    parser.add_argument("--auto", dest="pick_best", action="store_true",
                        help="print only the best mesh's invite token")  # fmt: skip
    parser.add_argument("--nostr-relay", "--relay", dest="discover_relays", action="append",
                        default=[], metavar="URL",
                        help="Nostr relay (repeatable; default: the public relays)")  # fmt: skip


def _last_mesh(home: Path) -> str | None:
    try:
        return (home / "last-mesh").read_text().strip() or None
    except OSError:
        return None


async def _discover(relays: list[str]) -> list[DiscoveredMesh]:
    directory = NostrDirectory(relays)
    try:
        return await directory.discover()
    finally:
        await directory.close()


def run(args: argparse.Namespace) -> int:
    now = time.time()
    found = newest_per_publisher(asyncio.run(_discover(args.discover_relays)), now)
    meshes = filter_meshes(
        found,
        model=args.filter_model,
        min_vram_gb=args.filter_min_vram,
        region=args.filter_region,
    )
    last = _last_mesh(state_dir())
    if args.pick_best:
        choice = smart_auto(meshes, None, last)
        if not isinstance(choice, Join):
            print("no mesh to join", file=sys.stderr)
            return 1
        print(choice.candidates[0].listing.invite_token)
        return 0
    ranked = sorted(meshes, key=lambda m: score_mesh(m, last), reverse=True)
    if args.as_json:
        rows = [
            {
                **mesh.to_dict(),
                "score": score_mesh(mesh, last),
                "freshness": freshness(mesh.published_at, now).value,
            }
            for mesh in ranked
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not ranked:
        print("no meshes found")
        return 0
    for mesh in ranked:
        listing = mesh.listing
        token = listing.invite_token
        shown = token if len(token) <= TOKEN_SHOWN else token[:TOKEN_SHOWN] + "..."
        print(
            f"{score_mesh(mesh, last):5d}  {listing.name or '(unnamed)':20s} "
            f"{freshness(mesh.published_at, now).value:5s}  {listing.node_count} nodes "
            f"{listing.total_vram_bytes / 1e9:.0f} GB  clients {listing.client_count}"
            f"{'/' + str(listing.max_clients) if listing.max_clients else ''}  "
            f"serving {', '.join(listing.serving) or '-'}  {shown}"
        )
    return 0
