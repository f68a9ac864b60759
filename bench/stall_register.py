"""Scenario: no stall when a number many live streams watch is registered.

``discovery serve`` (embedded SQLite, development auth, notify_on_join on by default)
holds ``watchers`` live SubscribeJoins streams; every one of them uploaded an address
book holding the numbers of the future joiners, so each registration is watched by all
of them. Timed: the RegisterUser call itself (sent until answered) for numbers nobody
watches (the baseline, same run) and for the watched numbers, one after another, each
waited for at every watcher before the next; and the time until the last watcher has
the event.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.joins_fanout import Server, Subscribers, in_child, number, percentiles
from bench.report import Goal, Report
from bench.summary import headline
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient

GOAL_MS = 10.0
Json = dict[str, Any]


async def measure(target: str, watchers: int, rounds: int, baseline: int) -> Json:
    users = [f"sub-{i}" for i in range(watchers)]
    joiners = [number(watchers + j) for j in range(rounds)]
    async with AsyncAdminClient(target) as admin:
        await admin.import_users([(u, number(i)) for i, u in enumerate(users)])
        for user in users:
            async with AsyncDiscoveryClient(target, user_id=user) as client:
                await client.discover(joiners)
        subscribers = Subscribers(target)
        await subscribers.open(users)
        try:
            lone: list[float] = []
            for i in range(baseline):
                started = time.perf_counter()
                await admin.register_user(f"lone-{i}", number(watchers + rounds + i))
                lone.append(time.perf_counter() - started)
            calls: list[float] = []
            last: list[float] = []
            for j, joiner in enumerate(joiners):
                started = time.perf_counter()
                await admin.register_user(f"joiner-{j}", joiner)
                calls.append(time.perf_counter() - started)
                last.append(max(await subscribers.wait_for(f"joiner-{j}", watchers)) - started)
                await asyncio.sleep(0.02)
        finally:
            await subscribers.close()
    return {
        "register_unwatched": percentiles(lone),
        "register_watched": percentiles(calls),
        "last_watcher_has_event": percentiles(last),
    }


def measure_sync(target: str, watchers: int, rounds: int, baseline: int) -> Json:
    return asyncio.run(measure(target, watchers, rounds, baseline))


def run(ctx: Context) -> Report:
    watchers = 200
    rounds, baseline = (10, 10) if ctx.quick else (60, 60)
    report = Report(
        "stall_register",
        {
            "watchers": watchers,
            "watched_registrations": rounds,
            "unwatched_registrations": baseline,
            "server": "discovery serve, embedded SQLite, dev auth, notify_on_join on, EVERYONE, quotas off",
            "client": "this process: the admin client and all the streams (raw grpc.aio)",
        },
    )
    with tempfile.TemporaryDirectory(prefix="stall-register-", dir=ctx.work) as tmp:
        server = Server(Path(tmp), max_streams=watchers + 100)
        try:
            report.results.update(in_child(measure_sync, server.target, watchers, rounds, baseline))
        finally:
            server.stop()
    watched = report.results["register_watched"]
    report.goals.append(
        Goal(f"RegisterUser of a number {watchers} live streams watch, p50", GOAL_MS, watched["p50_ms"], "ms")
    )
    report.results["headline"] = [
        headline(
            f"RegisterUser watched by {watchers} live streams",
            watched["p50_ms"],
            "ms",
            f"p99 {watched['p99_ms']} ms; unwatched p50 {report.results['register_unwatched']['p50_ms']} ms; "
            f"last watcher has it after {report.results['last_watcher_has_event']['p50_ms']} ms (p50)",
        )
    ]
    return report
