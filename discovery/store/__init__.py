"""Durable state behind one Store protocol: SQLite (embedded default), Redis, Redis Cluster."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from discovery.core.ports import RegistryStore, Store


async def open_store(
    url: str,
    *,
    sqlite_synchronous: str = "NORMAL",
    feed_retention: float = 3600.0,
    min_replicas: int = 0,
    replica_timeout: float = 1.0,
) -> Store:
    """Open the store a URL names: ``sqlite:///path/to/file.db``, ``redis://host:port/0``,
    ``redis+cluster://host:port,host:port`` or ``redis+sentinel://host:port,host:port/SERVICE/0``
    (see docs/redis-keys.md). ``min_replicas`` and ``replica_timeout`` (seconds) apply to Redis
    only: every acknowledged write waits for that many replicas (docs/high-availability.md);
    the URL's ``min_replicas`` and ``replica_timeout_ms`` take precedence."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from discovery.store.sqlite import SqliteStore

        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise ValueError("a sqlite store URL needs an absolute path: sqlite:///path/to/file.db")
        store = SqliteStore(Path(path), synchronous=sqlite_synchronous, feed_retention=feed_retention)
        await store.open()
        return store
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel"):
        from discovery.store.redis import open_redis_store

        return await open_redis_store(
            url, feed_retention=feed_retention, min_replicas=min_replicas, replica_timeout=replica_timeout
        )
    raise ValueError(
        f"unknown store URL scheme {scheme!r}; expected sqlite://, redis://, rediss://, redis+cluster:// "
        "or redis+sentinel://"
    )


__all__ = ["RegistryStore", "Store", "open_store"]
