"""The SQLite connection, its single writer thread, and the schema.

Every statement runs on one dedicated thread, so each store method is one
serialised transaction and the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from discovery.core.errors import Unavailable

log = logging.getLogger("discovery.store")

T = TypeVar("T")

SCHEMA_VERSION = 2
_LOCK_POLL_MS = 25
_CACHE_KIB = 256 * 1024
#: WAL pages after which a commit checkpoints: SQLite's default, and the policy of imports
#: (64 MiB: fewer, larger checkpoints, and a page that several import batches write is
#: copied to the database once). The next other write restores the default.
CHECKPOINT_PAGES = 1000
IMPORT_CHECKPOINT_PAGES = 16384

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    dkey BLOB NOT NULL UNIQUE,
    discoverable INTEGER NOT NULL,
    announce_join INTEGER NOT NULL, -- announce mode (bits 0-1) and number change (bit 2)
    notify_on_join INTEGER NOT NULL,
    private BLOB,
    feed_seq INTEGER -- the feed entry that names the user (none once pruned)
);
CREATE TABLE IF NOT EXISTS registry_feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    dkey BLOB NOT NULL,
    user_id TEXT,
    discoverable INTEGER NOT NULL,
    created REAL NOT NULL,
    private BLOB
);
"""


class SqliteBase:
    """Owns the connection and the writer thread; the mixins add the operations."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "NORMAL",
        feed_retention: float = 3600.0,
        feed_max_len: int = 1_000_000,
        poll_interval: float = 0.2,
        lock_timeout: float = 5.0,
    ) -> None:
        self.path = path
        self._synchronous = synchronous.upper()
        if self._synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"unknown sqlite synchronous mode {synchronous!r}")
        self._feed_retention = feed_retention
        self._feed_max_len = feed_max_len
        self._poll_interval = poll_interval
        self._lock_timeout = lock_timeout
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._mailbox: _Mailbox | None = None
        self._conn: sqlite3.Connection | None = None
        self._changed = asyncio.Event()
        self._last_prune = 0.0
        self._switch = threading.Lock()
        self._current: _Job[Any] | None = None
        self._checkpoint_pages = CHECKPOINT_PAGES

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        # The registry's indexes are keyed by random directory keys: a page cache that holds
        # their inner pages keeps bulk imports from thrashing (memory, not disk, bounds it).
        conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        conn.execute("PRAGMA temp_store=MEMORY")
        # Lock waits are retried in _begin, where a cancelled call can stop waiting.
        conn.execute(f"PRAGMA busy_timeout={_LOCK_POLL_MS}")
        # Deleted pages are zeroed so that forgotten keys do not linger in free pages.
        conn.execute("PRAGMA secure_delete=ON")
        self._migrate(conn)
        conn.executescript(self.schema())
        for table in ("users", "registry_feed"):  # files written before private mode
            if "private" not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN private BLOB")
        _migrate_feed_pointers(conn)
        conn.execute(
            "INSERT OR IGNORE INTO meta(name, value) VALUES ('schema_version', ?), ('feed_floor', 0)",
            (SCHEMA_VERSION,),
        )
        conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (SCHEMA_VERSION,))
        self._conn = conn

    def schema(self) -> str:
        """The DDL; mixins that keep more tables extend it."""
        return SCHEMA

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring tables of an older file to the current form, before the DDL runs."""

    async def erase_traces(self) -> None:
        """Checkpoint the WAL into the database and truncate it to 0 bytes.

        Deleted rows are zeroed in the database file (``secure_delete``), but until a
        checkpoint the WAL still holds the pages as they were before the deletion, and after a
        plain checkpoint its old frames stay in the file until overwritten. TRUNCATE copies
        every frame into the database and cuts the file to nothing. A reader of another
        process can make it wait: it is retried a few times, then logged.
        """
        await self._run(self._erase_traces_sync)

    def _erase_traces_sync(self) -> None:
        for _ in range(20):
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:
                return
            time.sleep(0.01)
        log.warning("the WAL could not be truncated: another connection reads", extra={"event": "wal_busy"})

    async def ping(self) -> None:
        await self._run(lambda: self._db.execute("SELECT 1").fetchone())

    async def write_ready(self) -> None:
        """Writes fail only on a file (or directory, for the WAL) that became read-only."""
        if not os.access(self.path, os.W_OK) or not os.access(self.path.parent, os.W_OK):
            raise Unavailable("the store's file is read-only")

    async def close(self) -> None:
        """Close the file, then stop the writer thread once the jobs queued before it ran.

        A store closed this way can be opened again (a new thread starts)."""
        if self._conn is not None:
            await self._run(self._close_sync)
        thread, self._thread, self._mailbox = self._thread, None, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _close_sync(self) -> None:
        assert self._conn is not None
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
        self._conn = None

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the store is not open")
        return self._conn

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the store thread. If the caller is cancelled (a deadline passed, the
        client went away), a job still queued is dropped and a running one is interrupted and
        rolled back, so no work is left running on behalf of a call that is over."""
        job = self._enqueue(fn)
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._switch:
                if self._current is job and self._conn is not None:
                    self._conn.interrupt()
            raise

    def _enqueue(self, fn: Callable[[], T]) -> _Job[T]:
        """Queue ``fn`` behind the jobs already queued; its outcome is set on ``job.future``,
        a future of the running loop. The first job (after ``close``) starts the thread."""
        loop = asyncio.get_running_loop()
        mailbox = self._mailbox
        if mailbox is None or mailbox.loop is not loop:
            mailbox = self._mailbox = _Mailbox(loop)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="sqlite-store", daemon=True)
                self._thread.start()
        job = _Job(fn, loop.create_future(), mailbox)
        self._jobs.put(job)
        return job

    def _work(self) -> None:
        """The writer thread: the jobs one at a time in the order queued, until ``None``."""
        get = self._jobs.get
        switch = self._switch
        while (job := get()) is not None:
            with switch:
                # The caller's cancellation cancels the future at once (a read of its state
                # is safe from this thread): a job queued for a call that is over never runs.
                if job.future.cancelled():
                    continue
                self._current = job
            try:
                job.result = job.fn()
            except BaseException as error:
                job.error = error
            with switch:
                self._current = None
            job.mailbox.post(job)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one IMMEDIATE transaction on the writer thread, then wake feed waiters."""
        result = await self._run(lambda: self._transaction(fn))
        self._notify_changed()
        return result

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._db
        self._begin(conn)
        self._checkpoint_every(conn, CHECKPOINT_PAGES)  # an import's ``fn`` raises it again
        try:
            result = fn(conn)
            self._maybe_prune_feed(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _begin(self, conn: sqlite3.Connection) -> None:
        """Take the write lock. Another process may hold it: wait in short steps, give up
        when the call was cancelled, and answer UNAVAILABLE when the wait is too long."""
        deadline = time.monotonic() + self._lock_timeout
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
            job = self._current
            if job is not None and job.future.cancelled():
                raise Unavailable("the call was cancelled while the store was locked")
            if time.monotonic() > deadline:
                raise Unavailable("the store is locked by another writer")

    def _checkpoint_every(self, conn: sqlite3.Connection, pages: int) -> None:
        """The checkpoint policy of the next commits (a connection setting, read at commit)."""
        if pages != self._checkpoint_pages:
            conn.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")
            self._checkpoint_pages = pages

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- change feed retention ------------------------------------------------------------------

    def _maybe_prune_feed(self, conn: sqlite3.Connection) -> None:
        now = time.time()
        if now - self._last_prune < 5.0:
            return
        self._last_prune = now
        head = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM registry_feed").fetchone()[0]
        floor = max(head - self._feed_max_len, 0)
        # The first row in seq order that is recent enough: a walk from the oldest row that
        # stops there (MIN(seq) with this WHERE scanned the whole feed, 1M rows, every 5 s).
        row = conn.execute(
            "SELECT seq FROM registry_feed WHERE created >= ? ORDER BY seq LIMIT 1",
            (now - self._feed_retention,),
        ).fetchone()
        oldest_kept = row[0] if row is not None else None
        floor = max(floor, (oldest_kept - 1) if oldest_kept is not None else head)
        current = conn.execute("SELECT value FROM meta WHERE name = 'feed_floor'").fetchone()[0]
        if floor > current:
            conn.execute("DELETE FROM registry_feed WHERE seq <= ?", (floor,))
            conn.execute("UPDATE meta SET value = ? WHERE name = 'feed_floor'", (floor,))

    # -- hooks the join notification mixin overrides --------------------------------------------

    def _after_register(self, conn: sqlite3.Connection, users: list[Any]) -> None:
        """Called in the registering transaction with (user_id, announcement, mode) per user."""

    def _watched_tags(self, conn: sqlite3.Connection, tags: list[bytes]) -> set[bytes]:
        """Those of the watch tags that have watches (an import announces only those users)."""
        return set()

    def _forget_user(self, conn: sqlite3.Connection, user_id: str, joiner_tag: bytes) -> int:
        """Called in the unregistering transaction; removes data kept on the user's behalf."""
        return 0


def _migrate_feed_pointers(conn: sqlite3.Connection) -> None:
    """Schema 1 found the feed entries naming a user through an index on the feed's user ids
    (a random insert per imported user); schema 2 keeps in each user's row the seq of the one
    entry that names them. A file with that index (schema 1, or written again by a version
    that keeps it) gets its pointers from the feed, loses the entries that newer ones
    superseded (schema 2 deletes those when it appends), and the index is dropped."""
    if "feed_seq" not in {row[1] for row in conn.execute("PRAGMA table_info(users)")}:
        conn.execute("ALTER TABLE users ADD COLUMN feed_seq INTEGER")
    if conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'registry_feed_user'"
    ).fetchone():
        started = time.monotonic()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "UPDATE users SET feed_seq ="
                " (SELECT MAX(seq) FROM registry_feed f WHERE f.user_id = users.user_id)"
            )
            conn.execute(
                "DELETE FROM registry_feed WHERE user_id IS NOT NULL AND seq NOT IN"
                " (SELECT feed_seq FROM users WHERE feed_seq IS NOT NULL)"
            )
            conn.execute("DROP INDEX registry_feed_user")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        log.info(
            "feed pointers migrated",
            extra={"event": "schema_migrated", "seconds": round(time.monotonic() - started, 2)},
        )


