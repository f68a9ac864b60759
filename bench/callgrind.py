"""Shared by the callgrind scenarios: switching instrumentation and reading a dump."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

TOP = 25


def control(pid: int, *args: str) -> None:
    """``callgrind_control`` on a process running under callgrind (``-i on``, ``-i off``, ``-d``)."""
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def total_instructions(dump: Path) -> int:
    lines = dump.read_text().splitlines()
    return max(int(line.split()[1]) for line in lines if line.startswith(("summary:", "totals:")))


def largest_dump(directory: Path) -> Path:
    """The dump taken at the end of the counted window (the one at exit counted nothing)."""
    return max(directory.glob("callgrind.out.*"), key=lambda p: p.stat().st_size)


def top_functions(dump: Path, top: int = TOP) -> list[dict[str, Any]]:
    """The functions of most inclusive cost that callgrind could name."""
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", str(dump)], check=True, capture_output=True, text=True
    ).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1].startswith("(") and ":" in parts[2] and "0x" not in parts[2]:
            rows.append({"ir": int(parts[0].replace(",", "")), "function": parts[2].split(":", 1)[1]})
    return rows[:top]
