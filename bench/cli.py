"""``python -m bench SCENARIO ... [--quick] [--out DIR]``: run scenarios, print one JSON object each.

Each JSON object (one per line on stdout, and ``OUT/<scenario>.json``) holds the
parameters, the machine, the package versions, the results and the goals; progress goes
to stderr. ``--quick`` runs every scenario at small sizes (all of them in under a
minute); the full sizes are the ones the README's Performance section reports.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.report import REPO, Report, emit
from bench.summary import write_summary

SCENARIOS: dict[str, str] = {
    "hot_path": "1. hot path in process (directory keys + index lookup) at 1M and 10M users",
    "baselines": "2. naive Python, Matrix identity server (SHA-256 + SQLite) and ECDH PSI, as ratios to ours",
    "end_to_end": "3. Discover over gRPC from a separate load generator, against a gRPC echo ceiling",
    "scaling": "4. hot path against registry size and contacts per request; server peak memory (plot)",
    "bulk_import": "5. ImportUsers into the embedded store, users per second",
    "end_to_end_default": "6. Discover with the default config (jwt, quotas, re-sync token) against echo",
    "stall_growth": "7. Discover p99 while the index grows, against its normal p99",
    "stall_resubscribe": "8. Discover p99 while every join stream resubscribes at once",
    "stall_register": "9. RegisterUser of a number 200 live join streams watch, against an unwatched one",
}


def _runner(name: str) -> Callable[[Context], Report]:
    module = importlib.import_module(f"bench.{name}")
    run: Callable[[Context], Report] = module.run
    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n" + "\n".join(f"  {k:<12} {v}" for k, v in SCENARIOS.items()),
    )
    parser.add_argument("scenarios", nargs="+", metavar="SCENARIO", choices=["all", *SCENARIOS])
    parser.add_argument("--quick", action="store_true", help="small sizes: every scenario in under a minute")
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "out", help="JSON and PNG files (%(default)s)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="where stores are built (default: a temporary directory under --out, removed after)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="do not profile missed goals (quick runs never do)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(SCENARIOS) if "all" in args.scenarios else list(dict.fromkeys(args.scenarios))
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="work-", dir=out))
    # Profiles of missed goals take time; quick runs (and the test) skip them.
    ctx = Context(quick=args.quick, out=out, work=work, profile=not (args.no_profile or args.quick))
    docs: list[dict[str, Any]] = []
    failed = False
    try:
        for name in names:
            ctx.log(f"scenario {name} ({'quick' if args.quick else 'full'})")
            started = time.perf_counter()
            try:
                report = _runner(name)(ctx)
            except Exception as exc:  # one broken scenario must not hide the others' results
                failed = True
                ctx.log(f"scenario {name} failed: {exc!r}")
                report = Report(name, {}, results={"error": f"{type(exc).__name__}: {exc}"})
            docs.append(emit(report, quick=args.quick, seconds=time.perf_counter() - started, out_dir=out))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    write_summary(docs, out / "summary.md")
    ctx.log(f"results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
