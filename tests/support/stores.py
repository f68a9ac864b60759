"""A ``store`` fixture parametrised by backend: real SQLite, redis-server, Redis Cluster, a
Sentinel-managed primary with a replica whose stores confirm every write on the replica
(``min_replicas=1``), and the in-memory store of the domain's unit tests (pytest plugin).

Tests that take ``store`` (or ``open_backend``) run once per backend: the Store contract.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from discovery.store import Store
from discovery.store.redis import RedisStore
from discovery.store.redis.base import parse_redis_url
from discovery.store.sqlite import SqliteStore
from tests.support.memory_store import MemoryData, MemoryStore

BACKENDS = ["sqlite", "redis", "redis-cluster", "redis-sentinel", "memory"]

OpenStore = Callable[..., Awaitable[Store]]


@pytest.fixture(params=BACKENDS)
async def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens stores of one backend, all on the same data; each is closed at the end.

    Options: ``feed_retention``, ``feed_max_len``.
    """
    backend: str = request.param
    url = ""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
    elif backend == "redis-cluster":
        url = request.getfixturevalue("redis_cluster_url")
    elif backend == "redis-sentinel":
        url = request.getfixturevalue("redis_sentinel_url")
    opened: list[Store] = []
    shared = MemoryData()  # the "memory" backend's stores are instances on this one store

    async def open_(feed_retention: float = 3600.0, feed_max_len: int = 1_000_000) -> Store:
        store: Store
        if backend == "memory":
            store = MemoryStore(shared, feed_retention=feed_retention, feed_max_len=feed_max_len)
        elif backend == "sqlite":
            sqlite = SqliteStore(
                tmp_path / "store.db", feed_retention=feed_retention, feed_max_len=feed_max_len
            )
            await sqlite.open()
            store = sqlite
        else:
            redis_store = RedisStore(
                parse_redis_url(url), feed_retention=feed_retention, feed_max_len=feed_max_len
            )
            await redis_store.open()
            store = redis_store
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_backend: OpenStore) -> Store:
    return await open_backend()
