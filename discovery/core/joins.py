"""Join notifications: the rules for watches, and delivery of the per-user inbox.

* A watch is kept for each contact a Discover call did not return, only while the caller
  is registered with ``notify_on_join`` on. It expires after ``watch_ttl``, is refreshed
  when the contact is uploaded again, and a user has at most ``watch_cap`` of them (the
  ones that would expire first go first).
* Who is told is the joiner's choice (``AnnounceMode``): EVERYONE is fanned out by the
  store to the watchers' inboxes in the registering transaction (see core.ports.JoinStore);
  MUTUAL waits for the joiner's own Discover: the watchers it matches whose watch is on the
  joiner's key are told then (:meth:`Joins.announce_mutual`), so no address book is stored;
  OFF consumes the watches and tells no one. A number change announces only with
  ``announce_number_change``.
* What the store keeps cannot be linked to the registry without the server secret: watches
  are kept under a keyed tag of the directory key, and each event carries the joiner's id
  and directory key sealed (AEAD), with a keyed tag of the joiner's id to delete them by
  (:meth:`Joins.announcement`).
* Release jitter: each announcement becomes deliverable a random delay (up to
  ``release_jitter`` seconds) after the join, and the event's time is the release time, so
  the join time does not leak to the second.
* Delivery: a stream replays the inbox after a cursor in pages, then waits for a wake-up
  from the :class:`JoinHub` and reads again. Nothing is pushed into per-subscriber
  buffers, so an idle subscriber costs one small object and a slow one at most one page:
  the server's memory stays bounded whatever the clients do.
* The contact is named by the 16-byte prefix of its contact hash, recovered from the
  sealed directory key with one AES call per page at delivery time; it is never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from discovery.core.background import log_retry
from discovery.core.errors import InvalidArgument, QuotaExceeded, Reason, UserNotRegistered
from discovery.core.hashing import KEY_SIZE, KeyRing
from discovery.core.model import Announcement, AnnounceMode, InboxEntry, InboxEpoch, UserRecord
from discovery.core.options import Options, non_negative, option, positive
from discovery.core.ports import Store

log = logging.getLogger("discovery.joins")

DAY = 86400.0
MAX_CURSOR = 2**63 - 1
MAX_DEVICE_ID = 64
#: Epochs a store remembers (core.ports.JoinStore.inbox_epochs).
MAX_EPOCHS = 16
_DEVICE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True, slots=True)
class JoinPolicy(Options):
    watch_ttl: float = option(
        30 * DAY,
        "how long a watch on an unmatched contact lives; uploading it again refreshes it",
        name="join_watch_ttl_seconds",
        check=positive,
    )
    watch_cap: int = option(
        5000,
        "watches per user; beyond it the oldest watches are dropped",
        name="join_watch_cap",
        check=positive,
    )
    inbox_ttl: float = option(
        14 * DAY,
        "how long an undelivered or unacknowledged join event is kept",
        name="join_inbox_ttl_seconds",
        check=positive,
    )
    sweep_interval: float = option(
        60.0,
        "how often expired watches and events are deleted from the store",
        name="join_sweep_interval_seconds",
        check=positive,
    )
    page_size: int = option(
        100,
        "events per stream message while catching up (bounds memory per stream)",
        name="join_page_size",
        check=positive,
    )
    max_subscribers: int = option(
        20_000, "live SubscribeJoins streams one instance accepts", name="join_max_streams", check=positive
    )
    max_streams_per_user: int = option(
        16,
        "live SubscribeJoins streams one user may hold on one instance",
        name="join_max_streams_per_user",
        check=positive,
    )
    release_jitter: float = option(
        3600.0,
        "join events become deliverable after a random delay of up to this long",
        name="join_release_jitter_seconds",
        check=non_negative,
    )
    settings_cache_seconds: float = 2.0
    #: How often an instance asks the store for its cursor epoch, so live streams learn of a
    #: history that lost its tail (a failover) even when their store calls did not fail.
    epoch_check_seconds: float = 1.0


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
    #: The epoch of the events' cursors (0: the store has none).
    epoch: int = 0
    #: Set on a stream's first message and on the first after its epoch changed: the stream
    #: delivers the events after this cursor of ``epoch``.
    resumed_after: int | None = None


def check_device_id(device_id: str) -> str:
    """Empty (the shared default device) or 1 to 64 of ``[A-Za-z0-9._:-]``."""
    if device_id and not _DEVICE_ID.fullmatch(device_id):
        raise InvalidArgument.field(
            "device_id",
            f"must be empty or 1 to {MAX_DEVICE_ID} characters of A-Z a-z 0-9 . _ : -",
            Reason.INVALID_DEVICE_ID,
        )
    return device_id


def check_cursor(cursor: int, field: str) -> int:
    if not 0 <= cursor <= MAX_CURSOR:
        raise InvalidArgument.field(field, f"must be between 0 and {MAX_CURSOR}", Reason.CURSOR_OUT_OF_RANGE)
    return cursor


def make_announcement(keys: KeyRing, user_id: str, directory_key: bytes, jitter: float = 0.0) -> Announcement:
    """The watch tag, joiner tag, sealed notice and a random release delay in [0, jitter]."""
    return make_announcements(keys, [user_id], directory_key, jitter)[0]


def make_announcements(
    keys: KeyRing, user_ids: Sequence[str], directory_keys: bytes, jitter: float = 0.0
) -> list[Announcement]:
    """:func:`make_announcement` of each user id and its key (``directory_keys`` packed, in the
    same order), batched: one AES call for the watch tags, one draw of random bytes for the
    nonces and one for the delays."""
    n = len(user_ids)
    if len(directory_keys) != n * KEY_SIZE:
        raise ValueError("one 16-byte directory key per user id")
    tags = keys.watch_tags(directory_keys)
    joiners = keys.joiner_tags(user_ids)
    notices = keys.seal_notices(user_ids, directory_keys)
    delays = release_delays(n, jitter)
    return [
        Announcement(tags[i * KEY_SIZE : (i + 1) * KEY_SIZE], joiners[i], notices[i], delay)
        for i, delay in enumerate(delays)
    ]


def release_delays(n: int, jitter: float) -> list[float]:
    """``n`` delays drawn uniformly from [0, jitter) with the system's CSPRNG (53 random bits each)."""
    if jitter <= 0:
        return [0.0] * n
    bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
    delays: list[float] = (bits * (jitter / 2.0**53)).tolist()
    return delays


