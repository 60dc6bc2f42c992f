"""The environment switches reach the node as configuration values, read by the CLI only."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh_llm.cli.commands.run import config_from_args
from mesh_llm.cli.environment import (
    BIN_DIR_ENV,
    DISCOVERY_TIME_SCALE_ENV,
    EPHEMERAL_KEY_ENV,
    IROH_FAST_ENV,
    NATIVE_RELAY_ENV,
    FastPath,
    bin_dir,
    discovery_time_scale,
    ephemeral_key,
    fast_path,
    switched_off,
)
from mesh_llm.cli.main import build_parser
from mesh_llm.discovery import DiscoveryTiming
from mesh_llm.errors import ConfigError
from mesh_llm.runtime import NodeConfig

_SWITCHES = (
    IROH_FAST_ENV,
    NATIVE_RELAY_ENV,
    BIN_DIR_ENV,
    EPHEMERAL_KEY_ENV,
    DISCOVERY_TIME_SCALE_ENV,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _SWITCHES:
        monkeypatch.delenv(name, raising=False)


def _config(argv: list[str] | None = None) -> NodeConfig:
    return config_from_args(build_parser().parse_args(argv or ["--client"]))


def test_the_names_are_the_documented_ones() -> None:
    assert IROH_FAST_ENV == "MESH_LLM_IROH_FAST"
    assert NATIVE_RELAY_ENV == "MESH_LLM_NATIVE_RELAY"
    assert BIN_DIR_ENV == "MESH_LLM_BIN_DIR"
    assert EPHEMERAL_KEY_ENV == "MESH_LLM_EPHEMERAL_KEY"


@pytest.mark.parametrize("word", ["0", "off", "false", "No", " OFF \n"])
def test_these_words_switch_off(word: str) -> None:
    assert switched_off({IROH_FAST_ENV: word}, IROH_FAST_ENV)


@pytest.mark.parametrize("word", ["", "1", "on", "yes", "true", "anything"])
def test_anything_else_leaves_it_on(word: str) -> None:
    assert not switched_off({IROH_FAST_ENV: word}, IROH_FAST_ENV)
    assert not switched_off({}, IROH_FAST_ENV)


def test_each_fast_path_switch_is_its_own() -> None:
    assert fast_path({}) == FastPath(iroh_fast=True, native_relay=True)
    assert fast_path({IROH_FAST_ENV: "0"}) == FastPath(iroh_fast=False, native_relay=True)
    assert fast_path({NATIVE_RELAY_ENV: "0"}) == FastPath(iroh_fast=True, native_relay=False)
    both = {IROH_FAST_ENV: "0", NATIVE_RELAY_ENV: "off"}
    assert fast_path(both) == FastPath(iroh_fast=False, native_relay=False)


def test_without_the_variables_the_node_runs_the_fast_path() -> None:
    config = _config()
    assert config.iroh_fast
    assert config.native_relay
    assert config.bin_dir is None
    assert not config.ephemeral_key


@pytest.mark.parametrize(
    ("env", "iroh_fast", "native_relay"),
    [
        ({IROH_FAST_ENV: "0"}, False, True),
        ({NATIVE_RELAY_ENV: "0"}, True, False),
        ({IROH_FAST_ENV: "0", NATIVE_RELAY_ENV: "0"}, False, False),  # make test's second run
        ({IROH_FAST_ENV: "1", NATIVE_RELAY_ENV: "1"}, True, True),
    ],
)
def test_the_cli_maps_the_variables_to_the_node_config(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], iroh_fast: bool, native_relay: bool
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = _config(["--model", "m"])
    assert (config.iroh_fast, config.native_relay) == (iroh_fast, native_relay)


def test_bin_dir_flag_wins_over_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BIN_DIR_ENV, str(tmp_path / "env"))
    assert _config().bin_dir == tmp_path / "env"
    assert _config(["--client", "--bin-dir", str(tmp_path / "flag")]).bin_dir == tmp_path / "flag"
    assert bin_dir(None, {BIN_DIR_ENV: "~/llama"}) == Path("~/llama").expanduser()
    assert bin_dir(None, {BIN_DIR_ENV: ""}) is None


def test_ephemeral_key_from_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not ephemeral_key({EPHEMERAL_KEY_ENV: ""})
    monkeypatch.setenv(EPHEMERAL_KEY_ENV, "1")
    assert _config().ephemeral_key


def test_discovery_time_scale_reaches_the_config_as_scaled_intervals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert DISCOVERY_TIME_SCALE_ENV == "MESH_LLM_DISCOVERY_TIME_SCALE"
    monkeypatch.delenv(DISCOVERY_TIME_SCALE_ENV, raising=False)
    assert _config().discovery_timing == DiscoveryTiming()
    monkeypatch.setenv(DISCOVERY_TIME_SCALE_ENV, " 0.1 ")
    timing = _config().discovery_timing
    assert timing.publish_interval == pytest.approx(6.0)
    assert timing.watchdog_interval == pytest.approx((2.0, 3.5))
    assert timing.watchdog_recheck == pytest.approx((0.3, 1.0))
    assert timing.lonely_after == pytest.approx(9.0)
    assert DiscoveryTiming().publish_interval == 60.0  # the reference's, unscaled


@pytest.mark.parametrize("bad", ["0", "-1", "fast", "nan", "inf"])
def test_a_bad_discovery_time_scale_is_a_clear_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"MESH_LLM_DISCOVERY_TIME_SCALE.*positive number"):
        discovery_time_scale({DISCOVERY_TIME_SCALE_ENV: bad})
    assert discovery_time_scale({DISCOVERY_TIME_SCALE_ENV: ""}) == 1.0
