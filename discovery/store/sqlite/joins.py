"""Join notifications on SQLite: watches, per-user inboxes, device acknowledgements (JoinStore).

Fan-out runs in the registering transaction through the ``_after_register`` hook, so a
registration and its events commit together. The inbox cursor is the AUTOINCREMENT
``seq`` of ``join_inbox``: increasing in commit order, never reused, so one number serves
as cursor and event id.

Wake-ups: the registering call knows whom it notified; those ids are queued from the
writer thread and released to ``inbox_signals`` once the write has completed (reads run
on the same thread, so a woken subscriber always sees the committed entries). Entries
appended by another process on the same file are found by one cheap poll per instance
(the newest ``seq``), never by polling per subscriber.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

from discovery.core.errors import InvalidArgument, Reason
from discovery.core.hashing import KEY_SIZE
from discovery.core.joins import MAX_EPOCHS
from discovery.core.model import (
    Announcement,
    AnnounceMode,
    DeviceState,
    InboxEntry,
    InboxEpoch,
    WatchSummary,
)
from discovery.store.sqlite.base import SqliteBase

T = TypeVar("T")

JOIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS join_watches (
    wtag BLOB NOT NULL,
    watcher TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (wtag, watcher)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS join_watches_watcher ON join_watches(watcher, expires);
CREATE INDEX IF NOT EXISTS join_watches_expires ON join_watches(expires);
CREATE TABLE IF NOT EXISTS join_inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    jtag BLOB NOT NULL,
    notice BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS join_inbox_user ON join_inbox(user_id, seq);
CREATE INDEX IF NOT EXISTS join_inbox_jtag ON join_inbox(jtag);
CREATE INDEX IF NOT EXISTS join_inbox_created ON join_inbox(created);
CREATE TABLE IF NOT EXISTS join_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    acked INTEGER NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS join_devices_seen ON join_devices(seen);
CREATE TABLE IF NOT EXISTS join_epochs (
    n INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    base INTEGER NOT NULL
);
"""


def _migrate_join_tables(conn: sqlite3.Connection) -> None:
    """Files from before watch tags and sealed events kept directory keys and joiner ids in
    clear: drop those watches and events (watches come back with the next Discover), keeping
    the newest cursor so cursors are never reused."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(join_inbox)")}
    if not columns or "notice" in columns:
        return
    head = _inbox_head(conn)
    conn.execute("DROP TABLE join_inbox")
    conn.execute("DROP TABLE IF EXISTS join_watches")
    conn.executescript(JOIN_SCHEMA)
    conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('join_inbox', ?)", (head,))


# One purge transaction deletes at most this many rows of a table, so registrations queued
# behind the sweeper on the writer thread wait milliseconds, not seconds.
PURGE_BATCH = 5000

_JOINER_MAY_BE_TOLD = (
    " AND EXISTS (SELECT 1 FROM users j WHERE j.user_id = :joiner AND j.discoverable = 1{mode})"
)
_FAN_OUT = (
    "INSERT INTO join_inbox(user_id, jtag, notice, created)"
    " SELECT w.watcher, :jtag, :notice, :release FROM join_watches w"
    " JOIN users u ON u.user_id = w.watcher"
    " WHERE w.wtag = :wtag AND w.expires > :now AND w.watcher != :joiner AND u.notify_on_join = 1"
    + _JOINER_MAY_BE_TOLD.format(mode="")
    + " ORDER BY w.watcher"
)
# MUTUAL: only the watchers the joiner's Discover matched ({marks} is their ids' placeholders).
_MUTUAL = (
    "INSERT INTO join_inbox(user_id, jtag, notice, created)"
    " SELECT w.watcher, :jtag, :notice, :release FROM join_watches w"
    " JOIN users u ON u.user_id = w.watcher"
    " WHERE w.wtag = :wtag AND w.watcher IN ({marks}) AND w.expires > :now AND w.watcher != :joiner"
    " AND u.notify_on_join = 1"
    + _JOINER_MAY_BE_TOLD.format(mode=f" AND j.announce_join & 3 = {int(AnnounceMode.MUTUAL)}")
    + " ORDER BY w.watcher"
)

#: (user id, announcement, the mode that applies to this registration) of a registered user.
Joined = tuple[str, Announcement, AnnounceMode]


_PARAMS_PER_QUERY = 500


def _watched(conn: sqlite3.Connection, users: list[Joined]) -> list[Joined]:
    """The users whose watch tag has a watch, so that registrations of keys nobody watches
    skip the per-user fan-out statements."""
    if len(users) <= 1:
        return users
    watched = _watched_tags(conn, [a.watch_tag for _, a, _ in users])
    return [user for user in users if user[1].watch_tag in watched]


def _watched_tags(conn: sqlite3.Connection, tags: list[bytes]) -> set[bytes]:
    """Those of ``tags`` that have watches: one indexed IN query per 500 tags, none when there
    are no watches at all (an import into a new registry)."""
    watched: set[bytes] = set()
    if len(tags) > _PARAMS_PER_QUERY and not conn.execute("SELECT 1 FROM join_watches LIMIT 1").fetchone():
        return watched
    for start in range(0, len(tags), _PARAMS_PER_QUERY):
        some = tags[start : start + _PARAMS_PER_QUERY]
        marks = ",".join("?" * len(some))
        watched.update(
            bytes(row[0])
            for row in conn.execute(f"SELECT DISTINCT wtag FROM join_watches WHERE wtag IN ({marks})", some)
        )
    return watched


def _inbox_head(conn: sqlite3.Connection) -> int:
    """The newest cursor ever issued (sqlite_sequence keeps it when rows are deleted)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'join_inbox'").fetchone()
    return int(row[0]) if row else 0


