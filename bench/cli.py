"""``python -m bench SCENARIO ... [--quick] [--out DIR]``: run scenarios, print one JSON object each.

Every benchmark runs through this one entry point; ``python -m bench --list`` lists them.
The scenarios of :data:`SCENARIOS` share the options below and the summary; each of
:data:`STANDALONE` takes its own options (``python -m bench soak --help``) and prints its
own JSON.

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

STANDALONE: dict[str, str] = {
    "joins_fanout": "register-to-event latency with 1,000 live subscribers, memory per stream up to 10,000",
    "soak": "1,000 subscribers plus steady load for 60 s: calls, events lost, memory and fds over time",
    "redis_store": "Discover and import on Redis and Redis Cluster against the embedded store",
    "redis_ha": "cluster with replicas: cost of min_replicas N=0/1, then a failover (recovery, Discover)",
    "quota_gate": "the cost of the quota gate on the hot path",
    "index_micro": "the index alone: lookups per second",
    "import_callgrind": "redis-server instructions per user imported through the Redis store (callgrind)",
    "server_callgrind": "instructions per Discover call of the whole server, against echo (callgrind)",
    "store_hop": "the SQLite store's hop to its writer thread and back: CPU and instructions per call",
    "sqlite_charge": "one quota charge in SQLite: CPU, instructions and system calls per charge",
}


def list_scenarios() -> str:
    rows = [*SCENARIOS.items(), *((name, f"(own options) {text}") for name, text in STANDALONE.items())]
    return "\n".join(f"  {name:<12} {text}" for name, text in rows)


def run_standalone(name: str, argv: list[str]) -> int:
    """Run a scenario that parses its own options (its ``main`` reads ``sys.argv``)."""
    module = importlib.import_module(f"bench.{name}")
    sys.argv = [f"python -m bench {name}", *argv]
    result = module.main()
    return result if isinstance(result, int) else 0


def _runner(name: str) -> Callable[[Context], Report]:
    module = importlib.import_module(f"bench.{name}")
    run: Callable[[Context], Report] = module.run
    return run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios:\n" + list_scenarios(),
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="all, or names from the list below")
    parser.add_argument("--list", action="store_true", help="list every scenario and exit")
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
    args = parser.parse_args(argv)
    if not args.scenarios and not args.list:
        parser.error("name at least one SCENARIO (or all); --list lists them")
    unknown = [name for name in args.scenarios if name not in {"all", *SCENARIOS}]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r} (a standalone one goes first and alone); see --list")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STANDALONE:
        return run_standalone(argv[0], argv[1:])
    args = parse_args(argv)
    if args.list:
        print(list_scenarios())
        return 0
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
