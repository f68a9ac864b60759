"""Blocking clients over a ``grpc.Channel``: :class:`DiscoveryClient` (messenger clients) and
:class:`AdminClient` (backend services).

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

Each RPC's request and response handling is written once, in :mod:`discovery.client._calls`;
this module and :mod:`discovery.client.async_client` only drive it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from discovery.client import _calls, _common
from discovery.client.credentials import create_channel
from discovery.client.errors import DiscoveryError
from discovery.client.models import DiscoverResult, ImportSummary, Settings
from discovery.client.private import HasPrivateState
from discovery.client.resync import HasDiscoverState
from discovery.v1 import discovery_pb2
from discovery.v1.discovery_pb2_grpc import DirectoryAdminServiceStub, DiscoveryServiceStub
from discovery.v1.joins_pb2_grpc import JoinNotificationServiceStub
from discovery.v1.private_pb2_grpc import PrivateDiscoveryServiceStub

__all__ = ["AdminClient", "DiscoveryClient"]

DEFAULT_IMPORT_BATCH_SIZE = _common.DEFAULT_IMPORT_BATCH_SIZE

T = TypeVar("T")
StubT = TypeVar("StubT", DiscoveryServiceStub, DirectoryAdminServiceStub)


class _BaseClient(_common.ClientCore[StubT]):
    channel_factory = staticmethod(create_channel)

    def _run(self, plan: _calls.Plan[T]) -> T:
        """Make the plan's calls one after another; its result."""
        with closing(plan):
            step = _calls.start(plan)
            while isinstance(step, _calls.Call):
                step = _calls.resume(plan, self._attempt(step))
            return step.value

    def _attempt(self, call: _calls.Call) -> object:
        """The call's response, or the :class:`DiscoveryError` it failed with."""
        try:
            response: object = call.method(call.request, timeout=self.timeout, metadata=self._metadata)
            if call.stream:
                response = list(response)  # type: ignore[call-overload]
        except grpc.RpcError as exc:
            return DiscoveryError.from_rpc_error(exc)
        return response

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


class DiscoveryClient(_BaseClient[DiscoveryServiceStub], HasDiscoverState, HasPrivateState):
    """The messenger-client API (``discovery.v1.DiscoveryService``). See the module docstring."""

    def _make_stub(self, channel: grpc.Channel) -> DiscoveryServiceStub:
        return DiscoveryServiceStub(channel)

    def discover(self, entries: Iterable[str]) -> DiscoverResult:
        """Which of ``entries`` (raw address-book strings) belong to registered, discoverable users."""
        return self._run(
            _calls.discover(
                self._stub, self.discover_state, entries, self.default_region, self.max_per_request
            )
        )

    def discover_hashes(self, hashes: list[bytes]) -> list[tuple[int, str]]:
        """Low level: ``(index into hashes, user_id)`` for each matching 32-byte contact hash.

        Each request chunk carries its previous set and token (see :mod:`discovery.client.resync`),
        so re-syncing an unchanged address book costs no quota.
        """
        return self._run(
            _calls.discover_hashes(self._stub, self.discover_state, hashes, self.max_per_request)
        )

    def discover_private(self, entries: Iterable[str]) -> DiscoverResult:
        """As :meth:`discover`, in private mode (docs/private-mode.md): the server learns nothing about
        unmatched contacts. Outputs are cached in :attr:`private_state`, so an unchanged book re-syncs
        without evaluating anything. Raises ``ProofError`` (or ``PrivateKeyMismatch``) for a forged proof
        or a key other than the pinned one."""
        return self._run(
            _calls.private_discover(
                PrivateDiscoveryServiceStub(self._channel), self.private_state, entries, self.default_region
            )
        )

    def discover_hashes_private(self, hashes: list[bytes]) -> list[tuple[int, str]]:
        """Low level: :meth:`discover_hashes` in private mode."""
        return self._run(
            _calls.private_discover_hashes(
                PrivateDiscoveryServiceStub(self._channel), self.private_state, hashes
            )
        )

    def get_settings(self) -> Settings:
        """The caller's privacy settings."""
        return self._run(_calls.get_settings(self._stub))

    def update_settings(
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
        return self._run(
            _calls.update_settings(
                self._stub, discoverable, announce_join, notify_on_join, announce_mode, announce_number_change
            )
        )

    def delete_my_data(self, *, disable_notify_on_join: bool = False) -> int:
        """Forget the watches, join events and devices kept on behalf of the caller; returns the
        number of records removed. The registration, settings and quota levels stay (see docs/joins.md,
        "Your data"). ``disable_notify_on_join`` also turns join notifications off in the same
        call, so that the next Discover stores no watches again."""
        return self._run(_calls.delete_my_data(self._stub, disable_notify_on_join))

    def export_my_data(self) -> dict[str, Any]:
        """Everything the service keeps on behalf of the caller (ExportMyData), as JSON-ready
        data in the protobuf JSON mapping of ``ExportMyDataResponse`` (see docs/joins.md, "Your data")."""
        return self._run(_calls.export_my_data(self._stub))

    def ack_joins(self, cursor: int, device_id: str = "") -> int:
        """Acknowledge join events up to ``cursor`` for ``device_id``; returns how many the server deleted.

        Streaming join events needs asyncio: see ``AsyncDiscoveryClient.subscribe_joins``.
        """
        return self._run(_calls.ack_joins(JoinNotificationServiceStub(self._channel), cursor, device_id))


class AdminClient(_BaseClient[DirectoryAdminServiceStub]):
    """The backend API (``discovery.v1.DirectoryAdminService``). See the module docstring."""

    def _make_stub(self, channel: grpc.Channel) -> DirectoryAdminServiceStub:
        return DirectoryAdminServiceStub(channel)

    def register_user(
        self, user_id: str, number_or_hash: str | bytes, settings: Settings | None = None
    ) -> None:
        """Register ``user_id`` with a phone number (normalised and hashed here) or a 32-byte hash."""
        self._run(_calls.register_user(self._stub, user_id, number_or_hash, settings, self.default_region))

    def unregister_user(self, user_id: str) -> None:
        """Remove every record that names ``user_id``."""
        self._run(_calls.unregister_user(self._stub, user_id))

    def change_number(self, user_id: str, number_or_hash: str | bytes) -> None:
        """Move ``user_id`` to a new phone number (normalised and hashed here) or 32-byte hash."""
        self._run(_calls.change_number(self._stub, user_id, number_or_hash, self.default_region))

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
        batcher = _common.ImportBatcher(self.default_region, batch_size, on_progress)
        failure: list[BaseException] = []

        def requests() -> Iterator[discovery_pb2.ImportUsersRequest]:
            try:
                for row in users:
                    yield from batcher.feed(row)
                yield from batcher.finish()
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
