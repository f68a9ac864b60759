"""Leaky buckets for quotas and rate limits in SQLite (the QuotaStore protocol).

Each call (the charges of one request) is one IMMEDIATE transaction, which holds SQLite's
write lock: charges from every connection, thread and process on the same file are
serialised, so concurrent requests on several instances together never overfill a bucket.

A row keeps the level at the time of the last accepted charge and the time at which the
bucket will be empty (``drained_at``; NULL when it never leaks). A drained row means the
same as no row, so rows are pruned through an index on ``drained_at``; the table only
holds users who looked up contacts recently.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from discovery.core.model import BucketCharge, QuotaCharge, UserRecord
from discovery.store.sqlite.base import SqliteBase

QUOTA_SCHEMA = """
CREATE TABLE IF NOT EXISTS quota_buckets (
    bucket TEXT PRIMARY KEY,
    level REAL NOT NULL,
    updated REAL NOT NULL,
    drained_at REAL
);
CREATE INDEX IF NOT EXISTS quota_buckets_drained ON quota_buckets(drained_at) WHERE drained_at IS NOT NULL;
"""

PRUNE_INTERVAL = 60.0


def leak(level: float, since: float, now: float, leak_per_second: float) -> float:
    """The level left after leaking from ``since`` to ``now`` (a clock behind ``since`` leaks nothing)."""
    return max(0.0, level - leak_per_second * max(0.0, now - since))


def decide(level: float, cost: float, capacity: float, leak_per_second: float) -> QuotaCharge:
    """The QuotaStore rule for a bucket at ``level`` (already leaked to now)."""
    if level + cost <= capacity:
        return QuotaCharge(True, level + cost, 0.0)
    if cost > capacity or leak_per_second <= 0:
        return QuotaCharge(False, level, math.inf)
    return QuotaCharge(False, level, (level + cost - capacity) / leak_per_second)


Charged = tuple[list[QuotaCharge], UserRecord | None]


class _PendingCharge(NamedTuple):
    charges: Sequence[BucketCharge]
    now: float
    #: The user whose record is read in the same transaction (``charge_and_read``), or None.
    reader: str | None
    outcome: asyncio.Future[Charged]


class SqliteQuota(SqliteBase):
    """Charges that arrive while one transaction runs wait and go together in the next one
    (group commit): under load, a Discover costs a share of one writer-thread hop and one
    commit instead of a whole one each. Each request's charges are still applied in order
    and atomically, and requests one after another, as with a transaction each. The caller's
    record that ``charge_and_read`` asks for is read in the same transaction."""

    #: The registry's row reader (SqliteRegistry, mixed into the same store).
    _user_row: Callable[[sqlite3.Connection, str], UserRecord | None]

    _last_quota_prune = 0.0
    _charge_queue: list[_PendingCharge] | None = None
    _charge_drain: asyncio.Task[None] | None = None

    def schema(self) -> str:
        return super().schema() + QUOTA_SCHEMA

    async def charge(self, charges: Sequence[BucketCharge], now: float) -> list[QuotaCharge]:
        return (await self._queue_charge(charges, now, None))[0]

    async def charge_and_read(
        self, charges: Sequence[BucketCharge], now: float, user_id: str
    ) -> tuple[list[QuotaCharge], UserRecord | None]:
        return await self._queue_charge(charges, now, user_id)

    async def _queue_charge(self, charges: Sequence[BucketCharge], now: float, reader: str | None) -> Charged:
        pending = _PendingCharge(charges, now, reader, asyncio.get_running_loop().create_future())
        if self._charge_queue is None:
            self._charge_queue = []
        self._charge_queue.append(pending)
        if self._charge_drain is None:
            self._charge_drain = asyncio.create_task(self._drain_charges())
        # A cancelled caller cancels its own future only: a charge not yet taken is dropped,
        # one already in a transaction stays charged (it is committed with the others).
        return await pending.outcome

    async def _drain_charges(self) -> None:
        batch: list[_PendingCharge] = []
        try:
            while self._charge_queue:
                batch = [p for p in self._charge_queue if not p.outcome.done()]
                self._charge_queue = []
                if batch:
                    await self._charge_together(batch)
        finally:
            # Cancelled (the store closing): nobody is left waiting for ever.
            for p in [*batch, *(self._charge_queue or ())]:
                if not p.outcome.done():
                    p.outcome.cancel()
            self._charge_queue = None
            self._charge_drain = None

    async def _charge_together(self, batch: list[_PendingCharge]) -> None:
        def apply() -> list[Charged]:
            return self._transaction(lambda conn: self._charge_batch(conn, batch))

        try:
            outcomes = await self._run(apply)
        except Exception as error:
            for p in batch:
                if not p.outcome.done():
                    p.outcome.set_exception(error)
            return
        for p, outcome in zip(batch, outcomes, strict=True):
            if not p.outcome.done():
                p.outcome.set_result(outcome)

    def _charge_batch(self, conn: sqlite3.Connection, batch: list[_PendingCharge]) -> list[Charged]:
        return [
            (
                self._charge_all(conn, p.charges, p.now),
                None if p.reader is None else self._user_row(conn, p.reader),
            )
            for p in batch
        ]

    def _charge_all(
        self, conn: sqlite3.Connection, charges: Sequence[BucketCharge], now: float
    ) -> list[QuotaCharge]:
        self._maybe_prune_quota(conn, now)
        outcomes = []
        for charge in charges:
            outcome = self._charge_sync(conn, charge, now)
            outcomes.append(outcome)
            if not outcome.allowed:
                break
        return outcomes

    async def forget_buckets(self, buckets: Sequence[str]) -> int:
        return await self._write(lambda conn: self._forget_buckets_sync(conn, buckets))

    def _forget_buckets_sync(self, conn: sqlite3.Connection, buckets: Sequence[str]) -> int:
        before = conn.total_changes
        conn.executemany("DELETE FROM quota_buckets WHERE bucket = ?", [(b,) for b in buckets])
        return conn.total_changes - before

    def _charge_sync(self, conn: sqlite3.Connection, charge: BucketCharge, now: float) -> QuotaCharge:
        bucket, cost, capacity, leak_per_second = (
            charge.bucket,
            charge.cost,
            charge.capacity,
            charge.leak_per_second,
        )
        row = conn.execute("SELECT level, updated FROM quota_buckets WHERE bucket = ?", (bucket,)).fetchone()
        level = 0.0 if row is None else leak(row[0], row[1], now, leak_per_second)
        outcome = decide(level, cost, capacity, leak_per_second)
        if outcome.allowed and cost > 0:
            drained_at = now + outcome.level / leak_per_second if leak_per_second > 0 else None
            conn.execute(
                "INSERT INTO quota_buckets(bucket, level, updated, drained_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(bucket) DO UPDATE SET level = excluded.level, updated = excluded.updated, "
                "drained_at = excluded.drained_at",
                (bucket, outcome.level, now, drained_at),
            )
        return outcome

    def _maybe_prune_quota(self, conn: sqlite3.Connection, now: float) -> None:
        wall = time.monotonic()
        if wall - self._last_quota_prune < PRUNE_INTERVAL:
            return
        self._last_quota_prune = wall
        conn.execute("DELETE FROM quota_buckets WHERE drained_at <= ?", (now,))
