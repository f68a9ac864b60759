"""Scenario: no stall when every join stream resubscribes at once.

``discovery serve`` (embedded SQLite, development auth, notify_on_join on, quotas off)
has ``streams`` registered users. The load generator sends Discover (1,000 contacts) at
concurrency 4 for a few seconds, twice:

* ``normal``: nothing else happens;
* ``storm``: two seconds in, all ``streams`` users open their SubscribeJoins stream at
  once, as clients do after a server restart or a connection recycling (each stream
  attaches its device, replays its inbox and reports ``caught_up``).

The goal is on the added p99 of Discover: storm p99 minus normal p99.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.context import Context
from bench.end_to_end import DISCOVER_METHOD, load
from bench.joins_fanout import Server, Subscribers, in_child, number
from bench.loadgen import write_frames
from bench.report import Goal, Report
from bench.summary import headline
from discovery.client import AsyncAdminClient
from discovery.v1 import discovery_pb2 as pb

GOAL_ADDED_MS = 50.0
CONCURRENCY = 4
Json = dict[str, Any]


async def measure(target: str, streams: int, frames: Path, seconds: float) -> Json:
    users = [f"sub-{i}" for i in range(streams)]
    async with AsyncAdminClient(target) as admin:
        for start in range(0, streams, 10_000):
            await admin.import_users(
                [(u, number(start + i)) for i, u in enumerate(users[start : start + 10_000])]
            )
    metadata = (("x-discovery-user-id", "prober"),)
    normal = await asyncio.to_thread(
        load, target, DISCOVER_METHOD, frames, metadata, CONCURRENCY, seconds, 1.0
    )
    probe = asyncio.create_task(
        asyncio.to_thread(load, target, DISCOVER_METHOD, frames, metadata, CONCURRENCY, seconds, 1.0)
    )
    await asyncio.sleep(2.0)  # warm-up and one second of the measured window
    subscribers = Subscribers(target)
    started = time.perf_counter()
    try:
        await subscribers.open(users)
        caught_up = time.perf_counter() - started
        storm = await probe
    finally:
        await subscribers.close()
    for result in (normal, storm):
        result.pop("first_response", None)
    return {"normal": normal, "storm": storm, "all_streams_caught_up_s": round(caught_up, 3)}


def measure_sync(target: str, streams: int, frames: Path, seconds: float) -> Json:
    return asyncio.run(measure(target, streams, frames, seconds))


def run(ctx: Context) -> Report:
    streams = 500 if ctx.quick else 10_000
    seconds = 4.0 if ctx.quick else 20.0  # the full window spans the whole storm (about 16 s)
    report = Report(
        "stall_resubscribe",
        {
            "streams": streams,
            "discover_concurrency": CONCURRENCY,
            "seconds_per_run": seconds,
            "server": "discovery serve, embedded SQLite, dev auth, notify_on_join on, quotas off",
            "streams_client": "this process, raw grpc.aio, 500 streams per channel, opened in waves of 500",
        },
    )
    with tempfile.TemporaryDirectory(prefix="stall-resubscribe-", dir=ctx.work) as tmp:
        frames = Path(tmp) / "discover.frames"
        write_frames(
            frames,
            (pb.DiscoverRequest(contact_hashes=os.urandom(32_000)).SerializeToString() for _ in range(64)),
        )
        server = Server(Path(tmp) / "data", max_streams=streams + 100)
        try:
            report.results.update(in_child(measure_sync, server.target, streams, frames, seconds))
        finally:
            server.stop()
    normal, storm = report.results["normal"], report.results["storm"]
    added = round((storm["p99_us"] - normal["p99_us"]) / 1000, 2)
    report.results["added_p99_ms"] = added
    report.goals.append(
        Goal(
            f"Discover p99 added while {streams} join streams resubscribe at once", GOAL_ADDED_MS, added, "ms"
        )
    )
    report.results["headline"] = [
        headline(
            f"Discover p99 added while {streams} join streams resubscribe",
            added,
            "ms",
            f"p99 {storm['p99_us'] / 1000:.1f} ms against {normal['p99_us'] / 1000:.1f} ms; "
            f"all streams caught up in {report.results['all_streams_caught_up_s']} s",
        )
    ]
    return report
