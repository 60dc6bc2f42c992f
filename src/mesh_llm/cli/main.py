"""``mesh-llm``: parse argv and dispatch. Nothing else in the project parses argv."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mesh_llm import __version__
from mesh_llm.cli.argv import UsageError, check_argv
from mesh_llm.cli.commands import backend as backend_cmd
from mesh_llm.cli.commands import discover as discover_cmd
from mesh_llm.cli.commands import models as models_cmd
from mesh_llm.cli.commands import run as run_cmd
from mesh_llm.cli.commands import runtime as runtime_cmd
from mesh_llm.errors import MeshLlmError

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
Pool spare GPU and CPU capacity across machines behind one OpenAI-compatible API.

  mesh-llm --model SmolLM2-135M-Instruct     serve a model on http://localhost:9337/v1
  mesh-llm models list                       the model catalog
  mesh-llm load NAME | unload NAME | status  manage the running node's models
  mesh-llm backend install                   build or locate llama.cpp
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mesh-llm",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mesh-llm {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: info)",
    )
    run_cmd.add_run_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models_cmd.add_parser(sub)
    backend_cmd.add_parser(sub)
    discover_cmd.add_parser(sub)
    runtime_cmd.add_parsers(sub)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    # huggingface_hub installs its own stderr handler and also propagates to ours: without this,
    # each of its warnings is printed twice.
    logging.getLogger("huggingface_hub").handlers.clear()


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args_list:
        parser.print_help()
        return 0
    try:
        check_argv(parser, args_list)
    except UsageError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        print(f"run `{exc.prog} --help` for what it takes", file=sys.stderr)
        return 2
    args = parser.parse_args(args_list)
    _configure_logging(args.log_level)
    try:
        if args.command == "models":
            return models_cmd.run(args)
        if args.command == "backend":
            return backend_cmd.run(args)
        if args.command == "discover":
            return discover_cmd.run(args)
        if args.command in ("load", "unload", "drop", "status"):
            return runtime_cmd.run(args)
        return run_cmd.run(args, parser)
    except MeshLlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
