"""Command-line interface: argument parsing, command handlers, logging set-up."""

from mesh_llm.cli.main import main

__all__ = ["main"]
