"""Blocking clients over a ``grpc.Channel``.

API::

    DiscoveryClient(target: str | None = None, *, channel: grpc.Channel | None = None,
                    user_id: str | None = None, token: str | None = None, tls: bool = False,
                    root_certificates: bytes | None = None, private_key: bytes | None = None,
                    certificate_chain: bytes | None = None, default_region: str | None = None,
                    max_per_request: int = 5000, timeout: float | None = None,
                    options: Sequence[tuple[str, Any]] | None = None)
        .discover(entries: Iterable[str]) -> DiscoverResult
        .discover_state: DiscoverState   # previous sets and tokens (see discovery.client.resync)
        .discover_hashes(hashes: list[bytes]) -> list[tuple[int, str]]   # (index into hashes, user_id)
        .get_settings() -> Settings
        .update_settings(discoverable: bool | None = None, announce_join: bool | None = None,
                         notify_on_join: bool | None = None) -> Settings
        .delete_my_data() -> int
        .ack_joins(cursor: int, device_id: str = "") -> int
        .close(); context manager

    AdminClient(same constructor arguments)
        .register_user(user_id: str, number_or_hash: str | bytes, settings: Settings | None = None) -> None
        .unregister_user(user_id: str) -> None
        .change_number(user_id: str, number_or_hash: str | bytes) -> None
        .import_users(users: Iterable[tuple[str, str | bytes]], batch_size: int = 5000,
                      on_progress: Callable[[int], None] | None = None,
                      timeout: float | None = None) -> ImportSummary
        .close(); context manager

Pass either ``target`` ("host:port", the client owns and closes the channel)
or ``channel`` (an existing channel, left open by :meth:`close`). ``user_id``
is sent as ``x-discovery-user-id`` metadata (the development identity of servers
in ``--auth dev`` mode), ``token`` as ``authorization: Bearer <token>``. TLS is used
when ``tls`` is true or any certificate is given. ``timeout`` is the deadline in
seconds of each unary call (``import_users`` takes its own, default none).

Failed calls raise :class:`~discovery.client.errors.DiscoveryError`. A phone
number that cannot be normalised raises
:class:`~discovery.client.normalize.InvalidNumberError` (a ``ValueError``)
in ``register_user``/``change_number``; ``discover`` and ``import_users``
report invalid entries in their results instead. ``discover`` sends the
address book in chunks of at most ``max_per_request`` hashes, one after
another. ``import_users`` calls ``on_progress(rows_processed)`` after each batch
is handed to gRPC (from gRPC's request thread). Numbers and hashes are never
logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import grpc

from discovery.client import _common
from discovery.client.address_book import prepare_address_book
from discovery.client.credentials import create_channel
from discovery.client.errors import DiscoveryError
from discovery.client.joins import joins_stub
from discovery.client.models import DiscoverResult, ImportSummary, Settings
from discovery.client.resync import DiscoverRun, HasDiscoverState
from discovery.v1 import discovery_pb2, joins_pb2

__all__ = ["AdminClient", "DiscoveryClient"]

DEFAULT_IMPORT_BATCH_SIZE = 5000


class _BaseClient(_common.ClientCore):
    channel_factory = staticmethod(create_channel)

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise DiscoveryError.from_rpc_error(exc) from None

    def close(self) -> None:
        """Close the channel if this client created it."""
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class DiscoveryClient(_BaseClient, HasDiscoverState):
    """The messenger-client API (``discovery.v1.DiscoveryService``). See the module docstring."""

    @staticmethod
    def _make_stub(channel: Any) -> Any:
        return _common.discovery_stub(channel)

    def discover(self, entries: Iterable[str]) -> DiscoverResult:
        """Which of ``entries`` (raw address-book strings) belong to registered, discoverable users."""
        book = prepare_address_book(entries, self.default_region, self.max_per_request)
        return book.result(self.discover_hashes(book.hashes))

    def discover_hashes(self, hashes: list[bytes]) -> list[tuple[int, str]]:
        """Low level: ``(index into hashes, user_id)`` for each matching 32-byte contact hash.

        Each request chunk carries its previous set and token (see :mod:`discovery.client.resync`),
        so re-syncing an unchanged address book costs no quota.
        """
        run = DiscoverRun(self.discover_state, hashes, self.max_per_request)
        try:
            for k in run:
                response: discovery_pb2.DiscoverResponse
                try:
                    response = self._unary(self._stub.Discover, run.request(k))
                except DiscoveryError as error:
                    if not (run.has_previous(k) and run.refused_previous(error)):
                        raise
                    response = self._unary(self._stub.Discover, run.request(k, with_previous=False))
                run.accept(k, response)
        finally:
            run.finish()
        return run.matches

    def get_settings(self) -> Settings:
        response: discovery_pb2.GetSettingsResponse = self._unary(
            self._stub.GetSettings, discovery_pb2.GetSettingsRequest()
        )
        return _common.settings_from_pb(response.settings)

    def update_settings(
        self,
        discoverable: bool | None = None,
        announce_join: bool | None = None,
        notify_on_join: bool | None = None,
    ) -> Settings:
        """Change the given settings (``update_mask`` = the non-None arguments); returns the new settings."""
        request = _common.update_settings_request(discoverable, announce_join, notify_on_join)
        response: discovery_pb2.UpdateSettingsResponse = self._unary(self._stub.UpdateSettings, request)
        return _common.settings_from_pb(response.settings)

    def delete_my_data(self) -> int:
        """Forget everything kept on behalf of the caller; returns the number of records removed."""
        response: discovery_pb2.DeleteMyDataResponse = self._unary(
            self._stub.DeleteMyData, discovery_pb2.DeleteMyDataRequest()
        )
        return int(response.records_deleted)

    def ack_joins(self, cursor: int, device_id: str = "") -> int:
        """Acknowledge join events up to ``cursor`` for ``device_id``; returns how many the server deleted.

        Streaming join events needs asyncio: see ``AsyncDiscoveryClient.subscribe_joins``.
        """
        response: joins_pb2.AckJoinsResponse = self._unary(
            joins_stub(self._channel).AckJoins, joins_pb2.AckJoinsRequest(cursor=cursor, device_id=device_id)
        )
        return int(response.events_deleted)


class AdminClient(_BaseClient):
    """The backend API (``discovery.v1.DirectoryAdminService``). See the module docstring."""

    @staticmethod
    def _make_stub(channel: Any) -> Any:
        return _common.admin_stub(channel)

    def register_user(
        self, user_id: str, number_or_hash: str | bytes, settings: Settings | None = None
    ) -> None:
        """Register ``user_id`` with a phone number (normalised and hashed here) or a 32-byte hash."""
        request = discovery_pb2.RegisterUserRequest(
            user_id=user_id, contact_hash=_common.to_contact_hash(number_or_hash, self.default_region)
        )
        if settings is not None:
            request.settings.CopyFrom(_common.settings_to_pb(settings))
        self._unary(self._stub.RegisterUser, request)

    def unregister_user(self, user_id: str) -> None:
        self._unary(self._stub.UnregisterUser, discovery_pb2.UnregisterUserRequest(user_id=user_id))

    def change_number(self, user_id: str, number_or_hash: str | bytes) -> None:
        request = discovery_pb2.ChangeNumberRequest(
            user_id=user_id, contact_hash=_common.to_contact_hash(number_or_hash, self.default_region)
        )
        self._unary(self._stub.ChangeNumber, request)

    def import_users(
        self,
        users: Iterable[tuple[str, str | bytes]],
        batch_size: int = DEFAULT_IMPORT_BATCH_SIZE,
        on_progress: Callable[[int], None] | None = None,
        timeout: float | None = None,
    ) -> ImportSummary:
        """Bulk-register ``(user_id, number_or_hash)`` rows over one client stream.

        Rows with an invalid number are not sent and are reported as
        ``INVALID_NUMBER`` rejections; rejection positions refer to ``users``.
        """
        batcher = _common.ImportBatcher(self.default_region, batch_size)
        failure: list[BaseException] = []

        def requests() -> Iterator[discovery_pb2.ImportUsersRequest]:
            reported = -1
            try:
                for row in users:
                    request = batcher.add(row)
                    if request is not None:
                        yield request
                        if on_progress is not None:
                            reported = batcher.processed
                            on_progress(reported)
                request = batcher.flush()
                if request is not None:
                    yield request
                if on_progress is not None and batcher.processed != reported:
                    on_progress(batcher.processed)
            except GeneratorExit:
                raise
            except BaseException as exc:  # re-raised in the caller's thread below
                failure.append(exc)
                raise

        try:
            response: discovery_pb2.ImportUsersResponse = self._stub.ImportUsers(
                requests(), timeout=timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            if failure:
                raise failure[0] from None
            raise DiscoveryError.from_rpc_error(exc) from None
        if failure:
            raise failure[0]
        return batcher.summary(response)
