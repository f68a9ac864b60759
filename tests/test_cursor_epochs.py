"""Inbox cursors that survive a history losing its tail (issue 13): real stores, a real server,
the SDK.

The tail is lost as an operator would lose it: SQLite restored from an older copy of its
file, Redis restarted from an older RDB snapshot, and a failover with N = 0 (Redis Cluster
and Sentinel) after a replication gap, the primary dying with events its replica never
got. A watcher whose cursor lies ahead of what
the store then holds must get every event issued afterwards, although those events reuse
its cursor numbers; an old client (no epoch) keeps today's answer. Every loop is bounded.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio

from discovery.app.server import DiscoveryServer
from discovery.client import (
    AsyncAdminClient,
    AsyncDiscoveryClient,
    DiscoveryError,
    JoinEvent,
    JoinSubscription,
    Settings,
)
from discovery.core.joins import MAX_EPOCHS, resume_after
from discovery.core.model import InboxEpoch
from discovery.v1 import joins_pb2, joins_pb2_grpc
from tests.support.failover import REGISTRY_TAG, cut_replication_link
from tests.support.helpers import e164_numbers
from tests.support.redis_fixtures import RedisProcess, ReplicatedCluster, SentinelProcesses
from tests.support.server import StartServer, user_metadata

WATCHING = Settings(discoverable=True, announce_join=True, notify_on_join=True)
BEFORE_COPY, LOST, AFTER = 3, 5, 4


def test_resume_after() -> None:
    epochs = [InboxEpoch(11, 0), InboxEpoch(22, 900), InboxEpoch(33, 2000)]
    assert resume_after(epochs, 0, 1000) == 1000  # no epoch: as before
    assert resume_after(epochs, 33, 2500) == 2500  # the current epoch
    assert resume_after(epochs, 22, 1500) == 1500  # the next epoch began above it
    assert resume_after(epochs, 11, 1000) == 900  # forked at 900, then a clean restart
    assert resume_after(epochs, 44, 2500) == 2000  # unknown: its start was lost with the tail
    full = [InboxEpoch(i + 1, 100 * i) for i in range(MAX_EPOCHS)]
    assert resume_after(full, 99, 5000) == 0  # older epochs may have been forgotten


async def register(target: str, user_id: str, number: str, settings: Settings | None = None) -> None:
    """Register, retrying while the store comes back (bounded)."""
    for _attempt in range(100):
        try:
            async with AsyncAdminClient(target) as admin:
                await admin.register_user(user_id, number, settings)
            return
        except DiscoveryError as error:
            if error.code != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.1)
    raise AssertionError("the store did not come back")


async def events(subscription: JoinSubscription, into: asyncio.Queue[JoinEvent]) -> None:
    async for event in subscription:
        await into.put(event)


async def take(queue: asyncio.Queue[JoinEvent], count: int) -> list[str]:
    return [(await asyncio.wait_for(queue.get(), timeout=15)).user_id for _ in range(count)]


async def old_client_status(target: str, cursor: int) -> grpc.StatusCode:
    """A client without epochs resubscribing with ``cursor``: the status it gets (OK when the
    stream's first message arrives)."""
    async with aio.insecure_channel(target) as channel:
        call = joins_pb2_grpc.JoinNotificationServiceStub(channel).SubscribeJoins(
            joins_pb2.SubscribeJoinsRequest(after_cursor=cursor), metadata=user_metadata("alice")
        )
        try:
            await asyncio.wait_for(call.read(), timeout=10)
        except aio.AioRpcError as error:
            return error.code()
        finally:
            call.cancel()
    return grpc.StatusCode.OK


async def lost_tail_scenario(
    server: DiscoveryServer,
    snapshot: Callable[[DiscoveryServer], Awaitable[DiscoveryServer]],
    restore: Callable[[DiscoveryServer], Awaitable[DiscoveryServer]],
) -> None:
    """alice watches every number; BEFORE_COPY users join, the store is copied (``snapshot``),
    LOST more join and alice's SDK hands out all their events; the copy is restored
    (``restore``: the tail is lost), then AFTER users join: alice gets each of their events."""
    numbers = e164_numbers(BEFORE_COPY + LOST + AFTER, seed=913)
    target = f"127.0.0.1:{server.port}"
    await register(target, "alice", "+4915100000913", WATCHING)
    async with AsyncDiscoveryClient(target, user_id="alice", default_region="DE") as client:
        await client.discover(numbers)
    for i in range(BEFORE_COPY):
        await register(target, f"kept{i}", numbers[i])
    server = await snapshot(server)
    for i in range(BEFORE_COPY, BEFORE_COPY + LOST):
        await register(target, f"lost{i}", numbers[i])
    received: asyncio.Queue[JoinEvent] = asyncio.Queue()
    async with AsyncDiscoveryClient(target, user_id="alice", default_region="DE") as client:
        subscription = client.subscribe_joins(numbers, initial_backoff=0.05, max_backoff=0.3)
        task = asyncio.create_task(events(subscription, received))
        try:
            assert len(await take(received, BEFORE_COPY + LOST)) == BEFORE_COPY + LOST
            ahead, epoch = subscription.cursor, subscription.epoch
            assert ahead == BEFORE_COPY + LOST and epoch

            server = await restore(server)
            new = [f"new{i}" for i in range(AFTER)]
            for i, user_id in enumerate(new):
                await register(target, user_id, numbers[BEFORE_COPY + LOST + i])
            # Every event issued after the loss arrives, once, although it reuses cursor numbers.
            assert await take(received, AFTER) == new
            assert subscription.epoch != epoch
            assert subscription.cursor == BEFORE_COPY + AFTER
            await register(target, "last", "+4915100009130")  # nobody watches it: no event
            await asyncio.sleep(0.3)
            assert received.empty()
            assert await subscription.ack() >= 0
        finally:
            task.cancel()
    # A client without epochs keeps today's answer for a cursor ahead of the store.
    assert await old_client_status(target, BEFORE_COPY + AFTER + 1) == grpc.StatusCode.INVALID_ARGUMENT
    assert await old_client_status(target, BEFORE_COPY + AFTER) == grpc.StatusCode.OK


async def test_sqlite_restored_from_an_older_copy(start_server: StartServer, tmp_path: Path) -> None:
    db = tmp_path / "data" / "discovery.db"
    backup = tmp_path / "backup.db"
    port = 0

    async def snapshot(server: DiscoveryServer) -> DiscoveryServer:
        await server.stop(grace=0.5)  # closing checkpoints the WAL into the file
        shutil.copy(db, backup)
        return await start_server(listen=f"127.0.0.1:{port}")

    async def restore(server: DiscoveryServer) -> DiscoveryServer:
        await server.stop(grace=0.5)
        for leftover in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            leftover.unlink(missing_ok=True)
        shutil.copy(backup, db)
        return await start_server(listen=f"127.0.0.1:{port}")

    server = await start_server()
    port = server.port
    await lost_tail_scenario(server, snapshot, restore)


async def test_redis_restarted_from_an_older_snapshot(
    redis_factory: Callable[..., RedisProcess], start_server: StartServer
) -> None:
    """The server runs on while redis-server is killed and started again from an older RDB."""
    redis = redis_factory()
    backup = redis.directory / "backup.rdb"
    server = await start_server(store=redis.url, store_check_seconds=0.2)

    async def snapshot(server: DiscoveryServer) -> DiscoveryServer:
        with redis.client() as client:
            client.save()
        shutil.copy(redis.directory / "dump.rdb", backup)
        return server

    async def restore(server: DiscoveryServer) -> DiscoveryServer:
        redis.kill()
        shutil.copy(backup, redis.directory / "dump.rdb")
        await asyncio.to_thread(redis.start)
        return server

    await lost_tail_scenario(server, snapshot, restore)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_ack_with_an_older_epoch_keeps_the_new_events(
    backend: str, start_server: StartServer, redis_factory: Callable[..., RedisProcess]
) -> None:
    """An ack of a lost history's cursor acknowledges only what both histories hold."""
    overrides: dict[str, object] = {}
    if backend == "redis":
        overrides["store"] = redis_factory().url
    server = await start_server(**overrides)
    store = server.store
    numbers = e164_numbers(3, seed=914)
    target = f"127.0.0.1:{server.port}"
    await register(target, "alice", "+4915100000914", WATCHING)
    async with AsyncDiscoveryClient(target, user_id="alice", default_region="DE") as client:
        await client.discover(numbers)
    for i, number in enumerate(numbers):
        await register(target, f"j{i}", number)
    epochs = await store.inbox_epochs()
    stale = epochs[-1].epoch + 1  # an epoch the store never had: from a lost history
    deleted = await server.joins.ack("alice", "", 3, stale)
    assert deleted == min(3, epochs[-1].base)
    assert len(await store.inbox_read("alice", 0, 100, 3600.0)) == 3 - deleted


@pytest.mark.parametrize("setup", ["cluster", "sentinel"])
async def test_failover_after_a_replication_gap_skips_no_new_event(
    setup: str, request: pytest.FixtureRequest, start_server: StartServer
) -> None:
    """N = 0: the primary dies with join events its replica never got (the replica paused and
    its link cut), which the watcher's SDK already handed out; the promoted replica reuses
    their cursors for the events of later registrations, and the watcher gets every one."""
    if setup == "cluster":
        cluster: ReplicatedCluster = request.getfixturevalue("replicated_cluster")
        url = cluster.url

        def nodes() -> tuple[RedisProcess, RedisProcess]:
            primary = cluster.owner(REGISTRY_TAG)
            return primary, cluster.replica_of(primary)

        def rejoin(old: RedisProcess, replica: RedisProcess) -> None:
            cluster.wait_promoted(replica)
            old.start()  # back as a replica of the promoted one (nodes.conf)
    else:
        sentinel: SentinelProcesses = request.getfixturevalue("sentinel_factory")()
        url = sentinel.url()

        def nodes() -> tuple[RedisProcess, RedisProcess]:
            return sentinel.current_primary(), sentinel.current_replica()

        def rejoin(old: RedisProcess, replica: RedisProcess) -> None:
            sentinel.wait_promoted(old)
            sentinel.restart_as_replica(old)

    server = await start_server(store=url, store_check_seconds=0.2)
    gap: list[RedisProcess] = []

    async def snapshot(server: DiscoveryServer) -> DiscoveryServer:
        primary, replica = nodes()
        with primary.client() as client:
            assert client.wait(1, 5000) == 1  # the replica has everything so far
        replica.pause()
        cut_replication_link(primary)
        gap[:] = [primary, replica]
        return server

    async def restore(server: DiscoveryServer) -> DiscoveryServer:
        primary, replica = gap
        primary.kill()
        replica.resume()
        await asyncio.to_thread(rejoin, primary, replica)
        return server

    try:
        await lost_tail_scenario(server, snapshot, restore)
    finally:
        for node in gap:
            node.resume()
