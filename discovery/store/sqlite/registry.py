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
from discovery.core.hashing import KEY_SIZE
from discovery.core.model import (
    Announcement,
    AnnounceMode,
    FeedRun,
    ImportGroup,
    ImportRejectionReason,
    ImportReport,
    NewUser,
    PrivacySettings,
    PrivateRefill,
    RegisterOutcome,
    RegistryChange,
    RegistrySlice,
    RejectedUser,
    UserRecord,
)
from discovery.store.imports import GroupImports
from discovery.store.sqlite.base import IMPORT_CHECKPOINT_PAGES, SqliteBase

_USER_COLUMNS = "user_id, dkey, discoverable, announce_join, notify_on_join"
_INSERT_USER = f"INSERT INTO users({_USER_COLUMNS}, private, feed_seq) VALUES (?, ?, ?, ?, ?, ?, ?)"


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


class SqliteRegistry(GroupImports, SqliteBase):
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
        seq = self._append_change(conn, user.directory_key, user.user_id, s.discoverable, user.private)
        conn.execute(_INSERT_USER, _insert_values(user, seq))
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
        self._scrub_feed(conn, user_id)
        conn.execute("DELETE FROM users WHERE user_id = ?", (user_id,))
        self._forget_user(conn, user_id, joiner_tag)
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
        self._scrub_feed(conn, user_id)
        self._append_change(conn, record.directory_key, None, False, old_private)
        seq = self._append_change(conn, directory_key, user_id, record.settings.discoverable, private)
        conn.execute(
            "UPDATE users SET dkey = ?, private = ?, feed_seq = ? WHERE user_id = ?",
            (directory_key, private, seq, user_id),
        )
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
            self._scrub_feed(conn, user_id)  # superseded by the new entry
            seq = self._append_change(
                conn, record.directory_key, user_id, settings.discoverable, self._private_of(conn, user_id)
            )
            conn.execute("UPDATE users SET feed_seq = ? WHERE user_id = ?", (seq, user_id))
        return UserRecord(user_id, record.directory_key, settings)

    # -- bulk import ----------------------------------------------------------------------------

    async def _import_groups(self, groups: Sequence[ImportGroup], first_position: int) -> list[ImportReport]:
        return await self._write(lambda conn: [self._import_sync(conn, g, first_position) for g in groups])

    def _import_sync(self, conn: sqlite3.Connection, group: ImportGroup, first: int) -> ImportReport:
        """The users go straight into the table in key order (each index page is filled from
        left to right, not at random places), skipping those a uniqueness constraint refuses;
        only when some were refused are they looked up to tell why. The feed keeps the order
        of the import; each user's row points to the feed entry that names it. Announcements
        are asked for only for the users imported whose watch tag has watches."""
        self._checkpoint_every(conn, IMPORT_CHECKPOINT_PAGES)
        before = conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM users").fetchone()[0]
        head = conn.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'registry_feed'), 0)"
        ).fetchone()[0]
        ids, packed = group.user_ids, group.directory_keys
        n = len(ids)
        keys = [packed[i * KEY_SIZE : (i + 1) * KEY_SIZE] for i in range(n)]
        private = group.private if group.private is not None else [None] * n
        # Most users share one settings object (the default): its columns once per object.
        columns: dict[int, tuple[int, int, int]] = {}
        for s in group.settings:
            if id(s) not in columns:
                columns[id(s)] = (int(s.discoverable), s.announce_code, int(s.notify_on_join))
        cols = [columns[id(s)] for s in group.settings]
        rejected, candidates = _repeats_in_batch(ids, keys, group.distinct)
        inserted = conn.total_changes
        order = sorted(candidates, key=keys.__getitem__)
        # Ints and a bytearray, not bools and bytes: the sqlite3 module binds those without
        # its adaptation lookup (about a third of a bulk import's binding time).
        conn.executemany(
            _INSERT_USER + " ON CONFLICT DO NOTHING",
            [(ids[i], bytearray(keys[i]), *cols[i], private[i], head + 1 + i) for i in order],
        )
        inserted = conn.total_changes - inserted
        unchanged: set[int] = set()
        new: Sequence[int] = candidates
        if inserted < len(candidates) or rejected:
            refused, unchanged, new = _import_conflicts(conn, ids, keys, candidates, before)
            rejected.update(refused)
            # The feed entries of the users imported are numbered without gaps.
            conn.executemany(
                "UPDATE users SET feed_seq = ? WHERE user_id = ?",
                [(head + 1 + k, ids[i]) for k, i in enumerate(new)],
            )
        created = time.time()
        conn.executemany(
            "INSERT INTO registry_feed(seq, dkey, user_id, discoverable, created, private)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (head + 1 + k, bytearray(keys[i]), ids[i], cols[i][0], created, private[i])
                for k, i in enumerate(new)
            ],
        )
        watched = self._watched_tags(conn, [group.watch_tags[i * KEY_SIZE : (i + 1) * KEY_SIZE] for i in new])
        if watched:
            told = [i for i in new if group.watch_tags[i * KEY_SIZE : (i + 1) * KEY_SIZE] in watched]
            announcements = group.announce(told)
            self._after_register(
                conn,
                [
                    (ids[i], a, group.settings[i].announce_mode)
                    for i, a in zip(told, announcements, strict=True)
                ],
            )
        report = ImportReport()
        if new:
            all_new = len(new) == n
            report.feed.append(
                FeedRun(
                    head + 1,
                    packed if all_new else b"".join(keys[i] for i in new),
                    list(ids) if all_new else [ids[i] for i in new],
                    [bool(cols[i][0]) for i in new],
                )
            )
        report.imported = len(new)
        report.unchanged = len(unchanged)
        report.rejected_total = len(rejected)
        report.rejections = [
            RejectedUser(first + i, ids[i], reason) for i, reason in sorted(rejected.items())
        ]
        return report

    # -- private-mode key rotation ----------------------------------------------------------------

    async def refill_private(self, refills: Sequence[PrivateRefill]) -> int:
        return await self._write(lambda conn: sum(self._refill_sync(conn, r) for r in refills))

    def _refill_sync(self, conn: sqlite3.Connection, refill: PrivateRefill) -> bool:
        row = conn.execute(
            "SELECT dkey, discoverable, private FROM users WHERE user_id = ?", (refill.user_id,)
        ).fetchone()
        if row is None or (None if row[2] is None else bytes(row[2])) != refill.stored:
            return False
        if refill.announce:
            self._scrub_feed(conn, refill.user_id)
            seq = self._append_change(conn, bytes(row[0]), refill.user_id, bool(row[1]), refill.private)
            conn.execute(
                "UPDATE users SET private = ?, feed_seq = ? WHERE user_id = ?",
                (refill.private, seq, refill.user_id),
            )
        else:
            conn.execute("UPDATE users SET private = ? WHERE user_id = ?", (refill.private, refill.user_id))
        return True

    async def private_entries(self, user_ids: Sequence[str]) -> list[tuple[bytes, bytes | None] | None]:
        return await self._run(lambda: [self._private_entry(self._db, u) for u in user_ids])

    def _private_entry(self, conn: sqlite3.Connection, user_id: str) -> tuple[bytes, bytes | None] | None:
        row = conn.execute("SELECT dkey, private FROM users WHERE user_id = ?", (user_id,)).fetchone()
        return None if row is None else (bytes(row[0]), None if row[1] is None else bytes(row[1]))

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
    ) -> int:
        """Append a feed entry; its seq."""
        cursor = conn.execute(
            "INSERT INTO registry_feed(dkey, user_id, discoverable, created, private) VALUES (?, ?, ?, ?, ?)",
            (dkey, user_id, discoverable, time.time(), private),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def _scrub_feed(self, conn: sqlite3.Connection, user_id: str) -> None:
        """Drop the feed entry that names the user (its row points to it): a later entry
        supersedes it anyway."""
        conn.execute(
            "DELETE FROM registry_feed WHERE seq = (SELECT feed_seq FROM users WHERE user_id = ?)", (user_id,)
        )

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


def _insert_values(user: NewUser, feed_seq: int) -> tuple[object, ...]:
    """The values of :data:`_INSERT_USER` (ints and a bytearray, see ``_import_sync``)."""
    s = user.settings
    return (
        user.user_id,
        bytearray(user.directory_key),
        int(s.discoverable),
        s.announce_code,
        int(s.notify_on_join),
        user.private,
        feed_seq,
    )


def _repeats_in_batch(
    ids: Sequence[str], keys: list[bytes], distinct: bool
) -> tuple[dict[int, ImportRejectionReason], Sequence[int]]:
    """A row that repeats the user id or the key of an earlier row of the batch is refused (the earlier
    one is imported), as the Redis store does: (refused positions, the other positions)."""
    n = len(ids)
    if distinct or (len(set(ids)) == n and len(set(keys)) == n):
        return {}, range(n)
    seen_ids: set[str] = set()
    seen_keys: set[bytes] = set()
    rejected: dict[int, ImportRejectionReason] = {}
    candidates: list[int] = []
    for i, (user_id, key) in enumerate(zip(ids, keys, strict=True)):
        if user_id in seen_ids:
            rejected[i] = ImportRejectionReason.USER_ID_TAKEN
        elif key in seen_keys:
            rejected[i] = ImportRejectionReason.CONTACT_HASH_TAKEN
        else:
            candidates.append(i)
        seen_ids.add(user_id)
        seen_keys.add(key)
    return rejected, candidates


def _import_conflicts(
    conn: sqlite3.Connection, ids: Sequence[str], keys: list[bytes], candidates: Sequence[int], before: int
) -> tuple[dict[int, ImportRejectionReason], set[int], list[int]]:
    """After an import that skipped some users: the positions the registry refused (with the
    reason), those it already held unchanged, and those imported (rowids after ``before``)."""
    imported = {row[0] for row in conn.execute("SELECT user_id FROM users WHERE rowid > ?", (before,))}
    rejected: dict[int, ImportRejectionReason] = {}
    unchanged: set[int] = set()
    new: list[int] = []
    for i in candidates:
        if ids[i] in imported:
            new.append(i)
            continue
        row = conn.execute("SELECT dkey FROM users WHERE user_id = ?", (ids[i],)).fetchone()
        if row is None:
            rejected[i] = ImportRejectionReason.CONTACT_HASH_TAKEN
        elif bytes(row[0]) == keys[i]:
            unchanged.add(i)
        else:
            rejected[i] = ImportRejectionReason.USER_ID_TAKEN
    return rejected, unchanged, new
