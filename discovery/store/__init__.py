"""Durable state behind one Store protocol: SQLite (embedded default), Redis, Redis Cluster."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from discovery.core.ports import RegistryStore, Store


async def open_store(
    url: str, *, sqlite_synchronous: str = "NORMAL", feed_retention: float = 3600.0
) -> Store:
    """Open the store a URL names: ``sqlite:///path/to/file.db``, ``redis://host:port/0``
    or ``redis+cluster://host:port,host:port`` (see docs/redis-keys.md)."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from discovery.store.sqlite import SqliteStore

        path = url[len("sqlite://") :]
        if not path.startswith("/"):
            raise ValueError("a sqlite store URL needs an absolute path: sqlite:///path/to/file.db")
        store = SqliteStore(Path(path), synchronous=sqlite_synchronous, feed_retention=feed_retention)
        await store.open()
        return store
    if scheme in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
        from discovery.store.redis import open_redis_store

        return await open_redis_store(url, feed_retention=feed_retention)
    raise ValueError(
        f"unknown store URL scheme {scheme!r}; expected sqlite://, redis://, rediss:// or redis+cluster://"
    )


__all__ = ["RegistryStore", "Store", "open_store"]
