"""Cost of one hop to the embedded store's writer thread (``SqliteBase._run``).

Every Discover call with quotas on makes one such hop for its charge, so the hop's own
machinery (queueing the job, waking the thread, handing the result back to the event loop
and waking the waiting task) is paid per call. Cases, on a real SQLite store in a temp dir:

* ``run_c1`` / ``run_c16``: ``await store._run(lambda: None)``, one caller, or 16 callers
  at once (``asyncio.gather``): the hop alone;
* ``ping_c1`` / ``ping_c16``: ``await store.ping()`` (a ``SELECT 1``): the hop and a statement.

Figures: process CPU seconds per hop (``time.process_time``, both threads), the median of
``--repeat`` runs, and wall time per hop. With ``--callgrind``, each case also runs once
under ``valgrind --tool=callgrind``, and the instructions of a setup-only run (the store
opened and closed, no hop) are subtracted: instructions per hop, all threads.

The code measured is the ``discovery`` package on the import path; to compare trees, run
this file by path with ``PYTHONPATH`` set to each (the JSON names the package's path)::

    PYTHONPATH=. python bench/store_hop.py --callgrind
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import discovery
from discovery.store.sqlite import SqliteStore

CASES = ("run_c1", "run_c16", "ping_c1", "ping_c16")
WORKERS = 16


def _hop(store: SqliteStore, case: str) -> Callable[[], Awaitable[object]]:
    if case.startswith("ping"):
        return store.ping
    return lambda: store._run(_nothing)


def _nothing() -> None:
    return None


async def _drive(store: SqliteStore, case: str, n: int) -> None:
    hop = _hop(store, case)
    workers = WORKERS if case.endswith("c16") else 1

    async def worker(count: int) -> None:
        for _ in range(count):
            await hop()

    await asyncio.gather(*(worker(n // workers) for _ in range(workers)))


async def measure(case: str, n: int, repeat: int) -> dict[str, float]:
    """Median CPU and wall microseconds per hop over ``repeat`` runs of ``n`` hops."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "hop.db")
        await store.open()
        try:
            await _drive(store, case, 1000)  # warm-up
            cpu, wall = [], []
            for _ in range(repeat):
                c0, w0 = time.process_time(), time.perf_counter()
                await _drive(store, case, n)
                cpu.append((time.process_time() - c0) / n * 1e6)
                wall.append((time.perf_counter() - w0) / n * 1e6)
        finally:
            await store.close()
    return {
        "cpu_us_per_hop": round(statistics.median(cpu), 2),
        "wall_us_per_hop": round(statistics.median(wall), 2),
    }


async def _once(case: str, n: int) -> None:
    """One run for callgrind: open, ``n`` hops (none for the setup-only run), close."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "hop.db")
        await store.open()
        try:
            await _drive(store, case, n)
        finally:
            await store.close()


def _instructions(case: str, n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
             sys.executable, os.path.abspath(__file__), "--once", case, "--n", str(n)],
            check=True, capture_output=True, env=os.environ.copy(),
        )  # fmt: skip
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("callgrind wrote no totals")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="hops per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs per case (the median is reported)")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--callgrind", action="store_true", help="also count instructions per hop")
    ap.add_argument("--callgrind-n", type=int, default=5000, help="hops of the run under callgrind")
    ap.add_argument("--once", choices=CASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.once:
        asyncio.run(_once(args.once, args.n))
        return
    results: dict[str, object] = {
        "package": str(Path(discovery.__file__).parent),
        "n": args.n,
        "repeat": args.repeat,
        "workers_of_c16": WORKERS,
        "python": sys.version.split()[0],
    }
    setup = _instructions(CASES[0], 0) if args.callgrind else 0
    for case in args.cases:
        figures: dict[str, float] = asyncio.run(measure(case, args.n, args.repeat))
        if args.callgrind:
            total = _instructions(case, args.callgrind_n)
            figures["instructions_per_hop"] = round((total - setup) / args.callgrind_n)
        results[case] = figures
        print(f"{case}: {figures}", file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
