"""The import layering of discovery/, checked by parsing every module's imports.

api -> core -> (store, index); store implements core's ports; index is numpy only;
the SDK (client/) imports nothing of the server; logs and metrics sit below everything.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "discovery"

#: Units of discovery/ (a sub-package or a top-level module) -> the units each may not import.
SERVER = {"core", "api", "store", "index", "app", "cli", "config", "metrics", "logs"}
FORBIDDEN: dict[str, set[str]] = {
    "core": {"api", "store", "app", "cli", "client", "config", "metrics", "v1"},
    "store": {"api", "app", "cli", "client"},
    "client": SERVER,
    "logs": SERVER - {"logs"} | {"client", "v1"},
    "metrics": SERVER - {"metrics"} | {"client", "v1"},
    "api": {"app", "cli", "client", "store", "config"},
}
#: Single modules a unit may import although their unit is forbidden to it: none today.
ALLOWED: dict[str, set[str]] = {}


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "discovery" and len(parts) > 1 else None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names if node.module == "discovery"]
    return names


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        unit = relative.parts[1] if len(relative.parts) > 1 else None
        if unit is not None and unit != "v1":
            found.append((unit, path))
    return found


def test_the_scan_sees_every_layer() -> None:
    assert {unit for unit, _ in _modules()} >= {"api", "core", "store", "index", "client", "app", "cli"}


@pytest.mark.parametrize(("unit", "path"), _modules(), ids=lambda v: str(v).rsplit("discovery/", 1)[-1])
def test_imports_follow_the_layers(unit: str, path: Path) -> None:
    wrong = []
    for name in _imports(path):
        target = _unit(name)
        if target is None or target == unit or name in ALLOWED.get(unit, set()):
            continue
        if unit == "index" or target in FORBIDDEN.get(unit, set()):
            wrong.append(name)
    assert not wrong, f"{path.relative_to(PACKAGE.parent)} ({unit}) imports against the layering: {wrong}"


def test_index_depends_on_numpy_alone() -> None:
    """Beyond the standard library, index/ imports numpy and its own modules only."""
    for path in (PACKAGE / "index").rglob("*.py"):
        for name in _imports(path):
            top = name.split(".")[0]
            allowed = top in sys.stdlib_module_names or top == "numpy" or name.startswith("discovery.index")
            assert allowed, f"{path.name} imports {name}"
