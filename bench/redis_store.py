"""The Redis and Redis Cluster stores against the embedded SQLite store, in one run.

For each backend (sqlite, a redis-server, a 3-master Redis Cluster, all started here on
loopback ports without persistence):

* bulk import of N users through the store API (``import_users`` in batches of 10,000,
  two in flight; on Redis one script per 500 users, all of a batch in one pipeline), in
  users per second;
* Redis memory per registered user (INFO ``used_memory`` over every node, minus the
  empty server's), with the change feed still holding every import and after it was
  trimmed (the steady state, once the feed retention has passed);
* Discover end to end: a real ``discovery serve`` on that store loads its index, and a
  separate load generator sends requests of 1,000 contact hashes (half registered) at
  concurrency 1 and 16. Throughput and latency are reported as ratios to SQLite's.

    .venv/bin/python -m bench redis_store               # 1,000,000 users
    .venv/bin/python -m bench redis_store --users 100000 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.data import Registry, make_registry, rows_as_bytes, split_ids, write_server_secret
from bench.end_to_end import DISCOVER_METHOD, discover_frames, load
from bench.loadgen import write_frames
from bench.procs import auth_for, discovery_server, running, unthrottled_args
from discovery.core.hashing import KeyRing
from discovery.core.joins import make_announcement
from discovery.core.model import NewUser, PrivacySettings
from discovery.store import open_store
from discovery.store.redis import RedisStore
from tests.support.redis_fixtures import start_cluster, start_redis

Json = dict[str, Any]
IMPORT_BATCH = 10_000
IN_FLIGHT = 2  # batches in flight, so packing the next overlaps the store's work on this one
CONCURRENCY = (1, 16)
GOAL_DISCOVER_RATIO = 0.9
GOAL_IMPORT_USERS_PER_S = 100_000
GOAL_BYTES_PER_USER = 100


def new_users(registry: Registry) -> list[NewUser]:
    ids = split_ids(registry.id_blob)
    keys = rows_as_bytes(np.frombuffer(registry.keys, dtype=np.uint8).reshape(-1, 16))
    shown, hidden = PrivacySettings(), PrivacySettings(discoverable=False)
    flags = registry.discoverable.tolist()
    ring = KeyRing.from_secret(bytes(32))
    return [
        NewUser(i, k, shown if d else hidden, make_announcement(ring, i, k))
        for i, k, d in zip(ids, keys, flags, strict=True)
    ]


async def bulk_import(url: str, users: Sequence[NewUser]) -> Json:
    store = await open_store(url)
    try:
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def batch(first: int) -> int:
            async with slots:
                report = await store.import_users(users[first : first + IMPORT_BATCH], first)
                return report.imported

        started = time.perf_counter()
        counts = await asyncio.gather(*(batch(first) for first in range(0, len(users), IMPORT_BATCH)))
        seconds = time.perf_counter() - started
        imported = sum(counts)
    finally:
        await store.close()
    assert imported == len(users), f"imported {imported} of {len(users)}"
    return {"seconds": round(seconds, 2), "users_per_s": round(len(users) / seconds)}


def used_memory(clients: Sequence[redis.Redis]) -> int:
    return sum(int(client.info("memory")["used_memory"]) for client in clients)


async def trim_feed(url: str) -> None:
    """Trim the change feed as the retention would (every change is older than 0 s)."""
    store = await open_store(url, feed_retention=0.0)
    try:
        assert isinstance(store, RedisStore)
        ring = KeyRing.from_secret(bytes(32))
        trim = make_announcement(ring, "bench-trim", bytes(16))
        await store.register(NewUser("bench-trim", bytes(16), PrivacySettings(), trim))
        store._last_prune = 0.0
        await store.unregister("bench-trim", trim.joiner_tag)
    finally:
        await store.close()


def discover(name: str, url: str, registry: Registry, frames: Path, work: Path, seconds: float) -> Json:
    data_dir = work / f"data-{name}"
    write_server_secret(data_dir, registry.secret)
    auth = auth_for(data_dir)
    extra, _ = unthrottled_args()
    out: Json = {}
    with running(discovery_server(data_dir, work, auth, [*extra, "--store", url])) as server:
        loaded = server.log_events("index_loaded")
        out["index_load_s"] = loaded[-1].get("seconds") if loaded else None
        for concurrency in CONCURRENCY:
            result = load(
                server.target, DISCOVER_METHOD, frames, auth.client_metadata, concurrency, seconds, 1.0
            )
            out[f"c{concurrency}"] = {k: result[k] for k in ("rps", "p50_us", "p99_us") if k in result}
    return out


def main(argv: Sequence[str] | None = None) -> Json:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=5.0, help="per concurrency level of Discover")
    args = ap.parse_args(argv)
    registry = make_registry(args.users)
    users = new_users(registry)
    work = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    frames = work / "discover.frames"
    write_frames(frames, discover_frames(registry, 200, 1000))
    single = start_redis(work / "redis")
    cluster = start_cluster(work / "cluster")
    results: Json = {"users": args.users, "backends": {}}
    try:
        urls = {
            "sqlite": f"sqlite:///{work / 'data-sqlite' / 'discovery.db'}",
            "redis": single.url,
            "redis-cluster": cluster.url,
        }
        nodes = {"redis": [single], "redis-cluster": cluster.nodes}
        for name, url in urls.items():
            out: Json = {}
            clients = [node.client() for node in nodes.get(name, [])]
            empty = used_memory(clients) if clients else 0
            out["import"] = asyncio.run(bulk_import(url, users))
            if clients:
                with_feed = used_memory(clients) - empty
                asyncio.run(trim_feed(url))
                registry_only = used_memory(clients) - empty
                out["memory"] = {
                    "bytes_per_user_with_feed": round(with_feed / args.users, 1),
                    "bytes_per_user": round(registry_only / args.users, 1),
                }
                for client in clients:
                    client.close()
            out["discover"] = discover(name, url, registry, frames, work, args.seconds)
            results["backends"][name] = out
            print(f"{name}: {json.dumps(out)}", file=sys.stderr)
    finally:
        single.stop()
        cluster.stop()
    base = results["backends"]["sqlite"]["discover"]
    results["ratios_to_sqlite"] = {
        name: {
            f"c{c}": {
                "rps": round(out["discover"][f"c{c}"]["rps"] / base[f"c{c}"]["rps"], 3),
                "p50": round(out["discover"][f"c{c}"]["p50_us"] / base[f"c{c}"]["p50_us"], 3),
            }
            for c in CONCURRENCY
        }
        for name, out in results["backends"].items()
        if name != "sqlite"
    }
    results["goals"] = goals(results)
    print(json.dumps(results, indent=2))
    return results


def goals(results: Json) -> list[Json]:
    out = []
    for name in ("redis", "redis-cluster"):
        backend = results["backends"][name]
        ratio = results["ratios_to_sqlite"][name]["c16"]["rps"]
        out += [
            {"goal": f"{name}: Discover req/s >= 90% of SQLite's (c16)", "value": ratio,
             "met": ratio >= GOAL_DISCOVER_RATIO},
            {"goal": f"{name}: bulk import >= 100,000 users/s", "value": backend["import"]["users_per_s"],
             "met": backend["import"]["users_per_s"] >= GOAL_IMPORT_USERS_PER_S},
            {"goal": f"{name}: <= 100 bytes per user at {results['users']:,} users (feed trimmed)",
             "value": backend["memory"]["bytes_per_user"],
             "met": backend["memory"]["bytes_per_user"] <= GOAL_BYTES_PER_USER},
        ]  # fmt: skip
    return out


if __name__ == "__main__":
    main()
