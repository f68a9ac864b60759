"""Each option is checked when the config is built: a bad value is refused at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from discovery.cli import main
from discovery.config import ServerConfig


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
        ServerConfig(**overrides)  # type: ignore[arg-type]


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
