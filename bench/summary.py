"""A Markdown summary of a run (``OUT/summary.md``): the tables the README's Performance section shows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

Json = dict[str, Any]


def headline(label: str, value: Any, unit: str = "", note: str = "") -> Json:
    """One row of the summary table; scenarios list theirs in ``results["headline"]``."""
    return {"metric": label, "value": value, "unit": unit, "note": note}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "n/a" if value is None else str(value)


def render(docs: Sequence[Json]) -> str:
    lines: list[str] = []
    machine = next((d["machine"] for d in docs if "machine" in d), None)
    if machine:
        lines.append(
            f"Machine: {machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
            f"Python {machine['python']}."
        )
        lines.append("")
    lines += ["| scenario | metric | value | note |", "|---|---|---|---|"]
    for doc in docs:
        results = doc.get("results", {})
        if "error" in results:
            lines.append(f"| {doc['scenario']} | failed | | {results['error']} |")
        for row in results.get("headline", []):
            value = f"{_fmt(row['value'])} {row['unit']}".strip()
            lines.append(f"| {doc['scenario']} | {row['metric']} | {value} | {row.get('note', '')} |")
    goals = [g for d in docs for g in d.get("goals", [])]
    if goals:
        lines += ["", "| goal | target | measured | met |", "|---|---|---|---|"]
        for g in goals:
            measured = f"{_fmt(g['measured'])} {g['unit']}"
            met = "yes" if g["met"] else f"no (x{g['miss_factor']} off)"
            lines.append(f"| {g['name']} | {g['target']} | {measured} | {met} |")
    return "\n".join(lines) + "\n"


def write_summary(docs: Sequence[Json], path: Path) -> None:
    path.write_text(render(docs))
