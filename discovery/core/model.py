"""Domain value types shared by core, store and api."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from discovery.core.options import option


@dataclass(frozen=True, slots=True)
class PrivacySettings:
    """A user's privacy settings."""

    # As options, the defaults of a new user (ServerConfig.defaults).
    discoverable: bool = option(True, "initial 'discoverable' of a new user", name="default_discoverable")
    announce_join: bool = option(True, "initial 'announce_join' of a new user", name="default_announce_join")
    notify_on_join: bool = option(
        False, "initial 'notify_on_join' of a new user (opt-in)", name="default_notify_on_join"
    )

    def merged(
        self,
        discoverable: bool | None = None,
        announce_join: bool | None = None,
        notify_on_join: bool | None = None,
    ) -> PrivacySettings:
        return PrivacySettings(
            discoverable=self.discoverable if discoverable is None else discoverable,
            announce_join=self.announce_join if announce_join is None else announce_join,
            notify_on_join=self.notify_on_join if notify_on_join is None else notify_on_join,
        )


SETTING_NAMES = ("discoverable", "announce_join", "notify_on_join")


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A registered user, as the registry keeps it: no number, only the directory key."""

    user_id: str
    directory_key: bytes
    settings: PrivacySettings


@dataclass(frozen=True, slots=True)
class RegistryChange:
    """One entry of the registry change feed that keeps every index fresh.

    ``user_id is None`` means the directory key was removed from the registry.
    """

    seq: int
    directory_key: bytes
    user_id: str | None
    discoverable: bool


@dataclass(slots=True)
class RegistrySlice:
    """A batch of the registry for loading an index: n packed keys and their owners."""

    keys: bytes
    user_ids: list[str]
    discoverable: npt.NDArray[np.bool_]


class RegisterOutcome(enum.Enum):
    CREATED = "created"
    UNCHANGED = "unchanged"


class ImportRejectionReason(enum.Enum):
    INVALID_USER_ID = "invalid_user_id"
    INVALID_CONTACT_HASH = "invalid_contact_hash"
    CONTACT_HASH_TAKEN = "contact_hash_taken"
    USER_ID_TAKEN = "user_id_taken"
    DUPLICATE_IN_IMPORT = "duplicate_in_import"


@dataclass(frozen=True, slots=True)
class NewUser:
    """A user to register: the directory key is already derived."""

    user_id: str
    directory_key: bytes
    settings: PrivacySettings


@dataclass(frozen=True, slots=True)
class RejectedUser:
    position: int
    user_id: str
    reason: ImportRejectionReason


@dataclass(slots=True)
class ImportReport:
    imported: int = 0
    unchanged: int = 0
    rejected_total: int = 0
    rejections: list[RejectedUser] = field(default_factory=list)

    def add(self, other: ImportReport, max_rejections: int) -> None:
        self.imported += other.imported
        self.unchanged += other.unchanged
        self.rejected_total += other.rejected_total
        room = max(0, max_rejections - len(self.rejections))
        self.rejections.extend(other.rejections[:room])


@dataclass(frozen=True, slots=True)
class DirectoryMatch:
    """Positions in the request (ascending) and the matched user ids, in the same order.

    ``token`` proves the request's contact set on the caller's next request (see core/quota.py);
    empty when no quota is enforced.
    """

    positions: list[int]
    user_ids: list[str]
    token: bytes = b""
    checked: int = 0  # how many contact hashes the request held


@dataclass(frozen=True, slots=True)
class BucketCharge:
    """One charge to a leaky bucket: add ``cost`` if it fits under ``capacity`` (see
    core.ports.QuotaStore.charge)."""

    bucket: str
    cost: float
    capacity: float
    leak_per_second: float


@dataclass(frozen=True, slots=True)
class QuotaCharge:
    """The outcome of charging a leaky bucket (see core.ports.QuotaStore.charge).

    ``level`` is the bucket's content after the call; ``retry_after`` is how many seconds
    until the refused cost would fit (0 when allowed, ``inf`` when it never fits).
    """

    allowed: bool
    level: float
    retry_after: float


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """A stored join notification (see core.ports.JoinStore).

    It names the contact only by the joiner's directory key; the contact-hash prefix the
    watcher matches is recovered from it when the entry is delivered, never stored.
    """

    cursor: int
    event_id: str
    joiner: str
    directory_key: bytes
    joined_at: float


@dataclass(frozen=True, slots=True)
class InboxEpoch:
    """One history of inbox cursors (see core.ports.JoinStore.inbox_epochs).

    A store starts a new epoch whenever its history of cursors may have lost its tail (a
    promoted replica, a restart, a restored file); ``base`` is the newest cursor it held then,
    so cursors up to ``base`` mean the same events in this epoch as in the one before.
    """

    epoch: int
    base: int
