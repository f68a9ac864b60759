"""The README stays true: every server option is in the configuration table."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from discovery.config import ServerConfig

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_option_is_documented() -> None:
    missing = [f.name for f in fields(ServerConfig) if f"`--{f.name.replace('_', '-')}`" not in README]
    assert missing == [], f"add these options to the README configuration table: {missing}"


def test_quickstart_commands_exist() -> None:
    root = Path(__file__).resolve().parent.parent
    for script in ("scripts/serve", "scripts/test"):
        assert f"{script}" in README
        assert (root / script).stat().st_mode & 0o111