def _check_cursor(conn: sqlite3.Connection, cursor: int, field: str) -> None:
    if cursor < 0:
        raise InvalidArgument.field(field, "must not be negative", Reason.CURSOR_OUT_OF_RANGE)
    if cursor > _inbox_head(conn):
        raise InvalidArgument.field(
            field, "is ahead of every event this server has issued", Reason.CURSOR_OUT_OF_RANGE
        )


_Read = tuple[str, int, int, float, "asyncio.Future[list[InboxEntry]]"]


def _settle(reads: list[_Read], done: asyncio.Future[list[list[InboxEntry] | BaseException]]) -> None:
    """Hand each waiting reader its rows, or its error (or the batch's)."""
    if done.cancelled():
        for read in reads:
            read[4].cancel()
        return
    error = done.exception()
    results = done.result() if error is None else [error] * len(reads)
    for read, result in zip(reads, results, strict=True):
        future = read[4]
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _event_params(joiner: str, announcement: Announcement, now: float) -> dict[str, object]:
    return {
        "joiner": joiner,
        "wtag": announcement.watch_tag,
        "jtag": announcement.joiner_tag,
        "notice": announcement.notice,
        "now": now,
        "release": now + announcement.delay,
    }


def _new_epoch(conn: sqlite3.Connection) -> None:
    """A file being opened may be an older copy (a restored backup) whose cursors lag behind
    what clients hold: start a new epoch of inbox cursors at its newest one, keep the last
    MAX_EPOCHS (core.ports.JoinStore.inbox_epochs)."""
    conn.execute(
        "INSERT INTO join_epochs(epoch, base) VALUES (?, ?)", (secrets.randbits(62) | 1, _inbox_head(conn))
    )
    conn.execute(
        "DELETE FROM join_epochs WHERE n NOT IN (SELECT n FROM join_epochs ORDER BY n DESC LIMIT ?)",
        (MAX_EPOCHS,),
    )


def _registered(conn: sqlite3.Connection, user_id: str) -> bool:
    return conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is not None


