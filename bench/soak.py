"""Soak: live join subscribers plus steady Discover and RegisterUser load, for a while.

    .venv/bin/python -m bench soak --seconds 60 --subscribers 1000
    .venv/bin/python -m bench soak --quick        # 5 s, 100 subscribers (the slow test runs this)

Starts ``discovery serve`` as a child process (embedded SQLite in a temporary directory,
development auth, quotas off, connections recycled every ``--max-connection-age``
seconds), then:

1. imports the subscribers; each uploads an address book of future joiners, so that
   every joiner is watched by ``--fanout`` random subscribers;
2. opens one SDK join iterator (``subscribe_joins``) per subscriber, in ``--workers``
   client processes (several channels each), and waits until every one is live;
3. for ``--seconds``: Discover at ``--discover-rate`` per second (100 contacts, half of
   them registered; the answer is checked) and RegisterUser of the next joiner at
   ``--register-rate`` per second, open loop, 5 s deadlines; the server's RSS and open
   file descriptors (``/proc/PID``) are sampled every ``--sample-every`` seconds;
4. drains: waits (at most 60 s) until every event owed for an acknowledged registration
   has arrived; ``lost`` counts those that never did, and must be 0;
5. stops the server with SIGTERM while every stream is still open, and records its exit
   code and shutdown time; the iterators take the end as "reconnect" (no stream error).

Prints one JSON object; exits 1 if any call failed, an event was lost or misattributed,
a Discover answer was wrong, or the server did not exit cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from grpc import aio

from bench.procs import Process, read_status_kib
from bench.report import machine
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, DiscoveryError, JoinSubscription
from discovery.core.hashing import contact_hash

Json = dict[str, Any]

SUBSCRIBER_PREFIX = "+49157"
JOINER_PREFIX = "+49159"
UNKNOWN_PREFIX = "+49158"  # never registered
STREAMS_PER_CHANNEL = 250
OPEN_WAVE = 250
CONTACTS_PER_DISCOVER = 100
LOADERS = 20
DEADLINE = 5.0
CONCURRENCY = 32
DRAIN_TIMEOUT = 60.0


def number(prefix: str, i: int) -> str:
    return f"{prefix}{i:08d}"


@dataclass
class Plan:
    """Who watches whom: subscriber -> address book; joiner -> (number, watchers)."""

    books: dict[str, list[str]]
    joiners: list[tuple[str, str]]
    watchers: dict[str, list[str]]


def make_plan(subscribers: int, joiners: int, fanout: int, rng: random.Random) -> Plan:
    subs = [f"sub-{i}" for i in range(subscribers)]
    books: dict[str, list[str]] = {s: [] for s in subs}
    plan = Plan(books, [], {})
    for j in range(joiners):
        joiner, joiner_number = f"joiner-{j}", number(JOINER_PREFIX, j)
        plan.joiners.append((joiner, joiner_number))
        plan.watchers[joiner] = rng.sample(subs, min(fanout, subscribers))
        for s in plan.watchers[joiner]:
            books[s].append(joiner_number)
    return plan


# -- subscriber processes ----------------------------------------------------------------------


def subscriber_process(conn: Connection, target: str, books: dict[str, list[str]]) -> None:
    """Entry point of one client process: one join iterator per subscriber, answering the
    parent's commands (``count``, ``stop``) over ``conn``."""
    asyncio.run(_subscribers(conn, target, books))


async def _subscribers(conn: Connection, target: str, books: dict[str, list[str]]) -> None:
    received: dict[str, list[tuple[str, str | None]]] = {s: [] for s in books}
    errors: Counter[str] = Counter()
    channels: list[aio.Channel] = []
    subscriptions: list[JoinSubscription] = []
    tasks: list[asyncio.Task[None]] = []

    async def consume(subscriber: str, subscription: JoinSubscription) -> None:
        try:
            async for event in subscription:
                received[subscriber].append((event.user_id, event.e164))
        except DiscoveryError as error:
            errors[error.code.name] += 1

    names = list(books)
    for start in range(0, len(names), OPEN_WAVE):
        wave = []
        for subscriber in names[start : start + OPEN_WAVE]:
            if len(subscriptions) % STREAMS_PER_CHANNEL == 0:
                # A local subchannel pool gives each channel its own connection.
                channels.append(aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]))
            client = AsyncDiscoveryClient(channel=channels[-1], user_id=subscriber)
            subscription = client.subscribe_joins(books[subscriber], initial_backoff=0.1, max_backoff=2.0)
            subscriptions.append(subscription)
            wave.append(subscription)
            tasks.append(asyncio.create_task(consume(subscriber, subscription)))
        await asyncio.wait_for(asyncio.gather(*(s.live.wait() for s in wave)), timeout=180)
    conn.send(("live", len(subscriptions)))
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "count":
            conn.send((sum(len(r) for r in received.values()), sum(s.reconnects for s in subscriptions)))
            continue
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
        conn.send({"received": received, "errors": dict(errors)})
        return


