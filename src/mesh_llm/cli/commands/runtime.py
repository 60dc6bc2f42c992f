"""``mesh-llm load|unload|drop|status``: talk to the running node's management API (:3131)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["add_parsers", "run"]

DEFAULT_CONSOLE_PORT = 3131
LOAD_TIMEOUT_S = 900.0
"""A load answers once the model does: large models on slow disks take minutes."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", dest="console_port", type=int, default=DEFAULT_CONSOLE_PORT,
                        metavar="PORT",
                        help="the node's console port (default 3131)")  # fmt: skip
    parser.add_argument("--host", dest="console_host", default="127.0.0.1",
                        help="the node's address (default 127.0.0.1)")  # fmt: skip
    parser.add_argument("--api-key", dest="console_key", metavar="KEY",
                        help="the node's API key, if it has one (also "
                             "MESH_LLM_API_KEY)")  # fmt: skip


def add_parsers(sub: Any) -> None:
    load = sub.add_parser("load", help="load a model on the running node")
    load.add_argument("name", help="model to load: catalog name, installed name or path")
    _common(load)
    for name in ("unload", "drop"):
        unload = sub.add_parser(
            name, help="unload a model from the running node (in-flight requests finish)"
        )
        unload.add_argument("name", help="model to unload")
        _common(unload)
    status = sub.add_parser("status", help="what the running node serves, and its peers")
    status.add_argument("--json", dest="status_json", action="store_true",
                        help="print /api/status as JSON")  # fmt: skip
    _common(status)


def _call(
    args: argparse.Namespace, method: str, path: str, body: object | None, timeout: float
) -> tuple[int, dict[str, Any]]:
    url = f"http://{args.console_host}:{args.console_port}{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    key = args.console_key or os.environ.get("MESH_LLM_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except ValueError:
                payload = {}
        return exc.code, payload if isinstance(payload, dict) else {}


def _unreachable(args: argparse.Namespace, exc: Exception) -> int:
    reason = getattr(exc, "reason", exc)
    print(
        f"error: no mesh-llm node answers on {args.console_host}:{args.console_port} ({reason}); "
        "start one, or give its console port with --port",
        file=sys.stderr,
    )
    return 1


def run(args: argparse.Namespace) -> int:
    try:
        if args.command == "load":
            status, payload = _call(
                args, "POST", "/api/runtime/models", {"model": args.name}, LOAD_TIMEOUT_S
            )
            if status == 201:
                print(f"loaded {payload.get('loaded', args.name)}")
                return 0
            print(f"error ({status}): {payload.get('error', 'load failed')}", file=sys.stderr)
            return 1
        if args.command in ("unload", "drop"):
            quoted = urllib.parse.quote(args.name, safe="")
            status, payload = _call(
                args, "DELETE", f"/api/runtime/models/{quoted}", None, LOAD_TIMEOUT_S
            )
            if status == 200:
                print(f"unloaded {payload.get('dropped', args.name)}")
                return 0
            print(f"error ({status}): {payload.get('error', 'unload failed')}", file=sys.stderr)
            return 1
        status, payload = _call(args, "GET", "/api/status", None, 10.0)
    except (urllib.error.URLError, OSError) as exc:
        return _unreachable(args, exc)
    if status != 200:
        print(f"error ({status}): {payload.get('error', 'status failed')}", file=sys.stderr)
        return 1
    if args.status_json:
        print(json.dumps(payload, indent=2))
    else:
        print(render_status(payload))
    return 0


def render_status(status: dict[str, Any]) -> str:
    """``mesh-llm status`` for people: the node, its models, the mesh's models and peers."""
    lines = [
        f"node {status.get('node_id') or '-'}: {status.get('node_status')}"
        f"  ({status.get('my_vram_gb', 0)} GB offered)",
    ]
    if status.get("standby_reason"):
        lines.append(f"  standby: {status['standby_reason']}")
    local = status.get("local_models") or []
    lines.append("models here:" if local else "models here: none")
    for m in local:
        extra = " (draining)" if m.get("draining") else ""
        port = m.get("port")
        where = f" on 127.0.0.1:{port}" if port else ""
        lines.append(f"  {m.get('name')}: {m.get('status')}{where}{extra}")
    demand = {d.get("model"): d for d in status.get("demand") or [] if isinstance(d, dict)}
    mesh = status.get("mesh_models") or []
    lines.append("mesh serves: " + (", ".join(str(m) for m in mesh) if mesh else "nothing"))
    for name, d in sorted(demand.items(), key=lambda kv: str(kv[0])):
        lines.append(
            f"  demand {name}: {d.get('request_count')} requests, last "
            f"{d.get('last_active_secs_ago')} s ago"
        )
    peers = status.get("peers") or []
    lines.append(f"peers: {len(peers)}")
    for p in peers:
        models = ", ".join(p.get("hosted_models") or []) or "-"
        lines.append(f"  {p.get('short_id')} {p.get('role')}: {models}")
    return "\n".join(lines)
