"""Asyncio clients over a ``grpc.aio.Channel``: :class:`AsyncDiscoveryClient` and
:class:`AsyncAdminClient`, with the arguments and semantics of
:mod:`discovery.client.sync_client` (methods are coroutines), plus
:meth:`AsyncDiscoveryClient.subscribe_joins`.

Construct the clients inside the running event loop (grpc.aio binds the
channel to it). ``import_users`` writes batches itself (with flow control), so
an exception raised by ``users`` or ``on_progress`` cancels the stream and
propagates unchanged; ``on_progress(rows_processed)`` runs in the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from contextlib import closing
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast

import grpc

from discovery.client import _calls, _common
from discovery.client.address_book import prepare_address_book
from discovery.client.credentials import create_aio_channel
from discovery.client.errors import DiscoveryError
from discovery.client.joins import ContactMatcher, JoinSubscription, joins_stub
from discovery.client.models import DiscoverResult, ImportSummary, Settings
from discovery.client.private import HasPrivateState
from discovery.client.resync import HasDiscoverState
from discovery.v1 import discovery_pb2, private_pb2
from discovery.v1.discovery_pb2_grpc import DirectoryAdminServiceStub, DiscoveryServiceStub
from discovery.v1.private_pb2_grpc import PrivateDiscoveryServiceStub

if TYPE_CHECKING:  # the .pyi declares the asyncio stubs for type checkers only
    from discovery.v1.discovery_pb2_grpc import DirectoryAdminServiceAsyncStub, DiscoveryServiceAsyncStub

__all__ = ["AsyncAdminClient", "AsyncDiscoveryClient"]

T = TypeVar("T")
StubT = TypeVar("StubT", "DiscoveryServiceAsyncStub", "DirectoryAdminServiceAsyncStub")


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class _AsyncBaseClient(_common.ClientCore[StubT]):
    channel_factory = staticmethod(create_aio_channel)

    async def _run(self, plan: _calls.Plan[T]) -> T:
        """Make the plan's calls one after another; its result."""
        with closing(plan):
            step = _calls.start(plan)
            while isinstance(step, _calls.Call):
                step = _calls.resume(plan, await self._attempt(step))
            return step.value

    async def _attempt(self, call: _calls.Call) -> object:
        """The call's response, or the :class:`DiscoveryError` it failed with."""
        try:
            if call.stream:
                stream = call.method(call.request, timeout=self.timeout, metadata=self._metadata)
                return [message async for message in stream]
            response: object = await call.method(call.request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            return DiscoveryError.from_rpc_error(exc)
        return response

    async def close(self) -> None:
        """Close the channel if this client created it."""
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncDiscoveryClient(_AsyncBaseClient["DiscoveryServiceAsyncStub"], HasDiscoverState, HasPrivateState):
    """The messenger-client API (``discovery.v1.DiscoveryService``), asyncio flavour."""

    def _make_stub(self, channel: grpc.aio.Channel) -> DiscoveryServiceAsyncStub:
        # The .pyi types the stub by the channel's type, which grpc leaves untyped.
        return cast("DiscoveryServiceAsyncStub", DiscoveryServiceStub(channel))

    async def discover(self, entries: Iterable[str]) -> DiscoverResult:
        """Which of ``entries`` (raw address-book strings) belong to registered, discoverable users."""
        return await self._run(
            _calls.discover(
                self._stub, self.discover_state, entries, self.default_region, self.max_per_request
            )
        )

    async def discover_hashes(self, hashes: list[bytes]) -> list[tuple[int, str]]:
        """Low level: ``(index into hashes, user_id)`` for each matching 32-byte contact hash.

        Each request chunk carries its previous set and token (see :mod:`discovery.client.resync`),
        so re-syncing an unchanged address book costs no quota.
        """
        return await self._run(
            _calls.discover_hashes(self._stub, self.discover_state, hashes, self.max_per_request)
        )

    async def discover_private(self, entries: Iterable[str]) -> DiscoverResult:
        """As :meth:`discover`, in private mode (see the blocking client's ``discover_private``)."""
        return await self._run(
            _calls.private_discover(self._private_stub(), self.private_state, entries, self.default_region)
        )

    async def discover_hashes_private(self, hashes: list[bytes]) -> list[tuple[int, str]]:
        """Low level: :meth:`discover_hashes` in private mode."""
        return await self._run(
            _calls.private_discover_hashes(self._private_stub(), self.private_state, hashes)
        )

    def _private_stub(self) -> PrivateDiscoveryServiceStub:
        return PrivateDiscoveryServiceStub(self._channel)

    async def private_joins(
        self, entries: Iterable[str], *, cursor: int | None = None
    ) -> AsyncIterator[tuple[str, str, int]]:
        """Join events in private mode: ``(entry, user_id, cursor)`` for each contact of ``entries`` that
        becomes registered and discoverable, matched on this client against the delta stream and opened
        from the sealed ids the stream carries: the server never learns who waits for whom (no bucket is
        fetched, ever). Evaluates the contacts not evaluated yet; runs until cancelled or the stream ends.

        Resumable: the stream starts at ``cursor`` (the cursor of the last event handled, kept by the
        caller) or, without one, at the cursor of :attr:`private_state`'s snapshot, which each delta
        advances (persist the state with ``to_bytes`` to resume after a restart). Delivery is at least
        once. When the server asks for a new snapshot (``reset``: the changes since the cursor are no
        longer kept), the snapshot is dropped and the iteration ends: joins in that gap are not reported
        (a new call starts from a new snapshot)."""
        from discovery.private_scheme import Delta

        book = prepare_address_book(entries, self.default_region)
        state = self.private_state
        stub = self._private_stub()
        start = await self._run(_calls.private_joins_start(stub, state, book.hashes, cursor))
        index_of = {h: i for i, h in enumerate(book.hashes)}
        assert state.snapshot is not None
        request = private_pb2.SubscribePrivateDeltasRequest(
            epoch=state.snapshot.epoch, cursor=start, with_sealed_ids=True
        )
        async for message in stub.SubscribePrivateDeltas(request, metadata=self._metadata):
            if message.reset:
                state.snapshot = None
                return
            delta = Delta.deserialize(message.delta)
            found, opened = state.joins(delta, book.hashes)
            events = [
                (book.entries[position], user_id)
                for h, user_id in found
                for position in book.positions[index_of[h]]
            ]
            if not events:
                state.apply(delta, opened)
            for n, (entry, user_id) in enumerate(events, 1):
                # The state moves past a delta with its last event, which carries the delta's to_cursor;
                # the events before it carry its from_cursor: a caller that stops there replays the delta.
                if n == len(events):
                    state.apply(delta, opened)
                yield entry, user_id, delta.to_cursor if n == len(events) else delta.from_cursor

    async def get_settings(self) -> Settings:
        """The caller's privacy settings."""
        return await self._run(_calls.get_settings(self._stub))

    async def update_settings(
        self,
        discoverable: bool | None = None,
        announce_join: bool | None = None,
        notify_on_join: bool | None = None,
        *,
        announce_mode: str | None = None,
        announce_number_change: bool | None = None,
    ) -> Settings:
        """Change the given settings (``update_mask`` = the non-None arguments); returns the new settings.

        ``announce_mode`` is ``"OFF"``, ``"MUTUAL"`` or ``"EVERYONE"``; ``announce_join`` is the
        older switch (True: EVERYONE, False: OFF).
        """
        return await self._run(
            _calls.update_settings(
                self._stub, discoverable, announce_join, notify_on_join, announce_mode, announce_number_change
            )
        )

    async def delete_my_data(self, *, disable_notify_on_join: bool = False) -> int:
        """Forget the watches, join events and devices kept on behalf of the caller; returns the
        number of records removed. The registration, settings and quota levels stay (see docs/joins.md,
        "Your data"). ``disable_notify_on_join`` also turns join notifications off in the same
        call, so that the next Discover stores no watches again."""
        return await self._run(_calls.delete_my_data(self._stub, disable_notify_on_join))

    async def export_my_data(self) -> dict[str, Any]:
        """Everything the service keeps on behalf of the caller (ExportMyData), as JSON-ready
        data in the protobuf JSON mapping of ``ExportMyDataResponse`` (see docs/joins.md, "Your data")."""
        return await self._run(_calls.export_my_data(self._stub))

    def subscribe_joins(
        self,
        address_book: Iterable[str],
        *,
        cursor: int = 0,
        device_id: str = "",
        auto_ack: bool = False,
        initial_backoff: float = 0.2,
        max_backoff: float = 30.0,
        epoch: int = 0,
    ) -> JoinSubscription:
        """Join events after ``cursor`` (of ``epoch``, both as last read from a subscription), then live
        ones, mapped to entries of ``address_book``.

        An async iterator that reconnects with its cursor and backs off; see
        :mod:`discovery.client.joins`. ``device_id`` names this installation, so that an
        acknowledgement from another device never drops events this one has not seen.
        """
        return JoinSubscription(
            joins_stub(self._channel),
            self._metadata,
            ContactMatcher(address_book, self.default_region),
            cursor=cursor,
            device_id=device_id,
            auto_ack=auto_ack,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
            default_region=self.default_region,
            epoch=epoch,
        )

    async def ack_joins(self, cursor: int, device_id: str = "") -> int:
        """Acknowledge join events up to ``cursor`` for ``device_id``; returns how many the server deleted."""
        return await self._run(_calls.ack_joins(joins_stub(self._channel), cursor, device_id))


class AsyncAdminClient(_AsyncBaseClient["DirectoryAdminServiceAsyncStub"]):
    """The backend API (``discovery.v1.DirectoryAdminService``), asyncio flavour."""

    def _make_stub(self, channel: grpc.aio.Channel) -> DirectoryAdminServiceAsyncStub:
        return cast("DirectoryAdminServiceAsyncStub", DirectoryAdminServiceStub(channel))

    async def register_user(
        self, user_id: str, number_or_hash: str | bytes, settings: Settings | None = None
    ) -> None:
        """Register ``user_id`` with a phone number (normalised and hashed here) or a 32-byte hash."""
        await self._run(
            _calls.register_user(self._stub, user_id, number_or_hash, settings, self.default_region)
        )

    async def unregister_user(self, user_id: str) -> None:
        """Remove every record that names ``user_id``."""
        await self._run(_calls.unregister_user(self._stub, user_id))

    async def change_number(self, user_id: str, number_or_hash: str | bytes) -> None:
        """Move ``user_id`` to a new phone number (normalised and hashed here) or 32-byte hash."""
        await self._run(_calls.change_number(self._stub, user_id, number_or_hash, self.default_region))

    async def import_users(
        self,
        users: Iterable[tuple[str, str | bytes]] | AsyncIterable[tuple[str, str | bytes]],
        batch_size: int = _common.DEFAULT_IMPORT_BATCH_SIZE,
        on_progress: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> ImportSummary:
        """:meth:`AdminClient.import_users <discovery.client.AdminClient.import_users>`, with flow
        control; ``users`` may also be an async iterable."""
        batcher = _common.ImportBatcher(self.default_region, batch_size, on_progress)
        call = self._stub.ImportUsers(timeout=timeout, metadata=self._metadata)
        try:
            async for row in _aiter(users):
                for request in batcher.feed(row):
                    await call.write(request)
            for request in batcher.finish():
                await call.write(request)
            await call.done_writing()
            response: discovery_pb2.ImportUsersResponse = await call
        except grpc.RpcError as exc:
            raise DiscoveryError.from_rpc_error(exc) from None
        except BaseException:
            call.cancel()
            raise
        return batcher.summary(response)
