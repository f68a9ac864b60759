"""A Store decorator that times every operation for the metrics, whatever the backend.

Each operation is delegated by hand, so the type checker sees the whole Store protocol.
Waits (``feed_wait``) and the streams (``iter_registry``, ``inbox_signals``) block or run
by design; timing them would hide real latency, so they pass straight through.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from opentelemetry.trace import Tracer
from prometheus_client import Counter, Histogram

from discovery.core import model as m
from discovery.core.ports import Store
from discovery.store.spans import in_span

T = TypeVar("T")


class TimedStore:
    """Implements Store by delegating to ``store``, observing each call's duration and errors,
    and tracing it in a child span of the current RPC when a tracer is given."""

    def __init__(
        self, store: Store, seconds: Histogram, errors: Counter, tracer: Tracer | None = None
    ) -> None:
        self.inner = store
        self._seconds = seconds
        self._errors = errors
        self._tracer = tracer
        #: operation -> its labelled series of ``seconds``, looked up once per operation.
        self._series: dict[str, Any] = {}

    async def _timed(self, operation: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            return await in_span(self._tracer, operation, call)
        except Exception:
            self._errors.labels(operation).inc()
            raise
        finally:
            series = self._series.get(operation)
            if series is None:
                series = self._series[operation] = self._seconds.labels(operation)
            series.observe(time.perf_counter() - started)

    # -- registry -------------------------------------------------------------------------------

    async def register(self, user: m.NewUser) -> m.RegisterOutcome:
        return await self._timed("register", self.inner.register(user))

    async def unregister(self, user_id: str, joiner_tag: bytes) -> m.UserRecord | None:
        return await self._timed("unregister", self.inner.unregister(user_id, joiner_tag))

    async def delete_user_data(self, user_id: str, joiner_tag: bytes) -> int:
        return await self._timed("delete_user_data", self.inner.delete_user_data(user_id, joiner_tag))

    async def change_number(
        self,
        user_id: str,
        directory_key: bytes,
        announcement: m.Announcement,
        private: bytes | None = None,
    ) -> m.UserRecord:
        return await self._timed(
            "change_number", self.inner.change_number(user_id, directory_key, announcement, private)
        )

    async def import_users(self, users: Sequence[m.NewUser], first_position: int) -> m.ImportReport:
        return await self._timed("import_users", self.inner.import_users(users, first_position))

    async def import_groups(self, groups: Sequence[m.ImportGroup]) -> list[m.ImportReport]:
        return await self._timed("import_groups", self.inner.import_groups(groups))

    async def get_user(self, user_id: str) -> m.UserRecord | None:
        return await self._timed("get_user", self.inner.get_user(user_id))

    async def update_settings(self, user_id: str, settings: m.PrivacySettings) -> m.UserRecord | None:
        return await self._timed("update_settings", self.inner.update_settings(user_id, settings))

    async def private_entries(self, user_ids: Sequence[str]) -> list[tuple[bytes, bytes | None] | None]:
        return await self._timed("private_entries", self.inner.private_entries(user_ids))

    async def refill_private(self, refills: Sequence[m.PrivateRefill]) -> int:
        return await self._timed("refill_private", self.inner.refill_private(refills))

    def iter_registry(self, batch_size: int) -> AsyncIterator[m.RegistrySlice]:
        return self.inner.iter_registry(batch_size)

    def iter_private(self, batch_size: int) -> AsyncIterator[list[bytes]]:
        return self.inner.iter_private(batch_size)

    async def registry_size(self) -> int:
        return await self._timed("registry_size", self.inner.registry_size())

    async def feed_head(self) -> int:
        return await self._timed("feed_head", self.inner.feed_head())

    async def feed_read(self, after: int, limit: int) -> list[m.RegistryChange]:
        return await self._timed("feed_read", self.inner.feed_read(after, limit))

    async def feed_wait(self, after: int, timeout: float) -> None:
        await self.inner.feed_wait(after, timeout)

    # -- quota ----------------------------------------------------------------------------------

    async def charge(self, charges: Sequence[m.BucketCharge], now: float) -> list[m.QuotaCharge]:
        return await self._timed("charge", self.inner.charge(charges, now))

    async def charge_and_read(
        self, charges: Sequence[m.BucketCharge], now: float, user_id: str
    ) -> tuple[list[m.QuotaCharge], m.UserRecord | None]:
        return await self._timed("charge_and_read", self.inner.charge_and_read(charges, now, user_id))

    async def forget_buckets(self, buckets: Sequence[str]) -> int:
        return await self._timed("forget_buckets", self.inner.forget_buckets(buckets))

    # -- joins ----------------------------------------------------------------------------------

    async def add_watches(self, watcher: str, keys: bytes, ttl: float, cap: int) -> int:
        return await self._timed("add_watches", self.inner.add_watches(watcher, keys, ttl, cap))

    async def drop_watches(self, watcher: str) -> int:
        return await self._timed("drop_watches", self.inner.drop_watches(watcher))

    async def count_watches(self, watcher: str) -> int:
        return await self._timed("count_watches", self.inner.count_watches(watcher))

    async def announce_mutual(
        self, joiner: str, announcement: m.Announcement, watchers: Sequence[str]
    ) -> int:
        return await self._timed(
            "announce_mutual", self.inner.announce_mutual(joiner, announcement, watchers)
        )

    async def watch_summary(self, watcher: str) -> m.WatchSummary:
        return await self._timed("watch_summary", self.inner.watch_summary(watcher))

    async def devices(self, user_id: str) -> list[m.DeviceState]:
        return await self._timed("devices", self.inner.devices(user_id))

    async def inbox_attach(self, user_id: str, device_id: str, after: int) -> int | None:
        return await self._timed("inbox_attach", self.inner.inbox_attach(user_id, device_id, after))

    async def inbox_read(
        self, user_id: str, after: int, limit: int, max_age: float, released_only: bool = True
    ) -> list[m.InboxEntry]:
        read = self.inner.inbox_read(user_id, after, limit, max_age, released_only)
        return await self._timed("inbox_read", read)

    async def inbox_ack(self, user_id: str, device_id: str, cursor: int, max_age: float) -> int | None:
        return await self._timed("inbox_ack", self.inner.inbox_ack(user_id, device_id, cursor, max_age))

    async def purge_expired(self, max_age: float) -> int:
        return await self._timed("purge_expired", self.inner.purge_expired(max_age))

    def inbox_signals(self) -> AsyncIterator[set[str]]:
        return self.inner.inbox_signals()

    async def inbox_epochs(self) -> list[m.InboxEpoch]:
        return await self._timed("inbox_epochs", self.inner.inbox_epochs())

    # -- lifecycle ------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._timed("ping", self.inner.ping())

    async def erase_traces(self) -> None:
        await self._timed("erase_traces", self.inner.erase_traces())

    async def write_ready(self) -> None:
        await self._timed("write_ready", self.inner.write_ready())

    async def close(self) -> None:
        await self._timed("close", self.inner.close())


def timed_store(store: Store, seconds: Histogram, errors: Counter, tracer: Tracer | None = None) -> Store:
    return TimedStore(store, seconds, errors, tracer)
