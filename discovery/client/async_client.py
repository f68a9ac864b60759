"""Asyncio clients over a ``grpc.aio.Channel``.

API (same arguments and semantics as :mod:`discovery.client.sync_client`, methods are coroutines)::

    AsyncDiscoveryClient(target: str | None = None, *, channel: grpc.aio.Channel | None = None,
                         user_id=None, token=None, tls=False, root_certificates=None, private_key=None,
                         certificate_chain=None, default_region=None, max_per_request=5000,
                         timeout=None, options=None)
        await .discover(entries: Iterable[str]) -> DiscoverResult
        .discover_state: DiscoverState
        await .discover_hashes(hashes: list[bytes]) -> list[tuple[int, str]]
        await .get_settings() -> Settings
        await .update_settings(discoverable=None, announce_join=None, notify_on_join=None) -> Settings
        await .delete_my_data() -> int
        .subscribe_joins(address_book, *, cursor=0, device_id="", auto_ack=False,
                         initial_backoff=0.2, max_backoff=30.0) -> JoinSubscription  # async iterator
        await .ack_joins(cursor, device_id="") -> int
        await .close(); async with

    AsyncAdminClient(same constructor arguments)
        await .register_user(user_id, number_or_hash, settings=None) -> None
        await .unregister_user(user_id) -> None
        await .change_number(user_id, number_or_hash) -> None
        await .import_users(users: Iterable[tuple[str, str | bytes]] | AsyncIterable[...],
                            batch_size=5000, on_progress=None, timeout=None) -> ImportSummary

Construct the clients inside the running event loop (grpc.aio binds the
channel to it). ``import_users`` writes batches itself (with flow control), so
an exception raised by ``users`` or ``on_progress`` cancels the stream and
propagates unchanged; ``on_progress(rows_processed)`` runs in the event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from discovery.client import _common
from discovery.client.address_book import prepare_address_book
from discovery.client.credentials import create_aio_channel
from discovery.client.errors import DiscoveryError
from discovery.client.joins import ContactMatcher, JoinSubscription, joins_stub
from discovery.client.models import DiscoverResult, ImportSummary, Settings
from discovery.client.resync import DiscoverRun, HasDiscoverState
from discovery.client.sync_client import DEFAULT_IMPORT_BATCH_SIZE
from discovery.v1 import discovery_pb2, joins_pb2

__all__ = ["AsyncAdminClient", "AsyncDiscoveryClient"]

T = TypeVar("T")


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class _AsyncBaseClient(_common.ClientCore):
    channel_factory = staticmethod(create_aio_channel)

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise DiscoveryError.from_rpc_error(exc) from None

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


class AsyncDiscoveryClient(_AsyncBaseClient, HasDiscoverState):
    """The messenger-client API (``discovery.v1.DiscoveryService``), asyncio flavour."""

    @staticmethod
    def _make_stub(channel: Any) -> Any:
        return _common.discovery_stub(channel)

    async def discover(self, entries: Iterable[str]) -> DiscoverResult:
        """Which of ``entries`` (raw address-book strings) belong to registered, discoverable users."""
        book = prepare_address_book(entries, self.default_region, self.max_per_request)
        return book.result(await self.discover_hashes(book.hashes))

    async def discover_hashes(self, hashes: list[bytes]) -> list[tuple[int, str]]:
        """Low level: ``(index into hashes, user_id)`` for each matching 32-byte contact hash.

        Each request chunk carries its previous set and token (see :mod:`discovery.client.resync`),
        so re-syncing an unchanged address book costs no quota.
        """
        run = DiscoverRun(self.discover_state, hashes, self.max_per_request)
        try:
            for k in run:
                response: discovery_pb2.DiscoverResponse
                try:
                    response = await self._unary(self._stub.Discover, run.request(k))
                except DiscoveryError as error:
                    if not (run.has_previous(k) and run.refused_previous(error)):
                        raise
                    response = await self._unary(self._stub.Discover, run.request(k, with_previous=False))
                run.accept(k, response)
        finally:
            run.finish()
        return run.matches

    async def get_settings(self) -> Settings:
        response: discovery_pb2.GetSettingsResponse = await self._unary(
            self._stub.GetSettings, discovery_pb2.GetSettingsRequest()
        )
        return _common.settings_from_pb(response.settings)

    async def update_settings(
        self,
        discoverable: bool | None = None,
        announce_join: bool | None = None,
        notify_on_join: bool | None = None,
    ) -> Settings:
        """Change the given settings (``update_mask`` = the non-None arguments); returns the new settings."""
        request = _common.update_settings_request(discoverable, announce_join, notify_on_join)
        response: discovery_pb2.UpdateSettingsResponse = await self._unary(self._stub.UpdateSettings, request)
        return _common.settings_from_pb(response.settings)

    async def delete_my_data(self) -> int:
        """Forget everything kept on behalf of the caller; returns the number of records removed."""
        response: discovery_pb2.DeleteMyDataResponse = await self._unary(
            self._stub.DeleteMyData, discovery_pb2.DeleteMyDataRequest()
        )
        return int(response.records_deleted)

    def subscribe_joins(
        self,
        address_book: Iterable[str],
        *,
        cursor: int = 0,
        device_id: str = "",
        auto_ack: bool = False,
        initial_backoff: float = 0.2,
        max_backoff: float = 30.0,
    ) -> JoinSubscription:
        """Join events after ``cursor``, then live ones, mapped to entries of ``address_book``.

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
        )

    async def ack_joins(self, cursor: int, device_id: str = "") -> int:
        """Acknowledge join events up to ``cursor`` for ``device_id``; returns how many the server deleted."""
        response: joins_pb2.AckJoinsResponse = await self._unary(
            joins_stub(self._channel).AckJoins, joins_pb2.AckJoinsRequest(cursor=cursor, device_id=device_id)
        )
        return int(response.events_deleted)


