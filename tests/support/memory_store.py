"""The Store ports of discovery/core/ports.py in memory, for fast unit tests of the domain rules.

Each method runs to completion without awaiting, so it is one atomic step on the event loop,
as a transaction is in SQLite and a script in Redis. Several ``MemoryStore`` objects may share
one ``MemoryData``: they then behave as instances on the same store (the change feed and the
join wake-ups reach each of them). Time comes from ``clock`` (wall seconds; default
``time.time``), so tests of expiry can move it instead of sleeping. The Store contract tests
(tests/test_store_contract.py, tests/test_join_store.py) run against it as the "memory" backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from discovery.core import model as m
from discovery.core.errors import (
    ContactHashTaken,
    FeedTruncated,
    InvalidArgument,
    UserIdTaken,
    UserNotRegistered,
)
from discovery.core.hashing import KEY_SIZE
from discovery.store.sqlite.quota import decide, leak

Clock = Callable[[], float]
#: (user id, announcement, the announce mode that applies) of a user just registered.
_Joined = tuple[str, m.Announcement, m.AnnounceMode]


@dataclass
class _Device:
    acked: int
    seen: float


@dataclass
class MemoryData:
    """What one store holds; shared by the instances opened on it."""

    users: dict[str, m.UserRecord] = field(default_factory=dict)  # in registration order
    owners: dict[bytes, str] = field(default_factory=dict)  # directory key -> user id
    private: dict[str, bytes] = field(default_factory=dict)  # user id -> private-mode entry
    feed: dict[int, tuple[m.RegistryChange, float]] = field(default_factory=dict)  # seq -> (change, created)
    feed_seq: int = 0
    feed_floor: int = 0
    feed_changed: asyncio.Event = field(default_factory=asyncio.Event)
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (level, updated)
    watches: dict[str, dict[bytes, float]] = field(default_factory=dict)  # watcher -> watch tag -> expiry
    watchers: dict[bytes, set[str]] = field(default_factory=dict)  # watch tag -> watchers
    inboxes: dict[str, dict[int, m.InboxEntry]] = field(default_factory=dict)  # user -> cursor -> entry
    joiner_tags: dict[int, bytes] = field(default_factory=dict)  # cursor -> the event's joiner tag
    inbox_seq: int = 0
    devices: dict[tuple[str, str], _Device] = field(default_factory=dict)
    listeners: list[asyncio.Queue[set[str]]] = field(default_factory=list)


class MemoryStore:
    """Implements core.ports.Store over a ``MemoryData``."""

    def __init__(
        self,
        data: MemoryData | None = None,
        *,
        clock: Clock = time.time,
        feed_retention: float = 3600.0,
        feed_max_len: int = 1_000_000,
    ) -> None:
        self.data = data if data is not None else MemoryData()
        self.clock = clock
        self._feed_retention = feed_retention
        self._feed_max_len = feed_max_len

    async def ping(self) -> None:
        return None

    async def write_ready(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- registry -------------------------------------------------------------------------------

    async def register(self, user: m.NewUser) -> m.RegisterOutcome:
        existing = self.data.users.get(user.user_id)
        if existing is not None:
            if existing.directory_key == user.directory_key:
                return m.RegisterOutcome.UNCHANGED
            raise UserIdTaken()
        if user.directory_key in self.data.owners:
            raise ContactHashTaken()
        self._add(user)
        self._registered([(user.user_id, user.announcement, user.settings.announce_mode)])
        return m.RegisterOutcome.CREATED

    async def unregister(self, user_id: str, joiner_tag: bytes) -> m.UserRecord | None:
        record = self.data.users.pop(user_id, None)
        self._forget_user(user_id, joiner_tag)
        if record is None:
            return None
        del self.data.owners[record.directory_key]
        self._scrub_feed(user_id)
        self._append_change(record.directory_key, None, False, self.data.private.pop(user_id, None))
        self._wrote()
        return record

    async def delete_user_data(self, user_id: str, joiner_tag: bytes) -> int:
        return self._forget_user(user_id, joiner_tag)

    async def erase_traces(self) -> None:
        """Nothing to do: the store writes no file."""

    async def change_number(
        self,
        user_id: str,
        directory_key: bytes,
        announcement: m.Announcement,
        private: bytes | None = None,
    ) -> m.UserRecord:
        record = self.data.users.get(user_id)
        if record is None:
            raise UserNotRegistered()
        if record.directory_key == directory_key:
            return record
        if directory_key in self.data.owners:
            raise ContactHashTaken()
        del self.data.owners[record.directory_key]
        self.data.owners[directory_key] = user_id
        self.data.users[user_id] = m.UserRecord(user_id, directory_key, record.settings)
        old_private = self._set_private(user_id, private)
        self._scrub_feed(user_id)
        self._append_change(record.directory_key, None, False, old_private)
        self._append_change(directory_key, user_id, record.settings.discoverable, private)
        settings = record.settings
        mode = settings.announce_mode if settings.announce_number_change else m.AnnounceMode.OFF
        self._registered([(user_id, announcement, mode)])
        return record

    async def import_groups(self, groups: Sequence[m.ImportGroup]) -> list[m.ImportReport]:
        """Each group as one import, in order (one atomic step here: nothing runs in between);
        every user's announcement is made (this store has no cost to save by asking only for the
        watched ones)."""
        return [await self.import_users(_new_users(group), 0) for group in groups]

    async def import_users(self, users: Sequence[m.NewUser], first_position: int) -> m.ImportReport:
        report = m.ImportReport()
        imported: list[_Joined] = []
        first = self.data.feed_seq + 1
        created: list[m.NewUser] = []
        for offset, user in enumerate(users):
            existing = self.data.users.get(user.user_id)
            reason: m.ImportRejectionReason | None = None
            if existing is not None and existing.directory_key == user.directory_key:
                report.unchanged += 1
                continue
            if existing is not None:
                reason = m.ImportRejectionReason.USER_ID_TAKEN
            elif user.directory_key in self.data.owners:
                reason = m.ImportRejectionReason.CONTACT_HASH_TAKEN
            if reason is not None:
                report.rejections.append(m.RejectedUser(first_position + offset, user.user_id, reason))
                continue
            self._add(user)
            created.append(user)
            imported.append((user.user_id, user.announcement, user.settings.announce_mode))
        if created:  # _add appended one feed entry per user, in order
            report.feed.append(
                m.FeedRun(
                    first,
                    b"".join(u.directory_key for u in created),
                    [u.user_id for u in created],
                    [u.settings.discoverable for u in created],
                )
            )
        report.imported = len(imported)
        report.rejected_total = len(report.rejections)
        self._registered(imported)
        return report

    async def get_user(self, user_id: str) -> m.UserRecord | None:
        return self.data.users.get(user_id)

    async def update_settings(self, user_id: str, settings: m.PrivacySettings) -> m.UserRecord | None:
        record = self.data.users.get(user_id)
        if record is None:
            return None
        updated = self.data.users[user_id] = m.UserRecord(user_id, record.directory_key, settings)
        if settings.discoverable != record.settings.discoverable:
            self._append_change(
                record.directory_key, user_id, settings.discoverable, self.data.private.get(user_id)
            )
            self._wrote()
        return updated

    async def private_entries(self, user_ids: Sequence[str]) -> list[tuple[bytes, bytes | None] | None]:
        users, private = self.data.users, self.data.private
        return [None if (r := users.get(u)) is None else (r.directory_key, private.get(u)) for u in user_ids]

    async def refill_private(self, refills: Sequence[m.PrivateRefill]) -> int:
        data, replaced = self.data, 0
        for refill in refills:
            record = data.users.get(refill.user_id)
            if record is None or data.private.get(refill.user_id) != refill.stored:
                continue
            data.private[refill.user_id] = refill.private
            replaced += 1
            if refill.announce:
                self._scrub_feed(refill.user_id)
                self._append_change(
                    record.directory_key, refill.user_id, record.settings.discoverable, refill.private
                )
        if any(r.announce for r in refills):
            self._wrote()
        return replaced

    async def iter_registry(self, batch_size: int) -> AsyncIterator[m.RegistrySlice]:
        records = list(self.data.users.values())
        for start in range(0, len(records), batch_size):
            page = records[start : start + batch_size]
            yield m.RegistrySlice(
                keys=b"".join(r.directory_key for r in page),
                user_ids=[r.user_id for r in page],
                discoverable=np.fromiter((r.settings.discoverable for r in page), np.bool_, len(page)),
            )

    async def iter_private(self, batch_size: int) -> AsyncIterator[list[bytes]]:
        data = self.data
        entries = [
            data.private[u] for u, r in data.users.items() if r.settings.discoverable and u in data.private
        ]
        for start in range(0, len(entries), batch_size):
            yield entries[start : start + batch_size]

    async def registry_size(self) -> int:
        return len(self.data.users)

    # -- change feed ----------------------------------------------------------------------------

    async def feed_head(self) -> int:
        return self.data.feed_seq

    async def feed_read(self, after: int, limit: int) -> list[m.RegistryChange]:
        if after < self.data.feed_floor:
            raise FeedTruncated(f"changes after {after} were pruned (floor {self.data.feed_floor})")
        newer = (change for seq, (change, _) in self.data.feed.items() if seq > after)
        return [change for change, _ in zip(newer, range(limit), strict=False)]

    async def feed_wait(self, after: int, timeout: float) -> None:
        if self.data.feed_seq > after:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.data.feed_changed.wait(), timeout=timeout)

    def _add(self, user: m.NewUser) -> None:
        self.data.users[user.user_id] = m.UserRecord(user.user_id, user.directory_key, user.settings)
        self.data.owners[user.directory_key] = user.user_id
        self._set_private(user.user_id, user.private)
        self._append_change(user.directory_key, user.user_id, user.settings.discoverable, user.private)

    def _set_private(self, user_id: str, entry: bytes | None) -> bytes | None:
        """Keep (or drop, for None) the user's private-mode entry; returns the one it replaces."""
        old = self.data.private.pop(user_id, None)
        if entry is not None:
            self.data.private[user_id] = entry
        return old

    def _append_change(
        self, key: bytes, user_id: str | None, discoverable: bool, private: bytes | None = None
    ) -> None:
        data = self.data
        data.feed_seq += 1
        change = m.RegistryChange(data.feed_seq, key, user_id, discoverable, private)
        data.feed[data.feed_seq] = (change, self.clock())

    def _scrub_feed(self, user_id: str) -> None:
        """Past entries that name the user go: a later entry supersedes them."""
        data = self.data
        for seq in [seq for seq, (change, _) in data.feed.items() if change.user_id == user_id]:
            del data.feed[seq]

    def _wrote(self) -> None:
        """After a registry write: prune the feed, wake its waiters."""
        data = self.data
        cutoff, limit = self.clock() - self._feed_retention, data.feed_seq - self._feed_max_len
        while data.feed:
            seq, (_, created) = next(iter(data.feed.items()))
            if seq > limit and created >= cutoff:
                break
            del data.feed[seq]
            data.feed_floor = max(data.feed_floor, seq)  # a reader before it must reload
        data.feed_changed.set()
        data.feed_changed = asyncio.Event()

    # -- quotas ---------------------------------------------------------------------------------

    async def charge(self, charges: Sequence[m.BucketCharge], now: float) -> list[m.QuotaCharge]:
        outcomes = []
        for charge in charges:
            stored = self.data.buckets.get(charge.bucket)
            level = 0.0 if stored is None else leak(stored[0], stored[1], now, charge.leak_per_second)
            outcome = decide(level, charge.cost, charge.capacity, charge.leak_per_second)
            outcomes.append(outcome)
            if not outcome.allowed:
                break
            if charge.cost > 0:
                self.data.buckets[charge.bucket] = (outcome.level, now)
        return outcomes

    async def charge_and_read(
        self, charges: Sequence[m.BucketCharge], now: float, user_id: str
    ) -> tuple[list[m.QuotaCharge], m.UserRecord | None]:
        return await self.charge(charges, now), await self.get_user(user_id)

    async def forget_buckets(self, buckets: Sequence[str]) -> int:
        return sum(self.data.buckets.pop(name, None) is not None for name in buckets)

    # -- join notifications ---------------------------------------------------------------------

    def _registered(self, joined: Iterable[_Joined]) -> None:
        """In the registering step: look up the watches on each new watch tag; EVERYONE tells
        their watchers, OFF consumes them silently, MUTUAL keeps them for announce_mutual."""
        notified: set[str] = set()
        for user_id, announcement, mode in joined:
            if mode is m.AnnounceMode.MUTUAL:
                continue
            watchers = sorted(self.data.watchers.get(announcement.watch_tag, set()))
            if mode is m.AnnounceMode.EVERYONE:
                notified |= self._announce(user_id, announcement, watchers)
            self._unwatch_tag(announcement.watch_tag, watchers)
        self._signal(notified)
        self._wrote()

    def _announce(self, joiner: str, announcement: m.Announcement, watchers: Iterable[str]) -> set[str]:
        """Append an event for each of ``watchers`` that may be told; returns who was."""
        data, now = self.data, self.clock()
        record = data.users.get(joiner)
        if record is None or not record.settings.discoverable:
            return set()
        told = set()
        for watcher in watchers:
            expires = data.watches.get(watcher, {}).get(announcement.watch_tag, 0.0)
            watcher_record = data.users.get(watcher)
            if watcher == joiner or expires <= now or watcher_record is None:
                continue
            if not watcher_record.settings.notify_on_join:
                continue
            data.inbox_seq += 1
            entry = m.InboxEntry(
                data.inbox_seq, str(data.inbox_seq), announcement.notice, now + announcement.delay
            )
            data.inboxes.setdefault(watcher, {})[entry.cursor] = entry
            data.joiner_tags[entry.cursor] = announcement.joiner_tag
            told.add(watcher)
        return told

    def _signal(self, notified: set[str]) -> None:
        if notified:
            for queue in self.data.listeners:
                queue.put_nowait(set(notified))

    def _unwatch_tag(self, tag: bytes, watchers: Iterable[str]) -> None:
        for watcher in watchers:
            self._unwatch(watcher, [tag])

    async def announce_mutual(
        self, joiner: str, announcement: m.Announcement, watchers: Sequence[str]
    ) -> int:
        record = self.data.users.get(joiner)
        if record is None or record.settings.announce_mode is not m.AnnounceMode.MUTUAL:
            return 0
        watching = self.data.watchers.get(announcement.watch_tag, set())
        told = self._announce(joiner, announcement, sorted(set(watchers) & watching))
        self._unwatch_tag(announcement.watch_tag, told)
        self._signal(told)
        return len(told)

    def _unwatch(self, watcher: str, keys: Iterable[bytes]) -> int:
        mine = self.data.watches.get(watcher, {})
        removed = 0
        for key in list(keys):
            if mine.pop(key, None) is not None:
                removed += 1
                self.data.watchers[key].discard(watcher)
                if not self.data.watchers[key]:
                    del self.data.watchers[key]
        return removed

    def _drop_events(self, inbox: dict[int, m.InboxEntry], cursors: Iterable[int]) -> None:
        for cursor in list(cursors):
            del inbox[cursor]
            self.data.joiner_tags.pop(cursor, None)

    def _forget_user(self, user_id: str, joiner_tag: bytes) -> int:
        data = self.data
        removed = self._unwatch(user_id, data.watches.get(user_id, {}))
        data.watches.pop(user_id, None)
        mine = data.inboxes.pop(user_id, {})
        removed += len(mine)
        self._drop_events(mine, set(mine))
        for device in [d for d in data.devices if d[0] == user_id]:
            del data.devices[device]
            removed += 1
        if user_id not in data.users:
            # Unregistered: no inbox may still name them as the one who joined.
            for inbox in data.inboxes.values():
                self._drop_events(inbox, [c for c in inbox if data.joiner_tags.get(c) == joiner_tag])
        return removed

    async def add_watches(self, watcher: str, keys: bytes, ttl: float, cap: int) -> int:
        record = self.data.users.get(watcher)
        if record is None or not record.settings.notify_on_join:
            return 0
        now = self.clock()
        mine = self.data.watches.setdefault(watcher, {})
        self._unwatch(watcher, [key for key, expires in mine.items() if expires <= now])
        for start in range(0, len(keys), KEY_SIZE):
            key = keys[start : start + KEY_SIZE]
            mine[key] = max(mine.get(key, 0.0), now + ttl)
            self.data.watchers.setdefault(key, set()).add(watcher)
        if len(mine) > cap:
            first_to_expire = sorted(mine, key=lambda key: (mine[key], key))
            self._unwatch(watcher, first_to_expire[: len(mine) - cap])
        return len(mine)

    async def drop_watches(self, watcher: str) -> int:
        return self._unwatch(watcher, self.data.watches.get(watcher, {}))

    async def watch_summary(self, watcher: str) -> m.WatchSummary:
        now = self.clock()
        live = [expires for expires in self.data.watches.get(watcher, {}).values() if expires > now]
        return m.WatchSummary(len(live), min(live), max(live)) if live else m.WatchSummary(0, 0.0, 0.0)

    async def devices(self, user_id: str) -> list[m.DeviceState]:
        mine = sorted((d, state) for (user, d), state in self.data.devices.items() if user == user_id)
        return [m.DeviceState(d, state.acked, state.seen) for d, state in mine]

    async def count_watches(self, watcher: str) -> int:
        now = self.clock()
        return sum(expires > now for expires in self.data.watches.get(watcher, {}).values())

    def _check_cursor(self, cursor: int, name: str) -> None:
        if cursor < 0:
            raise InvalidArgument.field(name, "must not be negative")
        if cursor > self.data.inbox_seq:
            raise InvalidArgument.field(name, "is ahead of every event this server has issued")

    async def inbox_attach(self, user_id: str, device_id: str, after: int) -> int | None:
        self._check_cursor(after, "after_cursor")
        if user_id not in self.data.users:
            return None
        device = self.data.devices.setdefault((user_id, device_id), _Device(0, 0.0))
        device.seen = self.clock()
        return max(after, device.acked)

    async def inbox_read(
        self, user_id: str, after: int, limit: int, max_age: float, released_only: bool = True
    ) -> list[m.InboxEntry]:
        now = self.clock()
        entries = self.data.inboxes.get(user_id, {}).values()
        fresh = (e for e in entries if e.cursor > after and e.joined_at > now - max_age)
        released = itertools.takewhile(lambda e: e.joined_at <= now or not released_only, fresh)
        return list(itertools.islice(released, limit))

    async def inbox_ack(self, user_id: str, device_id: str, cursor: int, max_age: float) -> int | None:
        self._check_cursor(cursor, "cursor")
        if user_id not in self.data.users:
            return None
        now = self.clock()
        device = self.data.devices.setdefault((user_id, device_id), _Device(0, now))
        device.acked, device.seen = max(device.acked, cursor), now
        devices = self.data.devices.items()
        active = [d.acked for (user, _), d in devices if user == user_id and d.seen > now - max_age]
        inbox = self.data.inboxes.get(user_id, {})
        done = [c for c in inbox if active and c <= min(active)]
        self._drop_events(inbox, done)
        return len(done)

    async def purge_expired(self, max_age: float) -> int:
        data, now = self.data, self.clock()
        purged = 0
        for watcher, mine in list(data.watches.items()):
            purged += self._unwatch(watcher, [key for key, expires in mine.items() if expires <= now])
        for inbox in data.inboxes.values():
            old = [c for c, e in inbox.items() if e.joined_at <= now - max_age]
            self._drop_events(inbox, old)
            purged += len(old)
        stale = [d for d, device in data.devices.items() if device.seen <= now - max_age]
        for d in stale:
            del data.devices[d]
        return purged + len(stale)

    async def inbox_signals(self) -> AsyncIterator[set[str]]:
        queue: asyncio.Queue[set[str]] = asyncio.Queue()
        self.data.listeners.append(queue)
        try:
            while True:
                users = await queue.get()
                while not queue.empty():
                    users |= queue.get_nowait()
                yield users
        finally:
            self.data.listeners.remove(queue)

    async def inbox_epochs(self) -> list[m.InboxEpoch]:
        """One history: nothing held in memory loses its tail."""
        return [m.InboxEpoch(1, 0)]


def _new_users(group: m.ImportGroup) -> list[m.NewUser]:
    n = len(group)
    private = group.private if group.private is not None else [None] * n
    return [
        m.NewUser(
            group.user_ids[i],
            group.directory_keys[i * KEY_SIZE : (i + 1) * KEY_SIZE],
            group.settings[i],
            a,
            private[i],
        )
        for i, a in enumerate(group.announce(range(n)))
    ]
