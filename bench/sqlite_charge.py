"""CPU of one quota charge on the SQLite store's writer thread (``SqliteQuota``).

A real store on a temporary file, ``--buckets`` users, ``--n`` charges in a random order of
users on a simulated clock: each user is charged every ``--period`` seconds on average (the
clock moves ``period / buckets`` per charge), after one warm-up charge each. Workloads:

* ``resync``: Discover's request-rate charge alone (``requests:<user>``, the defaults:
  burst 30, 10 a minute), what a re-syncing client costs;
* ``first_sync``: the rate and 50 new contacts (``contacts:<user>``, 50,000, 6 an hour);
* ``fresh``: the rate charge of a user never charged before, every time (a new row).

Each workload is timed two ways, ``--repeat`` times each (the figures are the median and
the minimum, microseconds of CPU per charge, user and system):

* ``transaction``: the charge's transaction called directly on this thread (``_transaction``
  around ``_charge_all``), measured with ``getrusage(RUSAGE_THREAD)``;
* ``store``: ``await store.charge(...)`` one at a time, as a Discover makes it, measured on
  the writer thread itself (its hop, transaction and commit).

``--callgrind`` also counts instructions per charge of the ``transaction`` way: this module
runs twice under ``valgrind --tool=callgrind`` (setup only, then setup and ``--calls``
charges), and the difference is divided by ``--calls``; the same for transactions that
charge nothing gives the share of BEGIN IMMEDIATE and COMMIT. ``--strace`` counts system
calls per charge the same way with ``strace -f -c``.

    python -m bench.sqlite_charge --n 20000 --callgrind --strace
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from discovery.core.model import BucketCharge
from discovery.store.sqlite import SqliteStore

WORKLOADS = ("resync", "first_sync", "fresh")
START = 1_800_000_000.0
RATE_BURST, RATE_PER_SECOND = 30.0, 10.0 / 60.0
CONTACTS, CONTACTS_PER_SECOND, NEW_CONTACTS = 50_000.0, 6.0 / 3600.0, 50.0

Plan = list[tuple[list[BucketCharge], float]]


def charges_of(workload: str, user: str) -> list[BucketCharge]:
    rate = BucketCharge(f"requests:{user}", 1.0, RATE_BURST, RATE_PER_SECOND)
    if workload == "first_sync":
        return [rate, BucketCharge(f"contacts:{user}", NEW_CONTACTS, CONTACTS, CONTACTS_PER_SECOND)]
    return [rate]


def plans(workload: str, buckets: int, n: int, period: float, seed: int) -> tuple[Plan, Plan]:
    """The warm-up calls (one per user) and the measured ones, with their clock."""
    rng = random.Random(seed)
    step = period / buckets
    users = [f"client-{i:05d}" for i in range(buckets)]
    now = START
    warm: Plan = []
    for user in users:
        warm.append((charges_of(workload, user), now))
        now += step
    measured: Plan = []
    for i in range(n):
        user = f"new-{i:06d}" if workload == "fresh" else users[rng.randrange(buckets)]
        measured.append((charges_of(workload, user), now))
        now += step
    return warm, measured


@contextmanager
def opened(tmp: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp / "bench.db")
    asyncio.run(store.open())
    try:
        yield store
    finally:
        asyncio.run(store.close())


def run_sync(store: SqliteStore, plan: Plan, shell: bool = False) -> int:
    """The charges' transactions on this thread; returns how many were refused. ``shell``:
    the same transactions without their charges (what BEGIN and COMMIT cost alone)."""
    refused = 0
    for charges, now in plan:
        if shell:
            store._transaction(lambda conn: None)
            continue

        def charge(conn: sqlite3.Connection, charges: list[BucketCharge] = charges, now: float = now) -> bool:
            return all(o.allowed for o in store._charge_all(conn, charges, now))

        refused += not store._transaction(charge)
    return refused


def thread_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime, usage.ru_stime


def per_charge(before: tuple[float, float], after: tuple[float, float], n: int) -> tuple[float, float]:
    return (after[0] - before[0]) / n * 1e6, (after[1] - before[1]) / n * 1e6


def timed_transactions(workload: str, args: argparse.Namespace, seed: int) -> tuple[float, float, int]:
    warm, measured = plans(workload, args.buckets, args.n, args.period, seed)
    with tempfile.TemporaryDirectory() as tmp, opened(Path(tmp)) as store:
        run_sync(store, warm)
        t0 = thread_cpu()
        refused = run_sync(store, measured)
        user, system = per_charge(t0, thread_cpu(), len(measured))
    return user, system, refused


async def _through_store(store: SqliteStore, warm: Plan, measured: Plan) -> tuple[float, float]:
    for charges, now in warm:
        await store.charge(charges, now)
    t0 = await store._run(thread_cpu)
    for charges, now in measured:
        await store.charge(charges, now)
    return per_charge(t0, await store._run(thread_cpu), len(measured))


def timed_store(workload: str, args: argparse.Namespace, seed: int) -> tuple[float, float, int]:
    warm, measured = plans(workload, args.buckets, args.n, args.period, seed)
    with tempfile.TemporaryDirectory() as tmp:

        async def go() -> tuple[float, float]:
            store = SqliteStore(Path(tmp) / "bench.db")
            await store.open()
            try:
                return await _through_store(store, warm, measured)
            finally:
                await store.close()

        user, system = asyncio.run(go())
    return user, system, 0


def summary(samples: list[tuple[float, float, int]]) -> dict[str, float]:
    totals = [u + s for u, s, _ in samples]
    return {
        "cpu_us_median": round(statistics.median(totals), 2),
        "cpu_us_min": round(min(totals), 2),
        "user_us_median": round(statistics.median(u for u, _, _ in samples), 2),
        "system_us_median": round(statistics.median(s for _, s, _ in samples), 2),
    }


def measured_once(
    tool: list[str], workload: str, args: argparse.Namespace, calls: int, extra: list[str] | None = None
) -> None:
    """This module under ``tool``: the setup of ``workload``, then ``calls`` charges."""
    command = [
        *tool, sys.executable, "-m", "bench.sqlite_charge", "--only-sync", workload,
        "--n", str(calls), "--buckets", str(args.buckets), "--period", str(args.period), *(extra or []),
    ]  # fmt: skip
    # numpy (imported by the store's package) would start BLAS threads that valgrind counts.
    subprocess.run(command, check=True, capture_output=True, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def callgrind_per_charge(workload: str, args: argparse.Namespace, shell: bool = False) -> int:
    """Instructions per charge: (setup and ``calls`` charges) minus (setup), over ``calls``."""
    counts: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        for calls in (0, args.calls):
            out = Path(tmp) / f"callgrind.{calls}"
            tool = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            measured_once(tool, workload, args, calls, ["--shell"] if shell else [])
            counts.append(_callgrind_total(out))
    return (counts[1] - counts[0]) // int(args.calls)


def _callgrind_total(out: Path) -> int:
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def strace_per_charge(workload: str, args: argparse.Namespace) -> dict[str, float]:
    """System calls per charge by name (those of at least 0.05 per charge)."""
    counts: list[dict[str, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for calls in (0, args.calls):
            out = Path(tmp) / f"strace.{calls}"
            measured_once(["strace", "-f", "-c", "-o", str(out)], workload, args, calls)
            counts.append(_strace_counts(out))
    names = set(counts[0]) | set(counts[1])
    diff = {name: (counts[1].get(name, 0) - counts[0].get(name, 0)) / args.calls for name in names}
    kept = {name: round(v, 2) for name, v in sorted(diff.items(), key=lambda kv: -kv[1]) if v >= 0.05}
    return {"total": round(sum(diff.values()), 2), **kept}


def _strace_counts(out: Path) -> dict[str, int]:
    counts = {}
    for line in out.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
            counts[fields[-1]] = int(fields[3])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="charges to time per repetition")
    ap.add_argument("--buckets", type=int, default=3000, help="users charged")
    ap.add_argument("--period", type=float, default=2.0, help="seconds between two charges of one user")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workload", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--callgrind", action="store_true", help="instructions per charge (valgrind)")
    ap.add_argument("--strace", action="store_true", help="system calls per charge (strace)")
    ap.add_argument("--calls", type=int, default=4000, help="charges per --callgrind/--strace run")
    ap.add_argument("--only-sync", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--shell", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only_sync:  # one run under valgrind or strace: setup, then --n charges
        warm, measured = plans(args.only_sync, args.buckets, args.n, args.period, 1)
        with tempfile.TemporaryDirectory() as tmp, opened(Path(tmp)) as store:
            run_sync(store, warm)
            run_sync(store, measured, args.shell)
        return
    results: dict[str, object] = {
        "n": args.n, "buckets": args.buckets, "period_s": args.period, "repeat": args.repeat,
    }  # fmt: skip
    ways: dict[str, Callable[[str, argparse.Namespace, int], tuple[float, float, int]]] = {
        "transaction": timed_transactions,
        "store": timed_store,
    }
    if args.callgrind and shutil.which("valgrind"):
        # BEGIN IMMEDIATE and COMMIT around nothing: the part of a charge that is not the charge's
        results["instructions_per_empty_transaction"] = callgrind_per_charge("resync", args, shell=True)
    for workload in args.workload:
        figures: dict[str, object] = {}
        for way, timed in ways.items():
            samples = [timed(workload, args, seed) for seed in range(1, args.repeat + 1)]
            figures[way] = summary(samples)
            if way == "transaction":
                figures["refused"] = samples[0][2]
        if args.callgrind and shutil.which("valgrind"):
            figures["instructions_per_charge"] = callgrind_per_charge(workload, args)
        if args.strace and shutil.which("strace"):
            figures["syscalls_per_charge"] = strace_per_charge(workload, args)
        results[workload] = figures
        print(f"{workload}: {figures}", file=sys.stderr)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
