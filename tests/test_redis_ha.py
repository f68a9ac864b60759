"""High availability on Redis: replicated acknowledgement (``min_replicas``), Sentinel and
Redis Cluster failover, with real redis-server processes on 127.0.0.1.

* With min_replicas=1, a primary killed with SIGKILL (with or without a replication gap
  before) loses 0 acknowledged registrations; calls during the election fail with
  Unavailable only, and the store recovers without a restart.
* A replica that is down: writes fail with Unavailable within the timeout, reads work,
  nothing is half-written, and every retried write succeeds once the replica is back.
* The figures with min_replicas=0 are printed (``-s``) and asserted only for errors.

Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from discovery.api.auth import ADMIN_SERVICE, CLIENT_SERVICE, JOIN_SERVICE
from discovery.api.health import NOT_SERVING, SERVING
from discovery.core.errors import Unavailable
from discovery.core.model import Announcement, BucketCharge, RegisterOutcome
from discovery.store.redis.base import parse_redis_url
from tests.support.announce import announcement, tags
from tests.support.announce import joiner as joiner_of
from tests.support.failover import (
    REGISTRY_TAG,
    Drill,
    count_missing,
    cut_replication_link,
    drill,
    new_user,
    open_store,
)
from tests.support.redis_fixtures import (
    REPLICATION_ARGS,
    RedisProcess,
    ReplicatedCluster,
    SentinelProcesses,
    replicas_online,
    wait_until,
)
from tests.support.serve_process import wait_health
from tests.support.server import StartServer

#: Long enough for a healthy replica to confirm on a loaded 2-core machine; a missing one fails within it.
REPLICA_TIMEOUT = 1.0


def report(name: str, result: Drill) -> None:
    print(
        f"\n{name}: acked={len(result.acked)} missing={len(result.missing)} "
        f"unavailable={result.unavailable} recovery_s={result.recovery_seconds}"
    )


def moved_to(user_id: str) -> tuple[bytes, Announcement]:
    """change_number's new key and announcement, those of the user ``user_id`` would be."""
    key = new_user(user_id).directory_key
    return key, announcement("old", key)


def test_store_url_options() -> None:
    target = parse_redis_url("redis://127.0.0.1:6379/0?min_replicas=1&replica_timeout_ms=500&namespace=x")
    assert (target.min_replicas, target.replica_timeout, target.namespace) == (1, 0.5, "x")
    assert target.url == "redis://127.0.0.1:6379/0"
    assert parse_redis_url("redis://127.0.0.1:6379/0").min_replicas is None
    sentinel = parse_redis_url("redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/svc/2?min_replicas=2")
    assert sentinel.sentinel_service == "svc"
    assert (sentinel.db, sentinel.password, sentinel.min_replicas) == (2, "pw", 2)
    assert sentinel.nodes == (("127.0.0.1", 26379), ("127.0.0.1", 26380))
    cluster = parse_redis_url("redis+cluster://127.0.0.1:7000?replica_timeout_ms=250")
    assert cluster.replica_timeout == 0.25
    for bad in (
        "redis://h:1/0?min_replicas=-1",
        "redis://h:1/0?replica_timeout_ms=0",
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel://127.0.0.1:26379/svc/x",
        "redis+cluster://127.0.0.1:7000?sentinel_password=x",
    ):
        with pytest.raises(ValueError):
            parse_redis_url(bad)


# -- a replica that is down -------------------------------------------------------------------


