"""Invite tokens, API keys and the mesh secret from places other than argv.

A token, key or secret on the command line is visible to every user of the machine (``ps``), so
each can also come from a file (``--join-file``, ``--api-key-file``, ``--mesh-secret-file``) or
the environment (``MESH_LLM_JOIN``, ``MESH_LLM_API_KEY``, ``MESH_LLM_MESH_SECRET``). Files
hold one value per line; blank lines and lines starting with ``#`` are ignored. Environment
values are separated by commas or whitespace (the mesh secret's is taken whole).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from mesh_llm.errors import ConfigError

__all__ = [
    "API_KEY_ENV",
    "JOIN_ENV",
    "MESH_SECRET_ENV",
    "api_keys",
    "join_tokens",
    "mesh_secret",
    "read_values_file",
]

JOIN_ENV = "MESH_LLM_JOIN"
MESH_SECRET_ENV = "MESH_LLM_MESH_SECRET"
API_KEY_ENV = "MESH_LLM_API_KEY"
_SEPARATORS = re.compile(r"[\s,]+")


def read_values_file(path: Path, flag: str) -> list[str]:
    """The non-blank, non-comment lines of ``path`` (stripped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{flag} {path}: not a UTF-8 text file") from exc
    values = [line.strip() for line in text.splitlines()]
    values = [v for v in values if v and not v.startswith("#")]
    if not values:
        raise ConfigError(f"{flag} {path}: the file holds no value")
    return values


def _env_values(environ: Mapping[str, str], name: str) -> list[str]:
    return [v for v in _SEPARATORS.split(environ.get(name, "")) if v]


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def join_tokens(
    argv_tokens: Iterable[str], join_file: Path | None, environ: Mapping[str, str]
) -> tuple[str, ...]:
    """Tokens to try, in order: ``--join`` values, then ``--join-file``'s lines, then
    ``MESH_LLM_JOIN``'s (duplicates dropped)."""
    from_file = read_values_file(join_file, "--join-file") if join_file is not None else []
    return _unique([*argv_tokens, *from_file, *_env_values(environ, JOIN_ENV)])


def api_keys(
    argv_keys: Iterable[str], key_file: Path | None, environ: Mapping[str, str]
) -> tuple[str, ...]:
    """Accepted API keys: ``--api-key`` values, ``--api-key-file``'s lines and
    ``MESH_LLM_API_KEY``'s."""
    from_file = read_values_file(key_file, "--api-key-file") if key_file is not None else []
    keys = _unique([*argv_keys, *from_file, *_env_values(environ, API_KEY_ENV)])
    for key in keys:
        if any(ch.isspace() or not ch.isprintable() for ch in key):
            raise ConfigError("an API key must be printable and contain no whitespace")
    return keys


def mesh_secret(
    argv_secret: str | None, secret_file: Path | None, environ: Mapping[str, str]
) -> str | None:
    """The private mesh's secret: ``--mesh-secret``, else the first line of
    ``--mesh-secret-file``, else ``MESH_LLM_MESH_SECRET``; None: no secret given."""
    if argv_secret is not None and secret_file is not None:
        raise ConfigError("give either --mesh-secret or --mesh-secret-file, not both")
    if argv_secret is not None:
        secret = argv_secret
    elif secret_file is not None:
        secret = read_values_file(secret_file, "--mesh-secret-file")[0]
    else:
        secret = environ.get(MESH_SECRET_ENV, "")
        if not secret.strip():
            return None
    secret = secret.strip()
    if not secret:
        raise ConfigError("--mesh-secret is empty")
    return secret


def exposure_warning(
    *, listen_all: bool, has_api_key: bool, port: int, console_port: int
) -> str | None:
    """What ``--listen-all`` without ``--api-key`` exposes, or None when nothing is."""
    if not listen_all or has_api_key:
        return None
    return (
        "WARNING: --listen-all without --api-key: anyone who can reach this machine on ports "
        f"{port} and {console_port} can use this node's models and the whole mesh's, and read "
        "its status, including the mesh's invite token. Set --api-key, --api-key-file or "
        f"{API_KEY_ENV} to require a key."
    )
