"""Join notifications: the rules for watches, and delivery of the per-user inbox.

* A watch is kept for each contact a Discover call did not return, only while the caller
  is registered with ``notify_on_join`` on. It expires after ``watch_ttl``, is refreshed
  when the contact is uploaded again, and a user has at most ``watch_cap`` of them (the
  ones that would expire first go first).
* The store fans a registration out to the watchers' inboxes in the registering
  transaction (see core.ports.JoinStore); this module only reads and delivers.
* Delivery: a stream replays the inbox after a cursor in pages, then waits for a wake-up
  from the :class:`JoinHub` and reads again. Nothing is pushed into per-subscriber
  buffers, so an idle subscriber costs one small object and a slow one at most one page:
  the server's memory stays bounded whatever the clients do.
* The contact is named by the 16-byte prefix of its contact hash, recovered from the
  stored directory key with one AES call per page at delivery time; it is never stored.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from discovery.core.background import log_retry
from discovery.core.errors import InvalidArgument, QuotaExceeded, UserNotRegistered
from discovery.core.hashing import KEY_SIZE, KeyRing
from discovery.core.model import InboxEntry
from discovery.core.ports import Store

log = logging.getLogger("discovery.joins")

DAY = 86400.0
MAX_CURSOR = 2**63 - 1
MAX_DEVICE_ID = 64
_DEVICE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True, slots=True)
class JoinPolicy:
    watch_ttl: float = 30 * DAY
    watch_cap: int = 5000
    inbox_ttl: float = 14 * DAY
    sweep_interval: float = 60.0
    page_size: int = 100
    max_subscribers: int = 20_000
    max_streams_per_user: int = 16
    settings_cache_seconds: float = 2.0


@dataclass(frozen=True, slots=True)
class JoinNotice:
    """One delivered notification: ``user_id`` joined with the contact whose hash starts with
    ``contact_prefix`` (which the receiver uploaded)."""

    cursor: int
    event_id: str
    user_id: str
    contact_prefix: bytes
    joined_at: float


@dataclass(frozen=True, slots=True)
class JoinBatch:
    """One stream message: events in cursor order; ``caught_up`` marks the end of the replay."""

    events: list[JoinNotice]
    caught_up: bool


def check_device_id(device_id: str) -> str:
    """Empty (the shared default device) or 1 to 64 of ``[A-Za-z0-9._:-]``."""
    if device_id and not _DEVICE_ID.fullmatch(device_id):
        raise InvalidArgument.field(
            "device_id", f"must be empty or 1 to {MAX_DEVICE_ID} characters of A-Z a-z 0-9 . _ : -"
        )
    return device_id


def check_cursor(cursor: int, field: str) -> int:
    if not 0 <= cursor <= MAX_CURSOR:
        raise InvalidArgument.field(field, f"must be between 0 and {MAX_CURSOR}")
    return cursor


class Subscription:
    """One live stream's wake-up flag. Small on purpose: an idle subscriber holds only this."""

    __slots__ = ("_wake", "gone", "open", "user_id")

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.open = True
        self.gone = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    def close(self, gone: bool = False) -> None:
        """End the stream: at server shutdown (the client resumes elsewhere) or because the
        user was unregistered (``gone``)."""
        self.open = False
        self.gone = self.gone or gone
        self._wake.set()

    def clear(self) -> None:
        self._wake.clear()

    async def wait(self) -> None:
        await self._wake.wait()


#: Subscriptions woken at once by one fan-out, and the pause before the next slice.
WAKE_SLICE = 16
WAKE_PAUSE = 0.001


