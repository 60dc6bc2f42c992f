"""Invite tokens and API keys from files and the environment (kept out of ``ps``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mesh_llm.cli.commands.run import config_from_args
from mesh_llm.cli.credentials import api_keys, exposure_warning, join_tokens
from mesh_llm.cli.main import build_parser
from mesh_llm.errors import ConfigError


def test_join_tokens_order_argv_file_env_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "invite"
    path.write_text("# mesh of the lab\n\n  tok-file-1  \ntok-argv\ntok-file-2\n")
    env = {"MESH_LLM_JOIN": "tok-env-1, tok-env-2\ntok-file-1"}
    assert join_tokens(["tok-argv"], path, env) == (
        "tok-argv",
        "tok-file-1",
        "tok-file-2",
        "tok-env-1",
        "tok-env-2",
    )
    assert join_tokens([], None, {}) == ()


def test_join_file_errors_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--join-file .*missing"):
        join_tokens([], tmp_path / "missing", {})
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no value"):
        join_tokens([], empty, {})


def test_api_keys_from_argv_file_and_env(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("k-file\n")
    assert api_keys(["k-argv"], path, {"MESH_LLM_API_KEY": "k-env"}) == (
        "k-argv",
        "k-file",
        "k-env",
    )
    with pytest.raises(ConfigError, match="no whitespace"):
        api_keys(["a\tb"], None, {})


def test_run_flags_reach_the_node_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "invite"
    path.write_text("tok-file\n")
    monkeypatch.setitem(os.environ, "MESH_LLM_JOIN", "tok-env")
    monkeypatch.setitem(os.environ, "MESH_LLM_API_KEY", "k-env")
    args = build_parser().parse_args(
        ["--client", "--join-file", str(path), "--api-key", "k1", "--api-key", "k2"]
    )
    config = config_from_args(args)
    assert config.join == ("tok-file", "tok-env")
    assert config.api_keys == ("k1", "k2", "k-env")


def test_listen_all_without_a_key_names_the_risk() -> None:
    warning = exposure_warning(listen_all=True, has_api_key=False, port=9337, console_port=3131)
    assert warning is not None
    assert "9337" in warning
    assert "3131" in warning
    assert "invite token" in warning
    assert "--api-key" in warning
    assert exposure_warning(listen_all=True, has_api_key=True, port=1, console_port=2) is None
    assert exposure_warning(listen_all=False, has_api_key=False, port=1, console_port=2) is None


def test_mesh_secret_from_argv_file_or_env(tmp_path: Path) -> None:
    from mesh_llm.cli.credentials import mesh_secret

    path = tmp_path / "secret"
    path.write_text("# the lab's mesh\n  file secret words \n")
    env = {"MESH_LLM_MESH_SECRET": " env secret words "}
    assert mesh_secret("argv secret", None, env) == "argv secret"
    assert mesh_secret(None, path, env) == "file secret words"
    assert mesh_secret(None, None, env) == "env secret words"
    assert mesh_secret(None, None, {}) is None
    with pytest.raises(ConfigError, match="not both"):
        mesh_secret("x", path, {})
    with pytest.raises(ConfigError, match="empty"):
        mesh_secret("  ", None, {})


def test_a_private_mesh_is_never_published_nor_auto(tmp_path: Path) -> None:
    from mesh_llm.protocol import EndpointAddrInfo, encode_token

    parser = build_parser()
    with pytest.raises(ConfigError, match="never published"):
        config_from_args(parser.parse_args(["--mesh-secret", "s3cret-words", "--publish"]))
    with pytest.raises(ConfigError, match="--auto"):
        config_from_args(parser.parse_args(["--mesh-secret", "s3cret-words", "--auto"]))
    token = encode_token(EndpointAddrInfo.create("ab" * 32, ip_addrs=["10.0.0.1:4"]), bytes(32))
    with pytest.raises(ConfigError, match="never published"):
        config_from_args(parser.parse_args(["--join", token, "--client", "--publish"]))
    config = config_from_args(parser.parse_args(["--join", token, "--client"]))
    assert config.mesh_secret is None
    config = config_from_args(parser.parse_args(["--mesh-secret", "s3cret-words", "--client"]))
    assert config.mesh_secret == "s3cret-words"


def test_allow_host_names_are_normalised_and_bad_ones_refused() -> None:
    parser = build_parser()
    config = config_from_args(
        parser.parse_args(["--client", "--allow-host", "My-Box.LAN", "--allow-host", "[::2]"])
    )
    assert config.allowed_hosts == ("my-box.lan", "::2")
    assert config_from_args(parser.parse_args(["--client"])).allowed_hosts == ()
    with pytest.raises(ConfigError, match="--allow-host: 'box:9337': give the name only"):
        config_from_args(parser.parse_args(["--client", "--allow-host", "box:9337"]))
    with pytest.raises(ConfigError, match="--allow-host"):
        config_from_args(parser.parse_args(["--client", "--allow-host", "http://box/"]))
