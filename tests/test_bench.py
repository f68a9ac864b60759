"""The benchmark harness runs end to end (quick mode) and reports complete, valid JSON.

No timing is asserted: only that every scenario ran, and that its report has the
parameters, machine, versions, results and goals, with finite numbers.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = [
    "hot_path",
    "baselines",
    "end_to_end",
    "scaling",
    "bulk_import",
    "end_to_end_default",
    "stall_growth",
    "stall_resubscribe",
    "stall_register",
]
TOP_KEYS = {
    "scenario",
    "quick",
    "finished",
    "seconds",
    "parameters",
    "machine",
    "versions",
    "revision",
    "results",
    "goals",
    "notes",
    "plots",
}


def numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [float(value)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in numbers(v)]
    return []


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    out = tmp_path_factory.mktemp("bench-out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCOVERY_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    docs = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return docs, out


def test_one_json_object_per_scenario(run: tuple[list[dict[str, Any]], Path]) -> None:
    docs, out = run
    assert [d["scenario"] for d in docs] == SCENARIOS
    for doc in docs:
        assert json.loads((out / f"{doc['scenario']}.json").read_text()) == doc


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_report_is_complete(run: tuple[list[dict[str, Any]], Path], scenario: str) -> None:
    doc = next(d for d in run[0] if d["scenario"] == scenario)
    assert doc.keys() >= TOP_KEYS
    assert doc["quick"] is True
    assert "error" not in doc["results"], doc["results"].get("error")
    assert doc["parameters"]
    machine = doc["machine"]
    assert machine["cpu_model"] and machine["cores"] >= 1
    assert doc["versions"]["numpy"] and doc["versions"]["grpcio"] and doc["versions"]["discovery"]
    assert doc["results"]["headline"], "every scenario lists its headline figures"
    for row in doc["results"]["headline"]:
        assert {"metric", "value", "unit"} <= row.keys() and row["value"] is not None
    values = numbers(doc["results"])
    assert values and all(math.isfinite(v) for v in values)
    for goal in doc["goals"]:
        assert isinstance(goal["met"], bool) and math.isfinite(goal["measured"])


def test_results_are_plausible(run: tuple[list[dict[str, Any]], Path]) -> None:
    docs = {d["scenario"]: d["results"] for d in run[0]}
    for entry in docs["hot_path"]["registries"].values():
        # half of 1,000 contacts are registered, 90% of users discoverable
        assert 350 < entry["matches_per_request"] < 550
        assert entry["index_bytes_per_user"] > 16
    for entry in docs["baselines"]["naive_python"].values():
        assert entry["same_matches_as_ours"] is True
    e2e = docs["end_to_end"]
    assert e2e["discover"]["c1"]["errors"] == 0 and e2e["discover"]["c16"]["errors"] == 0
    assert 350 < e2e["discover"]["matches_in_first_response"] < 550
    assert e2e["discover"]["c16"]["requests"] > 0 and e2e["echo"]["c16"]["requests"] > 0
    params = {d["scenario"]: d["parameters"] for d in run[0]}
    assert docs["bulk_import"]["imported"] == params["bulk_import"]["users"]
    assert all(row["peak_rss_mib"] > 0 for row in docs["scaling"]["server_memory"])
    default = docs["end_to_end_default"]
    for line in ("default", "echo", "quota_off", "echo_plain"):
        assert default[line]["errors"] == 0 and default[line]["server_cpu_us_per_call"] > 0
    assert 350 < default["matches_in_first_response"] < 550
    assert docs["stall_growth"]["growths"], "the growth run saw no index growth"
    assert docs["stall_resubscribe"]["storm"]["errors"] == 0
    assert (
        docs["stall_register"]["register_watched"]["samples"]
        == params["stall_register"]["watched_registrations"]
    )


def test_plot_and_summary(run: tuple[list[dict[str, Any]], Path]) -> None:
    docs, out = run
    scaling = next(d for d in docs if d["scenario"] == "scaling")
    if importlib.util.find_spec("matplotlib") is None:
        assert scaling["plots"] == [] and scaling["notes"]
    else:
        png = Path(scaling["plots"][0])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    assert "| goal | target | measured | met |" in summary


def test_one_entry_point_lists_and_runs_every_scenario() -> None:
    """`python -m bench --list` names every scenario module; a standalone one runs through it."""
    listed = subprocess.run(
        [sys.executable, "-m", "bench", "--list"], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout.split()
    modules = {p.stem for p in (REPO / "bench").glob("*.py")} & {
        "hot_path", "baselines", "end_to_end", "scaling", "bulk_import",
        "joins_fanout", "soak", "redis_store", "quota_gate", "index_micro",
    }  # fmt: skip
    assert modules <= set(listed) and len(modules) == 10
    done = subprocess.run(
        [sys.executable, "-m", "bench", "index_micro", "--n", "2000", "--rounds", "5"],
        capture_output=True, text=True, cwd=REPO, check=True, timeout=120,
    )  # fmt: skip
    assert "max_rss_mib" in json.loads(done.stdout)
