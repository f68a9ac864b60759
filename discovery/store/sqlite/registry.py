"""The registry and its change feed on SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence

import numpy as np

from discovery.core.errors import ContactHashTaken, FeedTruncated, UserIdTaken, UserNotRegistered
from discovery.core.model import (
    Announcement,
    AnnounceMode,
    ImportRejectionReason,
    ImportReport,
    NewUser,
    PrivacySettings,
    RegisterOutcome,
    RegistryChange,
    RegistrySlice,
    RejectedUser,
    UserRecord,
)
from discovery.store.sqlite.base import IMPORT_CHECKPOINT_PAGES, SqliteBase

_USER_COLUMNS = "user_id, dkey, discoverable, announce_join, notify_on_join"


def _record(row: tuple[str, bytes, int, int, int]) -> UserRecord:
    mode, number_change = PrivacySettings.announce_fields(row[3])
    return UserRecord(
        user_id=row[0],
        directory_key=bytes(row[1]),
        settings=PrivacySettings(
            discoverable=bool(row[2]),
            announce_mode=mode,
            notify_on_join=bool(row[4]),
            announce_number_change=number_change,
        ),
    )


def _number_change_mode(settings: PrivacySettings) -> AnnounceMode:
    """The mode that applies when a user moves to a new number."""
    return settings.announce_mode if settings.announce_number_change else AnnounceMode.OFF


class SqliteRegistry(SqliteBase):
    # -- single-user writes ---------------------------------------------------------------------

    async def register(self, user: NewUser) -> RegisterOutcome:
        return await self._write(lambda conn: self._register_sync(conn, user))

    def _register_sync(self, conn: sqlite3.Connection, user: NewUser) -> RegisterOutcome:
        existing = self._user_row(conn, user.user_id)
        if existing is not None:
            if existing.directory_key == user.directory_key:
                return RegisterOutcome.UNCHANGED
            raise UserIdTaken()
        if conn.execute("SELECT 1 FROM users WHERE dkey = ?", (user.directory_key,)).fetchone():
            raise ContactHashTaken()
        s = user.settings
        conn.execute(
            f"INSERT INTO users({_USER_COLUMNS}, private) VALUES (?, ?, ?, ?, ?, ?)",
            (
                user.user_id,
                user.directory_key,
                s.discoverable,
                s.announce_code,
                s.notify_on_join,
                user.private,
            ),
        )
        self._append_change(conn, user.directory_key, user.user_id, s.discoverable, user.private)
        self._after_register(conn, [(user.user_id, user.announcement, s.announce_mode)])
        return RegisterOutcome.CREATED

    async def unregister(self, user_id: str, joiner_tag: bytes) -> UserRecord | None:
        return await self._write(lambda conn: self._unregister_sync(conn, user_id, joiner_tag))

    def _unregister_sync(
        self, conn: sqlite3.Connection, user_id: str, joiner_tag: bytes
    ) -> UserRecord | None:
        record = self._user_row(conn, user_id)
        if record is None:
            # Data kept on behalf of an unknown user (watches) is still forgotten.
            self._forget_user(conn, user_id, joiner_tag)
            return None
        private = self._private_of(conn, user_id)
        conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
        self._forget_user(conn, user_id, joiner_tag)
        self._scrub_feed(conn, user_id)
        self._append_change(conn, record.directory_key, None, False, private)
        return record

    async def delete_user_data(self, user_id: str, joiner_tag: bytes) -> int:
        return await self._write(lambda conn: self._forget_user(conn, user_id, joiner_tag))

    async def change_number(
        self,
        user_id: str,
        directory_key: bytes,
        announcement: Announcement,
        private: bytes | None = None,
    ) -> UserRecord:
        return await self._write(
            lambda conn: self._change_number_sync(conn, user_id, directory_key, announcement, private)
        )

    def _change_number_sync(
        self,
        conn: sqlite3.Connection,
        user_id: str,
        directory_key: bytes,
        announcement: Announcement,
        private: bytes | None,
    ) -> UserRecord:
        record = self._user_row(conn, user_id)
        if record is None:
            raise UserNotRegistered()
        if record.directory_key == directory_key:
            return record
        if conn.execute("SELECT 1 FROM users WHERE dkey = ?", (directory_key,)).fetchone():
            raise ContactHashTaken()
        old_private = self._private_of(conn, user_id)
        conn.execute(
            "UPDATE users SET dkey = ?, private = ? WHERE user_id = ?", (directory_key, private, user_id)
        )
        self._scrub_feed(conn, user_id)
        self._append_change(conn, record.directory_key, None, False, old_private)
        self._append_change(conn, directory_key, user_id, record.settings.discoverable, private)
        self._after_register(conn, [(user_id, announcement, _number_change_mode(record.settings))])
        return record

    async def update_settings(self, user_id: str, settings: PrivacySettings) -> UserRecord | None:
        return await self._write(lambda conn: self._update_settings_sync(conn, user_id, settings))

    def _update_settings_sync(
        self, conn: sqlite3.Connection, user_id: str, settings: PrivacySettings
    ) -> UserRecord | None:
        record = self._user_row(conn, user_id)
        if record is None:
            return None
        conn.execute(
            "UPDATE users SET discoverable = ?, announce_join = ?, notify_on_join = ? WHERE user_id = ?",
            (settings.discoverable, settings.announce_code, settings.notify_on_join, user_id),
        )
        if settings.discoverable != record.settings.discoverable:
            self._append_change(
                conn, record.directory_key, user_id, settings.discoverable, self._private_of(conn, user_id)
            )
        return UserRecord(user_id, record.directory_key, settings)

    # -- bulk import ----------------------------------------------------------------------------

    async def import_users(self, users: Sequence[NewUser], first_position: int) -> ImportReport:
        return await self._write(lambda conn: self._import_sync(conn, users, first_position))

    async def import_user_groups(self, groups: Sequence[Sequence[NewUser]]) -> list[ImportReport]:
        return await self._write(lambda conn: [self._import_sync(conn, users, 0) for users in groups])

    def _import_sync(self, conn: sqlite3.Connection, users: Sequence[NewUser], first: int) -> ImportReport:
        """Set-based: the batch goes into a temp table and conflicts are found with two joins."""
        report = ImportReport()
        self._checkpoint_every(conn, IMPORT_CHECKPOINT_PAGES)
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS import_batch (pos INTEGER PRIMARY KEY, user_id TEXT NOT NULL,"
            " dkey BLOB NOT NULL, discoverable INTEGER, announce_join INTEGER, notify_on_join INTEGER,"
            " private BLOB)"
        )
        conn.execute("DELETE FROM import_batch")
        conn.executemany(
            "INSERT INTO import_batch VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    first + i,
                    u.user_id,
                    u.directory_key,
                    u.settings.discoverable,
                    u.settings.announce_code,
                    u.settings.notify_on_join,
                    u.private,
                )
                for i, u in enumerate(users)
            ],
        )
        rejected, unchanged = _import_conflicts(conn)
        skip = unchanged | rejected.keys()
        if skip:
            conn.executemany("DELETE FROM import_batch WHERE pos = ?", [(p,) for p in skip])
        # Users in key order: the rows of the batch fill the dkey index from left to right
        # (neighbouring pages, already in cache) instead of at random places. The feed keeps
        # the order of the import.
        conn.execute(
            f"INSERT INTO users({_USER_COLUMNS}, private) SELECT user_id, dkey, discoverable, announce_join,"
            " notify_on_join, private FROM import_batch ORDER BY dkey"
        )
        conn.execute(
            "INSERT INTO registry_feed(dkey, user_id, discoverable, created, private)"
            " SELECT dkey, user_id, discoverable, ?, private FROM import_batch ORDER BY pos",
            (time.time(),),
        )
        imported = [
            (u.user_id, u.announcement, u.settings.announce_mode)
            for i, u in enumerate(users)
            if first + i not in skip
        ]
        self._after_register(conn, imported)
        conn.execute("DELETE FROM import_batch")
        report.imported = len(imported)
        report.unchanged = len(unchanged)
        report.rejected_total = len(rejected)
        report.rejections = [
            RejectedUser(pos, users[pos - first].user_id, reason) for pos, reason in sorted(rejected.items())
        ]
        return report

    # -- reads ----------------------------------------------------------------------------------

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self._run(lambda: self._user_row(self._db, user_id))

    def _user_row(self, conn: sqlite3.Connection, user_id: str) -> UserRecord | None:
        row = conn.execute(f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?", (user_id,)).fetchone()
        return _record(row) if row else None

    async def registry_size(self) -> int:
        return int(await self._run(lambda: self._db.execute("SELECT COUNT(*) FROM users").fetchone()[0]))

    async def iter_registry(self, batch_size: int) -> AsyncIterator[RegistrySlice]:
        after = 0
        while True:
            rows = await self._run(functools.partial(self._registry_page, after, batch_size))
            if not rows:
                return
            after = rows[-1][0]
            yield RegistrySlice(
                keys=b"".join(r[1] for r in rows),
                user_ids=[r[2] for r in rows],
                discoverable=np.fromiter((r[3] for r in rows), dtype=np.bool_, count=len(rows)),
            )

    async def iter_private(self, batch_size: int) -> AsyncIterator[list[bytes]]:
        after = 0
        while True:
            rows = await self._run(functools.partial(self._private_page, after, batch_size))
            if not rows:
                return
            after = rows[-1][0]
            yield [bytes(r[1]) for r in rows if r[1] is not None]

    def _private_page(self, after: int, limit: int) -> list[tuple[int, bytes | None]]:
        return self._db.execute(
            "SELECT rowid, private FROM users WHERE rowid > ? AND discoverable ORDER BY rowid LIMIT ?",
            (after, limit),
        ).fetchall()

    def _private_of(self, conn: sqlite3.Connection, user_id: str) -> bytes | None:
        row = conn.execute("SELECT private FROM users WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def _registry_page(self, after: int, limit: int) -> list[tuple[int, bytes, str, int]]:
        return self._db.execute(
            "SELECT rowid, dkey, user_id, discoverable FROM users WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (after, limit),
        ).fetchall()

    # -- change feed ----------------------------------------------------------------------------

    def _append_change(
        self,
        conn: sqlite3.Connection,
        dkey: bytes,
        user_id: str | None,
        discoverable: bool,
        private: bytes | None = None,
    ) -> None:
        conn.execute(
            "INSERT INTO registry_feed(dkey, user_id, discoverable, created, private) VALUES (?, ?, ?, ?, ?)",
            (dkey, user_id, discoverable, time.time(), private),
        )

    def _scrub_feed(self, conn: sqlite3.Connection, user_id: str) -> None:
        """Drop past feed entries that name the user: a later entry supersedes them anyway."""
        conn.execute("DELETE FROM registry_feed WHERE user_id = ?", (user_id,))

    async def feed_head(self) -> int:
        # sqlite_sequence remembers the newest seq even when its row was scrubbed or pruned.
        return int(
            await self._run(
                lambda: self._db.execute(
                    "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'registry_feed'), 0)"
                ).fetchone()[0]
            )
        )

    async def feed_read(self, after: int, limit: int) -> list[RegistryChange]:
        return await self._run(lambda: self._feed_read_sync(after, limit))

    def _feed_read_sync(self, after: int, limit: int) -> list[RegistryChange]:
        conn = self._db
        floor = conn.execute("SELECT value FROM meta WHERE name = 'feed_floor'").fetchone()[0]
        if after < floor:
            raise FeedTruncated(f"changes after {after} were pruned (floor {floor})")
        rows = conn.execute(
            "SELECT seq, dkey, user_id, discoverable, private FROM registry_feed WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()
        return [
            RegistryChange(seq, bytes(dkey), uid, bool(disc), None if p is None else bytes(p))
            for seq, dkey, uid, disc, p in rows
        ]

    async def feed_wait(self, after: int, timeout: float) -> None:
        """Local writes wake waiters at once; writes by other processes are seen by polling."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(timeout, self._poll_interval)):
                await changed.wait()


def _import_conflicts(conn: sqlite3.Connection) -> tuple[dict[int, ImportRejectionReason], set[int]]:
    """Rows of import_batch the registry refuses (with the reason), and rows it already holds."""
    rejected: dict[int, ImportRejectionReason] = {}
    unchanged: set[int] = set()
    for pos, same_key in conn.execute(
        "SELECT b.pos, b.dkey = u.dkey FROM import_batch b JOIN users u ON u.user_id = b.user_id"
    ):
        if same_key:
            unchanged.add(pos)
        else:
            rejected[pos] = ImportRejectionReason.USER_ID_TAKEN
    for (pos,) in conn.execute(
        "SELECT b.pos FROM import_batch b JOIN users u ON u.dkey = b.dkey WHERE u.user_id != b.user_id"
    ):
        rejected.setdefault(pos, ImportRejectionReason.CONTACT_HASH_TAKEN)
    return rejected, unchanged
