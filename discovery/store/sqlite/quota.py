"""Leaky buckets for quotas and rate limits in SQLite (the QuotaStore protocol).

Each call (the charges of one request) is one IMMEDIATE transaction, which holds SQLite's
write lock: charges from every connection, thread and process on the same file are
serialised, so concurrent requests on several instances together never overfill a bucket.

A row keeps the level at the time of the last accepted charge and a time by which the
bucket is empty (``drained_at``; NULL when it never leaks). A drained row means the same
as no row, so rows are pruned through an index on ``drained_at``; the table only holds
users who looked up contacts recently. ``drained_at`` is rounded up (``drained_mark``) and
left as it is while it still bounds the drain time closely, so most charges rewrite the
table's row alone, not the index too (one page written per commit instead of two or three).
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
#: ``drained_at`` is rounded up to a multiple of a power of two seconds: this many or more,
#: and no more than this share of the time the bucket takes to drain.
MARK_MIN_GRID = 64.0
MARK_SLACK = 0.125

_SELECT = "SELECT rowid, level, updated, drained_at FROM quota_buckets WHERE bucket = ?"
_INSERT = "INSERT INTO quota_buckets(bucket, level, updated, drained_at) VALUES (?, ?, ?, ?)"
# The row's drained_at (and so its index entry) is written only when it has to change.
_UPDATE = "UPDATE quota_buckets SET level = ?, updated = ? WHERE rowid = ?"
_UPDATE_MARKED = "UPDATE quota_buckets SET level = ?, updated = ?, drained_at = ? WHERE rowid = ?"
_PRUNE = "DELETE FROM quota_buckets WHERE drained_at <= ?"


def leak(level: float, since: float, now: float, leak_per_second: float) -> float:
    """The level left after leaking from ``since`` to ``now`` (a clock behind ``since`` leaks
    nothing). ``max(0.0, x)`` written out: the same values, without two builtin calls."""
    elapsed = now - since
    left = level - leak_per_second * (elapsed if elapsed > 0.0 else 0.0)
    return left if left > 0.0 else 0.0


def decide(level: float, cost: float, capacity: float, leak_per_second: float) -> QuotaCharge:
    """The QuotaStore rule for a bucket at ``level`` (already leaked to now)."""
    if level + cost <= capacity:
        return QuotaCharge(True, level + cost, 0.0)
    if cost > capacity or leak_per_second <= 0:
        return QuotaCharge(False, level, math.inf)
    return QuotaCharge(False, level, (level + cost - capacity) / leak_per_second)


def drained_mark(level: float, now: float, leak_per_second: float) -> float | None:
    """The ``drained_at`` to store for a bucket left at ``level`` at ``now``: a time at which
    ``leak`` has emptied it (a row is never pruned early), rounded up to a multiple of a power
    of two seconds, at least ``MARK_MIN_GRID`` and at most ``MARK_SLACK`` of the drain time.
    None for a bucket that never leaks."""
    if leak_per_second <= 0:
        return None
    drain = level / leak_per_second
    exact = now + drain
    if not math.isfinite(exact):
        return math.inf
    share = drain * MARK_SLACK
    grid = MARK_MIN_GRID if share <= MARK_MIN_GRID else math.ldexp(1.0, math.frexp(share)[1] - 1)
    mark = math.ceil(exact / grid) * grid
    if _empty_by(mark, level, now, leak_per_second):
        return mark
    mark += grid  # ``exact`` was rounded below the true drain time, onto the grid
    return mark if _empty_by(mark, level, now, leak_per_second) else math.inf


def mark_holds(mark: float | None, level: float, now: float, leak_per_second: float) -> bool:
    """Whether a stored ``drained_at`` may stay for a bucket now left at ``level``: the bucket
    is empty by then, and it is not later than ``drained_mark`` could make it (two grid steps
    after the drain time). Charges one after another move the drain time forward, so the
    mark holds until the drain time passes it."""
    if leak_per_second <= 0 or mark is None:
        return mark is None and leak_per_second <= 0
    if not _empty_by(mark, level, now, leak_per_second):
        return False
    late = leak_per_second * (mark - now) - level  # as a level: what leaks after the drain
    return late <= 2 * MARK_MIN_GRID * leak_per_second or late <= 2 * MARK_SLACK * level


def _empty_by(mark: float, level: float, now: float, leak_per_second: float) -> bool:
    """``leak(level, now, mark, leak_per_second) == 0``, for a level above 0: the same float
    operations (``level - x <= 0`` exactly when ``level <= x``)."""
    return now <= mark and level <= leak_per_second * (mark - now)


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
    _charge_cursor: sqlite3.Cursor | None = None
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
        cursor = self._charge_cursor
        if cursor is None or cursor.connection is not conn:
            # One cursor for every charge: a statement through conn.execute makes a cursor each.
            cursor = self._charge_cursor = conn.cursor()
        outcomes = []
        for charge in charges:
            outcome = self._charge_sync(cursor, charge, now)
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

    def _charge_sync(self, cursor: sqlite3.Cursor, charge: BucketCharge, now: float) -> QuotaCharge:
        """One charge: the row is read, the rule applied in Python (``leak``, ``decide``), and
        an accepted charge writes the row with one statement."""
        bucket, cost, rate = charge.bucket, charge.cost, charge.leak_per_second
        row = cursor.execute(_SELECT, (bucket,)).fetchone()
        if row is None:
            outcome = decide(0.0, cost, charge.capacity, rate)
            if outcome.allowed and cost > 0:
                cursor.execute(_INSERT, (bucket, outcome.level, now, drained_mark(outcome.level, now, rate)))
            return outcome
        rowid, level, updated, mark = row
        outcome = decide(leak(level, updated, now, rate), cost, charge.capacity, rate)
        if outcome.allowed and cost > 0:
            level = outcome.level
            if mark_holds(mark, level, now, rate):
                cursor.execute(_UPDATE, (level, now, rowid))
            else:
                cursor.execute(_UPDATE_MARKED, (level, now, drained_mark(level, now, rate), rowid))
        return outcome

    def _maybe_prune_quota(self, conn: sqlite3.Connection, now: float) -> None:
        wall = time.monotonic()
        if wall - self._last_quota_prune < PRUNE_INTERVAL:
            return
        self._last_quota_prune = wall
        conn.execute(_PRUNE, (now,))
