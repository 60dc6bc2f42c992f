"""``mesh-llm models``: browse the catalog, list, inspect and download models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence

from mesh_llm.errors import MeshLlmError, ModelNotFoundError
from mesh_llm.models import (
    CatalogEntry,
    GgufInfo,
    ResolvedModel,
    catalog_entries,
    find_catalog_entry,
    find_installed,
    format_size,
    installed_models,
    read_gguf_info,
    resolve_model,
    search,
)

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``models`` and its sub-commands."""
    parser = subparsers.add_parser(
        "models",
        help="browse the model catalog, list, inspect and download models",
        description="Browse the model catalog, list installed models, inspect and download models.",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="COMMAND")
    sub.add_parser("list", help="list the catalog, marking installed models")
    sub.add_parser(
        "installed", help="list GGUF models on disk (model store and Hugging Face cache)"
    )
    search_p = sub.add_parser("search", help="catalog entries whose name or file contains QUERY")
    search_p.add_argument("query", metavar="QUERY")
    show = sub.add_parser("show", help="catalog facts and GGUF metadata of a model")
    show.add_argument("name", metavar="NAME", help="catalog name, installed name, path or HF ref")
    download = sub.add_parser("download", help="download a model and print its path")
    download.add_argument(
        "name", metavar="NAME", nargs="?", help="catalog name, HF URL or org/repo/file.gguf"
    )
    download.add_argument("--draft", action="store_true", help="also fetch its draft model")
    download.add_argument("--quiet", action="store_true", help="no progress bars")


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines: list[str] = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


def _catalog_rows(entries: Iterable[CatalogEntry]) -> list[list[str]]:
    rows = [["", "NAME", "SIZE", "DESCRIPTION"]]
    for entry in entries:
        mark = "*" if find_installed(entry) is not None else ""
        desc = entry.description + (" [draft]" if entry.is_draft else "")
        rows.append([mark, entry.name, entry.size_label, desc])
    return rows


def _cmd_list() -> int:
    for line in _table(_catalog_rows(catalog_entries())):
        print(line)
    print("\n* installed. Fetch one with `mesh-llm models download NAME`.")
    return 0


def _cmd_search(query: str) -> int:
    hits = search(query)
    if not hits:
        raise ModelNotFoundError(f"no catalog model matches {query!r}")
    for line in _table(_catalog_rows(hits)):
        print(line)
    return 0


def _cmd_installed() -> int:
    models = installed_models()
    if not models:
        print("no models installed; fetch one with `mesh-llm models download NAME`")
        return 0
    rows = [["NAME", "SIZE", "PATH"]]
    rows += [[m.name, format_size(m.size), str(m.path)] for m in models]
    for line in _table(rows):
        print(line)
    return 0


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _gguf_lines(info: GgufInfo) -> list[tuple[str, str]]:
    experts = "-"
    if info.expert_count is not None:
        experts = f"{info.expert_count} (top-{_opt(info.expert_used_count)})"
        experts += ", MoE" if info.is_moe else ""
    return [
        ("architecture", info.architecture),
        ("general.name", _opt(info.name)),
        ("layers", _opt(info.block_count)),
        ("context length", _opt(info.context_length)),
        ("embedding length", _opt(info.embedding_length)),
        ("attention heads", _opt(info.head_count)),
        ("experts", experts),
        ("quantization", _opt(info.quantization)),
        ("vocab size", _opt(info.vocab_size)),
        ("tensors", str(info.tensor_count)),
        ("split parts", str(info.split_count)),
        ("chat template", "yes" if info.has_chat_template else "no"),
        ("file size", f"{format_size(info.file_size)} ({info.file_size} bytes)"),
        ("path", str(info.path)),
    ]


def _cmd_show(name: str) -> int:
    resolved: ResolvedModel | None = None
    try:
        resolved = resolve_model(name, download=False, progress=False)
    except ModelNotFoundError:
        if find_catalog_entry(name) is None:
            raise
    entry = resolved.catalog_entry if resolved is not None else find_catalog_entry(name)
    lines: list[tuple[str, str]] = []
    if entry is not None:
        lines += [
            ("name", entry.name),
            ("description", entry.description),
            ("catalog size", entry.size_label),
            (
                "file",
                entry.file + (f" (+{len(entry.extra_files)} parts)" if entry.extra_files else ""),
            ),
            ("url", entry.url),
            ("draft", _opt(entry.draft) + (" (this is a draft model)" if entry.is_draft else "")),
        ]
        if entry.moe is not None:
            moe = entry.moe
            lines.append(
                (
                    "moe",
                    f"{moe.n_expert} experts, top-{moe.n_expert_used}, "
                    f"min {moe.min_experts_per_node} per node",
                )
            )
        if entry.mmproj is not None:
            lines.append(("projector", entry.mmproj.url))
    if resolved is None:
        lines.append(("installed", "no (`mesh-llm models download NAME` fetches it)"))
    else:
        if entry is None:
            lines.append(("name", resolved.name))
        lines.append(("installed", "yes"))
        lines += _gguf_lines(read_gguf_info(resolved.path))
        if resolved.mmproj is not None:
            lines.append(("projector path", str(resolved.mmproj)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0


def _cmd_download(name: str | None, *, draft: bool, quiet: bool) -> int:
    if name is None:
        return _cmd_list()
    resolved = resolve_model(name, download=True, progress=not quiet)
    print(resolved.path)
    entry = resolved.catalog_entry
    if draft:
        if entry is None or entry.draft is None:
            print(f"note: {resolved.name} has no draft model", file=sys.stderr)
        else:
            print(resolve_model(entry.draft, download=True, progress=not quiet).path)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the ``models`` sub-command in ``args``; returns the process exit code."""
    command = getattr(args, "models_command", None) or "list"
    try:
        match command:
            case "list":
                return _cmd_list()
            case "installed":
                return _cmd_installed()
            case "search":
                return _cmd_search(args.query)
            case "show":
                return _cmd_show(args.name)
            case "download":
                return _cmd_download(args.name, draft=args.draft, quiet=args.quiet)
            case _:
                print(f"error: unknown models command {command!r}", file=sys.stderr)
                return 2
    except MeshLlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
