"""Several `discovery serve` processes on one real Redis Cluster, and one instance on Redis in-process.

Two stateless instances share the store: what is registered through one is discovered
through the other within a second, a join event reaches a subscriber on the other, and
an instance that was down while users registered catches up when it comes back.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.exceptions import ConnectionError as RedisConnectionError

from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, JoinEvent, Settings
from discovery.config import ServerConfig
from discovery.core.errors import FeedTruncated
from discovery.core.model import PrivacySettings as StoredSettings
from discovery.store.redis import RedisStore
from discovery.store.redis.base import parse_redis_url
from tests.support.announce import new_user
from tests.support.helpers import e164_numbers
from tests.support.redis_fixtures import RedisProcess, stop_by_pid
from tests.support.serve_process import JOIN_TEST_FLAGS

T = TypeVar("T")
WATCHING = Settings(discoverable=True, announce_join=True, notify_on_join=True)


@dataclass
class Instance:
    """One `discovery serve` child process."""

    directory: Path
    store_url: str
    secret: str
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        port_file = self.directory / "port"
        port_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "discovery", "serve",
                "--listen", "127.0.0.1:0",
                "--store", self.store_url,
                "--data-dir", str(self.directory),
                "--secret-env", "DISCOVERY_TEST_SECRET",
                "--port-file", str(port_file),
                "--auth", "dev",
                "--grace-seconds", "1",
                *JOIN_TEST_FLAGS,
            ],
            env={**os.environ, "DISCOVERY_TEST_SECRET": self.secret},
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "log").open("ab"),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("instance did not start:\n" + self.log()[-3000:])
            time.sleep(0.05)
        self.port = int(port_file.read_text())

    def stop(self) -> None:
        if self.process is not None:
            stop_by_pid(self.process, 20.0)
        self.process = None

    def log(self) -> str:
        return (self.directory / "log").read_text(errors="replace")


@pytest.fixture
def instances(tmp_path: Path, redis_cluster_url: str) -> Iterator[Callable[[str], Instance]]:
    """Start instances on the session's Redis Cluster, all with the same server secret."""
    secret = secrets.token_hex(32)
    started: list[Instance] = []

    def start(name: str) -> Instance:
        instance = Instance(tmp_path / name, redis_cluster_url, secret)
        instance.start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


async def discovered(target: str, numbers: list[str]) -> set[str]:
    async with AsyncDiscoveryClient(target, user_id="probe") as client:
        return {m.user_id for m in (await client.discover(numbers)).matches}


async def wait_discovered(target: str, numbers: list[str], expected: set[str], within: float) -> float:
    """Seconds until ``target`` discovers exactly ``expected``; fails after ``within`` * 5."""
    started = time.monotonic()
    while (found := await discovered(target, numbers)) != expected:
        assert time.monotonic() - started < within * 5, f"found {sorted(found)}"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_two_instances_share_registrations_and_join_events(
    instances: Callable[[str], Instance],
) -> None:
    one, two = instances("one"), instances("two")
    bob, carol, alice_number = e164_numbers(3, seed=404)
    async with AsyncAdminClient(one.target) as admin:
        await admin.register_user("alice", alice_number, WATCHING)
    # alice uploads her book through instance two: bob and carol are not there yet (watches).
    assert await discovered_as(two.target, "alice", [bob, carol]) == set()
    received: asyncio.Queue[JoinEvent] = asyncio.Queue()
    async with AsyncDiscoveryClient(two.target, user_id="alice", default_region="DE") as client:
        subscription = client.subscribe_joins([bob, carol])
        consumer = asyncio.create_task(_consume(subscription, received))
        await asyncio.wait_for(subscription.live.wait(), timeout=10)
        async with AsyncAdminClient(one.target) as admin:
            await admin.register_user("bob", bob)
        seconds = await wait_discovered(two.target, [bob, carol], {"bob"}, within=1.0)
        assert seconds < 1.0, "a registration through one instance is discovered on another within 1 s"
        event = await asyncio.wait_for(received.get(), timeout=10)
        consumer.cancel()
    assert (event.user_id, event.e164) == ("bob", bob)


