"""Redis high availability: what ``min_replicas`` costs, and what a failover costs.

On a Redis Cluster of 3 primaries each with a replica (started here on loopback, no
persistence, node timeout 1.5 s):

* **cost of N**: registration latency (one at a time through the store, p50/p99) and the
  ImportUsers rate (batches of 1,000, two in flight) with ``min_replicas`` N = 0 and N = 1;
* **failover** (with ``--failover-replicas``, default 1): two service instances in this
  process, 4 writers registering users through the store and one Discover loop per instance
  (100 contact hashes per request, from a caller without join notifications, so a read)
  run while the primary holding the registry's slot is SIGKILLed; once its replica is
  promoted it is restarted, as a supervisor would, and comes back as a replica. From the
  kill: the first acknowledged write, and when every instance's index holds every user of
  the registry (converged). Discover requests per second before the kill, from the kill to
  convergence, and after it.

    .venv/bin/python -m bench redis_ha
    .venv/bin/python -m bench redis_ha --registrations 200 --import-users 10000   # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from grpc import aio

from discovery.app.server import DiscoveryServer
from discovery.config import ServerConfig
from discovery.core.errors import Unavailable
from discovery.core.model import PrivacySettings
from discovery.v1 import discovery_pb2, discovery_pb2_grpc
from tests.support.announce import new_user as announced_user
from tests.support.failover import REGISTRY_TAG, new_user, open_store
from tests.support.redis_fixtures import ReplicatedCluster, start_replicated_cluster

Json = dict[str, Any]
IMPORT_BATCH = 1000
HASHES_PER_DISCOVER = 100
WRITERS = 4
AFTER_SECONDS = 3.0
DEADLINE = 60.0


def _ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values), q)) * 1000, 3)


async def cost_of(url: str, min_replicas: int, registrations: int, import_users: int) -> Json:
    """Registration latency and the import rate with ``min_replicas``."""
    store = await open_store(url, min_replicas)
    try:
        latencies = []
        for i in range(registrations):
            user = new_user(f"lat{min_replicas}-{i}")
            started = time.perf_counter()
            await store.register(user)
            latencies.append(time.perf_counter() - started)
        users = [new_user(f"imp{min_replicas}-{i}") for i in range(import_users)]
        slots = asyncio.Semaphore(2)

        async def batch(first: int) -> int:
            async with slots:
                report = await store.import_users(users[first : first + IMPORT_BATCH], first)
                return report.imported

        started = time.perf_counter()
        imported = sum(await asyncio.gather(*(batch(f) for f in range(0, len(users), IMPORT_BATCH))))
        seconds = time.perf_counter() - started
    finally:
        await store.close()
    assert imported == import_users, f"imported {imported} of {import_users}"
    return {
        "register_p50_ms": _ms(latencies, 50),
        "register_p99_ms": _ms(latencies, 99),
        "import_users_per_s": round(import_users / seconds),
    }


async def discover_loop(target: str, stop: asyncio.Event, done: list[float], failed: list[float]) -> None:
    """Discover as fast as one caller can, recording when each call succeeded or failed."""
    hashes = secrets.token_bytes(32 * HASHES_PER_DISCOVER)
    metadata = (("x-discovery-user-id", "bench-caller"),)
    async with aio.insecure_channel(target) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        while not stop.is_set():
            try:
                await stub.Discover(
                    discovery_pb2.DiscoverRequest(contact_hashes=hashes), metadata=metadata, timeout=5
                )
                done.append(time.monotonic())
            except aio.AioRpcError:
                failed.append(time.monotonic())
                await asyncio.sleep(0.05)


def _rate(times: list[float], start: float, end: float) -> float | None:
    if end <= start:
        return None
    return round(sum(1 for t in times if start <= t < end) / (end - start), 1)


async def failover(cluster: ReplicatedCluster, min_replicas: int, work: Path) -> Json:
    secret = secrets.token_hex(32)
    os.environ["DISCOVERY_BENCH_HA_SECRET"] = secret
    servers = []
    for i in range(2):
        config = ServerConfig.from_options(
            listen="127.0.0.1:0",
            data_dir=work / f"instance{i}",
            store=cluster.url,
            secret_env="DISCOVERY_BENCH_HA_SECRET",
            auth="dev",
            redis_min_replicas=min_replicas,
            store_check_seconds=0.2,
            quota_capacity=0,
            rate_limit_burst=0,
            log_level="WARNING",
        )
        server = DiscoveryServer(config)
        await server.start()
        servers.append(server)
    store = await open_store(cluster.url, min_replicas)
    # The caller does not want join notifications, so Discover is a read (no watches written).
    await store.register(
        announced_user("bench-caller", secrets.token_bytes(16), PrivacySettings(notify_on_join=False))
    )
    stop_discover, stop_writers = asyncio.Event(), asyncio.Event()
    done: list[list[float]] = [[] for _ in servers]
    failed: list[list[float]] = [[] for _ in servers]
    loops = [
        asyncio.create_task(discover_loop(f"127.0.0.1:{s.port}", stop_discover, done[i], failed[i]))
        for i, s in enumerate(servers)
    ]
    killed_at = 0.0
    first_write: float | None = None
    unavailable = 0
    started = time.monotonic()

    async def writer(w: int) -> None:
        nonlocal first_write, unavailable
        for i in range(10_000_000):
            if stop_writers.is_set() or time.monotonic() - started > DEADLINE:
                return
            sent = time.monotonic()
            try:
                await store.register(new_user(f"fo{w}-{i}"))
            except Unavailable:
                unavailable += 1
                await asyncio.sleep(0.02)
                continue
            if killed_at and sent > killed_at and first_write is None:
                first_write = time.monotonic()
                asyncio.get_running_loop().call_later(0.5, stop_writers.set)

    writers = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
    try:
        await asyncio.sleep(3.0)  # steady state before the kill
        primary = cluster.owner(REGISTRY_TAG)
        replica = cluster.replica_of(primary)
        killed_at = time.monotonic()
        primary.kill()
        await asyncio.to_thread(cluster.wait_promoted, replica)
        promoted_at = time.monotonic()
        await asyncio.to_thread(primary.start)
        await asyncio.gather(*writers)
        # Converged: every instance's index holds every user the registry has.
        size = await _retrying(store.registry_size)
        converged: list[float | None] = [None] * len(servers)
        while None in converged and time.monotonic() - killed_at < DEADLINE:
            for i, server in enumerate(servers):
                if converged[i] is None and server.sync.users == size:
                    converged[i] = time.monotonic()
            await asyncio.sleep(0.02)
        last = max((c for c in converged if c is not None), default=time.monotonic())
        await asyncio.sleep(AFTER_SECONDS)
        end = time.monotonic()
    finally:
        stop_writers.set()
        stop_discover.set()
        await asyncio.gather(*loops, *writers, return_exceptions=True)
        await store.close()
        for server in servers:
            await server.stop(grace=0.5)
    return {
        "min_replicas": min_replicas,
        "promoted_s": round(promoted_at - killed_at, 2),
        "first_write_s": None if first_write is None else round(first_write - killed_at, 2),
        "unavailable_writes": unavailable,
        "registry_users": size,
        "index_converged_s": [None if c is None else round(c - killed_at, 2) for c in converged],
        "discover_rps_per_instance": [
            {
                "before": _rate(done[i], killed_at - 2.0, killed_at),
                "during": _rate(done[i], killed_at, last),
                "after": _rate(done[i], last, end),
                "failed_during": sum(1 for t in failed[i] if killed_at <= t < last),
            }
            for i in range(len(servers))
        ],
    }


async def _retrying(call: Any) -> int:
    for _attempt in range(100):
        try:
            return int(await call())
        except Unavailable:
            await asyncio.sleep(0.1)
    raise RuntimeError("the store did not come back")


def main(argv: Sequence[str] | None = None) -> Json:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registrations", type=int, default=2000, help="sequential registrations per N")
    ap.add_argument("--import-users", type=int, default=100_000, help="users imported per N")
    ap.add_argument("--failover-replicas", type=int, default=1, help="min_replicas during the failover")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-redis-ha-"))
    results: Json = {"setup": "Redis Cluster, 3 primaries + 3 replicas, loopback, node timeout 1.5 s"}
    cluster = start_replicated_cluster(work / "cluster")
    try:
        for n in (0, 1):
            results[f"N={n}"] = asyncio.run(cost_of(cluster.url, n, args.registrations, args.import_users))
            print(f"N={n}: {json.dumps(results[f'N={n}'])}", file=sys.stderr)
        results["failover"] = asyncio.run(failover(cluster, args.failover_replicas, work))
    finally:
        cluster.stop()
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
