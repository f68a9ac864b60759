"""The embedded SQLite store (WAL), the zero-configuration default."""

from __future__ import annotations

from discovery.store.sqlite.joins import SqliteJoins
from discovery.store.sqlite.quota import SqliteQuota
from discovery.store.sqlite.registry import SqliteRegistry


class SqliteStore(SqliteJoins, SqliteQuota, SqliteRegistry):
    """The whole Store protocol on one SQLite file."""


__all__ = ["SqliteStore"]
