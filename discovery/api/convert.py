"""Conversion between protobuf messages and domain types."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from discovery.core.directory import ImportBatch
from discovery.core.errors import InvalidArgument
from discovery.core.model import (
    SETTING_NAMES,
    AnnounceMode,
    ImportRejectionReason,
    ImportReport,
    MyData,
    PrivacySettings,
)
from discovery.v1 import discovery_pb2 as pb

EXPORT_FORMAT = "discovery.v1.export/1"

_MODE_TO_PB = {
    AnnounceMode.OFF: pb.ANNOUNCE_MODE_OFF,
    AnnounceMode.MUTUAL: pb.ANNOUNCE_MODE_MUTUAL,
    AnnounceMode.EVERYONE: pb.ANNOUNCE_MODE_EVERYONE,
}
_MODE_FROM_PB = {v: k for k, v in _MODE_TO_PB.items()}
#: The wire names of update_mask: the domain's, and the old ``announce_join``.
WIRE_SETTING_NAMES = (*SETTING_NAMES, "announce_join")

REJECTION_REASONS = {
    ImportRejectionReason.INVALID_USER_ID: pb.REJECTION_REASON_INVALID_USER_ID,
    ImportRejectionReason.INVALID_CONTACT_HASH: pb.REJECTION_REASON_INVALID_CONTACT_HASH,
    ImportRejectionReason.CONTACT_HASH_TAKEN: pb.REJECTION_REASON_CONTACT_HASH_TAKEN,
    ImportRejectionReason.USER_ID_TAKEN: pb.REJECTION_REASON_USER_ID_TAKEN,
    ImportRejectionReason.DUPLICATE_IN_IMPORT: pb.REJECTION_REASON_DUPLICATE_IN_IMPORT,
}


def settings_to_pb(settings: PrivacySettings) -> pb.Settings:
    return pb.Settings(
        discoverable=settings.discoverable,
        announce_join=settings.announce_join,
        notify_on_join=settings.notify_on_join,
        announce_mode=_MODE_TO_PB[settings.announce_mode],
        announce_number_change=settings.announce_number_change,
    )


def _announce_mode(message: pb.Settings, field: str, uses_mode: bool, uses_bool: bool) -> AnnounceMode:
    """The mode a request asks for: announce_mode when set, else the old announce_join
    (true: EVERYONE, false: OFF). Both set must agree."""
    old = AnnounceMode.EVERYONE if message.announce_join else AnnounceMode.OFF
    if message.announce_mode == pb.ANNOUNCE_MODE_UNSPECIFIED:
        if uses_mode and not uses_bool:
            raise InvalidArgument.field(
                f"{field}.announce_mode",
                "must be ANNOUNCE_MODE_OFF, _MUTUAL or _EVERYONE when named in update_mask",
            )
        return old
    mode = _MODE_FROM_PB.get(message.announce_mode)
    if mode is None:
        raise InvalidArgument.field(
            f"{field}.announce_mode", f"unknown announce mode {message.announce_mode}"
        )
    if uses_bool and message.announce_join != (mode is not AnnounceMode.OFF):
        raise InvalidArgument.field(
            f"{field}.announce_join",
            "contradicts announce_mode (announce_join is true for every mode but OFF)",
        )
    return mode


def settings_from_pb(message: pb.Settings, field: str = "settings") -> PrivacySettings:
    """Whole settings (registration): every field applies."""
    return PrivacySettings(
        discoverable=message.discoverable,
        announce_mode=_announce_mode(message, field, False, message.announce_join),
        notify_on_join=message.notify_on_join,
        announce_number_change=message.announce_number_change,
    )


def settings_update_from_pb(message: pb.Settings, mask: list[str]) -> tuple[PrivacySettings, list[str]]:
    """The settings and the domain's mask of an UpdateSettings request.

    The old name ``announce_join`` in the mask means announce_mode (see settings.proto
    comments); names the wire does not know are passed on for the domain to refuse.
    """
    names = mask or list(WIRE_SETTING_NAMES)
    uses_mode, uses_bool = "announce_mode" in names, "announce_join" in names
    if not mask:
        uses_bool = message.announce_mode == pb.ANNOUNCE_MODE_UNSPECIFIED or message.announce_join
    mode = AnnounceMode.OFF
    if uses_mode or uses_bool:
        mode = _announce_mode(message, "settings", uses_mode, uses_bool)
    domain_mask = list(dict.fromkeys("announce_mode" if n == "announce_join" else n for n in mask))
    settings = PrivacySettings(
        discoverable=message.discoverable,
        announce_mode=mode,
        notify_on_join=message.notify_on_join,
        announce_number_change=message.announce_number_change,
    )
    return settings, domain_mask


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def export_to_pb(data: MyData) -> pb.ExportMyDataResponse:
    response = pb.ExportMyDataResponse(
        format=EXPORT_FORMAT,
        user_id=data.user_id,
        registered=data.settings is not None,
        watch_count=data.watches.count,
        pending_events=[
            pb.ExportedJoinEvent(
                cursor=e.cursor,
                user_id=e.user_id,
                contact_hash_prefix=e.contact_prefix,
                joined_at=_timestamp(e.joined_at),
                pending_release=e.joined_at > data.exported_at,
            )
            for e in data.events
        ],
        devices=[
            pb.ExportedDevice(device_id=d.device_id, acked_cursor=d.acked, last_seen=_timestamp(d.seen))
            for d in data.devices
        ],
        quotas=[pb.ExportedQuota(name=q.name, level=q.level, capacity=q.capacity) for q in data.quotas],
        exported_at=_timestamp(data.exported_at),
    )
    if data.settings is not None:
        response.settings.CopyFrom(settings_to_pb(data.settings))
    if data.watches.count:
        response.watches_expire_first.CopyFrom(_timestamp(data.watches.first_expiry))
        response.watches_expire_last.CopyFrom(_timestamp(data.watches.last_expiry))
    return response


def import_batch_from_pb(message: pb.ImportUsersRequest, first_position: int) -> ImportBatch:
    """One message's users column by column: a pass per field costs less than an object per user."""
    users = message.users
    own = [u.HasField("settings") for u in users]
    return ImportBatch(
        [u.user_id for u in users],
        [u.contact_hash for u in users],
        [settings_from_pb(u.settings) if has else None for u, has in zip(users, own, strict=True)]
        if any(own)
        else None,
        first_position,
    )


def import_report_to_pb(report: ImportReport) -> pb.ImportUsersResponse:
    return pb.ImportUsersResponse(
        imported=report.imported,
        unchanged=report.unchanged,
        rejected_total=report.rejected_total,
        rejections=[
            pb.ImportRejection(position=r.position, user_id=r.user_id, reason=REJECTION_REASONS[r.reason])
            for r in report.rejections
        ],
    )
