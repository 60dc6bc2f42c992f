"""The default command: run a node."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path

from mesh_llm.cli import environment
from mesh_llm.cli.credentials import api_keys, exposure_warning, join_tokens, mesh_secret
from mesh_llm.discovery import DiscoveryTiming
from mesh_llm.errors import ConfigError, ProtocolError
from mesh_llm.inference import BuildOptions
from mesh_llm.protocol import allowed_host_name, decode_invite
from mesh_llm.runtime import Node, NodeConfig

__all__ = ["add_run_arguments", "config_from_args", "run"]


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run a node")
    group.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="M",
        help="model to serve: catalog name, installed name, path, org/repo[@rev]/file.gguf "
        "or HF URL"
        " (repeatable)",
    )
    group.add_argument("--gguf", action="append", default=[], type=Path, metavar="PATH",
                       help="serve this GGUF file (repeatable)")  # fmt: skip
    group.add_argument("--port", type=int, default=9337, help="OpenAI API port (default 9337)")
    group.add_argument("--console", type=int, default=3131, metavar="PORT",
                       help="management API and console port (default 3131)")  # fmt: skip
    group.add_argument("--listen-all", action="store_true",
                       help="bind the API and console on 0.0.0.0 instead of 127.0.0.1")  # fmt: skip
    group.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="also answer requests addressed to this host name on the "
                            "loopback-bound API and console (repeatable; '*': any name; "
                            "others are refused against DNS rebinding)")  # fmt: skip
    group.add_argument("--api-key", action="append", default=[], metavar="KEY",
                       help="require this key on :9337 (Authorization: Bearer or x-api-key) "
                            "and on :3131's mutating routes (repeatable; also "
                            "MESH_LLM_API_KEY, --api-key-file)")  # fmt: skip
    group.add_argument("--api-key-file", type=Path, metavar="PATH",
                       help="file of accepted API keys, one per line")  # fmt: skip
    group.add_argument("--max-vram", type=float, metavar="GB",
                       help="cap the memory this node offers (GB = 1e9 bytes)")  # fmt: skip
    group.add_argument("--ctx-size", type=int, metavar="N",
                       help="llama-server context size (default: from free memory)")  # fmt: skip
    group.add_argument("--parallel", type=int, default=8, metavar="N",
                       help="concurrent request slots per llama-server (default 8)")  # fmt: skip
    group.add_argument("--bin-dir", type=Path, metavar="DIR",
                       help="dir of llama-server, rpc-server (env MESH_LLM_BIN_DIR)")  # fmt: skip
    group.add_argument("--backend", choices=["cpu", "cuda", "metal", "vulkan", "hip"],
                       help="llama.cpp backend to build/use (default: detected)")  # fmt: skip
    group.add_argument("--chat-template-file", type=Path, metavar="PATH",
                       help="Jinja chat template for every model (default: the catalog's, "
                            "else the GGUF's own)")  # fmt: skip
    group.add_argument("--embeddings", action="store_true",
                       help="also answer /v1/embeddings for chat models (a second "
                            "llama-server per model; embedding models always do)")  # fmt: skip
    group.add_argument("--no-model-substitution", action="store_true",
                       help="answer a request for a model the mesh does not serve with 404 "
                            "model_not_found instead of another model (missing or 'auto' "
                            "names are still routed)")  # fmt: skip
    group.add_argument("--cold-start-timeout", type=float, default=120.0, metavar="SECS",
                       help="how long a request for a model nobody serves waits while a "
                            "node that has it loads it (default 120; 0: no wait)")  # fmt: skip
    group.add_argument("--no-standby", action="store_true",
                       help="with no --model: only relay, never pick or promote to "
                            "a model")  # fmt: skip
    mesh = parser.add_argument_group("mesh")
    mesh.add_argument("-j", "--join", action="append", default=[], metavar="TOKEN",
                      help="join a mesh by invite token (repeatable; tried in order)")  # fmt: skip
    mesh.add_argument("--join-file", type=Path, metavar="PATH",
                      help="invite tokens to join, one per line (kept out of ps; also "
                           "MESH_LLM_JOIN)")  # fmt: skip
    mesh.add_argument("--mesh-secret", metavar="SECRET",
                      help="private mesh: admit only nodes that know SECRET (carried in this "
                           "node's invite token; never published; also --mesh-secret-file, "
                           "MESH_LLM_MESH_SECRET)")  # fmt: skip
    mesh.add_argument("--mesh-secret-file", type=Path, metavar="PATH",
                      help="file whose first line is the mesh secret (kept out of ps)")  # fmt: skip
    mesh.add_argument("--client", action="store_true",
                      help="run no models; route every request to the mesh")  # fmt: skip
    mesh.add_argument("--split", action="store_true",
                      help="split the first model across mesh workers even if it fits")  # fmt: skip
    mesh.add_argument("--mesh-name", metavar="NAME",
                      help="name of the mesh this node starts (stable mesh id)")  # fmt: skip
    mesh.add_argument("--auto", action="store_true",
                      help="find a mesh on Nostr and join it (probing each listing), or start "
                           "one and publish it")  # fmt: skip
    mesh.add_argument("--publish", action="store_true",
                      help="publish this mesh on Nostr so --auto nodes can find it")  # fmt: skip
    mesh.add_argument("--nostr-relay", action="append", default=[], metavar="URL",
                      help="Nostr relay for publishing and discovery (repeatable; default: "
                           "public relays)")  # fmt: skip
    mesh.add_argument("--max-clients", type=int, default=0, metavar="N",
                      help="unlist the mesh while N clients are connected (0: no cap)")  # fmt: skip
    mesh.add_argument("--region", metavar="R", help="region named in the Nostr listing")
    mesh.add_argument("--relay", action="append", default=[], metavar="URL",
                      help="iroh relay URL (repeatable; default: public relays)")  # fmt: skip
    mesh.add_argument("--no-relay", action="store_true",
                      help="no relays: direct addresses only")  # fmt: skip
    mesh.add_argument("--bind-ip", metavar="IP",
                      help="IP address of the QUIC socket (e.g. 127.0.0.1)")  # fmt: skip
    mesh.add_argument("--bind-port", type=int, metavar="PORT",
                      help="UDP port of the QUIC socket (default: ephemeral)")  # fmt: skip
    group.add_argument("--device", metavar="DEV",
                       help="rpc-server device, e.g. CUDA0 or CPU (default: detected)")  # fmt: skip


def config_from_args(args: argparse.Namespace) -> NodeConfig:
    for port_name in ("port", "console"):
        value = getattr(args, port_name)
        if not 0 <= value <= 65535:
            raise ConfigError(f"--{port_name} {value} is not a valid port")
    if args.max_vram is not None and args.max_vram < 0:
        raise ConfigError("--max-vram must be >= 0")
    if args.ctx_size is not None and args.ctx_size < 256:
        raise ConfigError("--ctx-size must be at least 256")
    if args.cold_start_timeout < 0:
        raise ConfigError("--cold-start-timeout must be >= 0")
    if args.parallel < 1:
        raise ConfigError("--parallel must be at least 1")
    if args.client and (args.model or args.gguf):
        raise ConfigError("--client runs no models: drop --model/--gguf, or drop --client")
    if args.bind_port is not None and not 0 <= args.bind_port <= 65535:
        raise ConfigError(f"--bind-port {args.bind_port} is not a valid port")
    for path in args.gguf:
        if not path.is_file():
            raise ConfigError(f"--gguf {path}: no such file")
    if args.chat_template_file is not None and not args.chat_template_file.is_file():
        raise ConfigError(f"--chat-template-file {args.chat_template_file}: no such file")
    allowed_hosts = []
    for name in args.allow_host:
        try:
            allowed_hosts.append(allowed_host_name(name))
        except ValueError as exc:
            raise ConfigError(f"--allow-host: {exc}") from None
    fast = environment.fast_path(os.environ)
    join = join_tokens(args.join, args.join_file, os.environ)
    secret = mesh_secret(args.mesh_secret, args.mesh_secret_file, os.environ)
    private = secret is not None or tokens_carry_secret(join)
    if private and args.publish:
        raise ConfigError(
            "--publish: a private mesh (--mesh-secret, or an invite token carrying one) is never "
            "published on Nostr"
        )
    if private and args.auto:
        raise ConfigError(
            "--auto finds and starts public meshes; a private mesh (--mesh-secret) is joined "
            "with its invite token (--join, --join-file)"
        )
    return NodeConfig(
        models=tuple(args.model),
        gguf=tuple(args.gguf),
        port=args.port,
        console_port=args.console,
        listen_all=args.listen_all,
        allowed_hosts=tuple(allowed_hosts),
        max_vram_gb=args.max_vram,
        ctx_size=args.ctx_size,
        bin_dir=environment.bin_dir(args.bin_dir, os.environ),
        device=args.device,
        backend=args.backend,
        build=BuildOptions.from_environ(os.environ),
        parallel=args.parallel,
        client=args.client,
        split=args.split,
        join=join,
        mesh_secret=secret,
        api_keys=api_keys(args.api_key, args.api_key_file, os.environ),
        relays=tuple(args.relay),
        no_relay=args.no_relay,
        bind_ip=args.bind_ip,
        bind_port=args.bind_port,
        mesh_name=args.mesh_name,
        publish=args.publish,
        auto=args.auto,
        nostr_relays=tuple(args.nostr_relay),
        max_clients=args.max_clients,
        region=args.region,
        discovery_timing=DiscoveryTiming().scaled(environment.discovery_time_scale(os.environ)),
        chat_template_file=(
            args.chat_template_file.resolve() if args.chat_template_file is not None else None
        ),
        embeddings=args.embeddings,
        model_substitution=not args.no_model_substitution,
        cold_start_timeout=args.cold_start_timeout,
        standby=not args.no_standby,
        ephemeral_key=environment.ephemeral_key(os.environ),
        iroh_fast=fast.iroh_fast,
        native_relay=fast.native_relay,
    )


def tokens_carry_secret(tokens: tuple[str, ...]) -> bool:
    """Whether any invite token carries a mesh key (malformed ones are reported later)."""
    for token in tokens:
        with contextlib.suppress(ProtocolError):
            if decode_invite(token).mesh_key is not None:
                return True
    return False


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    config = config_from_args(args)
    if not config.models and not config.gguf and not config.client and not config.join:
        parser.print_help()
        return 0
    warning = exposure_warning(
        listen_all=config.listen_all,
        has_api_key=bool(config.api_keys),
        port=config.port,
        console_port=config.console_port,
    )
    if warning is not None:
        print(warning, file=sys.stderr)
    return asyncio.run(Node(config).run())
