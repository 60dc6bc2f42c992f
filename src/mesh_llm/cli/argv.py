"""Checks argv before argparse does, so a mistyped flag is named as such.

argparse files an unknown option away and reads its value as the sub-command:
``mesh-llm --models X`` used to answer "argument COMMAND: invalid choice: 'X'", which hides the real
mistake. :func:`check_argv` walks argv against the parser's own option table (the sub-commands'
tables after a sub-command) and reports the first unknown flag or command, with a "did you mean"
when one is close. Everything it accepts is still parsed (and type-checked) by argparse.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence

from mesh_llm.errors import ConfigError

__all__ = ["UsageError", "check_argv", "suggest"]

# Flags other tools use (llama.cpp, Ollama, the original's sub-commands) and the flag meant here.
_HINTS: dict[str, str] = {
    "-m": "--model",
    "--models": "--model",
    "--api-port": "--port",
    "--http-port": "--port",
    "--openai-port": "--port",
    "-p": "--port",
    "--console-port": "--console",
    "--management-port": "--console",
    "--host": "--listen-all",
    "-c": "--ctx-size",
    "--ctx": "--ctx-size",
    "--context-size": "--ctx-size",
    "--n-ctx": "--ctx-size",
    "-np": "--parallel",
    "--token": "--join",
    "--invite": "--join",
}


class UsageError(ConfigError):
    """A command line argparse would misreport; the message names the argument at fault."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog  # the (sub-)command whose --help lists what it takes


def suggest(word: str, choices: Sequence[str]) -> str | None:
    """The choice closest to ``word``, if one is close enough to be a likely typo."""
    hint = _HINTS.get(word)
    if hint is not None and hint in choices:
        return hint
    lowered = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    best = suggest(word, choices)
    return f"; did you mean {best}?" if best is not None else ""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _positionals(parser: argparse.ArgumentParser) -> int:
    """How many positional words the parser itself takes (-1: any number)."""
    count = 0
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        if action.nargs in (None, "?"):
            count += 1
        elif isinstance(action.nargs, int):
            count += action.nargs
        else:
            return -1
    return count


def _lookup(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    table = parser._option_string_actions
    if flag in table:
        return table[flag]
    if flag.startswith("--") and parser.allow_abbrev:
        matches = {table[name] for name in table if name.startswith(flag)}
        if len(matches) == 1:
            return matches.pop()
    return None


def _takes(action: argparse.Action) -> int:
    """How many following words an option consumes (-1: up to the next flag)."""
    nargs = action.nargs
    if nargs is None:
        return 1
    if isinstance(nargs, int):
        return nargs
    return -1


def _is_flag(word: str) -> bool:
    if not word.startswith("-") or word == "-":
        return False
    try:
        float(word)
    except ValueError:
        return True
    return False


def _serve_hint(word: str, prog: str) -> str:
    return "" if prog else f"; to serve a model: mesh-llm --model {word}"


def _long_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [name for name in parser._option_string_actions if name.startswith("--")]


def check_argv(parser: argparse.ArgumentParser, argv: Sequence[str], prog: str = "") -> None:
    """Raise :class:`UsageError` for the first unknown flag or command in ``argv``."""
    where = prog or parser.prog
    commands = _subcommands(parser)
    free = _positionals(parser)
    last_flag: str | None = None
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return
        if _is_flag(word):
            flag, has_value, _ = word.partition("=")
            action = _lookup(parser, flag)
            if action is None and not flag.startswith("--") and len(flag) > 2:
                action = _lookup(parser, flag[:2])  # -jTOKEN
                has_value = "=" if action is not None and _takes(action) != 0 else has_value
            if action is None:
                raise UsageError(
                    f"unrecognized argument {flag}"
                    + (f" for `{where}`" if prog else "")
                    + _did_you_mean(flag, _long_flags(parser)),
                    where,
                )
            i += 1
            if has_value:
                last_flag = None
                continue
            takes = _takes(action)
            if takes < 0:
                while i < len(argv) and not _is_flag(argv[i]):
                    i += 1
            else:
                i += takes
            last_flag = flag if takes == 0 else None
            continue
        if commands:
            if word in commands:
                check_argv(commands[word], argv[i + 1 :], f"{where} {word}")
                return
            if last_flag is not None:
                raise UsageError(f"unexpected argument {word!r}: {last_flag} takes no value", where)
            raise UsageError(
                f"unknown command {word!r}"
                + (f" for `{where}`" if prog else "")
                + (_did_you_mean(word, list(commands)) or _serve_hint(word, prog))
                + f" (commands: {', '.join(commands)})",
                where,
            )
        if free == 0:
            detail = f"{last_flag} takes no value" if last_flag else f"`{where}` takes none"
            raise UsageError(f"unexpected argument {word!r}: {detail}", where)
        free -= 1 if free > 0 else 0
        last_flag = None
        i += 1
