"""Private mode on a running instance: the entries written at registration, the in-memory set, the calls.

* `PrivateRegistrar` computes the stored entry (tag, sealed id) of each registered user off the event loop;
  `Directory` passes it to the store with the registration, in the same atomic step.
* `PrivateIndex` is this instance's copy of the registered set in OPRF form: loaded from the store at start,
  then kept fresh by following the registry feed, whose changes carry the entries (like `IndexSync`). Changes
  are *released* after a random delay of up to `jitter` seconds, in feed order, so a snapshot, a delta or a
  bucket never tells a join time to the second. A bucket is asked for by a range of tags (the client's grid
  over its snapshot, docs/private-mode.md section 4) and holds the sealed ids of the range's users. Cursors
  are the registry feed's sequence numbers, the same on every instance of a store.
* `PrivateDiscovery` is what `PrivateDiscoveryService` calls: params, evaluation (charged to the new-contact
  quota), snapshot, deltas, range buckets, every input checked before anything is charged or served.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from discovery.core.background import log_retry
from discovery.core.errors import FeedTruncated, InvalidArgument, Reason, StartupRefused
from discovery.core.ports import Store
from discovery.core.private import (
    MAX_BLINDED_PER_REQUEST,
    OffLoopEvaluator,
    OprfKey,
    PrivateEntry,
    check_bucket_range,
    check_epoch,
    check_range_load,
    cursor_ahead,
    entry_layout,
    entry_of_epoch,
    merged_entries,
    tag_records,
)
from discovery.core.quota import Gate
from discovery.private_scheme import (
    DEFAULT_BUCKET_USERS,
    DEFAULT_ID_PAD,
    SMALL_DIRECTORY_MAX,
    SUITE,
    TAG_SIZE,
    Bucket,
    Delta,
    DeltaRecord,
    Snapshot,
    bucket_capacity,
    sealed_size,
)
from discovery.private_scheme.tagset import sorted_unique, tags_array

log = logging.getLogger("discovery.private")

LOAD_BATCH = 10_000
RECOUNT_SECONDS = 60.0  # while a rotation is under way: how often the missing records are counted
FEED_PAGE = 1000
MAX_BUCKETS_PER_REQUEST = 1000
SNAPSHOT_CHUNK = 1 << 20
SNAPSHOT_MAX_AGE = 30.0  # seconds a built snapshot is served while changes arrive (deltas cover the rest)


def _no_missing() -> int:
    return 0


@dataclass(frozen=True, slots=True)
class PrivateRegistrar:
    """Computes the private-mode entries of registered users, off the event loop (one worker call a batch):
    a record of the served epoch and, while one is prepared (docs/private-mode.md, "Key epochs"), of the
    next epoch."""

    key: OprfKey
    evaluator: OffLoopEvaluator
    id_pad: int = DEFAULT_ID_PAD
    next_key: OprfKey | None = None
    #: How many discoverable users the set lacks (their stored entry has no record of the served epoch).
    missing: Callable[[], int] = _no_missing

    @property
    def refills(self) -> bool:
        """Whether a re-registration of an unchanged user (same id, same contact hash) writes the records
        its stored entry lacks: while a next epoch is prepared, or while users miss the served one."""
        return self.next_key is not None or self.missing() > 0

    def refilled(self, stored: bytes | None, fresh: bytes) -> bytes | None:
        """The blob to store for an unchanged user whose entry is ``stored`` (None: keep it as it is)."""
        return merged_entries(stored, fresh)

    def served_changed(self, stored: bytes | None, new: bytes) -> bool:
        """Whether the served epoch's record differs (then the feed must carry the new blob)."""
        epoch = self.key.epoch
        before = entry_of_epoch(stored, epoch) if stored is not None else None
        return before != entry_of_epoch(new, epoch)

    def id_problem(self, user_id: str) -> str | None:
        size = len(user_id.encode("utf-8"))
        if size > self.id_pad:
            return f"is {size} bytes; private mode seals ids of up to {self.id_pad} bytes (--private-id-pad)"
        return None

    async def entries(self, contact_hashes: Sequence[bytes], user_ids: Sequence[str]) -> list[bytes]:
        if not user_ids:
            return []
        keys = [self.key] if self.next_key is None else [self.key, self.next_key]
        return await self.evaluator.entries_of(keys, contact_hashes, user_ids, self.id_pad)