def resume_after(epochs: Sequence[InboxEpoch], epoch: int, cursor: int) -> int:
    """Where a cursor of ``epoch`` resumes in the current epoch (the last of ``epochs``).

    Epoch 0 (a client that knows none) and the current epoch keep the cursor. A cursor of an
    older epoch is trusted only up to the base of every later epoch: past it, the history it
    counted may be lost and its numbers reused. An epoch the store does not know (its start
    was lost with the tail) resumes at the current base, or at the lowest base when older
    epochs may have been forgotten.
    """
    if epoch == 0 or not epochs or epoch == epochs[-1].epoch:
        return cursor
    known = [i for i, e in enumerate(epochs) if e.epoch == epoch]
    if known:
        return min([cursor, *(e.base for e in epochs[known[0] + 1 :])])
    later = epochs if len(epochs) >= MAX_EPOCHS else epochs[-1:]
    return min([cursor, *(e.base for e in later)])


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
        #: The store's cursor epochs as last seen (see :meth:`learn`).
        self.epochs: list[InboxEpoch] = []

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
                reason=Reason.SERVER_STREAMS_FULL,
            )
        subs = self._subs.setdefault(user_id, set())
        if len(subs) >= self.max_streams_per_user:
            raise QuotaExceeded(
                "too many open join streams for this user",
                "join-streams:user",
                f"at most {self.max_streams_per_user} live join streams per user and instance",
                retry_after=5.0,
                reason=Reason.TOO_MANY_STREAMS,
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

    @property
    def epoch(self) -> int:
        return self.epochs[-1].epoch if self.epochs else 0

    def learn(self, epochs: list[InboxEpoch]) -> None:
        """Adopt the store's epochs unless they are older than the known ones (a slow reply);
        a new epoch wakes every stream, which then resumes in it."""
        if not epochs or epochs[-1].epoch in {e.epoch for e in self.epochs}:
            return
        changed = bool(self.epochs)
        self.epochs = epochs
        if changed:
            self.wake_all()

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
        self._wants = _RecordCache(self.policy.settings_cache_seconds)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self.hub.run(self.store), name="join-wakeups"),
            asyncio.create_task(self._sweep(), name="join-sweeper"),
            asyncio.create_task(self._follow_epochs(), name="join-epochs"),
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

    async def _follow_epochs(self) -> None:
        """Learn of a new cursor epoch within ``epoch_check_seconds``, traffic or not."""
        while self.hub.open:
            await asyncio.sleep(self.policy.epoch_check_seconds)
            try:
                self.hub.learn(await self.store.inbox_epochs())
            except Exception:
                if not self.hub.open:
                    return
                log_retry(log, "reading the cursor epoch failed", "join_epoch_error")

    # -- watches --------------------------------------------------------------------------------

    async def watch_unmatched(
        self, caller: str, keys: bytes, matched: npt.ArrayLike, known: tuple[UserRecord | None] | None = None
    ) -> int:
        """Watch every key of the batch whose position is not in ``matched`` (the positions
        returned to the caller), if the caller wants join notifications. The caller's settings
        (``known``, when the caller's record was read already) are read only when something
        is unmatched."""
        n = len(keys) // KEY_SIZE
        positions = np.asarray(matched, dtype=np.int64)
        if positions.size >= n:
            return 0
        record = known[0] if known is not None else await self.caller(caller)
        if record is None or not record.settings.notify_on_join:
            return 0
        unmatched = keys
        if positions.size:
            keep = np.ones(n, dtype=np.bool_)
            keep[positions] = False
            unmatched = np.frombuffer(keys, dtype=np.uint8).reshape(n, KEY_SIZE)[keep].tobytes()
        return await self.store.add_watches(
            caller, self.keys.watch_tags(unmatched), self.policy.watch_ttl, self.policy.watch_cap
        )

    async def drop_watches(self, user_id: str) -> int:
        return await self.store.drop_watches(user_id)

    def watch_tags(self, directory_keys: bytes) -> bytes:
        return self.keys.watch_tags(directory_keys)

    def announcement(self, user_id: str, directory_key: bytes) -> Announcement:
        """What the store needs to announce ``user_id`` joining with ``directory_key``."""
        return make_announcement(self.keys, user_id, directory_key, self.policy.release_jitter)

    def announcements(self, user_ids: Sequence[str], directory_keys: bytes) -> list[Announcement]:
        """:meth:`announcement` of each user id and its key (packed, in order), batched."""
        return make_announcements(self.keys, user_ids, directory_keys, self.policy.release_jitter)

    async def caller(self, user_id: str) -> UserRecord | None:
        """The caller's record, remembered for a few seconds (see _RecordCache)."""
        cached = self._wants.get(user_id)
        if cached is not None:
            return cached[0]
        record = await self.store.get_user(user_id)
        self._wants.put(user_id, record)
        return record

    def cached_caller(self, user_id: str) -> tuple[UserRecord | None] | None:
        """The caller's remembered record (None inside: not registered), or None when it is
        not remembered (then Discover reads it with its quota charge)."""
        return self._wants.get(user_id)

    def remember_caller(self, user_id: str, record: UserRecord | None) -> None:
        """A caller's record read elsewhere (with the quota charge), for the next few seconds."""
        self._wants.put(user_id, record)

    @staticmethod
    def announces_mutual(record: UserRecord) -> bool:
        """Whether the user's Discover matches are told of the user's joining (MUTUAL)."""
        return record.settings.announce_mode is AnnounceMode.MUTUAL and record.settings.discoverable

    async def announce_mutual(self, record: UserRecord, matched_user_ids: list[str]) -> int:
        """MUTUAL: the joiner's Discover matched these users; tell those who watch the joiner's
        key (they have the joiner's number, and the joiner has theirs). Returns how many."""
        if not matched_user_ids or not self.announces_mutual(record):
            return 0
        return await self.store.announce_mutual(
            record.user_id, self.announcement(record.user_id, record.directory_key), matched_user_ids
        )

    def settings_changed(self, user_id: str) -> None:
        self._wants.forget(user_id)

    def user_left(self, user_id: str) -> None:
        """End the local streams of an unregistered user (the store forgot their data)."""
        self._wants.forget(user_id)
        self.hub.close_user(user_id)

    # -- delivery -------------------------------------------------------------------------------

    async def subscribe(
        self, user_id: str, device_id: str, after: int, epoch: int = 0
    ) -> AsyncIterator[JoinBatch]:
        """Replay the inbox after ``after`` (or the device's ack), then live events, forever.

        ``after`` counts in ``epoch`` (0: the current one, as before epochs), mapped to the
        current epoch by :func:`resume_after`; when the epoch changes under the stream, its
        cursor is mapped the same way, so an event issued in the new history is never skipped.

        The subscription is registered before the first read, and its wake flag is cleared
        before every read, so an entry committed at any moment is either in that read or
        wakes the next one.
        """
        check_device_id(device_id)
        check_cursor(after, "after_cursor")
        sub = self.hub.add(user_id)
        try:
            epochs = await self.store.inbox_epochs()
            self.hub.learn(epochs)
            current = epochs[-1].epoch
            start = await self.store.inbox_attach(user_id, device_id, resume_after(epochs, epoch, after))
            if start is None:
                raise UserNotRegistered("caller")
            cursor = start
            resumed: int | None = start
            caught_up = False
            page = self.policy.page_size
            while sub.open:
                sub.clear()
                if self.hub.epoch != current:
                    cursor = resumed = resume_after(self.hub.epochs, current, cursor)
                    current = self.hub.epoch
                entries = await self.store.inbox_read(user_id, cursor, page, self.policy.inbox_ttl)
                full = len(entries) >= page
                completes_replay = not caught_up and not full
                if entries or completes_replay or resumed is not None:
                    if entries:
                        cursor = entries[-1].cursor
                    events = self.events(entries)
                    yield JoinBatch(events, completes_replay, epoch=current, resumed_after=resumed)
                    resumed = None
                    caught_up = caught_up or completes_replay
                if not full:
                    await self._wait(sub)
            if sub.gone:
                raise UserNotRegistered("caller")
        finally:
            self.hub.remove(sub)

    async def _wait(self, sub: Subscription) -> None:
        """Until woken; with release jitter also until the next look, since an event that was
        stored unreleased becomes deliverable with no wake-up."""
        if self.policy.release_jitter <= 0:
            await sub.wait()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(max(self.policy.release_jitter / 60, 1.0), 60.0)):
                await sub.wait()

    def events(self, entries: list[InboxEntry]) -> list[JoinNotice]:
        """Open the entries' notices: the joiner and the prefix the watcher uploaded."""
        if not entries:
            return []
        opened = [self.keys.open_notice(e.notice) for e in entries]
        prefixes = self.keys.recover_prefix(b"".join(dkey for _, dkey in opened))
        return [
            JoinNotice(
                cursor=e.cursor,
                event_id=e.event_id,
                user_id=opened[i][0],
                contact_prefix=prefixes[i * KEY_SIZE : (i + 1) * KEY_SIZE],
                joined_at=e.joined_at,
            )
            for i, e in enumerate(entries)
        ]

    async def ack(self, user_id: str, device_id: str, cursor: int, epoch: int = 0) -> int:
        """Acknowledge for one device; returns how many entries every active device has now processed.

        A cursor of an older ``epoch`` acknowledges only what is common to both histories."""
        check_device_id(device_id)
        check_cursor(cursor, "cursor")
        if epoch:
            epochs = await self.store.inbox_epochs()
            self.hub.learn(epochs)
            cursor = resume_after(epochs, epoch, cursor)
        deleted = await self.store.inbox_ack(user_id, device_id, cursor, self.policy.inbox_ttl)
        if deleted is None:
            raise UserNotRegistered("caller")
        return deleted


class _RecordCache:
    """A user's record (or None: not registered), remembered for a few seconds, so that most
    Discover calls skip a store read. Staleness is safe: the store itself refuses watches for
    a user with notify_on_join off and announces MUTUAL joins only for a user whose stored
    mode is MUTUAL; a user who just changed a setting elsewhere sees it take effect within
    ``ttl`` seconds. Changes through this instance take effect at once."""

    __slots__ = ("_entries", "_ttl")

    MAX_ENTRIES = 100_000

    def __init__(self, ttl: float) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[UserRecord | None, float]] = {}

    def get(self, user_id: str) -> tuple[UserRecord | None] | None:
        entry = self._entries.get(user_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return (entry[0],)

    def put(self, user_id: str, record: UserRecord | None) -> None:
        if self._ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[user_id] = (record, time.monotonic() + self._ttl)

    def forget(self, user_id: str) -> None:
        self._entries.pop(user_id, None)