async def discovered_as(target: str, user_id: str, numbers: list[str]) -> set[str]:
    async with AsyncDiscoveryClient(target, user_id=user_id, default_region="DE") as client:
        return {m.user_id for m in (await client.discover(numbers)).matches}


async def _consume(subscription: AsyncIterator[JoinEvent], into: asyncio.Queue[JoinEvent]) -> None:
    async for event in subscription:
        await into.put(event)


async def test_an_instance_catches_up_after_being_down(instances: Callable[[str], Instance]) -> None:
    one, two = instances("one"), instances("two")
    numbers = e164_numbers(60, seed=405)
    async with AsyncAdminClient(one.target) as admin:
        await admin.import_users([(f"early-{i}", n) for i, n in enumerate(numbers[:20])])
    await wait_discovered(two.target, numbers, {f"early-{i}" for i in range(20)}, within=1.0)
    two.stop()
    async with AsyncAdminClient(one.target) as admin:
        await admin.import_users([(f"late-{i}", n) for i, n in enumerate(numbers[20:50], start=20)])
        for i in range(50, 60):
            await admin.register_user(f"late-{i}", numbers[i])
        await admin.unregister_user("early-0")
    two.start()
    expected = {f"early-{i}" for i in range(1, 20)} | {f"late-{i}" for i in range(20, 60)}
    assert await discovered(two.target, numbers) == expected


async def test_health_is_not_serving_until_the_index_is_loaded(
    tmp_path: Path, redis_url: str, log_capture: io.StringIO
) -> None:
    """A big-ish registry, so that the load takes long enough to watch the health service."""
    store = RedisStore(parse_redis_url(redis_url))
    await store.open()
    users = [new_user(f"user-{i}", os.urandom(16), StoredSettings()) for i in range(200_000)]
    for start in range(0, len(users), 10_000):
        await store.import_users(users[start : start + 10_000], start)
    await store.close()
    server = DiscoveryServer(
        ServerConfig.from_options(listen="127.0.0.1:0", data_dir=tmp_path, store=redis_url, auth="dev")
    )
    starting = asyncio.create_task(server.start())
    try:
        while not server.port:
            assert not starting.done(), "the server binds its port before loading"
            await asyncio.sleep(0.001)
        statuses = []
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            async for reply in watch:
                statuses.append(reply.status)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
        assert statuses[0] == health_pb2.HealthCheckResponse.NOT_SERVING
        assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING
        await starting
        assert server.sync is not None and server.sync.users == 200_000
    finally:
        await starting
        await server.stop(grace=0.5)
    events = [json.loads(line).get("event") for line in log_capture.getvalue().splitlines()]
    progress = [i for i, e in enumerate(events) if e == "index_load_progress"]
    assert len(progress) >= 3, "the log shows the load's progress"
    assert progress[-1] < events.index("serving")


async def test_redis_restart_makes_followers_reload(redis_factory: Callable[..., RedisProcess]) -> None:
    """Writes acknowledged just before a crash may be lost (appendfsync everysec): an
    instance must not trust its cursor across a restart of the node holding the feed."""
    server = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    store = RedisStore(parse_redis_url(server.url))
    await store.open()
    try:
        await store.register(new_user("alice", os.urandom(16), StoredSettings()))
        head = await store.feed_head()
        assert await store.feed_read(head, 10) == []
        server.kill()
        server.start()
        with pytest.raises(FeedTruncated):
            await _retrying(lambda: store.feed_read(head, 10))
        # A reset store (head behind the cursor) is detected too.
        await store.feed_head()
        with server.client() as client:
            client.flushall()
        await store.open()
        with pytest.raises(FeedTruncated):
            await store.feed_read(head, 10)
    finally:
        await store.close()


async def _retrying(call: Callable[[], Awaitable[T]]) -> T:
    """The first calls after a restart may fail to connect; retry for a while."""
    for _ in range(50):
        try:
            return await call()
        except RedisConnectionError:
            await asyncio.sleep(0.1)
    return await call()