class Subscribers:
    """The client processes of the subscribers, seen from the parent."""

    def __init__(self, target: str, books: dict[str, list[str]], workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        names = list(books)
        self.pipes: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for w in range(workers):
            mine = {s: books[s] for s in names[w::workers]}
            parent, child = context.Pipe()
            process = context.Process(target=subscriber_process, args=(child, target, mine), daemon=True)
            process.start()
            child.close()  # so that a worker that dies is seen as EOF, not waited for
            self.pipes.append(parent)
            self.processes.append(process)

    async def _ask(self, pipe: Connection, command: str | None, timeout: float) -> Any:
        if command is not None:
            pipe.send(command)
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.run_in_executor(None, pipe.recv), timeout=timeout)

    async def live(self) -> int:
        replies = [await self._ask(p, None, timeout=300) for p in self.pipes]
        return sum(count for _, count in replies)

    async def count(self) -> tuple[int, int]:
        """Events received and stream reconnects so far, over every process."""
        replies = [await self._ask(p, "count", timeout=30) for p in self.pipes]
        return sum(events for events, _ in replies), sum(reconnects for _, reconnects in replies)

    async def stop(self) -> list[Json]:
        results = [await self._ask(p, "stop", timeout=60) for p in self.pipes]
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        return results


# -- load -----------------------------------------------------------------------------------------


@dataclass
class CallStats:
    made: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)
    began: list[float] = field(default_factory=list)  # time.monotonic() at each call's start

    def to_json(self) -> Json:
        ordered = sorted(self.seconds) or [math.nan]

        def ms(q: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

        return {
            "made": self.made,
            "ok": self.ok,
            "errors": dict(self.errors),
            "p50_ms": ms(0.5),
            "p99_ms": ms(0.99),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 2) if self.seconds else None,
        }


