"""The docs stay true: every server option is in the configuration table of docs/configuration.md,
and the README keeps the quickstart commands."""

from __future__ import annotations

import enum
import re
from pathlib import Path

from discovery.config import ServerConfig, options

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()


def test_every_option_is_documented() -> None:
    missing = [o.name for o in options() if f"`{o.flag}`" not in CONFIGURATION]
    assert missing == [], f"add these options to the table of docs/configuration.md: {missing}"


def test_the_table_lists_only_declared_options() -> None:
    declared = {o.name for o in options()}
    assert len(declared) == len(options()), "two declarations name the same option"
    unknown = sorted(set(_readme_defaults()) - declared)
    assert unknown == [], f"docs/configuration.md lists options that do not exist: {unknown}"


def _readme_defaults() -> dict[str, str]:
    """Flag -> the default column of the configuration table."""
    rows = {}
    for line in CONFIGURATION.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`--") and cells[0].endswith("`"):
            rows[cells[0].strip("`")[2:].replace("-", "_")] = cells[1].strip("`")
    return rows


#: Defaults the table states as what they resolve to (computed from other options).
DERIVED = {
    "data_dir": "~/.local/share/discovery",
    "store": "sqlite:///DATA_DIR/discovery.db",
    "secret_file": "DATA_DIR/server.secret",
    "jwt_secret_file": "DATA_DIR/jwt.secret",
}
EMPTY = {"(none)", "(off)", "(all)"}


def test_every_documented_default_is_the_declared_one() -> None:
    documented = _readme_defaults()
    defaults = ServerConfig()
    wrong = {}
    for o in options():
        stated, actual = documented.get(o.name), o.value(defaults)
        if o.name in DERIVED:
            ok = stated == DERIVED[o.name]
        elif isinstance(actual, bool):
            ok = stated == str(actual).lower()
        elif isinstance(actual, enum.Enum):
            ok = stated == str(actual)  # the flag's text
        elif isinstance(actual, int | float):
            ok = stated is not None and float(stated.replace(",", "")) == actual
        elif actual == "":
            ok = stated in EMPTY
        else:
            ok = stated == str(actual)
        if not ok:
            wrong[o.name] = (stated, actual)
    assert wrong == {}, f"docs/configuration.md defaults differ (documented, declared): {wrong}"


def test_quickstart_commands_exist() -> None:
    for script in ("scripts/serve", "scripts/test"):
        assert f"{script}" in README
        assert (ROOT / script).stat().st_mode & 0o111


def test_the_readme_links_resolve() -> None:
    """Every relative link of the README and of docs/ names a file that exists."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                where = page.relative_to(ROOT)
                assert (page.parent / target).exists(), f"{where} links to a missing {target}"
