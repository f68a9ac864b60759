"""The production store on Redis or Redis Cluster (redis-py asyncio with hiredis).

Key layout and retention: docs/redis-keys.md. Choosing it: ``--store redis://host:port/0``
or ``--store redis+cluster://host:port,host:port``.
"""

from __future__ import annotations

from discovery.store.redis.base import SCHEMES, parse_redis_url
from discovery.store.redis.errors import unavailable_when_unreachable
from discovery.store.redis.joins import RedisJoins
from discovery.store.redis.quota import RedisQuota
from discovery.store.redis.registry import RedisRegistry


@unavailable_when_unreachable
class RedisStore(RedisJoins, RedisQuota, RedisRegistry):
    """The whole Store protocol on one Redis server or one Redis Cluster; an outage raises
    Unavailable (errors.py)."""


async def open_redis_store(url: str, *, feed_retention: float = 3600.0) -> RedisStore:
    store = RedisStore(parse_redis_url(url), feed_retention=feed_retention)
    try:
        await store.open()
    except BaseException:
        await store.close()
        raise
    return store


__all__ = ["SCHEMES", "RedisStore", "open_redis_store"]
