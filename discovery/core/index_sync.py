"""Keeps an in-memory DirectoryIndex equal to the store's registry.

The index is loaded from the store at start, then follows the store's change feed.
Every instance runs one IndexSync, so a registration through any instance reaches
the index of every instance; the instance that made a write also catches up at
once, so its own callers read their writes. When the feed no longer holds the
changes after the index's cursor (the instance was down too long), the index is
rebuilt from the registry and swapped in; it never serves a stale index silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from discovery.core.background import log_retry
from discovery.core.errors import FeedTruncated
from discovery.core.hashing import KEY_SIZE
from discovery.core.model import FeedRun, RegistryChange
from discovery.core.ports import RegistryStore
from discovery.index.table import DirectoryIndex

log = logging.getLogger("discovery.index")

T = TypeVar("T")

LOAD_BATCH = 50_000
FEED_BATCH = 10_000


class IndexSync:
    def __init__(
        self,
        store: RegistryStore,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self._store = store
        self._index = DirectoryIndex()
        self._cursor = 0
        self._loaded = False
        self._last_sync = 0.0
        self._lock = asyncio.Lock()
        # Bulk imports of this instance writing now, and set when there are none: the follow
        # loop waits for them to end, since they apply their own feed entries.
        self._importing = 0
        self._no_import = asyncio.Event()
        self._no_import.set()
        self._on_progress = on_progress

    # -- what the gauges and the health read ----------------------------------------------------

    @property
    def users(self) -> int:
        """How many users the index holds."""
        return len(self._index)

    @property
    def memory_bytes(self) -> int:
        return self._index.memory_bytes()

    @property
    def cursor(self) -> int:
        """The sequence number of the last change applied."""
        return self._cursor

    @property
    def loaded(self) -> bool:
        """True once the index was loaded and follows the feed."""
        return self._loaded

    @property
    def last_sync(self) -> float:
        """``time.monotonic()`` of the last catch-up that reached the feed's head (0: never)."""
        return self._last_sync

    def lookup(self, keys: bytes) -> tuple[npt.NDArray[np.uint32], list[str]]:
        """The positions of the packed directory keys that match a discoverable user, and their ids."""
        return self._index.lookup(keys)

    def lookup_packed(
        self, keys: bytes, id_prefix: bytes = b""
    ) -> tuple[npt.NDArray[np.uint32], bytes, bytes]:
        """:meth:`lookup`, with the positions and ids also packed (index/packed.py)."""
        return self._index.lookup_packed(keys, id_prefix)

    async def load(self) -> None:
        """Build a fresh index from the whole registry, then replay the feed from before the load."""
        async with self._lock:
            await self._reload()

    async def _reload(self) -> None:
        started = time.monotonic()
        head = await self._store.feed_head()
        total = await self._store.registry_size()
        index = DirectoryIndex(capacity=max(1024, total))
        loaded = 0
        log.info("index load started", extra={"event": "index_load_started", "users": total})
        async for piece in self._store.iter_registry(LOAD_BATCH):
            index.bulk_load(piece.keys, piece.user_ids, piece.discoverable)
            loaded += len(piece.user_ids)
            if self._on_progress is not None:
                self._on_progress(loaded, total)
            log.info(
                "index load progress",
                extra={"event": "index_load_progress", "loaded": loaded, "total": total},
            )
        self._index = index
        self._cursor = head
        # Changes made while loading are replayed; applying a change twice is harmless.
        await self._catch_up_locked()
        self._loaded = True
        log.info(
            "index loaded",
            extra={
                "event": "index_loaded",
                "users": len(index),
                "seconds": round(time.monotonic() - started, 3),
                "memory_bytes": index.memory_bytes(),
            },
        )

    async def catch_up(self) -> int:
        """Apply every change the feed holds after the cursor; returns how many."""
        async with self._lock:
            return await self._catch_up_locked()

    async def _catch_up_locked(self) -> int:
        applied = 0
        while True:
            try:
                changes = await self._store.feed_read(self._cursor, FEED_BATCH)
            except FeedTruncated:
                log.warning("index fell behind the change feed; reloading", extra={"event": "index_reload"})
                await self._reload()
                return applied
            if not changes:
                self._last_sync = time.monotonic()
                return applied
            await self._grow_off_loop(len(changes))
            apply_changes(self._index, changes)
            self._cursor = changes[-1].seq
            applied += len(changes)

    async def write_and_apply(
        self, write: Callable[[], Awaitable[T]], runs_of: Callable[[T], list[FeedRun]]
    ) -> T:
        """Run a bulk import's store ``write``, then apply the feed entries it reports having
        appended (``runs_of`` its result) as :meth:`apply_written` does. This instance's follow
        loop waits meanwhile, so that it does not read the import's entries back while they
        are written: other writers' changes reach this index when the write ends (one import
        transaction: at most ``import_transaction_users`` users), or with the catch-up of a
        write made through this instance (those do not wait)."""
        self._importing += 1
        self._no_import.clear()
        try:
            result = await write()
        finally:
            self._importing -= 1
            if not self._importing:
                self._no_import.set()
        await self.apply_written(runs_of(result))
        return result

    async def apply_written(self, runs: list[FeedRun]) -> int:
        """Catch up, applying the feed entries a bulk import appended (``runs``, in feed order)
        as the store reported them instead of reading them back; returns how many changes
        were applied."""
        async with self._lock:
            return await self._apply_locked(runs)

    async def _apply_locked(self, runs: list[FeedRun]) -> int:
        """A run is applied from the cursor on when the cursor is inside it or just before it;
        when other changes come first (another writer's, or a gap), the feed is read up to
        them first, and a run the feed read already covered is skipped. A last read of the
        feed brings what was written after the runs. The index sees the same changes in the
        same order as by reading the whole feed."""
        applied = 0
        for run in runs:
            n = len(run.user_ids)
            last = run.first + n - 1
            if n == 0 or self._cursor >= last:
                continue
            if self._cursor < run.first - 1:
                applied += await self._catch_up_locked()
                if self._cursor >= last or self._cursor < run.first - 1:
                    # Covered by the read, or not in the feed any more (pruned, or the store
                    # was reset and the read reloaded): what the feed holds is the truth.
                    continue
            skip = self._cursor - run.first + 1
            await self._grow_off_loop(n - skip)
            self._index.bulk_load(
                run.directory_keys[skip * KEY_SIZE :],
                run.user_ids[skip:],
                np.array(run.discoverable[skip:], dtype=np.bool_),
            )
            self._cursor = last
            applied += n - skip
        return applied + await self._catch_up_locked()

    async def _grow_off_loop(self, more: int) -> None:
        """Rehash a table that ``more`` changes would grow in a worker thread (the kernel
        releases the GIL), so lookups go on meanwhile instead of waiting ~0.5 s per 10M users.
        The lock keeps every other change out until the new table is adopted."""
        if self._index.needs_growth(more):
            started = time.monotonic()
            table = await asyncio.to_thread(self._index.grown_table, more)
            self._index.adopt(table)  # False only if the index changed; it then grows inline
            log.info(
                "index grown",
                extra={
                    "event": "index_grown",
                    "users": len(self._index),
                    "seconds": round(time.monotonic() - started, 3),
                    "memory_bytes": self._index.memory_bytes(),
                },
            )

    async def follow(self, stop: asyncio.Event) -> None:
        """Follow the feed until ``stop`` is set. Store errors are logged and retried."""
        while True:
            _raise_if_cancelled()
            if stop.is_set():
                return
            try:
                await self._store.feed_wait(self._cursor, timeout=0.5)
                await self._no_import.wait()  # an import applies its own entries
                await self.catch_up()
            except asyncio.CancelledError:
                raise
            except Exception:
                log_retry(log, "index follow failed; retrying", "index_follow_error")
                await asyncio.sleep(0.5)


def _raise_if_cancelled() -> None:
    """Honour a cancellation that a library swallowed (redis-py can, while it reads a reply):
    the task still counts it as pending, so a loop must not carry on as if nothing happened."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def apply_changes(index: DirectoryIndex, changes: list[RegistryChange]) -> None:
    """Apply changes in order; runs of upserts go through the vectorised bulk path."""
    run: list[RegistryChange] = []

    def flush() -> None:
        if len(run) == 1:
            c = run[0]
            assert c.user_id is not None
            index.upsert(c.directory_key, c.user_id, c.discoverable)
        elif run:
            index.bulk_load(
                b"".join(c.directory_key for c in run),
                [c.user_id for c in run if c.user_id is not None],
                np.fromiter((c.discoverable for c in run), dtype=np.bool_, count=len(run)),
            )
        run.clear()

    for change in changes:
        if change.user_id is None:
            flush()
            index.remove(change.directory_key)
        else:
            run.append(change)
    flush()
