"""The client-side CLI commands: argument parsing, exit codes and text formatting (no server)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from types import ModuleType

import pytest

import discovery.cli.client_commands as client_commands
from discovery.cli.progress import ProgressReporter
from discovery.client import (
    CLIENT_INVALID_NUMBER,
    DiscoverResult,
    ImportRejection,
    ImportSummary,
    InvalidEntry,
    InvalidReason,
    Match,
)


@pytest.fixture(scope="module")
def cli() -> ModuleType:
    # discovery.cli imports the server stack only when it builds the whole parser.
    return client_commands


def _parser(cli: ModuleType) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="discovery")
    commands = parser.add_subparsers(dest="command", required=True)
    cli.add_client_commands(commands)
    return parser


def test_cli_registers_commands(cli: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOVERY_TARGET", "example:1234")
    monkeypatch.setenv("DISCOVERY_USER_ID", "bob")
    parser = _parser(cli)
    args = parser.parse_args(["discover", "--contacts", "-", "--region", "DE", "--json"])
    assert (args.target, args.user_id, args.contacts, args.region, args.json) == (
        "example:1234",
        "bob",
        "-",
        "DE",
        True,
    )
    assert callable(args.func)
    args = parser.parse_args(["settings", "--no-discoverable", "--notify-on-join"])
    assert (args.discoverable, args.announce_join, args.notify_on_join) == (False, None, True)
    args = parser.parse_args(["register", "alice", "+4915123456789", "--target", "h:1"])
    assert (args.user_id, args.number, args.target) == ("alice", "+4915123456789", "h:1")
    for argv in (
        ["unregister", "alice"],
        ["change-number", "a", "1"],
        ["import", "f.csv"],
        ["delete-my-data"],
        ["export-my-data", "--out", "me.json"],
    ):
        assert callable(parser.parse_args(argv).func)
    assert parser.parse_args(["import", "f.csv", "--batch-size", "10"]).batch_size == 10
    with pytest.raises(SystemExit):
        parser.parse_args(["import", "f.csv", "--batch-size", "0"])


def test_cli_defaults_without_env(cli: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DISCOVERY_TARGET", "DISCOVERY_USER_ID", "DISCOVERY_TOKEN", "DISCOVERY_REGION"):
        monkeypatch.delenv(name, raising=False)
    args = _parser(cli).parse_args(["settings"])
    assert (args.target, args.user_id, args.token, args.region) == ("127.0.0.1:50051", None, None, None)


def test_cli_input_errors(cli: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    parser = _parser(cli)
    args = parser.parse_args(["discover", "--contacts", str(tmp_path / "missing.csv")])
    assert args.func(args) == 2
    assert "error: cannot read" in capsys.readouterr().err
    args = parser.parse_args(["register", "alice", "0151 23456789", "--target", "127.0.0.1:1"])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "missing region" in err and "23456789" not in err
    args = parser.parse_args(["settings", "--tls-cert", str(tmp_path / "x.pem")])
    assert args.func(args) == 2


def test_cli_service_error_exit_code(cli: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser(cli).parse_args(["settings", "--target", "127.0.0.1:1", "--timeout", "2"])
    assert args.func(args) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")


def test_cli_format_discover_result(cli: ModuleType) -> None:
    result = DiscoverResult(
        matches=[
            Match("0151 23456789", "+4915123456789", "alice"),
            Match("+1 650 253 0000", "+16502530000", "bob"),
        ],
        invalid=[
            InvalidEntry("junk", InvalidReason.NOT_A_NUMBER),
            InvalidEntry("12", InvalidReason.MISSING_REGION),
        ],
    )
    text = cli.format_discover_result(result, 4)
    lines = text.splitlines()
    assert lines[0].split() == ["ENTRY", "USER", "ID"]
    assert lines[1].index("alice") == lines[2].index("bob") == lines[0].index("USER ID")
    assert "2 matches among 4 entries" in text
    assert "invalid entries: 2" in text and "'junk': not a phone number" in text
    assert "no" not in cli.format_discover_result(DiscoverResult(), 0).split()


def test_cli_format_import_summary(cli: ModuleType) -> None:
    summary = ImportSummary(
        imported=5,
        unchanged=1,
        rejected_total=4,
        rejections=[
            ImportRejection(0, "a", CLIENT_INVALID_NUMBER, "too short"),
            ImportRejection(3, "b", "REJECTION_REASON_USER_ID_TAKEN"),
        ],
    )
    text = cli.format_import_summary(summary)
    assert "imported:  5" in text and "rejected:  4" in text
    assert "row 1, user 'a': INVALID_NUMBER (too short)" in text
    assert "row 4, user 'b': USER_ID_TAKEN" in text
    assert "2 more not listed" in text


def test_cli_progress_reporter() -> None:
    stream = io.StringIO()
    progress = ProgressReporter(stream, total=None, interval=3600)
    progress(10)
    progress(20)
    progress.finish()
    assert stream.getvalue().splitlines() == ["import: 10 rows processed", "import: 20 rows processed"]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    progress = ProgressReporter(tty, total=4)
    progress(2)
    progress(4)
    progress.finish()
    out = tty.getvalue()
    assert out.startswith("\r[") and "50%" in out and "100% 4/4" in out and out.endswith("\n")