def latency_windows(stats: list[CallStats], since: float, every: float) -> list[Json]:
    """Calls started in each ``every``-second window of the load, with their p99 and max:
    shows whether slow calls cluster (connection recycling, reconnecting streams)."""
    windows: dict[int, list[float]] = {}
    for one in stats:
        for began, seconds in zip(one.began, one.seconds, strict=True):
            windows.setdefault(int((began - since) // every), []).append(seconds)
    out = []
    for k in sorted(windows):
        ordered = sorted(windows[k])
        out.append(
            {
                "t": round(k * every, 1),
                "calls": len(ordered),
                "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
                "max_ms": round(ordered[-1] * 1000, 1),
            }
        )
    return out


async def paced(
    rate: float, seconds: float, call: Callable[[int], Awaitable[None]], stats: CallStats
) -> None:
    """Open loop: start call(i) every 1/rate seconds for ``seconds`` (i < rate * seconds), at
    most CONCURRENCY at once."""
    started = time.monotonic()
    limit = asyncio.Semaphore(CONCURRENCY)
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        began, began_at = time.perf_counter(), time.monotonic()
        try:
            await call(i)
            stats.ok += 1
        except DiscoveryError as error:
            stats.errors[error.code.name] += 1
        finally:
            stats.seconds.append(time.perf_counter() - began)
            stats.began.append(began_at)
            limit.release()

    i = 0
    while (due := started + i / rate) < started + seconds:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        await limit.acquire()
        stats.made += 1
        task = asyncio.create_task(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
    await asyncio.gather(*pending)


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int

    def to_json(self) -> Json:
        return {"t": round(self.t, 1), "rss_mib": self.rss_mib, "fds": self.fds}


def sample(server: Process, since: float) -> Sample:
    rss = read_status_kib(server.pid).get("VmRSS", 0)
    fds = len(os.listdir(f"/proc/{server.pid}/fd"))
    return Sample(time.monotonic() - since, round(rss / 1024, 1), fds)


async def sampler(
    server: Process, since: float, every: float, into: list[Sample], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        into.append(sample(server, since))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
    into.append(sample(server, since))


# -- the run --------------------------------------------------------------------------------------


def serve_args(args: argparse.Namespace, data_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "discovery", "serve",
        "--listen", "127.0.0.1:0",
        "--data-dir", str(data_dir),
        "--auth", "dev",
        "--log-level", "WARNING",
        "--grace-seconds", "5",
        "--quota-capacity", "0",
        "--rate-limit-burst", "0",
        "--default-notify-on-join", "true",
        "--default-announce-mode", "everyone",  # the joiners agree to be announced to who has them
        "--join-release-jitter-seconds", "0",  # delivery is measured, not the release delay (default 1 h)
        "--join-max-streams", str(args.subscribers + 1000),
        "--max-connection-age-seconds", str(args.max_connection_age),
        "--max-connection-age-grace-seconds", "1",
    ]  # fmt: skip


async def run(args: argparse.Namespace) -> Json:
    rng = random.Random(args.seed)
    pool = int(args.register_rate * args.seconds) + 1  # paced() makes fewer calls than that
    plan = make_plan(args.subscribers, pool, args.fanout, rng)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        server = Process(serve_args(args, Path(tmp) / "data"), Path(tmp), "server")
        server.start(timeout=120)
        try:
            return await measure(args, rng, plan, server)
        finally:
            server.stop()


async def setup(target: str, plan: Plan) -> None:
    """Register the subscribers (notify_on_join on by the server default); each uploads its book."""
    async with AsyncAdminClient(target, timeout=60) as admin:
        await admin.import_users((s, number(SUBSCRIBER_PREFIX, i)) for i, s in enumerate(plan.books))
    async with aio.insecure_channel(target) as channel:
        limit = asyncio.Semaphore(8)

        async def upload(subscriber: str, book: list[str]) -> None:
            async with limit:
                client = AsyncDiscoveryClient(channel=channel, user_id=subscriber, timeout=30)
                await client.discover(book)

        await asyncio.gather(*(upload(s, b) for s, b in plan.books.items()))


async def measure(args: argparse.Namespace, rng: random.Random, plan: Plan, server: Process) -> Json:
    target = server.target
    await setup(target, plan)
    subscribers = Subscribers(target, plan.books, args.workers)
    live = await subscribers.live()
    before_load = sample(server, time.monotonic())  # every subscriber live, no load yet

    # Discover callers: each re-syncs one fixed book, half registered subscribers, half unknown.
    registered = [number(SUBSCRIBER_PREFIX, i) for i in range(args.subscribers)]
    half = CONTACTS_PER_DISCOVER // 2
    books: list[tuple[list[bytes], int]] = []
    for _ in range(LOADERS):
        known = rng.sample(registered, min(half, len(registered)))
        unknown = [number(UNKNOWN_PREFIX, rng.randrange(10**8)) for _ in range(half)]
        books.append(([contact_hash(n) for n in known + unknown], len(known)))
    acked: set[str] = set()
    wrong_answers = 0
    discover_stats, register_stats = CallStats(), CallStats()
    samples: list[Sample] = []
    done = asyncio.Event()

    async with (
        aio.insecure_channel(target) as channel,
        AsyncAdminClient(channel=channel, timeout=DEADLINE) as admin,
    ):
        loaders = [
            AsyncDiscoveryClient(channel=channel, user_id=f"loader-{k}", timeout=DEADLINE)
            for k in range(LOADERS)
        ]

        async def discover(i: int) -> None:
            nonlocal wrong_answers
            hashes, known = books[i % LOADERS]
            matches = await loaders[i % LOADERS].discover_hashes(hashes)
            if sorted(index for index, _ in matches) != list(range(known)):
                wrong_answers += 1

        async def register(i: int) -> None:
            joiner, joiner_number = plan.joiners[i]
            await admin.register_user(joiner, joiner_number)
            acked.add(joiner)

        started = time.monotonic()
        sampling = asyncio.create_task(sampler(server, started, args.sample_every, samples, done))
        await asyncio.gather(
            paced(args.discover_rate, args.seconds, discover, discover_stats),
            paced(args.register_rate, args.seconds, register, register_stats),
        )
        done.set()
        await sampling
        load_seconds = time.monotonic() - started

    expected = {(s, j) for j in acked for s in plan.watchers[j]}
    drain_started = time.monotonic()
    while (await subscribers.count())[0] < len(expected) and time.monotonic() - drain_started < DRAIN_TIMEOUT:
        await asyncio.sleep(0.25)
    reconnects_before_shutdown = (await subscribers.count())[1]
    drain_seconds = time.monotonic() - drain_started
    after_drain = sample(server, started)
    # SIGTERM with every stream still open: they end cleanly and the iterators retry.
    stop_started = time.monotonic()
    server.stop()
    assert server.proc is not None
    shutdown = {
        "exit_code": server.proc.returncode,
        "seconds_with_live_streams": round(time.monotonic() - stop_started, 2),
    }
    results = await subscribers.stop()

    numbers = dict(plan.joiners)
    delivered: set[tuple[str, str]] = set()
    misattributed = duplicates = 0
    stream_errors: Counter[str] = Counter()
    for result in results:
        stream_errors.update(result["errors"])
        for subscriber, events in result["received"].items():
            for joiner, e164 in events:
                if (subscriber, joiner) in delivered:
                    duplicates += 1
                delivered.add((subscriber, joiner))
                if e164 != numbers.get(joiner):
                    misattributed += 1

    lost = len(expected - delivered)
    unacked = len(delivered - expected)  # a registration whose reply was lost, committed anyway
    calls_failed = sum(discover_stats.errors.values()) + sum(register_stats.errors.values())
    middle = min(samples, key=lambda s: abs(s.t - load_seconds / 2))
    start, end = samples[0], samples[-1]
    ok = (
        calls_failed == 0
        and lost == 0
        and misattributed == 0
        and wrong_answers == 0
        and not stream_errors
        and shutdown["exit_code"] == 0
    )
    return {
        "benchmark": "soak",
        "parameters": {
            "seconds": args.seconds,
            "subscribers": args.subscribers,
            "subscriber_processes": args.workers,
            "discover_rate_per_s": args.discover_rate,
            "register_rate_per_s": args.register_rate,
            "contacts_per_discover": CONTACTS_PER_DISCOVER,
            "watchers_per_registration": args.fanout,
            "call_deadline_s": DEADLINE,
            "max_connection_age_s": args.max_connection_age,
            "store": "embedded SQLite",
        },
        "machine": machine(),
        "live_subscribers": live,
        "calls": {
            "made": discover_stats.made + register_stats.made,
            "failed": calls_failed,
            "discover": discover_stats.to_json(),
            "register": register_stats.to_json(),
            "discover_wrong_answers": wrong_answers,
            "latency_by_window": latency_windows(
                [discover_stats, register_stats], started, args.sample_every
            ),
        },
        "events": {
            "expected": len(expected),
            "delivered": len(expected & delivered),
            "lost": lost,
            "for_unacknowledged_registrations": unacked,
            "misattributed": misattributed,
            "duplicates_seen_by_caller": duplicates,
            "drain_seconds": round(drain_seconds, 2),
            "stream_errors": dict(stream_errors),
            # Connection recycling (max connection age) ends streams; they resume from their cursor.
            "stream_reconnects_under_load": reconnects_before_shutdown,
        },
        "server": {
            "before_load": before_load.to_json(),
            "start": start.to_json(),
            "middle": middle.to_json(),
            "end": end.to_json(),
            "after_drain": after_drain.to_json(),
            "rss_growth_first_half_mib": round(middle.rss_mib - start.rss_mib, 1),
            "rss_growth_second_half_mib": round(end.rss_mib - middle.rss_mib, 1),
            "fds_growth_first_half": middle.fds - start.fds,
            "fds_growth_second_half": end.fds - middle.fds,
            "samples": [s.to_json() for s in samples],
        },
        "shutdown": shutdown,
        "ok": ok,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="5 s, 100 subscribers, 1 client process")
    ap.add_argument("--seconds", type=float, default=None, help="load duration (60; quick: 5)")
    ap.add_argument("--subscribers", type=int, default=None, help="live join subscribers (1000; quick: 100)")
    ap.add_argument("--workers", type=int, default=None, help="subscriber client processes (2; quick: 1)")
    ap.add_argument("--discover-rate", type=float, default=50.0, help="Discover calls per second")
    ap.add_argument("--register-rate", type=float, default=20.0, help="RegisterUser calls per second")
    ap.add_argument("--fanout", type=int, default=5, help="subscribers watching each registration")
    ap.add_argument(
        "--max-connection-age", type=float, default=None, help="server connection recycling, s (20; quick: 2)"
    )
    ap.add_argument(
        "--sample-every", type=float, default=None, help="RSS/fd sampling period, s (5; quick: 1)"
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    quick = args.quick
    defaults = {
        "seconds": (60.0, 5.0),
        "subscribers": (1000, 100),
        "workers": (2, 1),
        "max_connection_age": (20.0, 2.0),
        "sample_every": (5.0, 1.0),
    }
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
