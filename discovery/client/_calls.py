"""Each unary RPC of the SDK, written once for the blocking and the asyncio clients (private).

An RPC is a *plan*: a sans-IO generator that yields a :class:`Call` (a method of a
generated stub and its request), is sent the response (or has the call's
:class:`~discovery.client.errors.DiscoveryError` thrown in), and returns the result the
client hands back. The plans build requests and read responses; the clients only
drive them (:func:`start` and :func:`resume`), one with ``await``. ``discover_hashes``
is the one plan that makes several calls (a request per chunk, and a resend of a chunk
whose previous set the server refused).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from discovery.client.address_book import prepare_address_book
from discovery.client.errors import DiscoveryError
from discovery.client.models import DiscoverResult, Settings
from discovery.client.normalize import normalize_number
from discovery.client.private import KeyEpochChanged, PrivateState
from discovery.client.resync import DiscoverRun, DiscoverState
from discovery.contact_hash import HASH_SIZE, contact_hash
from discovery.v1 import discovery_pb2, errors_pb2, joins_pb2, private_pb2
from discovery.v1.discovery_pb2_grpc import DirectoryAdminServiceStub, DiscoveryServiceStub
from discovery.v1.joins_pb2_grpc import JoinNotificationServiceStub
from discovery.v1.private_pb2_grpc import PrivateDiscoveryServiceStub

if TYPE_CHECKING:
    from discovery.private_scheme import Bucket, Snapshot

T = TypeVar("T")

SETTINGS_FIELDS = (
    "discoverable",
    "announce_join",
    "notify_on_join",
    "announce_mode",
    "announce_number_change",
)
ANNOUNCE_MODES = ("OFF", "MUTUAL", "EVERYONE")

#: A unary method of a generated stub: ``method(request, timeout=..., metadata=...)`` returns
#: the response (blocking stub) or an awaitable of it (asyncio stub). grpc ships no type stubs.
UnaryMethod = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Call:
    """One call for a client to make: unary, or server-streaming (``stream``: the response is the list of
    the stream's messages)."""

    method: UnaryMethod
    request: Message
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """The result of a finished plan."""

    value: T


#: Yields calls, is sent each call's response (typed where it is received), returns the result.
Plan = Generator[Call, Any, T]


def start(plan: Plan[T]) -> Call | Done[T]:
    """The plan's first call (or its result, for a plan that needs no call)."""
    try:
        return next(plan)
    except StopIteration as done:
        return Done(done.value)


def resume(plan: Plan[T], outcome: object) -> Call | Done[T]:
    """Hand the plan the response of its last call, or the error it failed with; its next step."""
    try:
        if isinstance(outcome, DiscoveryError):
            return plan.throw(outcome)
        return plan.send(outcome)
    except StopIteration as done:
        return Done(done.value)


# ---------------------------------------------------------------------------
# request and response pieces


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
    mode = discovery_pb2.AnnounceMode.Name(pb.announce_mode).removeprefix("ANNOUNCE_MODE_")
    return Settings(
        discoverable=bool(pb.discoverable),
        announce_join=bool(pb.announce_join),
        notify_on_join=bool(pb.notify_on_join),
        announce_mode=None if mode == "UNSPECIFIED" else mode,
        announce_number_change=bool(pb.announce_number_change),
    )


def _mode_pb(mode: str) -> discovery_pb2.AnnounceMode.ValueType:
    name = str(mode).upper()
    if name not in ANNOUNCE_MODES:
        raise ValueError(f"announce_mode must be one of {', '.join(ANNOUNCE_MODES)}, not {mode!r}")
    return discovery_pb2.AnnounceMode.Value("ANNOUNCE_MODE_" + name)


def settings_to_pb(settings: Settings) -> discovery_pb2.Settings:
    """Without ``announce_mode`` the server maps announce_join (true: EVERYONE, false: OFF)."""
    message = discovery_pb2.Settings(
        discoverable=settings.discoverable,
        announce_join=settings.announce_join,
        notify_on_join=settings.notify_on_join,
        announce_number_change=settings.announce_number_change,
    )
    if settings.announce_mode is not None:
        message.announce_mode = _mode_pb(settings.announce_mode)
        message.announce_join = str(settings.announce_mode).upper() != "OFF"
    return message


def update_settings_request(
    discoverable: bool | None,
    announce_join: bool | None,
    notify_on_join: bool | None,
    announce_mode: str | None = None,
    announce_number_change: bool | None = None,
) -> discovery_pb2.UpdateSettingsRequest:
    """An UpdateSettingsRequest whose update_mask names exactly the non-None arguments."""
    values: dict[str, object] = {
        "discoverable": discoverable,
        "announce_join": announce_join,
        "notify_on_join": notify_on_join,
        "announce_mode": announce_mode,
        "announce_number_change": announce_number_change,
    }
    mask = [name for name in SETTINGS_FIELDS if values[name] is not None]
    if not mask:
        raise ValueError("update_settings needs at least one setting to change")
    settings = discovery_pb2.Settings(
        **{name: bool(values[name]) for name in mask if name != "announce_mode"}  # type: ignore[arg-type]
    )
    if announce_mode is not None:
        settings.announce_mode = _mode_pb(announce_mode)
    return discovery_pb2.UpdateSettingsRequest(settings=settings, update_mask=mask)


# ---------------------------------------------------------------------------
# DiscoveryService and JoinNotificationService.AckJoins


def discover(
    stub: DiscoveryServiceStub,
    state: DiscoverState,
    entries: Iterable[str],
    default_region: str | None,
    max_per_request: int,
) -> Plan[DiscoverResult]:
    book = prepare_address_book(entries, default_region, max_per_request)
    matches = yield from discover_hashes(stub, state, book.hashes, max_per_request)
    return book.result(matches)


def discover_hashes(
    stub: DiscoveryServiceStub, state: DiscoverState, hashes: list[bytes], max_per_request: int
) -> Plan[list[tuple[int, str]]]:
    run = DiscoverRun(state, hashes, max_per_request)
    try:
        for k in run:
            response: discovery_pb2.DiscoverResponse
            try:
                response = yield Call(stub.Discover, run.request(k))
            except DiscoveryError as error:
                if not (run.has_previous(k) and run.refused_previous(error)):
                    raise
                response = yield Call(stub.Discover, run.request(k, with_previous=False))
            run.accept(k, response)
    finally:
        run.finish()
    return run.matches


def get_settings(stub: DiscoveryServiceStub) -> Plan[Settings]:
    response: discovery_pb2.GetSettingsResponse = yield Call(
        stub.GetSettings, discovery_pb2.GetSettingsRequest()
    )
    return settings_from_pb(response.settings)


def update_settings(
    stub: DiscoveryServiceStub,
    discoverable: bool | None,
    announce_join: bool | None,
    notify_on_join: bool | None,
    announce_mode: str | None = None,
    announce_number_change: bool | None = None,
) -> Plan[Settings]:
    request = update_settings_request(
        discoverable, announce_join, notify_on_join, announce_mode, announce_number_change
    )
    response: discovery_pb2.UpdateSettingsResponse = yield Call(stub.UpdateSettings, request)
    return settings_from_pb(response.settings)


def delete_my_data(stub: DiscoveryServiceStub, disable_notify_on_join: bool = False) -> Plan[int]:
    response: discovery_pb2.DeleteMyDataResponse = yield Call(
        stub.DeleteMyData, discovery_pb2.DeleteMyDataRequest(disable_notify_on_join=disable_notify_on_join)
    )
    return int(response.records_deleted)


def export_my_data(stub: DiscoveryServiceStub) -> Plan[dict[str, Any]]:
    """The ExportMyDataResponse as JSON-ready data (proto field names; bytes in base64,
    timestamps in RFC 3339, 64-bit integers as strings, as the protobuf JSON mapping has them)."""
    response: discovery_pb2.ExportMyDataResponse = yield Call(
        stub.ExportMyData, discovery_pb2.ExportMyDataRequest()
    )
    return json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def ack_joins(stub: JoinNotificationServiceStub, cursor: int, device_id: str) -> Plan[int]:
    request = joins_pb2.AckJoinsRequest(cursor=cursor, device_id=device_id)
    response: joins_pb2.AckJoinsResponse = yield Call(stub.AckJoins, request)
    return int(response.events_deleted)


# ---------------------------------------------------------------------------
# PrivateDiscoveryService (docs/private-mode.md)

MAX_RANGES_PER_REQUEST = 1000


def private_params(
    stub: PrivateDiscoveryServiceStub, state: PrivateState
) -> Plan[private_pb2.GetPrivateParamsResponse]:
    """The server's parameters, with its key checked against the pinned one (PrivateKeyMismatch)."""
    from discovery.private_scheme import SUITE, SchemeError

    params: private_pb2.GetPrivateParamsResponse = yield Call(
        stub.GetPrivateParams, private_pb2.GetPrivateParamsRequest()
    )
    if params.suite != SUITE:
        raise SchemeError(f"unsupported private-mode suite {params.suite!r}")
    state.check_key(params.epoch, params.public_key)
    return params


def private_evaluate(
    stub: PrivateDiscoveryServiceStub,
    state: PrivateState,
    params: private_pb2.GetPrivateParamsResponse,
    hashes: list[bytes],
) -> Plan[None]:
    """Blind, evaluate, verify the proof and unblind the hashes without a cached output (none: no call)."""
    from discovery.private_scheme import blind_batch, finalize_batch

    missing = state.missing(hashes)
    cap = max(1, params.max_blinded_per_request)
    for start in range(0, len(missing), cap):
        chunk = missing[start : start + cap]
        batch = blind_batch(chunk)
        request = private_pb2.EvaluateBlindedRequest(blinded_elements=batch.blinded, epoch=params.epoch)
        response: private_pb2.EvaluateBlindedResponse = yield Call(stub.EvaluateBlinded, request)
        if response.epoch != params.epoch:
            raise KeyEpochChanged("the evaluation is of another key epoch")
        outputs = finalize_batch(batch, response.evaluated_elements, response.proof, params.public_key)
        state.evaluations += len(chunk)
        state.outputs.update(zip(chunk, outputs, strict=True))


def private_snapshot(
    stub: PrivateDiscoveryServiceStub, state: PrivateState, params: private_pb2.GetPrivateParamsResponse
) -> Plan[Snapshot]:
    """A whole new snapshot, unless the state holds one of the server's kind (sealed ids or not)."""
    from discovery.private_scheme import Snapshot

    if state.snapshot is None or bool(state.snapshot.sealed is not None) != params.snapshot_has_sealed_ids:
        chunks: list[private_pb2.GetPrivateSnapshotResponse] = yield Call(
            stub.GetPrivateSnapshot, private_pb2.GetPrivateSnapshotRequest(), stream=True
        )
        state.snapshot = Snapshot.deserialize(b"".join(c.chunk for c in chunks))
        state.opened.clear()
        if state.snapshot.epoch != params.epoch:
            state.snapshot = None
            raise KeyEpochChanged("the snapshot is of another key epoch")
    return state.snapshot


def private_sync(
    stub: PrivateDiscoveryServiceStub, state: PrivateState, params: private_pb2.GetPrivateParamsResponse
) -> Plan[Snapshot]:
    """Bring the snapshot up to the params' cursor: a delta from its cursor (tags only: 6 bytes a record
    for a large directory), after fetching a whole snapshot when there is none (a server serves a built
    snapshot for up to 30 s, so a new one may be behind too)."""
    from discovery.private_scheme import Delta, SchemeError

    snapshot = yield from private_snapshot(stub, state, params)
    if snapshot.cursor >= params.cursor:
        return snapshot
    response: private_pb2.GetPrivateDeltaResponse = yield Call(
        stub.GetPrivateDelta, private_pb2.GetPrivateDeltaRequest(epoch=snapshot.epoch, cursor=snapshot.cursor)
    )
    try:
        if response.reset:
            raise SchemeError("the server asks for a new snapshot")
        state.apply(Delta.deserialize(response.delta))
    except SchemeError:
        state.snapshot = None
        return (yield from private_snapshot(stub, state, params))
    assert state.snapshot is not None
    return state.snapshot


def private_buckets(
    stub: PrivateDiscoveryServiceStub,
    params: private_pb2.GetPrivateParamsResponse,
    ranges: list[bytes],
) -> Plan[dict[bytes, Bucket]]:
    """The bucket of each range (BUCKET_RANGE_REFUSED: the snapshot is out of date)."""
    from discovery.private_scheme import Bucket, SchemeError

    buckets: dict[bytes, Bucket] = {}
    for start in range(0, len(ranges), MAX_RANGES_PER_REQUEST):
        chunk = ranges[start : start + MAX_RANGES_PER_REQUEST]
        response: private_pb2.GetPrivateBucketsResponse = yield Call(
            stub.GetPrivateBuckets, private_pb2.GetPrivateBucketsRequest(ranges=chunk)
        )
        if len(response.buckets) != len(chunk) or len({len(raw) for raw in response.buckets}) > 1:
            raise SchemeError("the server returned the wrong number of buckets, or buckets of two sizes")
        for range_, raw in zip(chunk, response.buckets, strict=True):
            bucket = Bucket.deserialize(raw)
            if bucket.epoch != params.epoch:
                raise KeyEpochChanged("the server returned a bucket of another key epoch")
            if bucket.range != range_:
                raise SchemeError("the server returned a bucket of another range")
            buckets[range_] = bucket
    return buckets


def private_open(
    stub: PrivateDiscoveryServiceStub,
    state: PrivateState,
    params: private_pb2.GetPrivateParamsResponse,
    snapshot: Snapshot,
    outputs: list[bytes],
) -> Plan[list[list[str]]]:
    """The user ids of each output: none unless its tag is in the snapshot; then from the snapshot's sealed
    ids or from the range bucket of its tag (fetched once per range, skipped for tags opened before)."""
    from discovery.private_scheme import open_any

    tags = [state.tag_of(y) for y in outputs]
    hits = [i for i, present in enumerate(snapshot.contains(tags)) if present]
    found: list[list[str]] = [[] for _ in outputs]
    if snapshot.sealed is not None:
        for i in hits:
            found[i] = open_any(outputs[i], snapshot.epoch, snapshot.sealed_for(tags[i]), snapshot.id_pad)
        return found
    k = max(1, params.bucket_users)
    todo = {i: snapshot.bucket_range(tags[i], k) for i in hits if tags[i] not in state.opened}
    buckets = yield from private_buckets(stub, params, list(dict.fromkeys(todo.values())))
    for i, range_ in todo.items():
        state.opened[tags[i]] = tuple(buckets[range_].open(outputs[i]))
    for i in hits:
        found[i] = list(state.opened.get(tags[i], ()))
    return found


def epoch_changed(error: Exception) -> bool:
    """The error of a call answered by an instance on another key epoch than the params' (a rolling key
    switch: docs/private-mode.md, "Key epochs")."""
    if isinstance(error, DiscoveryError):
        return error.reason_is(errors_pb2.PRIVATE_EPOCH_REFUSED)
    return isinstance(error, KeyEpochChanged)


def over_epoch_change(plan: Callable[[], Plan[T]]) -> Plan[T]:
    """Run a private-mode plan; when an instance of another key epoch answers a call of it, once more from
    GetPrivateParams (the key of the new epoch is checked against the pinned ones)."""
    try:
        return (yield from plan())
    except (DiscoveryError, KeyEpochChanged) as error:
        if not epoch_changed(error):
            raise
    return (yield from plan())


def private_discover_hashes(
    stub: PrivateDiscoveryServiceStub, state: PrivateState, hashes: list[bytes]
) -> Plan[list[tuple[int, str]]]:
    """``(index into hashes, user_id)`` for each registered, discoverable contact, in private mode.

    A range the server refuses (BUCKET_RANGE_REFUSED: the snapshot is older than the server's set by more
    than a bucket's slack) brings the snapshot up to date and is asked again once; a call answered under
    another key epoch starts the sync over once."""
    return (yield from over_epoch_change(lambda: _private_discover_hashes(stub, state, hashes)))


def _private_discover_hashes(
    stub: PrivateDiscoveryServiceStub, state: PrivateState, hashes: list[bytes]
) -> Plan[list[tuple[int, str]]]:
    params = yield from private_params(stub, state)
    yield from private_evaluate(stub, state, params, hashes)
    snapshot = yield from private_sync(stub, state, params)
    outputs = [state.outputs[h] for h in hashes]
    try:
        found = yield from private_open(stub, state, params, snapshot, outputs)
    except DiscoveryError as error:
        if not error.reason_is(errors_pb2.BUCKET_RANGE_REFUSED):
            raise
        params = yield from private_params(stub, state)
        snapshot = yield from private_sync(stub, state, params)
        found = yield from private_open(stub, state, params, snapshot, outputs)
    return [(i, user_id) for i, user_ids in enumerate(found) for user_id in user_ids[:1]]


def private_joins_start(
    stub: PrivateDiscoveryServiceStub, state: PrivateState, hashes: list[bytes], cursor: int | None
) -> Plan[int]:
    """Before the join stream: evaluate the contacts and hold a snapshot (fetched only when the state has
    none), *without* bringing it up to date, so that no join is absorbed unseen. The cursor to subscribe
    from: ``cursor`` (the last event's, when the caller kept it), or the snapshot's when that is older or
    no cursor is given. No bucket is fetched. A call answered under another key epoch starts it over once."""

    def start() -> Plan[int]:
        params = yield from private_params(stub, state)
        yield from private_evaluate(stub, state, params, hashes)
        snapshot = yield from private_snapshot(stub, state, params)
        return snapshot.cursor if cursor is None else min(cursor, snapshot.cursor)

    return (yield from over_epoch_change(start))


def private_discover(
    stub: PrivateDiscoveryServiceStub, state: PrivateState, entries: Iterable[str], default_region: str | None
) -> Plan[DiscoverResult]:
    book = prepare_address_book(entries, default_region)
    matches = yield from private_discover_hashes(stub, state, book.hashes)
    return book.result(matches)


# ---------------------------------------------------------------------------
# DirectoryAdminService (ImportUsers streams: see ImportBatcher in _common)


def register_user(
    stub: DirectoryAdminServiceStub,
    user_id: str,
    number_or_hash: str | bytes,
    settings: Settings | None,
    default_region: str | None,
) -> Plan[None]:
    request = discovery_pb2.RegisterUserRequest(
        user_id=user_id, contact_hash=to_contact_hash(number_or_hash, default_region)
    )
    if settings is not None:
        request.settings.CopyFrom(settings_to_pb(settings))
    yield Call(stub.RegisterUser, request)


def unregister_user(stub: DirectoryAdminServiceStub, user_id: str) -> Plan[None]:
    yield Call(stub.UnregisterUser, discovery_pb2.UnregisterUserRequest(user_id=user_id))


def change_number(
    stub: DirectoryAdminServiceStub, user_id: str, number_or_hash: str | bytes, default_region: str | None
) -> Plan[None]:
    request = discovery_pb2.ChangeNumberRequest(
        user_id=user_id, contact_hash=to_contact_hash(number_or_hash, default_region)
    )
    yield Call(stub.ChangeNumber, request)
