"""`buf lint` and `buf breaking` guard discovery.v1: the check passes today and catches a break."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUF = Path(sys.executable).parent / "buf"


def buf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    if not BUF.exists():
        pytest.skip("buf is installed with the dev extra (buf-bin)")
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_api_passes_lint_and_is_compatible_with_the_released_one() -> None:
    assert buf("lint", cwd=ROOT / "proto").returncode == 0
    result = buf("breaking", "--against", "released/discovery-v1.json", cwd=ROOT / "proto")
    assert result.returncode == 0, result.stdout + result.stderr


def test_removing_a_field_is_reported_as_breaking(tmp_path: Path) -> None:
    copy = tmp_path / "proto"
    shutil.copytree(ROOT / "proto", copy)
    source = copy / "discovery" / "v1" / "discovery.proto"
    text = source.read_text()
    assert "bytes previous_token = 2;" in text
    source.write_text(text.replace("bytes previous_token = 2;", ""))
    result = buf("breaking", "--against", "released/discovery-v1.json", cwd=copy)
    assert result.returncode != 0
    assert "previous_token" in result.stdout + result.stderr
