"""A failover drill on the Redis store: writers register users while a primary dies.

Used by tests/test_redis_ha.py and bench/redis_ha.py. Every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from discovery.core.errors import Unavailable
from discovery.core.model import AnnounceMode, NewUser, PrivacySettings
from discovery.store.redis import RedisStore
from discovery.store.redis.base import parse_redis_url
from tests.support.announce import new_user as announced_user
from tests.support.redis_fixtures import RedisProcess

SETTINGS = PrivacySettings(discoverable=True, announce_mode=AnnounceMode.EVERYONE, notify_on_join=True)
#: The hash tag of the registry (and of join notifications) in the default namespace.
REGISTRY_TAG = "{discovery}"


def cut_replication_link(primary: RedisProcess) -> None:
    """Drop the primary's connection to its (paused) replica, so writes made during the gap
    reach neither the replica nor its socket buffer: the replica cannot reconnect while paused."""
    with primary.client() as client:
        client.client_kill_filter(_type="replica")


def new_user(user_id: str) -> NewUser:
    return announced_user(user_id, hashlib.sha256(user_id.encode()).digest()[:16], SETTINGS)


@dataclass
class Drill:
    """What the writers saw: acknowledged ids, failures by kind, and recovery time."""

    acked: set[str] = field(default_factory=set)
    unavailable: int = 0
    unexpected: list[BaseException] = field(default_factory=list)
    killed_at: float = 0.0
    first_write_after_kill: float | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def recovery_seconds(self) -> float | None:
        if self.first_write_after_kill is None:
            return None
        return self.first_write_after_kill - self.killed_at


async def open_store(url: str, min_replicas: int, replica_timeout: float = 1.0) -> RedisStore:
    store = RedisStore(parse_redis_url(url), min_replicas=min_replicas, replica_timeout=replica_timeout)
    await store.open()
    return store


async def drill(
    url: str,
    fault: Callable[[Drill], Awaitable[None]],
    *,
    min_replicas: int,
    writers: int = 4,
    before_fault: int = 200,
    after_recovery: float = 0.3,
    deadline: float = 40.0,
) -> Drill:
    """Register users with ``writers`` concurrent writers; after ``before_fault`` acks run
    ``fault`` (which sets ``killed_at`` when it kills the primary); stop ``after_recovery`` s
    after the first acknowledged write sent after the kill, or at ``deadline``."""
    store = await open_store(url, min_replicas)
    result = Drill()
    stop = asyncio.Event()
    ready = asyncio.Event()
    started = time.monotonic()

    async def writer(w: int) -> None:
        for i in range(1_000_000):
            if stop.is_set() or time.monotonic() - started > deadline:
                return
            uid = f"u{w}-{i}"
            sent = time.monotonic()
            try:
                await store.register(new_user(uid))
            except Unavailable:
                result.unavailable += 1
                await asyncio.sleep(0.02)
                continue
            except Exception as error:  # an outcome the API would report as INTERNAL
                result.unexpected.append(error)
                await asyncio.sleep(0.02)
                continue
            result.acked.add(uid)
            if len(result.acked) >= before_fault:
                ready.set()
            if result.killed_at and sent > result.killed_at and result.first_write_after_kill is None:
                result.first_write_after_kill = time.monotonic()
                asyncio.get_running_loop().call_later(after_recovery, stop.set)

    async def inject() -> None:
        await ready.wait()
        await fault(result)

    injector = asyncio.ensure_future(inject())
    try:
        await asyncio.gather(*(writer(w) for w in range(writers)))
    finally:
        injector.cancel()
        await store.close()
    return result


async def count_missing(url: str, drill: Drill, wait: Callable[[], object]) -> None:
    """After ``wait()`` (the new primary is settled), the acknowledged users that are gone."""
    await asyncio.to_thread(wait)
    store = await open_store(url, 0)
    try:
        for uid in sorted(drill.acked):
            for _attempt in range(50):
                try:
                    record = await store.get_user(uid)
                    break
                except Unavailable:
                    await asyncio.sleep(0.1)
            else:
                raise RuntimeError("the store did not come back")
            if record is None:
                drill.missing.append(uid)
    finally:
        await store.close()