class JoinHub:
    """Fans "user X has new inbox entries" out to the local subscriptions of X.

    One task consumes the store's ``inbox_signals`` for the whole instance; subscribers never
    poll the store. Limits on streams per instance and per user bound its memory.
    """

    def __init__(self, max_subscribers: int, max_streams_per_user: int) -> None:
        self.max_subscribers = max_subscribers
        self.max_streams_per_user = max_streams_per_user
        self._subs: dict[str, set[Subscription]] = {}
        self._count = 0
        self._closed = False

    def __len__(self) -> int:
        return self._count

    @property
    def open(self) -> bool:
        return not self._closed

    def add(self, user_id: str) -> Subscription:
        if self._count >= self.max_subscribers:
            raise QuotaExceeded(
                "this instance holds its maximum number of join streams; retry later or elsewhere",
                "join-streams:instance",
                f"at most {self.max_subscribers} live join streams per instance",
                retry_after=5.0,
            )
        subs = self._subs.setdefault(user_id, set())
        if len(subs) >= self.max_streams_per_user:
            raise QuotaExceeded(
                "too many open join streams for this user",
                "join-streams:user",
                f"at most {self.max_streams_per_user} live join streams per user and instance",
                retry_after=5.0,
            )
        sub = Subscription(user_id)
        if self._closed:
            sub.close()
        subs.add(sub)
        self._count += 1
        return sub

    def remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.user_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self._count -= 1
        if not subs:
            del self._subs[sub.user_id]

    def wake(self, user_ids: Iterable[str]) -> None:
        for user_id in user_ids:
            for sub in self._subs.get(user_id, ()):
                sub.wake()

    async def wake_paced(self, user_ids: Iterable[str]) -> None:
        """Wake the subscriptions of ``user_ids`` a slice at a time, pausing between slices.

        A number that many streams watch wakes them all at once; each then reads its inbox
        (a store call) and sends an event. Woken together, their reads queue on the store
        ahead of everything else and their sends fill the event loop, so the registering
        call itself and other calls wait for the whole fan-out (tens of ms for 200 streams).
        In slices, other work gets the store and the loop between them.
        """
        subs = [sub for user_id in user_ids for sub in self._subs.get(user_id, ())]
        if len(subs) > WAKE_SLICE:
            # The registering call first: its own next store call goes ahead of the reads.
            await asyncio.sleep(WAKE_PAUSE)
        for start in range(0, len(subs), WAKE_SLICE):
            if start:
                await asyncio.sleep(WAKE_PAUSE)
            for sub in subs[start : start + WAKE_SLICE]:
                sub.wake()

    def wake_all(self) -> None:
        for subs in self._subs.values():
            for sub in subs:
                sub.wake()

    def close_user(self, user_id: str) -> None:
        for sub in self._subs.get(user_id, ()):
            sub.close(gone=True)

    def close(self) -> None:
        self._closed = True
        for subs in self._subs.values():
            for sub in subs:
                sub.close()

    async def run(self, store: Store, retry_delay: float = 1.0) -> None:
        """Forward the store's wake-ups until closed or cancelled; after a store error, wake
        everyone once (a signal may have been lost) and resume.

        The closed flag ends the loop even when a client library turns the cancellation
        into another error (a read timeout), which a bare retry loop would swallow.
        """
        while not self._closed:
            try:
                async for user_ids in store.inbox_signals():
                    await self.wake_paced(user_ids)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._closed:
                    return
                log_retry(log, "join wake-ups failed; retrying", "join_signals_error")
            await asyncio.sleep(retry_delay)
            self.wake_all()


