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
from typing import Any, Generic, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from discovery.client.address_book import prepare_address_book
from discovery.client.errors import DiscoveryError
from discovery.client.models import DiscoverResult, Settings
from discovery.client.normalize import normalize_number
from discovery.client.resync import DiscoverRun, DiscoverState
from discovery.contact_hash import HASH_SIZE, contact_hash
from discovery.v1 import discovery_pb2, joins_pb2
from discovery.v1.discovery_pb2_grpc import DirectoryAdminServiceStub, DiscoveryServiceStub
from discovery.v1.joins_pb2_grpc import JoinNotificationServiceStub

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
    """One unary call for a client to make."""

    method: UnaryMethod
    request: Message


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
