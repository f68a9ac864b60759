"""Construction and import batching shared by the sync and async clients (private)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import ClassVar, Generic, TypeVar

import grpc

from discovery.client._calls import to_contact_hash
from discovery.client.address_book import DEFAULT_MAX_PER_REQUEST
from discovery.client.credentials import ChannelFactory, ChannelOptions, call_metadata
from discovery.client.models import CLIENT_INVALID_NUMBER, ImportRejection, ImportSummary
from discovery.client.normalize import InvalidNumberError, check_region
from discovery.contact_hash import HASH_SIZE
from discovery.v1 import discovery_pb2

#: Users per ImportUsers stream message, by default.
DEFAULT_IMPORT_BATCH_SIZE = 5000

StubT = TypeVar("StubT")


def check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return batch_size


class ImportBatcher:
    """Turns ``(user_id, number_or_hash)`` rows into ImportUsersRequest batches.

    Rows whose number is invalid are not sent; they become client-side
    rejections, and server positions (in the stream actually sent) are mapped
    back to positions in the caller's input. :meth:`feed` and :meth:`finish` also call
    ``on_progress(rows_processed)`` once each batch they yield has been taken.
    """

    def __init__(
        self,
        default_region: str | None,
        batch_size: int,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.default_region = default_region
        self.batch_size = check_batch_size(batch_size)
        self.on_progress = on_progress
        self.processed = 0
        self._reported = -1
        self._batch: list[discovery_pb2.ImportUser] = []
        self._skipped: list[int] = []  # input positions not sent, ascending
        self.client_rejections: list[ImportRejection] = []

    def feed(self, row: tuple[str, str | bytes]) -> Iterator[discovery_pb2.ImportUsersRequest]:
        """:meth:`add` for a stream: the full batch to send, if any, then progress."""
        request = self.add(row)
        if request is not None:
            yield request
            if self.on_progress is not None:
                self._reported = self.processed
                self.on_progress(self.processed)

    def finish(self) -> Iterator[discovery_pb2.ImportUsersRequest]:
        """The last, partial batch, if any, then the final progress if not reported yet."""
        request = self.flush()
        if request is not None:
            yield request
        if self.on_progress is not None and self.processed != self._reported:
            self.on_progress(self.processed)

    def add(self, row: tuple[str, str | bytes]) -> discovery_pb2.ImportUsersRequest | None:
        """Add one row; returns a full batch to send, or None."""
        try:
            user_id, number = row
        except (TypeError, ValueError):
            raise TypeError("import rows must be (user_id, number_or_hash) pairs") from None
        if not isinstance(user_id, str):
            raise TypeError("user_id must be a str")
        position = self.processed
        self.processed += 1
        try:
            h = to_contact_hash(number, self.default_region)
        except InvalidNumberError as exc:
            self._skip(position, user_id, str(exc.reason))
            return None
        except ValueError:
            self._skip(position, user_id, f"contact hash is not {HASH_SIZE} bytes")
            return None
        self._batch.append(discovery_pb2.ImportUser(user_id=user_id, contact_hash=h))
        if len(self._batch) >= self.batch_size:
            return self.flush()
        return None

    def _skip(self, position: int, user_id: str, detail: str) -> None:
        self._skipped.append(position)
        self.client_rejections.append(ImportRejection(position, user_id, CLIENT_INVALID_NUMBER, detail))

    def flush(self) -> discovery_pb2.ImportUsersRequest | None:
        if not self._batch:
            return None
        request = discovery_pb2.ImportUsersRequest(users=self._batch)
        self._batch = []
        return request

    def input_position(self, stream_position: int) -> int:
        """The caller's input position of the user at ``stream_position`` in the stream sent."""
        skipped = self._skipped
        k = bisect_right(skipped, stream_position)
        while True:
            k2 = bisect_right(skipped, stream_position + k)
            if k2 == k:
                return stream_position + k
            k = k2

    def summary(self, response: discovery_pb2.ImportUsersResponse) -> ImportSummary:
        rejections = [
            ImportRejection(
                position=self.input_position(int(r.position)),
                user_id=r.user_id,
                reason=_reason_name(int(r.reason)),
            )
            for r in response.rejections
        ]
        rejections.extend(self.client_rejections)
        rejections.sort(key=lambda r: r.position)
        return ImportSummary(
            imported=int(response.imported),
            unchanged=int(response.unchanged),
            rejected_total=int(response.rejected_total) + len(self.client_rejections),
            rejections=rejections,
        )


def _reason_name(value: int) -> str:
    try:
        return str(discovery_pb2.RejectionReason.Name(discovery_pb2.RejectionReason.ValueType(value)))
    except ValueError:
        return f"REJECTION_REASON_{value}"


class ClientCore(Generic[StubT]):
    """Construction shared by the sync and the asyncio clients; they differ in the channel
    factory (``grpc`` or ``grpc.aio``) and the stub."""

    channel_factory: ClassVar[ChannelFactory]

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: grpc.Channel | grpc.aio.Channel | None = None,
        user_id: str | None = None,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        default_region: str | None = None,
        max_per_request: int = DEFAULT_MAX_PER_REQUEST,
        timeout: float | None = None,
        options: ChannelOptions | None = None,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("pass exactly one of target or channel")
        if max_per_request < 1:
            raise ValueError("max_per_request must be at least 1")
        self.default_region = check_region(default_region)
        self.max_per_request = max_per_request
        self.timeout = timeout
        self._metadata = call_metadata(user_id, token)
        if channel is None:
            assert target is not None
            channel = type(self).channel_factory(
                target,
                tls=tls,
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
                options=options,
            )
            self._owns_channel = True
        else:
            self._owns_channel = False
        self._channel = channel
        self._stub: StubT = self._make_stub(channel)

    def _make_stub(self, channel: grpc.Channel) -> StubT:
        raise NotImplementedError

    @property
    def channel(self) -> grpc.Channel:
        """The underlying gRPC channel."""
        return self._channel