class SqliteJoins(SqliteBase):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Sets of notified user ids, appended on the writer thread, drained on the event loop.
        self._joins_pending: collections.deque[set[str]] = collections.deque()
        self._joins_wake = asyncio.Event()
        # Inbox reads waiting for the next shared trip to the writer thread.
        self._reads: list[_Read] = []
        # The newest inbox seq whose users were signalled; touched on the writer thread only.
        self._inbox_seen = 0

    def schema(self) -> str:
        return super().schema() + JOIN_SCHEMA

    def _migrate(self, conn: sqlite3.Connection) -> None:
        super()._migrate(conn)
        _migrate_join_tables(conn)

    def _open_sync(self) -> None:
        super()._open_sync()
        self._inbox_seen = _inbox_head(self._db)
        self._transaction(_new_epoch)

    async def _joins_write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A transaction that touches no registry row, so the change feed's waiters stay asleep."""
        return await self._run(lambda: self._transaction(fn))

    # -- hooks called inside the registry's transactions ----------------------------------------

    def _watched_tags(self, conn: sqlite3.Connection, tags: list[bytes]) -> set[bytes]:
        return super()._watched_tags(conn, tags) | _watched_tags(conn, tags)

    def _after_register(self, conn: sqlite3.Connection, users: list[Joined]) -> None:
        super()._after_register(conn, users)
        users = _watched(conn, users)
        if not users:
            return
        now = time.time()
        before = _inbox_head(conn)
        conn.executemany(
            _FAN_OUT,
            [_event_params(uid, a, now) for uid, a, mode in users if mode is AnnounceMode.EVERYONE],
        )
        # EVERYONE and OFF consume the watches; MUTUAL keeps them for the joiner's Discover.
        conn.executemany(
            "DELETE FROM join_watches WHERE wtag = ?",
            [(a.watch_tag,) for _, a, mode in users if mode is not AnnounceMode.MUTUAL],
        )
        self._signal_since(conn, before)

    def _signal_since(self, conn: sqlite3.Connection, before: int) -> None:
        """Queue the wake-ups of the users whose inbox got entries after cursor ``before``."""
        after = _inbox_head(conn)
        if after > before:
            notified = {
                row[0] for row in conn.execute("SELECT user_id FROM join_inbox WHERE seq > ?", (before,))
            }
            self._joins_pending.append(notified)
        if self._inbox_seen == before:
            # No other process appended in between: these rows need no poll to be found.
            self._inbox_seen = after

    def _forget_user(self, conn: sqlite3.Connection, user_id: str, joiner_tag: bytes) -> int:
        removed = super()._forget_user(conn, user_id, joiner_tag)
        for table, column in (
            ("join_watches", "watcher"),
            ("join_inbox", "user_id"),
            ("join_devices", "user_id"),
        ):
            removed += conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (user_id,)).rowcount
        if not _registered(conn, user_id):
            # Unregistered: no inbox may still hold an event about them.
            conn.execute("DELETE FROM join_inbox WHERE jtag = ?", (joiner_tag,))
        return removed

    async def announce_mutual(self, joiner: str, announcement: Announcement, watchers: Sequence[str]) -> int:
        watchers = list(watchers)
        if not await self._run(lambda: self._has_watch(announcement.watch_tag, watchers)):
            return 0
        told: int = await self._write(lambda conn: self._mutual_sync(conn, joiner, announcement, watchers))
        return told

    def _has_watch(self, tag: bytes, watchers: list[str]) -> bool:
        """A read on the store thread: most Discover calls of MUTUAL users find no watch."""
        for start in range(0, len(watchers), _PARAMS_PER_QUERY):
            chunk = watchers[start : start + _PARAMS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT 1 FROM join_watches WHERE wtag = ? AND watcher IN ({marks}) LIMIT 1"
            if self._db.execute(sql, (tag, *chunk)).fetchone():
                return True
        return False

    def _mutual_sync(
        self, conn: sqlite3.Connection, joiner: str, announcement: Announcement, watchers: list[str]
    ) -> int:
        before = _inbox_head(conn)
        now = time.time()
        for start in range(0, len(watchers), _PARAMS_PER_QUERY):
            chunk = watchers[start : start + _PARAMS_PER_QUERY]
            names = [f"w{i}" for i in range(len(chunk))]
            params: dict[str, object] = {
                **_event_params(joiner, announcement, now),
                **dict(zip(names, chunk, strict=True)),
            }
            conn.execute(_MUTUAL.format(marks=",".join(":" + n for n in names)), params)
            marks = ",".join("?" * len(chunk))
            conn.execute(
                f"DELETE FROM join_watches WHERE wtag = ? AND watcher IN ({marks})"
                " AND EXISTS (SELECT 1 FROM join_inbox WHERE seq > ? AND user_id = join_watches.watcher)",
                (announcement.watch_tag, *chunk, before),
            )
        self._signal_since(conn, before)
        return _inbox_head(conn) - before

    def _notify_changed(self) -> None:
        super()._notify_changed()
        if self._joins_pending:
            self._joins_wake.set()

    # -- watches --------------------------------------------------------------------------------

    async def add_watches(self, watcher: str, keys: bytes, ttl: float, cap: int) -> int:
        count: int = await self._joins_write(
            lambda conn: self._add_watches_sync(conn, watcher, keys, ttl, cap)
        )
        return count

    def _add_watches_sync(
        self, conn: sqlite3.Connection, watcher: str, keys: bytes, ttl: float, cap: int
    ) -> int:
        if not conn.execute(
            "SELECT 1 FROM users WHERE user_id = ? AND notify_on_join = 1", (watcher,)
        ).fetchone():
            return 0
        now = time.time()
        conn.execute("DELETE FROM join_watches WHERE watcher = ? AND expires <= ?", (watcher, now))
        conn.executemany(
            "INSERT INTO join_watches(wtag, watcher, expires) VALUES (?, ?, ?)"
            " ON CONFLICT(wtag, watcher) DO UPDATE SET expires = MAX(expires, excluded.expires)",
            ((keys[i : i + KEY_SIZE], watcher, now + ttl) for i in range(0, len(keys), KEY_SIZE)),
        )
        count = int(
            conn.execute("SELECT COUNT(*) FROM join_watches WHERE watcher = ?", (watcher,)).fetchone()[0]
        )
        if count > cap:
            conn.execute(
                "DELETE FROM join_watches WHERE watcher = ? AND wtag IN (SELECT wtag FROM join_watches"
                " WHERE watcher = ? ORDER BY expires, wtag LIMIT ?)",
                (watcher, watcher, count - cap),
            )
            count = cap
        return count

    async def drop_watches(self, watcher: str) -> int:
        dropped: int = await self._joins_write(
            lambda conn: conn.execute("DELETE FROM join_watches WHERE watcher = ?", (watcher,)).rowcount
        )
        return dropped

    async def watch_summary(self, watcher: str) -> WatchSummary:
        row = await self._run(
            lambda: self._db.execute(
                "SELECT COUNT(*), MIN(expires), MAX(expires) FROM join_watches"
                " WHERE watcher = ? AND expires > ?",
                (watcher, time.time()),
            ).fetchone()
        )
        return WatchSummary(int(row[0]), float(row[1] or 0.0), float(row[2] or 0.0))

    async def devices(self, user_id: str) -> list[DeviceState]:
        rows = await self._run(
            lambda: self._db.execute(
                "SELECT device_id, acked, seen FROM join_devices WHERE user_id = ? ORDER BY device_id",
                (user_id,),
            ).fetchall()
        )
        return [DeviceState(d, int(a), float(seen)) for d, a, seen in rows]

    async def count_watches(self, watcher: str) -> int:
        return int(
            await self._run(
                lambda: self._db.execute(
                    "SELECT COUNT(*) FROM join_watches WHERE watcher = ? AND expires > ?",
                    (watcher, time.time()),
                ).fetchone()[0]
            )
        )

    # -- inbox ----------------------------------------------------------------------------------

    async def inbox_attach(self, user_id: str, device_id: str, after: int) -> int | None:
        start: int | None = await self._joins_write(
            lambda conn: self._attach_sync(conn, user_id, device_id, after)
        )
        return start

    def _attach_sync(self, conn: sqlite3.Connection, user_id: str, device_id: str, after: int) -> int | None:
        _check_cursor(conn, after, "after_cursor")
        if not _registered(conn, user_id):
            return None
        row = conn.execute(
            "INSERT INTO join_devices(user_id, device_id, acked, seen) VALUES (?, ?, 0, ?)"
            " ON CONFLICT(user_id, device_id) DO UPDATE SET seen = excluded.seen RETURNING acked",
            (user_id, device_id, time.time()),
        ).fetchone()
        return max(after, int(row[0]))

    async def inbox_read(
        self, user_id: str, after: int, limit: int, max_age: float, released_only: bool = True
    ) -> list[InboxEntry]:
        """Reads issued in the same event-loop turn share one trip to the writer thread.

        One registration watched by a thousand live subscribers wakes them all at once; their
        reads then cost one thread hand-off instead of a thousand. (Reads of unreleased
        entries, for an export, are rare: they go alone.)
        """
        if not released_only:
            return await self._run(lambda: self._inbox_read_sync(user_id, after, limit, max_age, False))
        future: asyncio.Future[list[InboxEntry]] = asyncio.get_running_loop().create_future()
        self._reads.append((user_id, after, limit, max_age, future))
        if len(self._reads) == 1:
            asyncio.get_running_loop().call_soon(self._flush_reads)
        return await future

    def _flush_reads(self) -> None:
        reads, self._reads = self._reads, []
        batch = self._enqueue(lambda: [self._read_one(*read[:4]) for read in reads]).future
        batch.add_done_callback(lambda done: _settle(reads, done))

    def _read_one(
        self, user_id: str, after: int, limit: int, max_age: float
    ) -> list[InboxEntry] | BaseException:
        try:
            return self._inbox_read_sync(user_id, after, limit, max_age)
        except Exception as error:
            return error

    def _inbox_read_sync(
        self, user_id: str, after: int, limit: int, max_age: float, released_only: bool = True
    ) -> list[InboxEntry]:
        now = time.time()
        rows = self._db.execute(
            "SELECT seq, notice, created FROM join_inbox"
            " WHERE user_id = ? AND seq > ? AND created > ? ORDER BY seq LIMIT ?",
            (user_id, after, now - max_age, limit),
        ).fetchall()
        entries = []
        for seq, notice, created in rows:
            if created > now and released_only:
                break  # not released yet: nothing after it is delivered before it
            entries.append(InboxEntry(seq, str(seq), bytes(notice), created))
        return entries

    async def inbox_ack(self, user_id: str, device_id: str, cursor: int, max_age: float) -> int | None:
        deleted: int | None = await self._joins_write(
            lambda conn: self._ack_sync(conn, user_id, device_id, cursor, max_age)
        )
        return deleted

    def _ack_sync(
        self, conn: sqlite3.Connection, user_id: str, device_id: str, cursor: int, max_age: float
    ) -> int | None:
        _check_cursor(conn, cursor, "cursor")
        if not _registered(conn, user_id):
            return None
        now = time.time()
        conn.execute(
            "INSERT INTO join_devices(user_id, device_id, acked, seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(user_id, device_id) DO UPDATE SET acked = MAX(acked, excluded.acked),"
            " seen = excluded.seen",
            (user_id, device_id, cursor, now),
        )
        floor = conn.execute(
            "SELECT MIN(acked) FROM join_devices WHERE user_id = ? AND seen > ?", (user_id, now - max_age)
        ).fetchone()[0]
        return int(
            conn.execute("DELETE FROM join_inbox WHERE user_id = ? AND seq <= ?", (user_id, floor)).rowcount
        )

    # -- expiry ---------------------------------------------------------------------------------

    async def purge_expired(self, max_age: float) -> int:
        """Delete in short transactions of at most PURGE_BATCH rows per table."""
        purged = 0
        while True:
            counts = await self._joins_write(lambda conn: self._purge_batch(conn, max_age))
            purged += sum(counts)
            if max(counts) < PURGE_BATCH:
                return purged

    def _purge_batch(self, conn: sqlite3.Connection, max_age: float) -> list[int]:
        now = time.time()
        cutoff = now - max_age
        statements = (
            (
                "DELETE FROM join_watches WHERE (wtag, watcher) IN"
                " (SELECT wtag, watcher FROM join_watches WHERE expires <= ? LIMIT ?)",
                now,
            ),
            (
                "DELETE FROM join_inbox WHERE seq IN (SELECT seq FROM join_inbox WHERE created <= ? LIMIT ?)",
                cutoff,
            ),
            (
                "DELETE FROM join_devices WHERE (user_id, device_id) IN"
                " (SELECT user_id, device_id FROM join_devices WHERE seen <= ? LIMIT ?)",
                cutoff,
            ),
        )
        return [conn.execute(sql, (limit, PURGE_BATCH)).rowcount for sql, limit in statements]

    # -- cursor epochs --------------------------------------------------------------------------

    async def inbox_epochs(self) -> list[InboxEpoch]:
        rows = await self._run(
            lambda: self._db.execute("SELECT epoch, base FROM join_epochs ORDER BY n").fetchall()
        )
        return [InboxEpoch(int(epoch), int(base)) for epoch, base in rows]

    # -- wake-ups -------------------------------------------------------------------------------

    async def inbox_signals(self) -> AsyncIterator[set[str]]:
        last_poll = time.monotonic()
        while True:
            timeout = max(0.0, self._poll_interval - (time.monotonic() - last_poll))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._joins_wake.wait()
            self._joins_wake.clear()
            users: set[str] = set()
            while self._joins_pending:
                users |= self._joins_pending.popleft()
            if time.monotonic() - last_poll >= self._poll_interval:
                last_poll = time.monotonic()
                users |= await self._run(self._foreign_inbox_users)
            if users:
                yield users

    def _foreign_inbox_users(self) -> set[str]:
        """Users with entries appended since the last look, by another process (or not yet seen)."""
        conn = self._db
        head = _inbox_head(conn)
        seen = self._inbox_seen
        self._inbox_seen = head
        if head <= seen:
            return set()
        return {row[0] for row in conn.execute("SELECT user_id FROM join_inbox WHERE seq > ?", (seen,))}
