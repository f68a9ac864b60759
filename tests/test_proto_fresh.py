"""The committed generated code matches proto/: regenerate into a temp dir and compare."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )
    generated = sorted(p.name for p in (tmp_path / "discovery" / "v1").iterdir() if p.name != "__pycache__")
    committed = sorted(
        p.name
        for p in (ROOT / "discovery" / "v1").iterdir()
        if p.name != "__pycache__" and p.suffix in {".py", ".pyi"}
    )
    assert generated == committed, "run scripts/gen_proto: the set of generated files changed"
    for name in generated:
        assert filecmp.cmp(
            tmp_path / "discovery" / "v1" / name, ROOT / "discovery" / "v1" / name, shallow=False
        ), f"discovery/v1/{name} is stale: run scripts/gen_proto"