@dataclass(frozen=True, slots=True)
class PrivateParams:
    epoch: int
    public_key: bytes
    suite: str
    bucket_users: int
    bucket_capacity: int
    id_pad: int
    with_sealed_ids: bool
    max_blinded: int
    cursor: int


@dataclass(frozen=True, slots=True)
class _Built:
    """A snapshot built off the loop, and what bucket lookups keep of it."""

    cursor: int
    with_sealed_ids: bool
    data: bytes
    taken: float  # when its contents were taken
    sorted_tags: npt.NDArray[np.uint64]
    recent: frozenset[bytes]  # the recent tags it covers


def _epoch_refused(epoch: int, found: Counter[int]) -> StartupRefused:
    epochs = ", ".join(f"epoch {e} ({n} users)" for e, n in sorted(found.items()))
    return StartupRefused(
        f"no stored private-mode entry has a record of key epoch {epoch} (--private-key-epoch), and the "
        f"store holds {epochs}: serve one of those epochs, or prepare epoch {epoch} first (restart every "
        f"instance with --private-next-key-epoch {epoch}, re-import every user, wait for "
        f'discovery_private_users_missing_epoch{{epoch="{epoch}"}} to reach 0; docs/private-mode.md, '
        '"Key epochs")'
    )


def _id_pad_refused(stored_size: int, id_pad: int) -> StartupRefused:
    stored_pad = stored_size - sealed_size(0)
    return StartupRefused(
        f"the store's private-mode entries seal user ids padded to {stored_pad} bytes, and this server has "
        f"--private-id-pad {id_pad}: start it with --private-id-pad {stored_pad} (another pad needs every "
        "user's entry computed again, by importing the users again)"
    )


