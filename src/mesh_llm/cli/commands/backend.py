"""``mesh-llm backend install|info``: build or locate llama.cpp and describe it."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from mesh_llm.inference import Backend, ensure_backend, locate_backend, probe_devices
from mesh_llm.network import build_native_relay

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("backend", help="build or inspect the llama.cpp backend")
    actions = parser.add_subparsers(dest="backend_command", metavar="ACTION", required=True)
    for name, text in (
        (
            "install",
            "locate llama-server and rpc-server, building them from the pinned source if missing",
        ),
        ("info", "show binary paths, llama.cpp build, backend and devices"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--bin-dir", type=Path, help="directory holding the binaries")
        action.add_argument(
            "--backend",
            choices=[b.value for b in Backend],
            help="force a backend (default: detected)",
        )
        if name == "info":
            action.add_argument("--json", action="store_true", help="print JSON")


def _version(binary: Path) -> str:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout + out.stderr).strip().splitlines()
    return next(
        (line for line in text if line.startswith("version")), text[0] if text else "unknown"
    )


def _native_relay() -> str:
    """Build (or find) the C relay loops; what to print about them."""
    try:
        return str(build_native_relay())
    except OSError as exc:
        return f"unavailable, relays stay in Python ({exc})"


def run(args: argparse.Namespace) -> int:
    backend = Backend(args.backend) if args.backend else None
    if args.backend_command == "install":
        bins = ensure_backend(
            args.bin_dir, backend, progress=lambda msg: print(msg, file=sys.stderr, flush=True)
        )
        print(f"llama-server: {bins.llama_server}")
        print(f"rpc-server:   {bins.rpc_server}")
        print(f"build:        {bins.build_id} (found via {bins.source})")
        print(f"native relay: {_native_relay()}")
        return 0
    bins = locate_backend(args.bin_dir, backend)
    info = {
        "llama_server": str(bins.llama_server),
        "rpc_server": str(bins.rpc_server),
        "source": bins.source,
        "commit": bins.commit,
        "backend": bins.backend.value if bins.backend else None,
        "build_id": bins.build_id,
        "version": _version(bins.llama_server),
        "devices": [{"name": n, "description": d} for n, d in probe_devices(bins.rpc_server)],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("llama_server", "rpc_server", "source", "build_id", "version"):
        print(f"{key + ':':14}{info[key]}")
    print("devices:")
    for dev in info["devices"] or [{"name": "(none reported)", "description": ""}]:
        assert isinstance(dev, dict)
        print(f"  {dev['name']}: {dev['description']}")
    return 0
