"""Conversion between protobuf messages and domain types."""

from __future__ import annotations

from discovery.core.model import ImportRejectionReason, ImportReport, PrivacySettings
from discovery.v1 import discovery_pb2 as pb

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
    )


def settings_from_pb(message: pb.Settings) -> PrivacySettings:
    return PrivacySettings(
        discoverable=message.discoverable,
        announce_join=message.announce_join,
        notify_on_join=message.notify_on_join,
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
