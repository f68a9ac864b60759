"""The production store on Redis or Redis Cluster (redis-py asyncio with hiredis).

Key layout and retention: docs/redis-keys.md. Choosing it: ``--store redis://host:port/0``,
``--store redis+cluster://host:port,host:port`` or ``--store
redis+sentinel://host:port,host:port/SERVICE/0``; replicated acknowledgement
(``?min_replicas=N&replica_timeout_ms=T``) and failover: docs/high-availability.md.
"""

from __future__ import annotations

from discovery.store.redis.base import DEFAULT_REPLICA_TIMEOUT, SCHEMES, parse_redis_url
from discovery.store.redis.errors import unavailable_when_unreachable
from discovery.store.redis.joins import RedisJoins
from discovery.store.redis.quota import RedisQuota
from discovery.store.redis.registry import RedisRegistry


@unavailable_when_unreachable
class RedisStore(RedisJoins, RedisQuota, RedisRegistry):
    """The whole Store protocol on one Redis server or one Redis Cluster; an outage raises
    Unavailable (errors.py)."""


async def open_redis_store(
    url: str,
    *,
    feed_retention: float = 3600.0,
    min_replicas: int = 0,
    replica_timeout: float = DEFAULT_REPLICA_TIMEOUT,
) -> RedisStore:
    """Open the store a redis URL names; the URL's ``min_replicas`` and ``replica_timeout_ms``
    take precedence over the arguments."""
    store = RedisStore(
        parse_redis_url(url),
        feed_retention=feed_retention,
        min_replicas=min_replicas,
        replica_timeout=replica_timeout,
    )
    try:
        await store.open()
    except BaseException:
        await store.close()
        raise
    return store


__all__ = ["DEFAULT_REPLICA_TIMEOUT", "SCHEMES", "RedisStore", "open_redis_store"]
