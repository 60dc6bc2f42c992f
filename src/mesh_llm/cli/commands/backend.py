"""``mesh-llm backend install|info``: build or locate llama.cpp, self-test it, describe it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mesh_llm.cli import environment
from mesh_llm.inference import (
    LLAMA_CPP_COMMIT,
    Backend,
    BuildOptions,
    ensure_backend,
    locate_backend,
    probe_devices,
    prove_backend,
)
from mesh_llm.network import build_native_relay

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("backend", help="build or inspect the llama.cpp backend")
    actions = parser.add_subparsers(dest="backend_command", metavar="ACTION", required=True)
    for name, text in (
        (
            "install",
            "locate llama-server and rpc-server (building them from the pinned source if missing) "
            "and self-test them on this machine",
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
        if name == "install":
            action.add_argument(
                "--amx",
                action="store_true",
                default=None,
                help="keep ggml's AMX kernels on CPUs that have AMX (left out by default: they "
                "crash the pinned build; env MESH_LLM_LLAMA_AMX=1)",
            )
            action.add_argument(
                "--cmake-args",
                metavar="ARGS",
                help="extra cmake arguments for the llama.cpp build, one shell-quoted string "
                "(env MESH_LLM_LLAMA_CMAKE_ARGS)",
            )
            action.add_argument(
                "--selftest",
                action="store_true",
                help="run the self-test even if these binaries already passed on this machine",
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
    line = next(
        (line for line in text if line.startswith("version")), text[0] if text else "unknown"
    )
    return line.removeprefix("version:").strip()


def _build_info(bin_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((bin_dir / "build-info.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _native_relay() -> str:
    """Build (or find) the C relay loops; what to print about them."""
    try:
        return str(build_native_relay())
    except OSError as exc:
        return f"unavailable, relays stay in Python ({exc})"


def _install(args: argparse.Namespace, backend: Backend | None) -> int:
    options = BuildOptions.from_environ(os.environ, amx=args.amx, extra_cmake_args=args.cmake_args)

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    bins = ensure_backend(
        environment.bin_dir(args.bin_dir, os.environ), backend, options=options, progress=say
    )
    if args.selftest:
        result = prove_backend(bins, progress=say, force=True)
        if not result.ok:
            print(f"error: self-test failed: {result.detail}; log: {result.log_path}")
            return 1
    profile = _build_info(bins.llama_server.parent).get("profile")
    print(f"llama-server: {bins.llama_server}")
    print(f"rpc-server:   {bins.rpc_server}")
    print(
        f"build:        {bins.build_id} (found via {bins.source}"
        + (f", {profile} profile)" if profile else ")")
    )
    print("self-test:    passed on this machine")
    print(f"native relay: {_native_relay()}")
    return 0


def run(args: argparse.Namespace) -> int:
    backend = Backend(args.backend) if args.backend else None
    if args.backend_command == "install":
        return _install(args, backend)
    bins = locate_backend(environment.bin_dir(args.bin_dir, os.environ), backend)
    build = _build_info(bins.llama_server.parent)
    commit = bins.commit or ("unknown" if bins.source != "cache" else LLAMA_CPP_COMMIT)
    info = {
        "llama_server": str(bins.llama_server),
        "rpc_server": str(bins.rpc_server),
        "source": bins.source,
        "commit": bins.commit,
        "backend": bins.backend.value if bins.backend else None,
        "build_id": bins.build_id,
        "profile": build.get("profile"),
        "cmake_args": build.get("cmake_args"),
        "version": _version(bins.llama_server),
        "devices": [{"name": n, "description": d} for n, d in probe_devices(bins.rpc_server)],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key in ("llama_server", "rpc_server", "source"):
        print(f"{key + ':':14}{info[key]}")
    llama = f"commit {commit}" + (" (pinned)" if commit == LLAMA_CPP_COMMIT else "")
    llama += f", {info['backend'] or 'unknown'} backend"
    if info["profile"]:
        llama += f", {info['profile']} build"
    print(f"{'llama.cpp:':14}{llama}")
    print(f"{'build_id:':14}{info['build_id']}")
    print(f"{'version:':14}{info['version']}")
    devices = info["devices"]
    assert isinstance(devices, list)
    if not devices:
        print(f"{'devices:':14}CPU only (rpc-server reports no accelerator)")
    else:
        print("devices:")
        for dev in devices:
            print(f"  {dev['name']}: {dev['description']}")
    return 0
