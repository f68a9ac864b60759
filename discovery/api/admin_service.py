"""DirectoryAdminService: the backend-facing servicer (account service)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from grpc import aio

from discovery.api.auth import DIRECTORY_WRITE_SCOPE, current_principal, require_scope
from discovery.api.convert import import_batch_from_pb, import_report_to_pb, settings_from_pb
from discovery.core.directory import Directory, ImportBatch
from discovery.core.model import ImportReport
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc


class DirectoryAdminService(pb_grpc.DirectoryAdminServiceServicer):
    def __init__(self, directory: Directory) -> None:
        self._directory = directory

    async def RegisterUser(
        self, request: pb.RegisterUserRequest, context: aio.ServicerContext
    ) -> pb.RegisterUserResponse:
        require_scope(current_principal(), DIRECTORY_WRITE_SCOPE)
        settings = settings_from_pb(request.settings) if request.HasField("settings") else None
        await self._directory.register(request.user_id, request.contact_hash, settings)
        return pb.RegisterUserResponse()

    async def UnregisterUser(
        self, request: pb.UnregisterUserRequest, context: aio.ServicerContext
    ) -> pb.UnregisterUserResponse:
        require_scope(current_principal(), DIRECTORY_WRITE_SCOPE)
        await self._directory.unregister(request.user_id)
        return pb.UnregisterUserResponse()

    async def ChangeNumber(
        self, request: pb.ChangeNumberRequest, context: aio.ServicerContext
    ) -> pb.ChangeNumberResponse:
        require_scope(current_principal(), DIRECTORY_WRITE_SCOPE)
        await self._directory.change_number(request.user_id, request.contact_hash)
        return pb.ChangeNumberResponse()

    async def ImportUsers(
        self, request_iterator: AsyncIterator[pb.ImportUsersRequest], context: aio.ServicerContext
    ) -> pb.ImportUsersResponse:
        """Each streamed message is validated and imported as if alone, in order: a rejected user
        never blocks the others. Consecutive messages of up to ``import_transaction_users`` in
        all commit in one transaction; the response comes after the last commit, so what it
        reports imported is durable (a stream that breaks off may leave its last messages out,
        and a retried import brings them in: users already there are ``unchanged``). A message
        of more than ``max_import_batch`` users fails the call (IMPORT_BATCH_TOO_LARGE) before any
        of its users is imported; the messages before it are committed first and stay imported.

        While one transaction is written, the next messages are received and prepared (screened,
        keyed): the store and this process work at the same time. Transactions are written one
        after the other, in stream order."""
        require_scope(current_principal(), DIRECTORY_WRITE_SCOPE)
        directory = self._directory
        limits = directory.limits
        total = ImportReport()
        position = 0
        group: list[ImportBatch] = []
        grouped = 0
        writing: asyncio.Future[list[ImportReport]] | None = None

        async def settle() -> None:
            """Wait for the transaction being written and count its reports."""
            nonlocal writing
            if writing is not None:
                done, writing = writing, None
                for report in await done:
                    total.add(report, limits.max_reported_rejections)

        async def commit() -> None:
            """Prepare the messages received so far, then write them after the transaction before."""
            nonlocal grouped, writing
            prepared = await directory.prepare_import(list(group))
            group.clear()
            grouped = 0
            await settle()
            writing = asyncio.ensure_future(directory.write_import(prepared))

        try:
            async for message in request_iterator:
                batch = import_batch_from_pb(message, position)
                if len(batch) > limits.max_import_batch:
                    if group:
                        await commit()
                    await settle()  # the messages before it stay imported
                    directory.check_import_batch(batch)
                group.append(batch)
                position += len(batch)
                grouped += len(batch)
                if grouped >= limits.import_transaction_users:
                    await commit()
            if group:
                await commit()
            await settle()
        except BaseException as error:
            if writing is not None:
                # A transaction was being written: it still commits when the call failed (a bad
                # message after it), and is stopped when the call was cancelled.
                if isinstance(error, asyncio.CancelledError):
                    writing.cancel()
                with contextlib.suppress(Exception):  # the call's own error is the one to report
                    await writing
            raise
        return import_report_to_pb(total)
