"""argv checks: unknown flags and commands are named, with a suggestion when one is close."""

from __future__ import annotations

import pytest

from mesh_llm.cli.argv import UsageError, check_argv, suggest
from mesh_llm.cli.main import build_parser, main


def _error(argv: list[str]) -> UsageError:
    with pytest.raises(UsageError) as excinfo:
        check_argv(build_parser(), argv)
    return excinfo.value


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "X"], "unrecognized argument --models; did you mean --model?"),
        (["-m", "X"], "unrecognized argument -m; did you mean --model?"),
        (["--api-port", "9340"], "unrecognized argument --api-port; did you mean --port?"),
        (["--modle", "X"], "unrecognized argument --modle; did you mean --model?"),
        (["--model", "X", "--prot", "1"], "unrecognized argument --prot; did you mean --port?"),
        (["--client", "--jion", "T"], "unrecognized argument --jion; did you mean --join?"),
        (["--bind-prot=5"], "unrecognized argument --bind-prot; did you mean --bind-port?"),
        (["--frobnicate"], "unrecognized argument --frobnicate"),
        (["modles", "list"], "unknown command 'modles'; did you mean models?"),
        (["models", "lst"], "unknown command 'lst' for `mesh-llm models`; did you mean list?"),
        (["backend", "info", "--jsn"], "unrecognized argument --jsn for `mesh-llm backend info`"),
        (["--client", "X"], "unexpected argument 'X': --client takes no value"),
        (["SmolLM2"], "unknown command 'SmolLM2'; to serve a model: mesh-llm --model SmolLM2"),
    ],
)
def test_mistakes_are_named(argv: list[str], message: str) -> None:
    assert str(_error(argv)).startswith(message)


def test_the_suggestion_for_a_subcommand_flag() -> None:
    assert str(_error(["backend", "info", "--jsn"])).endswith("did you mean --json?")
    assert _error(["models", "lst"]).prog == "mesh-llm models"
    assert _error(["--models", "X"]).prog == "mesh-llm"


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "X"],
        ["--model=X", "--port", "9340", "--console=3132"],
        ["-jTOKEN", "--client"],
        ["--listen", "--model", "X"],  # argparse's unique-prefix abbreviation
        ["--max-vram", "-1", "--model", "X"],
        ["--log-level", "debug", "models", "list"],
        ["models", "show", "SmolLM2"],
        ["models", "download", "SmolLM2", "--draft", "--quiet"],
        ["backend", "info", "--json"],
        ["--model", "X", "--", "--whatever"],
    ],
)
def test_valid_command_lines_pass(argv: list[str]) -> None:
    check_argv(build_parser(), argv)


def test_suggest_is_none_for_a_distant_word() -> None:
    assert suggest("--frobnicate", ["--model", "--port"]) is None
    assert suggest("-m", ["--model", "--port"]) == "--model"


def test_main_prints_one_error_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models", "X"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "mesh-llm: error: unrecognized argument --models; did you mean --model?",
        "run `mesh-llm --help` for what it takes",
    ]