class PrivateIndex:
    """The released registered set of one epoch: tag -> sealed ids, with a log of changes since load."""

    def __init__(
        self,
        store: Store,
        epoch: int,
        *,
        next_epoch: int = 0,
        id_pad: int = DEFAULT_ID_PAD,
        jitter: float = 0.0,
        small_directory_max: int = SMALL_DIRECTORY_MAX,
        bucket_min_users: int = DEFAULT_BUCKET_USERS,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self.epoch = epoch
        self.next_epoch = next_epoch  # the epoch being prepared (0: none), counted but not served
        #: Discoverable users whose stored entry lacks the epoch's record, as of the last count (the served
        #: and the next epoch): not in this epoch's set. Counted at load and, while a rotation is under way,
        #: every RECOUNT_SECONDS (a re-import that fills in records changes no feed entry).
        self.missing: dict[int, int] = dict.fromkeys(self.counted_epochs, 0)
        self._counted_at = 0.0
        self.id_pad = id_pad
        self.jitter = jitter
        self.small_directory_max = small_directory_max
        self.bucket_users = bucket_min_users  # k of the range grid (--private-bucket-min-users)
        self._clock = clock
        self._rng = rng
        self._entries: dict[bytes, set[bytes]] = {}
        self.count = 0
        self.cursor = 0  # the newest released feed seq
        self._base = 0  # the feed seq the set was loaded at: older cursors are read from the store
        self._read = 0  # the newest feed seq read (released or pending)
        self._log_seqs: list[int] = []
        self._log: list[bytes] = []  # tags of released entries touched after _base, parallel to _log_seqs
        self._pending: deque[tuple[float, int, bytes | None, bool]] = deque()
        self._released = asyncio.Event()
        self._snapshot: tuple[int, bool, bytes, float] | None = None
        self._building: asyncio.Future[bytes] | None = None
        self._sorted_tags = np.zeros(0, dtype=np.uint64)
        self._recent_tags: set[bytes] = set()
        self._closed = asyncio.Event()
        self.loaded = False

    # -- loading and following ------------------------------------------------------------------

    @property
    def counted_epochs(self) -> tuple[int, ...]:
        return (self.epoch, self.next_epoch) if self.next_epoch else (self.epoch,)

    @property
    def rotating(self) -> bool:
        """A next epoch is prepared, or users lack the served one: the counts may change without a feed
        change, so they are taken again from time to time."""
        return bool(self.next_epoch) or self.missing.get(self.epoch, 0) > 0

    def missing_of(self, epoch: int) -> float:
        """Discoverable users without a record of ``epoch``, as of the last count (the gauge)."""
        return float(self.missing.get(epoch, 0))

    async def load(self) -> None:
        head = await self._store.feed_head()
        entries: dict[bytes, set[bytes]] = {}
        found = await self._scan(entries)
        if sum(found.values()) and not found[self.epoch]:
            raise _epoch_refused(self.epoch, found)
        # Counted from the set: a Redis HSCAN may yield an entry twice while the hash changes.
        self._entries, self.count = entries, sum(len(found) for found in entries.values())
        self._log_missing()
        self.cursor = self._base = self._read = head
        self._log_seqs, self._log = [], []
        self._pending.clear()
        self._snapshot = None
        self.loaded = True
        self._wake()

    async def _scan(self, entries: dict[bytes, set[bytes]] | None) -> Counter[int]:
        """Read every stored entry: the served epoch's records into ``entries`` (when given), the missing
        counts into ``missing``; returns how many users have a record of each epoch. Refuses (StartupRefused)
        entries sealed with another id pad."""
        size = sealed_size(self.id_pad)
        served, found, users = self.epoch, Counter[tuple[int, ...]](), 0
        async for batch in self._store.iter_private(LOAD_BATCH):
            for raw in batch:
                try:
                    sealed, epochs = entry_layout(raw)
                except ValueError:
                    raise _id_pad_refused(len(raw) - TAG_SIZE, self.id_pad) from None
                if sealed != size:
                    raise _id_pad_refused(sealed, self.id_pad)
                users += 1
                found[epochs] += 1
                if entries is not None and served in epochs:
                    entry = entry_of_epoch(raw, served)
                    assert entry is not None
                    entries.setdefault(entry.tag, set()).add(entry.sealed)
        by_epoch = Counter[int]()
        for epochs, count in found.items():
            for epoch in epochs:
                by_epoch[epoch] += count
        self.missing = {epoch: users - by_epoch[epoch] for epoch in self.counted_epochs}
        self._counted_at = self._clock()
        return by_epoch

    def _log_missing(self) -> None:
        for epoch, missing in self.missing.items():
            if missing or epoch != self.epoch:
                log.info(
                    "private-mode users whose entry lacks a key epoch's record",
                    extra={
                        "event": "private_missing_epoch",
                        "epoch": epoch,
                        "served": epoch == self.epoch,
                        "missing": missing,
                    },
                )

    async def recount(self) -> None:
        """Count again the users whose entry lacks the served or the next epoch (a re-import fills them
        in without a feed change)."""
        before = dict(self.missing)
        await self._scan(None)
        if self.missing != before:
            self._log_missing()

    async def follow(self, stop: asyncio.Event, poll: float = 1.0) -> None:
        """Read the feed and release its changes until `stop` is set; reload when the feed was pruned.

        A reload that fails (the store is down, or it now holds entries this configuration cannot serve:
        StartupRefused) keeps the released set served and is tried again, as long as the loop runs."""
        reload = False
        while not stop.is_set():
            try:
                if reload:
                    await self.load()
                    reload = False
                if self.rotating and self._clock() - self._counted_at >= RECOUNT_SECONDS:
                    await self.recount()
                await self.catch_up()
                wait = poll if not self._pending else max(0.0, min(poll, self._pending[0][0] - self._clock()))
                if wait > 0:
                    await self._store.feed_wait(self._read, wait)
            except asyncio.CancelledError:
                raise
            except FeedTruncated:
                log.info("private feed truncated: reloading", extra={"event": "private_reload"})
                reload = True
            except Exception:  # the store is down, or a reload was refused: keep serving the released set
                log_retry(log, "private index follow failed; retrying", "private_follow_error")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await stop.wait()

    async def catch_up(self) -> None:
        """Read every change committed so far, then release those that are due."""
        while True:
            changes = await self._store.feed_read(self._read, FEED_PAGE)
            now = self._clock()
            last = self._pending[-1][0] if self._pending else now
            for change in changes:
                release = max(last, now + self.jitter * self._rng()) if self.jitter > 0 else now
                present = change.user_id is not None and change.discoverable
                self._pending.append((release, change.seq, change.private, present))
                last = release
                self._read = change.seq
            if len(changes) < FEED_PAGE:
                break
        self.release_due()

    def release_due(self) -> None:
        now = self._clock()
        released = False
        while self._pending and self._pending[0][0] <= now:
            _, seq, raw, present = self._pending.popleft()
            entry = self.served_entry(raw)
            if entry is not None:
                self._apply(entry, present)
                self._log_seqs.append(seq)
                self._log.append(entry.tag)
            self.cursor = seq
            released = True
        if not self._pending and self._read > self.cursor:
            self.cursor = self._read
            released = True
        if released:
            self._wake()

    def served_entry(self, raw: bytes | None) -> PrivateEntry | None:
        """The served epoch's record of a stored blob (None: the blob has none, or is unreadable)."""
        if raw is None:
            return None
        try:
            return entry_of_epoch(raw, self.epoch)
        except ValueError:
            log.warning("unreadable private-mode entry in the feed", extra={"event": "private_bad_entry"})
            return None

    def _apply(self, entry: PrivateEntry, present: bool) -> None:
        sealed = self._entries.get(entry.tag)
        if present:
            if sealed is None:
                sealed = self._entries[entry.tag] = set()
                self._recent_tags.add(entry.tag)
            if entry.sealed not in sealed:
                sealed.add(entry.sealed)
                self.count += 1
        elif sealed is not None and entry.sealed in sealed:
            sealed.discard(entry.sealed)
            self.count -= 1
            if not sealed:
                del self._entries[entry.tag]

    def _wake(self) -> None:
        self._released.set()
        self._released = asyncio.Event()

    async def wait_release(self, after: int, timeout: float) -> None:
        if self.cursor > after:
            return
        released, closed = self._released, self._closed
        waits = [asyncio.ensure_future(released.wait()), asyncio.ensure_future(closed.wait())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def store_head(self) -> int:
        return await self._store.feed_head()

    def end_streams(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- what clients read ----------------------------------------------------------------------

    @property
    def with_sealed_ids(self) -> bool:
        return self.count <= self.small_directory_max

    @property
    def bucket_capacity(self) -> int:
        return bucket_capacity(self.count, self.bucket_users)

    def _fresh_snapshot(self) -> bytes | None:
        """The built snapshot while it may be served (same cursor, or younger than SNAPSHOT_MAX_AGE)."""
        cached = self._snapshot
        if (
            cached is not None
            and cached[1] == self.with_sealed_ids
            and (cached[0] == self.cursor or self._clock() - cached[3] < SNAPSHOT_MAX_AGE)
        ):
            return cached[2]
        return None

    def snapshot_bytes(self) -> bytes:
        """The snapshot, rebuilt in this thread when stale (tools and benchmarks; servers use `snapshot`)."""
        fresh = self._fresh_snapshot()
        return fresh if fresh is not None else self._install(self._builder()())

    async def snapshot(self) -> bytes:
        """The snapshot as of a recent released cursor; a stale one is rebuilt in a worker thread (about
        0.5 s of CPU at 1M users), one build at a time, so the event loop keeps serving meanwhile."""
        fresh = self._fresh_snapshot()
        if fresh is not None:
            return fresh
        if self._building is None:
            self._building = asyncio.ensure_future(self._rebuild())
        return await asyncio.shield(self._building)

    async def rebuild(self) -> bytes:
        """A new snapshot now, whatever the age of the last one."""
        self._snapshot = None
        return await self.snapshot()

    async def _rebuild(self) -> bytes:
        try:
            return self._install(await asyncio.to_thread(self._builder()))
        finally:
            self._building = None

    def _builder(self) -> Callable[[], _Built]:
        """Takes (on the loop) what the snapshot is made of; the function returned builds it in any thread."""
        epoch, cursor, id_pad, ids = self.epoch, self.cursor, self.id_pad, self.with_sealed_ids
        entries, recent, taken = self._entries, frozenset(self._recent_tags), self._clock()
        # A small directory's pairs are few; a large one's snapshot needs only the tags (the keys).
        pairs = [(tag, sealed) for tag, found in entries.items() for sealed in found] if ids else None

        def build() -> _Built:
            if pairs is not None:
                snapshot = Snapshot.build(epoch, cursor, pairs, True, id_pad)
                sorted_tags = sorted_unique(snapshot.tags)
            else:
                # list() of a dict is one C call under the GIL: the loop cannot change the dict meanwhile.
                snapshot = Snapshot.of_tags(epoch, cursor, list(entries), id_pad)
                sorted_tags = snapshot.tags
            return _Built(cursor, ids, snapshot.serialize(), taken, sorted_tags, recent)

        return build

    def _install(self, built: _Built) -> bytes:
        self._snapshot = (built.cursor, built.with_sealed_ids, built.data, built.taken)
        self._sorted_tags = built.sorted_tags
        self._recent_tags -= built.recent  # tags first seen during the build stay recent
        return built.data

    def delta_records(self, touched: Sequence[bytes], with_sealed_ids: bool) -> tuple[DeltaRecord, ...]:
        """The current state, in the released set, of each tag touched."""
        return tag_records(touched, lambda tag: self._entries.get(tag, ()), with_sealed_ids)

    async def touched_since(self, cursor: int) -> list[bytes] | None:
        """Tags touched by released changes after `cursor`, or None when they are no longer known."""
        older: list[bytes] = []
        if cursor < self._base:
            after = cursor
            try:
                while after < self._base:
                    changes = await self._store.feed_read(after, FEED_PAGE)
                    if not changes:
                        break
                    older += [
                        entry.tag
                        for c in changes
                        if c.seq <= self._base and (entry := self.served_entry(c.private)) is not None
                    ]
                    after = changes[-1].seq
            except FeedTruncated:
                return None
        start = bisect.bisect_right(self._log_seqs, cursor)
        touched = older + self._log[start:]
        if len(touched) > max(1000, self.count // 4):
            return None  # a fresh snapshot is cheaper
        return touched

    def in_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[list[bytes]]:
        """The sealed ids of the released users whose tag lies in each ``[first, last]`` (tags as integers):
        the last snapshot's sorted tags and the tags first seen since, looked up in the released set."""
        recent = np.sort(tags_array(self._recent_tags))
        found: list[list[bytes]] = []
        for first, last in ranges:
            tags: set[bytes] = set()
            for sorted_tags in (self._sorted_tags, recent):
                lo = int(np.searchsorted(sorted_tags, np.uint64(first), "left"))
                hi = int(np.searchsorted(sorted_tags, np.uint64(last), "right"))
                tags.update(int(v).to_bytes(TAG_SIZE, "big") for v in sorted_tags[lo:hi])
            found.append([sealed for tag in sorted(tags) for sealed in self._entries.get(tag, ())])
        return found


class PrivateDiscovery:
    """The calls of PrivateDiscoveryService (the caller is the call's principal)."""

    def __init__(
        self,
        index: PrivateIndex,
        key: OprfKey,
        evaluator: OffLoopEvaluator,
        gate: Gate,
        max_blinded: int = MAX_BLINDED_PER_REQUEST,
        next_key: OprfKey | None = None,
    ) -> None:
        self.index = index
        self.key = key
        self.evaluator = evaluator
        self.gate = gate
        self.max_blinded = max_blinded
        self.next_key = next_key

    def registrar(self) -> PrivateRegistrar:
        """What registration calls to compute entries: same keys, worker pool and id padding."""
        index, epoch = self.index, self.key.epoch
        return PrivateRegistrar(
            self.key, self.evaluator, index.id_pad, self.next_key, lambda: index.missing.get(epoch, 0)
        )

    async def params(self) -> PrivateParams:
        index = self.index
        return PrivateParams(
            self.key.epoch,
            self.key.public_key,
            SUITE,
            index.bucket_users,
            index.bucket_capacity,
            index.id_pad,
            index.with_sealed_ids,
            self.max_blinded,
            index.cursor,
        )

    async def evaluate(self, caller: str, packed: bytes, epoch: int = 0) -> tuple[bytes, bytes]:
        """Check the batch, charge the request and one new contact per element, evaluate off the loop.

        As in Discover: a valid batch costs one quota round trip (the rate and its elements together); an
        invalid one is charged the request rate alone; one over a quota is refused before it is evaluated.
        ``epoch`` (0: the served one) is the key the client expects: another is refused
        (PRIVATE_EPOCH_REFUSED, on an instance not yet switched in a rolling restart), charged like any
        invalid request, never with the new-contact quota.
        """
        try:
            if epoch:
                check_epoch(epoch, self.key.epoch)
            count = await self.evaluator.check(packed, self.max_blinded)
        except InvalidArgument:
            await self.gate.admit(caller)
            raise
        await self.gate.charge_count(caller, count)
        return await self.evaluator.evaluate(self.key, packed, self.max_blinded)

    async def snapshot_chunks(self, max_chunk: int = 0) -> tuple[int, list[bytes]]:
        data = await self.index.snapshot()
        size = max_chunk if max_chunk > 0 else SNAPSHOT_CHUNK
        return len(data), [data[i : i + size] for i in range(0, len(data), size)] or [b""]

    async def _checked_cursor(self, epoch: int, cursor: int) -> bool:
        """True: the cursor is known here; False: ahead of this instance but not of the store."""
        check_epoch(epoch, self.key.epoch)
        if cursor <= self.index.cursor:
            return True
        if cursor <= await self.index.store_head():
            return False
        raise cursor_ahead()

    async def delta(self, epoch: int, cursor: int, with_sealed_ids: bool = False) -> Delta | None:
        """The delta from `cursor` to the released head; None: fetch a snapshot. A small directory's deltas
        always carry the sealed ids; a large one's when asked (the join stream)."""
        index = self.index
        ids = with_sealed_ids or index.with_sealed_ids
        if not await self._checked_cursor(epoch, cursor):
            return Delta(index.epoch, cursor, cursor, (), ids, index.id_pad)
        head = index.cursor
        touched = await index.touched_since(cursor)
        if touched is None:
            return None
        return Delta(index.epoch, cursor, head, index.delta_records(touched, ids), ids, index.id_pad)

    async def deltas(
        self, epoch: int, cursor: int, with_sealed_ids: bool = False, poll: float = 15.0
    ) -> AsyncIterator[Delta | None]:
        """Deltas from `cursor`, then live ones, until the instance stops; None: fetch a snapshot."""
        if not await self._checked_cursor(epoch, cursor):
            cursor = min(cursor, self.index.cursor)
        index = self.index
        first = True
        while not index.closed:
            if first or index.cursor > cursor:
                delta = await self.delta(epoch, cursor, with_sealed_ids)
                if delta is None:
                    yield None
                    return
                if delta.records or first:
                    yield delta
                cursor = delta.to_cursor
                first = False
            await index.wait_release(cursor, poll)

    async def buckets(self, ranges: Sequence[bytes]) -> list[bytes]:
        """The bucket of each range, all of one size. Every range is checked before any bucket is built:
        its shape, then its load in the released set (BUCKET_RANGE_REFUSED: the client's snapshot is out
        of date)."""
        if len(ranges) > MAX_BUCKETS_PER_REQUEST:
            raise InvalidArgument.field(
                "ranges",
                f"{len(ranges)} ranges exceed the limit of {MAX_BUCKETS_PER_REQUEST}",
                Reason.TOO_MANY_BUCKET_RANGES,
            )
        bounds = [check_bucket_range(raw, f"ranges[{i}]") for i, raw in enumerate(ranges)]
        index = self.index
        await index.snapshot()  # the sorted tags that range lookups search
        registered, k, capacity = index.count, index.bucket_users, index.bucket_capacity
        found = index.in_ranges(bounds)
        for i, sealed in enumerate(found):
            check_range_load(len(sealed), registered, k, f"ranges[{i}]")
        return [
            Bucket.build(index.epoch, k, capacity, raw, sealed, index.id_pad).serialize()
            for raw, sealed in zip(ranges, found, strict=True)
        ]
