"""Join notifications in the SDK: a resilient async iterator over ``SubscribeJoins``.

API::

    JoinEvent(event_id: str, cursor: int, user_id: str, entries: tuple[str, ...],
              e164: str | None, joined_at: datetime)
        .entry -> str | None          # the first of entries
    ContactMatcher(address_book: Iterable[str], default_region: str | None = None)
        .match(prefix: bytes) -> tuple[str | None, tuple[str, ...]]
    JoinSubscription (async iterator of JoinEvent; made by AsyncDiscoveryClient.subscribe_joins)
        .cursor: int                  # cursor of the last event handed out; persist it to resume
        .epoch: int                   # the cursor's epoch (0: not known yet); persist it with the cursor
        .live: asyncio.Event          # set while a stream has replayed the backlog and is live
        .update_address_book(entries) # match later events against a changed address book
        await .ack(cursor=None)       # acknowledge up to cursor (default: .cursor) for this device
        await .aclose()

The server names a contact by the 16-byte prefix of its contact hash; the SDK hashes the
caller's address book locally and hands back the caller's original entries. The
iterator reconnects with its cursor after a dropped connection, a server restart or a
clean end of the stream (shutdown), with exponential backoff and jitter (a server's
RetryInfo is honoured); it raises :class:`DiscoveryError` for errors a retry cannot fix
(``NOT_FOUND``: the caller is not registered; ``INVALID_ARGUMENT``; ``UNAUTHENTICATED``...).
Delivery is at least once; the iterator drops events it has already handed out (by
event id and by cursor), so the caller sees each event once per subscription.

Cursors carry an epoch. When the server's history lost its newest events (a failover, a
restored backup), it starts a new epoch and tells the stream where it resumes; the
iterator then continues from there and forgets the event ids it has seen (they are unique
within an epoch only) after that point, so the events of the new history, which may reuse
cursor numbers and ids, are all handed out.

With ``auto_ack=True`` the iterator acknowledges each stream message's events once the
caller asked for the event after them, i.e. after the caller processed them.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import grpc

from discovery.client.address_book import prepare_address_book
from discovery.client.errors import DiscoveryError
from discovery.contact_hash import KEY_SIZE
from discovery.v1 import joins_pb2
from discovery.v1.joins_pb2_grpc import JoinNotificationServiceStub

if TYPE_CHECKING:  # the .pyi declares the asyncio stub for type checkers only
    from discovery.v1.joins_pb2_grpc import JoinNotificationServiceAsyncStub

__all__ = ["ContactMatcher", "JoinEvent", "JoinSubscription", "joins_stub"]

#: Codes after which the iterator resubscribes instead of raising. CANCELLED is among them
#: because a server flooded with new calls (every client reconnecting after a restart)
#: cancels those it cannot queue; the iterator's own cancellation ends it without a retry.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)
DEDUP_WINDOW = 10_000


def joins_stub(channel: grpc.aio.Channel) -> JoinNotificationServiceAsyncStub:
    """A ``JoinNotificationServiceStub`` of an asyncio channel (the .pyi picks the stub's type by
    the channel's type, which grpc leaves untyped)."""
    return cast("JoinNotificationServiceAsyncStub", JoinNotificationServiceStub(channel))


@dataclass(frozen=True, slots=True)
class JoinEvent:
    """``user_id`` joined with the number behind ``entries`` (the caller's own address-book
    entries for it, in input order; empty when the current address book no longer has it)."""

    event_id: str
    cursor: int
    user_id: str
    entries: tuple[str, ...]
    e164: str | None
    joined_at: datetime

    @property
    def entry(self) -> str | None:
        return self.entries[0] if self.entries else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "cursor": self.cursor,
            "user_id": self.user_id,
            "entries": list(self.entries),
            "e164": self.e164,
            "joined_at": self.joined_at.isoformat(),
        }


class ContactMatcher:
    """Maps contact-hash prefixes back to the caller's address-book entries (computed locally)."""

    def __init__(self, address_book: Iterable[str], default_region: str | None = None) -> None:
        book = prepare_address_book(address_book, default_region)
        self._by_prefix: dict[bytes, tuple[str, tuple[str, ...]]] = {
            h[:KEY_SIZE]: (book.numbers[i], tuple(book.entries[p] for p in book.positions[i]))
            for i, h in enumerate(book.hashes)
        }

    def match(self, prefix: bytes) -> tuple[str | None, tuple[str, ...]]:
        found = self._by_prefix.get(bytes(prefix))
        return found if found is not None else (None, ())


