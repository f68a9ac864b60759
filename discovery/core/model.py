"""Domain value types shared by core, store and api."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from discovery.core.options import option
from discovery.index.packed import unpack_strings


class AnnounceMode(enum.IntEnum):
    """Who is told when a user joins. The values are what the stores keep (0 and 1 are the
    old ``announce_join`` false and true, so rows written before the modes read the same)."""

    OFF = 0
    EVERYONE = 1
    MUTUAL = 2

    def __str__(self) -> str:
        """The name an option or a flag takes: off, mutual or everyone."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class PrivacySettings:
    """A user's privacy settings."""

    # As options, the defaults of a new user (ServerConfig.defaults).
    discoverable: bool = option(True, "initial 'discoverable' of a new user", name="default_discoverable")
    announce_mode: AnnounceMode = option(
        AnnounceMode.MUTUAL,
        "who is told when a new user joins: off, mutual (only people they have) or everyone",
        name="default_announce_mode",
    )
    notify_on_join: bool = option(
        False, "initial 'notify_on_join' of a new user (opt-in)", name="default_notify_on_join"
    )
    announce_number_change: bool = option(
        False,
        "initial 'announce_number_change' of a new user (a number change announces)",
        name="default_announce_number_change",
    )

    @property
    def announce_join(self) -> bool:
        """The old boolean: anyone may be told (every mode but OFF)."""
        return self.announce_mode is not AnnounceMode.OFF

    def merged(self, **changes: object) -> PrivacySettings:
        """These settings with the named fields (of SETTING_NAMES) replaced; None keeps a field."""
        values = {name: getattr(self, name) for name in SETTING_NAMES}
        values.update({name: value for name, value in changes.items() if value is not None})
        return PrivacySettings(**values)

    @property
    def announce_code(self) -> int:
        """The stored form of the announce settings: the mode in bits 0-1, number change in bit 2."""
        return int(self.announce_mode) | self.announce_number_change << 2

    @staticmethod
    def announce_fields(code: int) -> tuple[AnnounceMode, bool]:
        """(announce_mode, announce_number_change) of a stored announce code."""
        return AnnounceMode(code & 3), bool(code & 4)


