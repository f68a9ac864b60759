"""Transport-independent pieces shared by the sync and async clients (private)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from discovery.client.address_book import DEFAULT_MAX_PER_REQUEST, pack_chunks
from discovery.client.credentials import call_metadata
from discovery.client.models import CLIENT_INVALID_NUMBER, ImportRejection, ImportSummary, Settings
from discovery.client.normalize import InvalidNumberError, check_region, normalize_number
from discovery.contact_hash import HASH_SIZE, contact_hash
from discovery.v1 import discovery_pb2, discovery_pb2_grpc

ProgressCallback = Callable[[int], None]

SETTINGS_FIELDS = ("discoverable", "announce_join", "notify_on_join")


def to_contact_hash(number_or_hash: str | bytes, default_region: str | None) -> bytes:
    """A 32-byte hash as-is, or the contact hash of a number normalised client side.

    Raises :class:`InvalidNumberError` for an invalid number, ``ValueError`` for bytes of the wrong length.
    """
    if isinstance(number_or_hash, bytes | bytearray | memoryview):
        data = bytes(number_or_hash)
        if len(data) != HASH_SIZE:
            raise ValueError(f"a contact hash must be {HASH_SIZE} bytes")
        return data
    if not isinstance(number_or_hash, str):
        raise TypeError("number_or_hash must be a str (phone number) or 32 bytes (contact hash)")
    return contact_hash(normalize_number(number_or_hash, default_region))


def settings_from_pb(pb: discovery_pb2.Settings) -> Settings:
    return Settings(
        discoverable=bool(pb.discoverable),
        announce_join=bool(pb.announce_join),
        notify_on_join=bool(pb.notify_on_join),
    )


def settings_to_pb(settings: Settings) -> discovery_pb2.Settings:
    return discovery_pb2.Settings(
        discoverable=settings.discoverable,
        announce_join=settings.announce_join,
        notify_on_join=settings.notify_on_join,
    )


def update_settings_request(
    discoverable: bool | None, announce_join: bool | None, notify_on_join: bool | None
) -> discovery_pb2.UpdateSettingsRequest:
    """An UpdateSettingsRequest whose update_mask names exactly the non-None arguments."""
    values = {"discoverable": discoverable, "announce_join": announce_join, "notify_on_join": notify_on_join}
    mask = [name for name in SETTINGS_FIELDS if values[name] is not None]
    if not mask:
        raise ValueError("update_settings needs at least one setting to change")
    settings = discovery_pb2.Settings(**{name: bool(values[name]) for name in mask})
    return discovery_pb2.UpdateSettingsRequest(settings=settings, update_mask=mask)


def discovery_stub(channel: Any) -> Any:
    """A ``DiscoveryServiceStub`` (the generated gRPC code is untyped)."""
    factory: Any = discovery_pb2_grpc.DiscoveryServiceStub
    return factory(channel)


def admin_stub(channel: Any) -> Any:
    """A ``DirectoryAdminServiceStub`` (the generated gRPC code is untyped)."""
    factory: Any = discovery_pb2_grpc.DirectoryAdminServiceStub
    return factory(channel)


def discover_requests(
    hashes: list[bytes], max_per_request: int
) -> list[tuple[int, discovery_pb2.DiscoverRequest]]:
    return [
        (offset, discovery_pb2.DiscoverRequest(contact_hashes=packed))
        for offset, packed in pack_chunks(hashes, max_per_request)
    ]


def discover_matches(
    offset: int, count: int, response: discovery_pb2.DiscoverResponse
) -> list[tuple[int, str]]:
    """``(offset + index, user_id)`` pairs from one response, checked against the request size."""
    indices = list(response.match_indices)
    user_ids = list(response.match_user_ids)
    if len(indices) != len(user_ids):
        raise ValueError("malformed DiscoverResponse: match_indices and match_user_ids differ in length")
    out: list[tuple[int, str]] = []
    for index, user_id in zip(indices, user_ids, strict=True):
        if index >= count:
            raise ValueError("malformed DiscoverResponse: match index out of range")
        out.append((offset + index, user_id))
    return out


def check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return batch_size


class ImportBatcher:
    """Turns ``(user_id, number_or_hash)`` rows into ImportUsersRequest batches.

    Rows whose number is invalid are not sent; they become client-side
    rejections, and server positions (in the stream actually sent) are mapped
    back to positions in the caller's input.
    """

    def __init__(self, default_region: str | None, batch_size: int) -> None:
        self.default_region = default_region
        self.batch_size = check_batch_size(batch_size)
        self.processed = 0
        self._batch: list[discovery_pb2.ImportUser] = []
        self._skipped: list[int] = []  # input positions not sent, ascending
        self.client_rejections: list[ImportRejection] = []

    def add(self, row: Any) -> discovery_pb2.ImportUsersRequest | None:
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


class ClientCore:
    """Construction shared by the sync and the asyncio clients; they differ in the channel
    factory (``grpc`` or ``grpc.aio``) and the stub."""

    channel_factory: ClassVar[Callable[..., Any]]

    def __init__(
        self,
        target: str | None = None,
        *,
        channel: Any = None,
        user_id: str | None = None,
        token: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        default_region: str | None = None,
        max_per_request: int = DEFAULT_MAX_PER_REQUEST,
        timeout: float | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        if (target is None) == (channel is None):
            raise ValueError("pass exactly one of target or channel")
        if max_per_request < 1:
            raise ValueError("max_per_request must be at least 1")
        self.default_region = check_region(default_region)
        self.max_per_request = max_per_request
        self.timeout = timeout
        self._metadata = call_metadata(user_id, token)
        if channel is not None:
            self._channel = channel
            self._owns_channel = False
        else:
            self._channel = type(self).channel_factory(
                target,
                tls=tls,
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
                options=options,
            )
            self._owns_channel = True
        self._stub: Any = self._make_stub(self._channel)

    @staticmethod
    def _make_stub(channel: Any) -> Any:
        raise NotImplementedError

    @property
    def channel(self) -> Any:
        """The underlying gRPC channel."""
        return self._channel