class Joins:
    """Watch creation and inbox delivery for one instance."""

    def __init__(self, store: Store, keys: KeyRing, policy: JoinPolicy | None = None) -> None:
        self.store = store
        self.keys = keys
        self.policy = policy or JoinPolicy()
        self.hub = JoinHub(self.policy.max_subscribers, self.policy.max_streams_per_user)
        self._tasks: list[asyncio.Task[None]] = []
        self._wants = _NotifyOnJoinCache(self.policy.settings_cache_seconds)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.hub.run(self.store), name="join-wakeups"),
            asyncio.create_task(self._sweep(), name="join-sweeper"),
        ]

    def end_streams(self) -> None:
        """End every live stream cleanly (shutdown); clients resume from their cursor."""
        self.hub.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the background tasks; a task that ignores its cancellation is left behind
        after ``timeout`` seconds rather than holding up the shutdown."""
        self.hub.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=timeout)
            if stuck:
                log.warning(
                    "join tasks did not stop", extra={"event": "join_tasks_stuck", "tasks": len(stuck)}
                )
        self._tasks = []

    async def _sweep(self) -> None:
        """Expired watches and inbox entries really disappear, not only from reads."""
        while self.hub.open:
            await asyncio.sleep(self.policy.sweep_interval)
            try:
                purged = await self.store.purge_expired(self.policy.inbox_ttl)
            except Exception:
                if not self.hub.open:
                    return
                log_retry(log, "join sweep failed", "join_sweep_error")
                continue
            if purged:
                log.info("expired join data purged", extra={"event": "join_purged", "records": purged})

    # -- watches --------------------------------------------------------------------------------

    async def watch_unmatched(self, caller: str, keys: bytes, matched: npt.ArrayLike) -> int:
        """Watch every key of the batch whose position is not in ``matched`` (the positions
        returned to the caller), if the caller wants join notifications. The caller's settings
        are read only when something is unmatched."""
        n = len(keys) // KEY_SIZE
        positions = np.asarray(matched, dtype=np.int64)
        if positions.size >= n:
            return 0
        wants = self._wants.get(caller)
        if wants is None:
            record = await self.store.get_user(caller)
            wants = record is not None and record.settings.notify_on_join
            self._wants.put(caller, wants)
        if not wants:
            return 0
        unmatched = keys
        if positions.size:
            keep = np.ones(n, dtype=np.bool_)
            keep[positions] = False
            unmatched = np.frombuffer(keys, dtype=np.uint8).reshape(n, KEY_SIZE)[keep].tobytes()
        return await self.store.add_watches(caller, unmatched, self.policy.watch_ttl, self.policy.watch_cap)

    async def drop_watches(self, user_id: str) -> int:
        return await self.store.drop_watches(user_id)

    def settings_changed(self, user_id: str) -> None:
        self._wants.forget(user_id)

    def user_left(self, user_id: str) -> None:
        """End the local streams of an unregistered user (the store forgot their data)."""
        self._wants.forget(user_id)
        self.hub.close_user(user_id)

    # -- delivery -------------------------------------------------------------------------------

    async def subscribe(self, user_id: str, device_id: str, after: int) -> AsyncIterator[JoinBatch]:
        """Replay the inbox after ``after`` (or the device's ack), then live events, forever.

        The subscription is registered before the first read, and its wake flag is cleared
        before every read, so an entry committed at any moment is either in that read or
        wakes the next one.
        """
        check_device_id(device_id)
        check_cursor(after, "after_cursor")
        sub = self.hub.add(user_id)
        try:
            start = await self.store.inbox_attach(user_id, device_id, after)
            if start is None:
                raise UserNotRegistered("caller")
            cursor = start
            caught_up = False
            page = self.policy.page_size
            while sub.open:
                sub.clear()
                entries = await self.store.inbox_read(user_id, cursor, page, self.policy.inbox_ttl)
                full = len(entries) >= page
                completes_replay = not caught_up and not full
                if entries or completes_replay:
                    if entries:
                        cursor = entries[-1].cursor
                    yield JoinBatch(self._events(entries), caught_up=completes_replay)
                    caught_up = caught_up or completes_replay
                if not full:
                    await sub.wait()
            if sub.gone:
                raise UserNotRegistered("caller")
        finally:
            self.hub.remove(sub)

    def _events(self, entries: list[InboxEntry]) -> list[JoinNotice]:
        if not entries:
            return []
        prefixes = self.keys.recover_prefix(b"".join(e.directory_key for e in entries))
        return [
            JoinNotice(
                cursor=e.cursor,
                event_id=e.event_id,
                user_id=e.joiner,
                contact_prefix=prefixes[i * KEY_SIZE : (i + 1) * KEY_SIZE],
                joined_at=e.joined_at,
            )
            for i, e in enumerate(entries)
        ]

    async def ack(self, user_id: str, device_id: str, cursor: int) -> int:
        """Acknowledge for one device; returns how many entries every active device has now processed."""
        check_device_id(device_id)
        check_cursor(cursor, "cursor")
        deleted = await self.store.inbox_ack(user_id, device_id, cursor, self.policy.inbox_ttl)
        if deleted is None:
            raise UserNotRegistered("caller")
        return deleted


class _NotifyOnJoinCache:
    """Whether a user wants join notifications, remembered for a few seconds, so that most
    Discover calls skip a store read. Staleness is safe: the store itself refuses watches for
    a user with notify_on_join off, and a user who just turned it on elsewhere only misses
    watches for at most ``ttl`` seconds. Changes through this instance take effect at once."""

    __slots__ = ("_entries", "_ttl")

    MAX_ENTRIES = 100_000

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[bool, float]] = {}

    def get(self, user_id: str) -> bool | None:
        entry = self._entries.get(user_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, user_id: str, wants: bool) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[user_id] = (wants, time.monotonic() + self._ttl)

    def forget(self, user_id: str) -> None:
        self._entries.pop(user_id, None)
