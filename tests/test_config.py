"""Each option is checked when the config is built: a bad value is refused at start."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from discovery.cli import main
from discovery.config import ServerConfig, add_server_options, config_from_args, options
from discovery.core.directory import DirectoryLimits
from discovery.core.joins import JoinPolicy
from discovery.core.model import AnnounceMode
from discovery.core.quota import QuotaPolicy


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"join_page_size": -1}, "--join-page-size must be positive"),
        ({"max_hashes_per_request": 0}, "--max-hashes-per-request must be positive"),
        ({"quota_capacity": -5}, "--quota-capacity must be 0 or more"),
        ({"auth": "none"}, "unknown --auth 'none'"),
        ({"jwt_algorithm": "none"}, "unsupported JWT algorithm 'none'"),
        ({"sqlite_synchronous": "SOMETIMES"}, "unknown --sqlite-synchronous"),
    ],
)
def test_config_refuses_bad_values(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig.from_options(**overrides)


def test_the_defaults_pass_their_checks() -> None:
    ServerConfig()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--join-page-size", "-1"], "--join-page-size must be positive, not -1"),
        (["--auth", "none"], "unknown --auth 'none'; use one of jwt, dev"),
    ],
)
def test_serve_refuses_bad_flags_at_start(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--data-dir", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "discovery.db").exists()  # refused before anything was opened


def test_serve_refuses_bad_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISCOVERY_JOIN_PAGE_SIZE", "-3")
    assert main(["serve", "--data-dir", str(tmp_path)]) == 2
    assert "--join-page-size must be positive" in capsys.readouterr().err


@pytest.mark.parametrize("by", ["flag", "variable"])
def test_a_retired_option_is_refused_with_its_replacement(
    by: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old deployment's DISCOVERY_DEFAULT_ANNOUNCE_JOIN=false must not silently become MUTUAL."""
    argv = ["serve", "--data-dir", str(tmp_path)]
    if by == "flag":
        argv += ["--default-announce-join", "false"]
    else:
        monkeypatch.setenv("DISCOVERY_DEFAULT_ANNOUNCE_JOIN", "false")
    assert main(argv) == 2
    assert "was replaced by --default-announce-mode" in capsys.readouterr().err
    assert not (tmp_path / "discovery.db").exists()


def test_an_unknown_option_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="unknown server option 'quota_capcity'"):
        ServerConfig.from_options(quota_capcity=0)


def test_flat_options_land_in_their_groups() -> None:
    config = ServerConfig.from_options(
        quota_capacity=0, join_page_size=7, auth="dev", tls_cert="c.pem", default_notify_on_join=True
    )
    assert config.quota == QuotaPolicy(capacity=0)
    assert config.joins == JoinPolicy(page_size=7)
    assert (config.auth.mode, config.tls.cert, config.defaults.notify_on_join) == ("dev", "c.pem", True)
    assert config.limits == DirectoryLimits() and config.network.listen == "127.0.0.1:50051"


#: A valid value of each option that takes one of a few.
CHOICES = {
    "auth": "dev",
    "jwt_algorithm": "EdDSA",
    "log_level": "DEBUG",
    "sqlite_synchronous": "FULL",
}


def test_every_option_is_one_flag_and_one_variable() -> None:
    """Each declared option parses from its flag and from its DISCOVERY_* variable into its field."""
    samples: dict[type, tuple[str, object]] = {
        bool: ("true", True),
        int: ("7", 7),
        float: ("7.5", 7.5),
        str: ("x", "x"),
        Path: ("/d", Path("/d")),
    }
    choices: dict[str, tuple[str, object]] = {name: (choice, choice) for name, choice in CHOICES.items()}
    choices["trace_sample_ratio"] = ("0.25", 0.25)  # a ratio: 7.5 is refused
    choices["default_announce_mode"] = ("everyone", AnnounceMode.EVERYONE)
    for option in options():
        text, value = choices.get(option.name) or samples[option.kind]
        parser = argparse.ArgumentParser()
        add_server_options(parser, env={})
        from_flag = config_from_args(parser.parse_args([option.flag, text]))
        parser = argparse.ArgumentParser()
        add_server_options(parser, env={option.env: text})
        from_env = config_from_args(parser.parse_args([]))
        assert option.value(from_flag) == option.value(from_env) == value, option.name
        assert option.value(ServerConfig()) == option.default


def test_a_domain_policy_checks_itself_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="--join-watch-cap must be positive, not 0"):
        JoinPolicy(watch_cap=0)
    with pytest.raises(ValueError, match="--rate-limit-burst must be 0 or more"):
        QuotaPolicy(rate_burst=-1)
