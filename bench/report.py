"""What every scenario reports besides its results: the machine, package versions, goals.

A scenario returns a :class:`Report`; :func:`emit` turns it into the one JSON object the
CLI prints for that scenario (and writes to ``OUT/<scenario>.json``).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent

PACKAGES = (
    "discovery",
    "numpy",
    "grpcio",
    "protobuf",
    "cryptography",
    "blake3",
    "PyJWT",
    "matplotlib",
    "openmined-psi",
)

Json = dict[str, Any]


@dataclass
class Goal:
    """One goal of the issue: ``measured`` against ``target`` (at most, or at least)."""

    name: str
    target: float
    measured: float
    unit: str
    at_most: bool = True

    @property
    def met(self) -> bool:
        return self.measured <= self.target if self.at_most else self.measured >= self.target

    def to_json(self) -> Json:
        gap = self.measured / self.target if self.target else math.inf
        return {
            "name": self.name,
            "target": f"{'<=' if self.at_most else '>='} {self.target:g} {self.unit}",
            "measured": round(self.measured, 3),
            "unit": self.unit,
            "met": self.met,
            # > 1 means worse than the target by that factor, for either direction
            "miss_factor": round(gap if self.at_most else 1 / gap if gap else math.inf, 3),
        }


@dataclass
class Report:
    scenario: str
    parameters: Json
    results: Json = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; the logical count if unknown."""
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                physical = line.split(":", 1)[1].strip()
            elif line.startswith("core id"):
                core = line.split(":", 1)[1].strip()
                cores.add((physical, core))
    except OSError:
        pass
    return len(cores) or (os.cpu_count() or 1)


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def machine() -> Json:
    return {
        "cpu_model": cpu_model(),
        "cores": physical_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    if out["discovery"] is None:  # run from a checkout that is not installed
        with contextlib.suppress(OSError, KeyError, tomllib.TOMLDecodeError):
            out["discovery"] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return out


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_revision() -> str | None:
    """The checked-out commit, with ``+dirty`` when the tree has changes (read-only git calls)."""
    try:
        rev = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def summarize_ns(samples_ns: Sequence[int] | np.ndarray, contacts: int = 0) -> Json:
    """Median, p99, mean and min of per-request times given in ns, reported in µs."""
    arr = np.asarray(samples_ns, dtype=np.float64)
    median = float(np.median(arr))
    out: Json = {
        "requests": int(arr.size),
        "median_us": round(median / 1000, 2),
        "p99_us": round(float(np.percentile(arr, 99)) / 1000, 2),
        "mean_us": round(float(arr.mean()) / 1000, 2),
        "min_us": round(float(arr.min()) / 1000, 2),
    }
    if contacts:
        out["ns_per_contact"] = round(median / contacts, 1)
    return out


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def emit(report: Report, *, quick: bool, seconds: float, out_dir: Path) -> Json:
    """The scenario's JSON object: printed on one line and written to ``OUT/<scenario>.json``."""
    doc: Json = {
        "scenario": report.scenario,
        "quick": quick,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "parameters": report.parameters,
        "machine": machine(),
        "versions": versions(),
        "revision": git_revision(),
        "results": report.results,
        "goals": [g.to_json() for g in report.goals],
        "notes": report.notes,
        "plots": report.plots,
    }
    doc = _finite(doc)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{report.scenario}.json").write_text(json.dumps(doc, indent=2) + "\n")
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    return doc
