"""The embedded SQLite store (WAL), the zero-configuration default."""

from __future__ import annotations

from discovery.store.sqlite.registry import SqliteRegistry


class SqliteStore(SqliteRegistry):
    """The whole Store protocol on one SQLite file."""


__all__ = ["SqliteStore"]