class _Job(Generic[T]):
    """One unit of work on the store thread, known while it runs so it can be interrupted."""

    __slots__ = ("error", "fn", "future", "mailbox", "result")

    def __init__(self, fn: Callable[[], T], future: asyncio.Future[T], mailbox: _Mailbox) -> None:
        self.fn = fn
        self.future = future
        self.mailbox = mailbox
        self.error: BaseException | None = None
        self.result: T


class _Mailbox:
    """Finished jobs on their way to one event loop. The writer thread wakes the loop only
    when the box was empty, so the jobs that finish before the loop runs share one wake-up
    (one ``call_soon_threadsafe``: one callback, one byte through the loop's self-pipe)."""

    __slots__ = ("done", "loop", "posted")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.done: deque[_Job[Any]] = deque()
        self.posted = False

    def post(self, job: _Job[Any]) -> None:
        """On the writer thread. ``posted`` is cleared by ``deliver`` before it empties the
        box, so a job appended after it looked is either taken by it or posted again."""
        self.done.append(job)
        if not self.posted:
            self.posted = True
            try:
                self.loop.call_soon_threadsafe(self.deliver)
            except RuntimeError:  # the loop is closed: nobody waits on its futures
                self.done.clear()
                self.posted = False

    def deliver(self) -> None:
        """On the loop: settle the futures of the finished jobs (not those cancelled meanwhile)."""
        self.posted = False
        done = self.done
        while done:
            job = done.popleft()
            future = job.future
            if future.done():
                continue
            if job.error is None:
                future.set_result(job.result)
            elif isinstance(job.error, StopIteration):  # a future refuses it, as a coroutine does
                future.set_exception(RuntimeError(f"the store job raised {job.error!r}"))
            else:
                future.set_exception(job.error)