def _retry_delay(error: DiscoveryError, delay: float) -> float:
    return max(delay, error.retry_after or 0.0)


class JoinSubscription:
    """See the module docstring. Not thread-safe; iterate it from one task."""

    def __init__(
        self,
        stub: JoinNotificationServiceAsyncStub,
        metadata: tuple[tuple[str, str], ...],
        matcher: ContactMatcher,
        *,
        cursor: int = 0,
        device_id: str = "",
        auto_ack: bool = False,
        initial_backoff: float = 0.2,
        max_backoff: float = 30.0,
        default_region: str | None = None,
        epoch: int = 0,
    ) -> None:
        if cursor < 0:
            raise ValueError("cursor must not be negative")
        if initial_backoff <= 0 or max_backoff < initial_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        self.cursor = cursor
        self.epoch = epoch
        self.device_id = device_id
        self.auto_ack = auto_ack
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.live = asyncio.Event()
        self.reconnects = 0
        self._stub = stub
        self._metadata = metadata
        self._matcher = matcher
        self._region = default_region
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._events = self._run()

    def __aiter__(self) -> JoinSubscription:
        return self

    async def __anext__(self) -> JoinEvent:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    def update_address_book(self, address_book: Iterable[str]) -> None:
        self._matcher = ContactMatcher(address_book, self._region)

    async def ack(self, cursor: int | None = None) -> int:
        """Acknowledge every event up to ``cursor`` (default: the last one handed out) for this
        device; returns how many events the server deleted."""
        request = joins_pb2.AckJoinsRequest(
            cursor=self.cursor if cursor is None else cursor, device_id=self.device_id, epoch=self.epoch
        )
        try:
            response: joins_pb2.AckJoinsResponse = await self._stub.AckJoins(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise DiscoveryError.from_rpc_error(exc) from None
        return int(response.events_deleted)

    def _is_new(self, event: joins_pb2.JoinEvent) -> bool:
        if event.cursor <= self.cursor or event.event_id in self._seen:
            return False
        self._seen[event.event_id] = int(event.cursor)
        if len(self._seen) > DEDUP_WINDOW:
            self._seen.popitem(last=False)
        return True

    def _follow_epoch(self, message: joins_pb2.SubscribeJoinsResponse) -> None:
        """Adopt the message's epoch. When the server resumed before the cursor, the history after
        that point was lost: continue from there, and forget the ids seen after it (the new
        history may reuse them)."""
        if not message.epoch or message.epoch == self.epoch:
            return
        resumed = int(message.resumed_after_cursor)
        if self.epoch and resumed < self.cursor:
            self.cursor = resumed
            for event_id in [i for i, cursor in self._seen.items() if cursor > resumed]:
                del self._seen[event_id]
        self.epoch = int(message.epoch)

    def _event(self, event: joins_pb2.JoinEvent) -> JoinEvent:
        e164, entries = self._matcher.match(event.contact_hash_prefix)
        return JoinEvent(
            event_id=event.event_id,
            cursor=int(event.cursor),
            user_id=event.user_id,
            entries=entries,
            e164=e164,
            joined_at=event.joined_at.ToDatetime(tzinfo=UTC),
        )

    async def _run(self) -> AsyncGenerator[JoinEvent, None]:
        delay = self.initial_backoff
        while True:
            request = joins_pb2.SubscribeJoinsRequest(
                after_cursor=self.cursor, device_id=self.device_id, after_epoch=self.epoch
            )
            call = self._stub.SubscribeJoins(request, metadata=self._metadata)
            wait = delay
            try:
                async for message in call:
                    delay = wait = self.initial_backoff
                    self._follow_epoch(message)
                    if message.caught_up:
                        self.live.set()
                    handed_out = False
                    for event in message.events:
                        if self._is_new(event):
                            self.cursor = int(event.cursor)
                            handed_out = True
                            yield self._event(event)
                    if self.auto_ack and handed_out:
                        await self._quiet_ack()
            except grpc.RpcError as exc:
                error = DiscoveryError.from_rpc_error(exc)
                if error.code not in RETRYABLE_CODES:
                    raise error from None
                wait = _retry_delay(error, delay)
            finally:
                self.live.clear()
                call.cancel()
            # The stream broke or ended (server shutdown): resume from the cursor.
            self.reconnects += 1
            await asyncio.sleep(wait * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.max_backoff)

    async def _quiet_ack(self) -> None:
        """An auto-ack that fails for a passing reason is covered by the next one."""
        try:
            await self.ack()
        except DiscoveryError as error:
            if error.code not in RETRYABLE_CODES:
                raise
