"""Plain result types returned by the SDK.

::

    Match(entry: str, e164: str, user_id: str)
    InvalidEntry(entry: str, reason: str)
    DiscoverResult(matches: list[Match], invalid: list[InvalidEntry])
    Settings(discoverable: bool, announce_join: bool, notify_on_join: bool,
             announce_mode: str | None = None, announce_number_change: bool = False)
    ImportRejection(position: int, user_id: str, reason: str, detail: str = "")
    ImportSummary(imported: int, unchanged: int, rejected_total: int, rejections: list[ImportRejection])

``Match.entry`` and ``InvalidEntry.entry`` are the caller's original input
strings, unchanged. ``ImportRejection.reason`` is the server's
``RejectionReason`` enum name (e.g. ``"REJECTION_REASON_CONTACT_HASH_TAKEN"``)
or :data:`CLIENT_INVALID_NUMBER` for a number the SDK rejected before sending
(then ``detail`` holds the :class:`~discovery.client.normalize.InvalidReason`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLIENT_INVALID_NUMBER",
    "DiscoverResult",
    "ImportRejection",
    "ImportSummary",
    "InvalidEntry",
    "Match",
    "Settings",
]

#: ``ImportRejection.reason`` for a row whose number the SDK could not normalise (never sent).
CLIENT_INVALID_NUMBER = "INVALID_NUMBER"


@dataclass(frozen=True, slots=True)
class Match:
    """An original address-book entry that belongs to a registered, discoverable user."""

    entry: str
    e164: str
    user_id: str


@dataclass(frozen=True, slots=True)
class InvalidEntry:
    """An original address-book entry that is not a valid number, with the reason."""

    entry: str
    reason: str


@dataclass(slots=True)
class DiscoverResult:
    """Matches and invalid entries, each in input order."""

    matches: list[Match] = field(default_factory=list)
    invalid: list[InvalidEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "matches": [{"entry": m.entry, "e164": m.e164, "user_id": m.user_id} for m in self.matches],
            "invalid": [{"entry": i.entry, "reason": str(i.reason)} for i in self.invalid],
        }


@dataclass(frozen=True, slots=True)
class Settings:
    """A user's privacy settings.

    ``announce_mode`` is who is told when the user joins: ``"OFF"``, ``"MUTUAL"`` (only people
    whose number the user has) or ``"EVERYONE"``. The server always returns it; when you build
    Settings without it, the server maps ``announce_join`` (True: EVERYONE, False: OFF), as for
    clients that predate the modes. ``announce_join`` as returned is ``announce_mode != "OFF"``.
    """

    discoverable: bool
    announce_join: bool
    notify_on_join: bool
    #: Not compared (``==`` compares what clients that predate the modes compare, and
    #: announce_join already tells OFF from the others).
    announce_mode: str | None = field(default=None, compare=False)
    announce_number_change: bool = False

    def to_dict(self) -> dict[str, bool | str | None]:
        return {
            "discoverable": self.discoverable,
            "announce_join": self.announce_join,
            "notify_on_join": self.notify_on_join,
            "announce_mode": self.announce_mode,
            "announce_number_change": self.announce_number_change,
        }


@dataclass(frozen=True, slots=True)
class ImportRejection:
    """One user of an import that was not registered.

    ``position`` is the 0-based position in the caller's input (not in the stream sent).
    """

    position: int
    user_id: str
    reason: str
    detail: str = ""


@dataclass(slots=True)
class ImportSummary:
    """The outcome of :meth:`AdminClient.import_users`.

    ``rejected_total`` counts every rejection; ``rejections`` lists the server's
    reported ones (the server caps the list) plus every client-side one, by position.
    """

    imported: int = 0
    unchanged: int = 0
    rejected_total: int = 0
    rejections: list[ImportRejection] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "unchanged": self.unchanged,
            "rejected_total": self.rejected_total,
            "rejections": [
                {"position": r.position, "user_id": r.user_id, "reason": r.reason, "detail": r.detail}
                for r in self.rejections
            ],
        }