async def test_replica_down_writes_fail_cleanly_reads_work_retries_are_safe(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    primary = redis_factory(*REPLICATION_ARGS)
    replica = redis_factory(*REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(primary.port))
    wait_until(lambda: replicas_online(primary, 1), 20, "the replica is in sync")
    store = await open_store(primary.url, min_replicas=1, replica_timeout=REPLICA_TIMEOUT)
    try:
        await store.register(new_user("watcher"))
        await store.register(new_user("old"))
        joiner = new_user("joiner")
        assert await store.add_watches("watcher", tags(joiner.directory_key), 3600.0, 100) == 1

        replica.stop()
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            await store.register(joiner)
        assert time.monotonic() - started < REPLICA_TIMEOUT + 1.5
        assert caught.value.retry_after > 0
        failing = [
            store.import_users([new_user("imported")], 0),
            store.change_number("old", *moved_to("old-new")),
            store.add_watches("watcher", tags(new_user("x").directory_key), 3600.0, 100),
            store.inbox_ack("watcher", "d1", 0, 3600.0),
            store.charge([BucketCharge("requests:watcher", 1.0, 10.0, 1.0)], time.time()),
        ]
        for call in failing:
            with pytest.raises(Unavailable):
                await call
        # Reads still work, and every write is whole or absent (one script each).
        assert (await store.get_user("old")) is not None
        records = {uid: await store.get_user(uid) for uid in ("watcher", "old", "joiner", "imported")}
        present = {uid for uid, record in records.items() if record is not None}
        assert await store.registry_size() == len(present)
        feed = await store.feed_read(0, 1000)
        assert {c.user_id for c in feed if c.user_id is not None} == present
        inbox = await store.inbox_read("watcher", 0, 100, 3600.0)
        assert [joiner_of(e) for e in inbox] == (["joiner"] if "joiner" in present else [])

        # The replica is back: the same calls, retried, succeed (no HASH/USER_ID taken).
        replica.start()
        wait_until(lambda: replicas_online(primary, 1), 20, "the replica is in sync again")
        assert await store.register(joiner) in (RegisterOutcome.CREATED, RegisterOutcome.UNCHANGED)
        assert await store.register(joiner) == RegisterOutcome.UNCHANGED
        report_ = await store.import_users([new_user("imported")], 0)
        assert report_.imported + report_.unchanged == 1 and not report_.rejections
        moved = await store.change_number("old", *moved_to("old-new"))
        assert moved.user_id == "old"
        again = await store.change_number("old", *moved_to("old-new"))
        assert again.directory_key == new_user("old-new").directory_key
        assert await store.add_watches("watcher", tags(new_user("x").directory_key), 3600.0, 100) == 1
        assert await store.add_watches("watcher", tags(new_user("x").directory_key), 3600.0, 100) == 1
        cursor = (await store.inbox_read("watcher", 0, 100, 3600.0))[0].cursor
        assert await store.inbox_ack("watcher", "d1", cursor, 3600.0) is not None
        assert await store.inbox_ack("watcher", "d1", cursor, 3600.0) is not None
        (charged,) = await store.charge([BucketCharge("requests:watcher", 1.0, 10.0, 1.0)], time.time())
        assert charged.allowed
    finally:
        await store.close()


async def test_health_admin_not_serving_while_too_few_replicas(
    redis_factory: Callable[..., RedisProcess], start_server: StartServer
) -> None:
    """With N = 1 and the replica down, the backend-facing admin service (whose every call
    writes) is NOT_SERVING while the client-facing services, whose reads work, stay SERVING."""
    primary = redis_factory(*REPLICATION_ARGS)
    replica = redis_factory(*REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(primary.port))
    wait_until(lambda: replicas_online(primary, 1), 20, "the replica is in sync")
    server = await start_server(
        store=primary.url,
        redis_min_replicas=1,
        redis_replica_timeout_seconds=0.3,
        store_check_seconds=0.2,
    )
    target = f"127.0.0.1:{server.port}"
    for service in ("", CLIENT_SERVICE, ADMIN_SERVICE, JOIN_SERVICE):
        await wait_health(target, SERVING, timeout=5, service=service)
    replica.stop()
    await wait_health(target, NOT_SERVING, timeout=10, service=ADMIN_SERVICE)
    for service in ("", CLIENT_SERVICE, JOIN_SERVICE):
        await wait_health(target, SERVING, timeout=1, service=service)
    replica.start()
    await wait_health(target, SERVING, timeout=20, service=ADMIN_SERVICE)


# -- failover drills --------------------------------------------------------------------------


def kill_cluster_primary(cluster: ReplicatedCluster, gap: float = 0.0) -> Callable[[Drill], object]:
    """SIGKILL the primary of the registry's slot; with ``gap``, first pause its replica
    (SIGSTOP) and cut its link for that long, and resume it right after the kill."""

    async def fault(result: Drill) -> None:
        primary = cluster.owner(REGISTRY_TAG)
        replica = cluster.replica_of(primary)
        promoted = lambda: cluster.wait_promoted(replica)  # noqa: E731
        await kill_primary(result, primary, replica, gap, promoted, primary.start)

    return fault


async def kill_primary(
    result: Drill,
    primary: RedisProcess,
    replica: RedisProcess,
    gap: float,
    promoted: Callable[[], object],
    restart: Callable[[], object],
) -> None:
    """The fault of every drill: an optional replication gap, SIGKILL, then the rejoin."""
    if gap:
        replica.pause()
        cut_replication_link(primary)
        await asyncio.sleep(gap)
    result.killed_at = time.monotonic()
    primary.kill()
    replica.resume()
    await rejoin(promoted, restart)


async def rejoin(promoted: Callable[[], object], restart: Callable[[], object]) -> None:
    """Once the replica is promoted, restart the killed node, as a supervisor would: it comes
    back as a replica of the promoted one (with min_replicas=1 and one replica per primary,
    writes wait for it). Restarting it before the promotion, without persistence, would
    bring back an empty primary."""
    await asyncio.to_thread(promoted)
    await asyncio.to_thread(restart)


def kill_sentinel_primary(setup: SentinelProcesses, gap: float = 0.0) -> Callable[[Drill], object]:
    async def fault(result: Drill) -> None:
        primary, replica = setup.current_primary(), setup.current_replica()
        promoted = lambda: setup.wait_promoted(primary)  # noqa: E731
        await kill_primary(result, primary, replica, gap, promoted, lambda: setup.restart_as_replica(primary))

    return fault


def check(result: Drill, min_replicas: int) -> None:
    assert not result.unexpected, result.unexpected[:3]
    assert result.first_write_after_kill is not None, "writes never came back"
    if min_replicas:
        assert result.missing == []


async def run_cluster_drill(cluster: ReplicatedCluster, min_replicas: int, gap: float) -> Drill:
    replica = cluster.replica_of(cluster.owner(REGISTRY_TAG))
    result = await drill(cluster.url, kill_cluster_primary(cluster, gap), min_replicas=min_replicas)  # type: ignore[arg-type]
    await count_missing(cluster.url, result, lambda: cluster.wait_promoted(replica))
    report(f"cluster min_replicas={min_replicas} gap={gap}", result)
    return result


async def run_sentinel_drill(setup: SentinelProcesses, min_replicas: int, gap: float) -> Drill:
    url = setup.url()
    result = await drill(url, kill_sentinel_primary(setup, gap), min_replicas=min_replicas)  # type: ignore[arg-type]
    await count_missing(url, result, setup.wait_settled)
    report(f"sentinel min_replicas={min_replicas} gap={gap}", result)
    return result


async def test_cluster_failover_loses_no_acknowledged_write(replicated_cluster: ReplicatedCluster) -> None:
    check(await run_cluster_drill(replicated_cluster, 1, 0.0), 1)


async def test_cluster_failover_after_a_replication_gap(replicated_cluster: ReplicatedCluster) -> None:
    check(await run_cluster_drill(replicated_cluster, 1, 0.5), 1)


async def test_sentinel_failover_loses_no_acknowledged_write(
    sentinel_factory: Callable[[], SentinelProcesses],
) -> None:
    check(await run_sentinel_drill(sentinel_factory(), 1, 0.0), 1)


async def test_sentinel_failover_after_a_replication_gap(
    sentinel_factory: Callable[[], SentinelProcesses],
) -> None:
    check(await run_sentinel_drill(sentinel_factory(), 1, 0.5), 1)


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.0, 0.5])
async def test_cluster_failover_without_replicated_acks(
    replicated_cluster: ReplicatedCluster, gap: float
) -> None:
    """The figure for min_replicas=0 (asynchronous replication): printed, not asserted."""
    check(await run_cluster_drill(replicated_cluster, 0, gap), 0)


@pytest.mark.slow
@pytest.mark.parametrize("gap", [0.0, 0.5])
async def test_sentinel_failover_without_replicated_acks(
    sentinel_factory: Callable[[], SentinelProcesses], gap: float
) -> None:
    check(await run_sentinel_drill(sentinel_factory(), 0, gap), 0)