SETTING_NAMES = ("discoverable", "announce_mode", "notify_on_join", "announce_number_change")


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A registered user, as the registry keeps it: no number, only the directory key."""

    user_id: str
    directory_key: bytes
    settings: PrivacySettings


class RegistryChange(NamedTuple):
    """One entry of the registry change feed that keeps every index fresh (a tuple: the index
    reads one back per imported user).

    ``user_id is None`` means the directory key was removed from the registry.
    """

    seq: int
    directory_key: bytes
    user_id: str | None
    discoverable: bool
    #: The user's private-mode entry (its records of each key epoch, see core/private.py), when it has
    #: one: it is in the private set after this change if ``user_id`` is set and ``discoverable``.
    private: bytes | None = None


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


class Announcement(NamedTuple):
    """What the store needs to announce a user's join, made by the domain (core/joins.py).

    ``watch_tag`` is the keyed hash under which watches on the user's directory key are kept;
    ``joiner_tag`` a keyed hash of the user id that marks the events naming the user (so they
    can be deleted with the user); ``notice`` the sealed (joiner id, directory key) every event
    carries; ``delay`` how many seconds after the join the events become deliverable.
    """

    watch_tag: bytes
    joiner_tag: bytes
    notice: bytes
    delay: float = 0.0


class NewUser(NamedTuple):
    """A user to register: the directory key is already derived. Like :class:`Announcement`, a
    tuple: a bulk import makes one of each per user, and a frozen dataclass costs about three
    times as much to build (``object.__setattr__`` per field)."""

    user_id: str
    directory_key: bytes
    settings: PrivacySettings
    announcement: Announcement
    #: The private-mode entry (a record, tag and sealed id, of each key epoch written; no h, no y);
    #: None when private mode is off.
    private: bytes | None = None


class PrivateRefill(NamedTuple):
    """A registered user's private-mode entry to replace (a key rotation fills in an epoch's records)."""

    user_id: str
    #: The entry the store must still hold for the user (None: it holds none), as read before.
    stored: bytes | None
    private: bytes
    #: Whether the feed carries the change (the served epoch's record changed): otherwise the instances'
    #: sets, built from the served records, are unaffected, and no feed entry is written.
    announce: bool


@dataclass(frozen=True, slots=True)
class ImportGroup:
    """Users to import, column by column: one object per batch instead of a NewUser and an
    Announcement per user (``directory_keys`` and ``watch_tags`` packed, 16 bytes per user).

    ``announce(positions)`` makes the announcements of the users at these positions. A store
    asks for them only for the users whose watch tag somebody watches: sealing a notice is
    most of an announcement's cost, and most imported users are watched by nobody. It may be
    called on any thread. ``distinct``: no user id or directory key occurs twice (the domain
    screened them), so the users' outcomes do not depend on the order a store applies them in.
    """

    user_ids: Sequence[str]
    directory_keys: bytes
    settings: Sequence[PrivacySettings]
    watch_tags: bytes
    announce: Callable[[Sequence[int]], list[Announcement]]
    #: Each user's private-mode entry (opaque bytes); None when private mode is off.
    private: Sequence[bytes | None] | None = None
    distinct: bool = False

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def of(cls, users: Sequence[NewUser]) -> ImportGroup:
        """The group of users whose announcements are made already."""
        return cls(
            [u.user_id for u in users],
            b"".join(u.directory_key for u in users),
            [u.settings for u in users],
            b"".join(u.announcement.watch_tag for u in users),
            lambda positions: [users[i].announcement for i in positions],
            [u.private for u in users] if any(u.private is not None for u in users) else None,
        )


@dataclass(frozen=True, slots=True)
class RejectedUser:
    position: int
    user_id: str
    reason: ImportRejectionReason


class FeedRun(NamedTuple):
    """Feed entries a bulk import appended, columnar: seqs ``first`` to ``first + n - 1``, each
    naming a user (``directory_keys`` packed, 16 bytes each). The importing instance's index
    applies them as written (IndexSync.apply_written) instead of reading them back."""

    first: int
    directory_keys: bytes
    user_ids: list[str]
    discoverable: list[bool]


@dataclass(slots=True)
class ImportReport:
    imported: int = 0
    unchanged: int = 0
    rejected_total: int = 0
    rejections: list[RejectedUser] = field(default_factory=list)
    #: The feed entries the store appended for the users imported (a store may leave it empty:
    #: the index then reads them from the feed).
    feed: list[FeedRun] = field(default_factory=list)

    def add(self, other: ImportReport, max_rejections: int) -> None:
        self.imported += other.imported
        self.unchanged += other.unchanged
        self.rejected_total += other.rejected_total
        room = max(0, max_rejections - len(self.rejections))
        self.rejections.extend(other.rejections[:room])


@dataclass(frozen=True, slots=True)
class DirectoryMatch:
    """The matches of one Discover: positions in the request (ascending) and the matched user
    ids, in the same order, packed as ``index/packed.py`` describes (``id_prefix`` before
    each id) so that a transport frames them without an object per match.

    ``token`` proves the request's contact set on the caller's next request (see core/quota.py);
    empty when no quota is enforced.
    """

    positions: npt.NDArray[np.uint32]
    packed_positions: bytes = b""  # each position as a varint
    packed_user_ids: bytes = b""  # each id as id_prefix || varint(length) || UTF-8
    token: bytes = b""
    checked: int = 0  # how many contact hashes the request held
    id_prefix: bytes = b""

    @property
    def user_ids(self) -> list[str]:
        return unpack_strings(self.packed_user_ids, len(self.id_prefix))


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

    ``notice`` is the sealed (joiner's user id, joiner's directory key): the store cannot read
    it. The contact-hash prefix the watcher matches is recovered from the directory key when
    the entry is delivered, never stored. ``joined_at`` is when the event was released.
    """

    cursor: int
    event_id: str
    notice: bytes
    joined_at: float


@dataclass(frozen=True, slots=True)
class WatchSummary:
    """How many unexpired watches a user has, and when the first and the last expire (0: none)."""

    count: int
    first_expiry: float
    last_expiry: float


@dataclass(frozen=True, slots=True)
class DeviceState:
    device_id: str
    acked: int
    seen: float


@dataclass(frozen=True, slots=True)
class QuotaLevel:
    name: str
    level: float
    capacity: float


@dataclass(frozen=True, slots=True)
class MyData:
    """Everything kept on behalf of one user (ExportMyData); ``settings`` is None when the user
    is not registered. ``events`` are JoinNotice objects (core.joins), in cursor order."""

    user_id: str
    settings: PrivacySettings | None
    watches: WatchSummary
    events: list[Any]
    devices: list[DeviceState]
    quotas: list[QuotaLevel]
    exported_at: float


@dataclass(frozen=True, slots=True)
class InboxEpoch:
    """One history of inbox cursors (see core.ports.JoinStore.inbox_epochs).

    A store starts a new epoch whenever its history of cursors may have lost its tail (a
    promoted replica, a restart, a restored file); ``base`` is the newest cursor it held then,
    so cursors up to ``base`` mean the same events in this epoch as in the one before.
    """

    epoch: int
    base: int