class AsyncAdminClient(_AsyncBaseClient):
    """The backend API (``discovery.v1.DirectoryAdminService``), asyncio flavour."""

    @staticmethod
    def _make_stub(channel: Any) -> Any:
        return _common.admin_stub(channel)

    async def register_user(
        self, user_id: str, number_or_hash: str | bytes, settings: Settings | None = None
    ) -> None:
        """Register ``user_id`` with a phone number (normalised and hashed here) or a 32-byte hash."""
        request = discovery_pb2.RegisterUserRequest(
            user_id=user_id, contact_hash=_common.to_contact_hash(number_or_hash, self.default_region)
        )
        if settings is not None:
            request.settings.CopyFrom(_common.settings_to_pb(settings))
        await self._unary(self._stub.RegisterUser, request)

    async def unregister_user(self, user_id: str) -> None:
        await self._unary(self._stub.UnregisterUser, discovery_pb2.UnregisterUserRequest(user_id=user_id))

    async def change_number(self, user_id: str, number_or_hash: str | bytes) -> None:
        request = discovery_pb2.ChangeNumberRequest(
            user_id=user_id, contact_hash=_common.to_contact_hash(number_or_hash, self.default_region)
        )
        await self._unary(self._stub.ChangeNumber, request)

    async def import_users(
        self,
        users: Iterable[tuple[str, str | bytes]] | AsyncIterable[tuple[str, str | bytes]],
        batch_size: int = DEFAULT_IMPORT_BATCH_SIZE,
        on_progress: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> ImportSummary:
        """Bulk-register ``(user_id, number_or_hash)`` rows over one client stream.

        Rows with an invalid number are not sent and are reported as
        ``INVALID_NUMBER`` rejections; rejection positions refer to ``users``.
        """
        batcher = _common.ImportBatcher(self.default_region, batch_size)
        call = self._stub.ImportUsers(timeout=timeout, metadata=self._metadata)
        reported = -1
        try:
            async for row in _aiter(users):
                request = batcher.add(row)
                if request is not None:
                    await call.write(request)
                    if on_progress is not None:
                        reported = batcher.processed
                        on_progress(reported)
            request = batcher.flush()
            if request is not None:
                await call.write(request)
            await call.done_writing()
            if on_progress is not None and batcher.processed != reported:
                on_progress(batcher.processed)
            response: discovery_pb2.ImportUsersResponse = await call
        except grpc.RpcError as exc:
            raise DiscoveryError.from_rpc_error(exc) from None
        except BaseException:
            call.cancel()
            raise
        return batcher.summary(response)
