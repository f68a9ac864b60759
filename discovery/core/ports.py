"""The Store protocol: everything the service keeps at rest, for every backend.

What may be kept is fixed by the privacy model (see README): directory keys and the
user ids and settings they belong to, the change feed of that registry, and later
watches, inboxes and quota counters. Never a number or a contact hash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from discovery.core.model import (
    Announcement,
    BucketCharge,
    DeviceState,
    ImportGroup,
    ImportReport,
    InboxEntry,
    InboxEpoch,
    NewUser,
    PrivacySettings,
    PrivateRefill,
    QuotaCharge,
    RegisterOutcome,
    RegistryChange,
    RegistrySlice,
    UserRecord,
    WatchSummary,
)


class RegistryStore(Protocol):
    """Directory key -> user, with a change feed that keeps in-memory indexes fresh.

    Every mutation appends to the change feed in the same atomic step.
    """

    async def register(self, user: NewUser) -> RegisterOutcome:
        """Add a user. Re-registering the same user with the same key is UNCHANGED.

        Raises ContactHashTaken or UserIdTaken.
        """
        ...

    async def unregister(self, user_id: str, joiner_tag: bytes) -> UserRecord | None:
        """Remove every record that names the user, and the events tagged ``joiner_tag``
        (the user's, see core.joins); None if not registered."""
        ...

    async def delete_user_data(self, user_id: str, joiner_tag: bytes) -> int:
        """Forget what is kept on the user's behalf (watches, inbox, devices); the registration
        stays. When the user is not registered, also the events tagged ``joiner_tag``.

        Returns how many records were removed.
        """
        ...

    async def change_number(
        self,
        user_id: str,
        directory_key: bytes,
        announcement: Announcement,
        private: bytes | None = None,
    ) -> UserRecord:
        """Move a user to a new key (and private-mode entry); returns the record as it was before.

        The watches on the new key are consumed; watchers are told (per the user's
        announce_mode) only when the user has ``announce_number_change`` on.
        Raises UserNotRegistered or ContactHashTaken.
        """
        ...

    async def import_users(self, users: Sequence[NewUser], first_position: int) -> ImportReport:
        """Register a batch; each user is imported, unchanged or rejected with a reason."""
        ...

    async def import_groups(self, groups: Sequence[ImportGroup]) -> list[ImportReport]:
        """``import_users(group, 0)`` for each group in order, as one transaction where the store
        has them (a later group sees the earlier ones registered), the users given column by column
        and their announcements asked for (``ImportGroup.announce``) only for the users somebody
        watches. Each report's ``feed`` lists the feed entries appended for its users, in feed order."""
        ...

    async def get_user(self, user_id: str) -> UserRecord | None: ...

    async def update_settings(self, user_id: str, settings: PrivacySettings) -> UserRecord | None:
        """Replace a user's settings; None if not registered."""
        ...

    def iter_registry(self, batch_size: int) -> AsyncIterator[RegistrySlice]:
        """The whole registry in batches, for loading an index."""
        ...

    async def registry_size(self) -> int: ...

    def iter_private(self, batch_size: int) -> AsyncIterator[list[bytes]]:
        """The private-mode entries of every discoverable user, in batches (private mode's set).

        Each user's entry (``NewUser.private``, ``change_number``'s ``private``: opaque bytes, a record
        per key epoch, see core/private.py) is kept with the registration, in the same atomic step, and
        every feed change that names or removes a user with an entry carries it in
        ``RegistryChange.private``: the feed is private mode's feed.
        """
        ...

    async def private_entries(self, user_ids: Sequence[str]) -> list[tuple[bytes, bytes | None] | None]:
        """Each user's directory key and private-mode entry (None: it has none), or None when the user is
        not registered; in the order of ``user_ids``."""
        ...

    async def refill_private(self, refills: Sequence[PrivateRefill]) -> int:
        """Replace the private-mode entry of each registered user whose entry is still ``stored``, each in
        one atomic step (a concurrent change wins: that refill is skipped). With ``announce``, the same
        step appends a feed change naming the user with the new entry (superseding the feed entry that
        named the user, as a settings change does); without, the feed is untouched. Returns how many
        entries were replaced. Nothing else changes (no fan-out, no settings)."""
        ...

    async def feed_head(self) -> int:
        """The sequence number of the newest change (0 when there is none)."""
        ...

    async def feed_read(self, after: int, limit: int) -> list[RegistryChange]:
        """Changes with seq > after, oldest first. Raises FeedTruncated when they were pruned."""
        ...

    async def feed_wait(self, after: int, timeout: float) -> None:
        """Return when a change newer than ``after`` may exist, or after ``timeout`` seconds."""
        ...


class QuotaStore(Protocol):
    """Leaky buckets for quotas and rate limits, shared by every instance on the store.

    A bucket holds a level between 0 and ``capacity`` that leaks ``leak_per_second``
    continuously. ``charge`` is one atomic step (one transaction in SQL, one script in
    Redis), so concurrent charges from any number of instances never overfill a bucket:

    * ``level = max(0, stored_level - leak_per_second * (now - stored_time))``, or 0 for a
      bucket never charged (or forgotten after draining);
    * if ``level + cost <= capacity``: store ``(level + cost, now)`` and return
      ``QuotaCharge(True, level + cost, 0.0)``;
    * otherwise change nothing and return ``QuotaCharge(False, level, retry_after)`` with
      ``retry_after = (level + cost - capacity) / leak_per_second`` (``inf`` when
      ``cost > capacity`` or the bucket does not leak).

    ``now`` is wall-clock seconds from the caller; a stored time later than ``now`` (clock
    skew between instances) counts as ``now``. Bucket names must reveal nothing about
    contacts: a purpose and a user id, never a hash. A drained bucket is equivalent to a
    missing one, so a backend may forget it (SQLite prunes them; Redis lets them expire).
    """

    async def charge(self, charges: Sequence[BucketCharge], now: float) -> list[QuotaCharge]:
        """Apply ``charges`` in order, in one atomic step (one round trip), stopping at the first
        that is refused: the outcomes of the applied ones, then the refused one. A refused
        charge changes nothing; the charges before it stay. All buckets of one call belong to
        one user (Redis keeps them on one slot)."""
        ...

    async def charge_and_read(
        self, charges: Sequence[BucketCharge], now: float, user_id: str
    ) -> tuple[list[QuotaCharge], UserRecord | None]:
        """``charge(charges, now)`` and ``get_user(user_id)`` in one round trip: Discover charges
        its caller and reads the caller's record (notify_on_join, announce mode) together. The
        charge is atomic as in ``charge``; the record is as a ``get_user`` call at that moment
        would return it (read-only, not part of the charge's atomic step)."""
        ...

    async def forget_buckets(self, buckets: Sequence[str]) -> int:
        """Delete these buckets (an unregistered user's); returns how many existed."""
        ...


class JoinStore(Protocol):
    """Watches, per-user inboxes and per-device acknowledgements for join notifications.

    What is kept, and nothing more (see docs/joins.md):

    * watches: watch tag (a keyed hash of a directory key, never the key) -> watcher, each
      with an absolute expiry;
    * inbox entries: (user, cursor, joiner tag, sealed notice, release time), where the
      notice (the joiner's id and directory key) and the joiner tag are made by the domain
      (``Announcement``): the store cannot read or link them;
    * devices: (user, device id, acknowledged cursor, last seen).

    Rules every backend keeps:

    * **Fan-out is atomic with the registration.** ``register``, ``change_number`` to a new
      key and every user ``import_users`` registers look up the watches under the user's
      ``announcement.watch_tag``. When the joiner is discoverable with announce_mode
      EVERYONE (and, for a number change, ``announce_number_change``), they are consumed
      and, in the same atomic step, one inbox entry is appended for each watcher whose watch
      has not expired, who is registered with ``notify_on_join`` on and is not the joiner.
      With MUTUAL the watches stay for ``announce_mutual``; with OFF (or a number change
      that does not announce) they are consumed and no one is told. A registration that was
      acknowledged never loses its events.
    * **Release**: an entry is stored with the release time ``now + announcement.delay``;
      reads return entries in cursor order up to the first one not yet released.
    * **Cursors** are positive integers, increasing in the order entries were appended to an
      inbox, never reused. A cursor above every cursor the store has issued is rejected with
      ``InvalidArgument`` on field ``cursor`` (``after_cursor`` for ``inbox_attach``).
    * **Expiry**: reads ignore expired rows (watches past their expiry; inbox entries and
      devices older than the ``max_age`` passed in), and ``purge_expired`` deletes them.
    * **Forgetting**: ``unregister`` and ``delete_user_data`` remove the user's watches, inbox
      and devices; ``unregister`` also removes inbox entries whose joiner tag is the one
      passed (the user's).
    * **Wake-ups**: ``inbox_signals`` yields the ids of users who may have new inbox entries,
      soon after the entries are committed by any instance. A spurious id is harmless; a
      missing one delays delivery until the subscriber's next read.
    """

    async def add_watches(self, watcher: str, keys: bytes, ttl: float, cap: int) -> int:
        """Watch n packed 16-byte directory keys for ``watcher`` for ``ttl`` seconds.

        A key already watched is refreshed (its expiry only moves later). Only while the
        watcher is registered with ``notify_on_join`` on, checked in the same atomic step,
        so a concurrent opt-out or unregistration never leaves watches behind. Beyond ``cap``
        watches, those that expire first are dropped. Returns how many watches the watcher
        has now.
        """
        ...

    async def announce_mutual(self, joiner: str, announcement: Announcement, watchers: Sequence[str]) -> int:
        """The joiner's Discover matched ``watchers``: for each of them that watches
        ``announcement.watch_tag`` (unexpired), is registered with notify_on_join and is not
        the joiner, consume the watch and append an inbox entry, atomically, provided the
        joiner is registered, discoverable, with announce_mode MUTUAL. Returns how many
        entries were appended. Cheap when no one watches the tag (no write)."""
        ...

    async def watch_summary(self, watcher: str) -> WatchSummary:
        """How many unexpired watches ``watcher`` has, and their first and last expiry."""
        ...

    async def devices(self, user_id: str) -> list[DeviceState]:
        """The user's devices with their acknowledged cursor and when they were last seen."""
        ...

    async def drop_watches(self, watcher: str) -> int:
        """Remove every watch of ``watcher``; returns how many."""
        ...

    async def count_watches(self, watcher: str) -> int:
        """How many unexpired watches ``watcher`` has."""
        ...

    async def inbox_attach(self, user_id: str, device_id: str, after: int) -> int | None:
        """Mark a device active now; returns the cursor to deliver after.

        That is the larger of ``after`` and the device's acknowledged cursor. None when the
        user is not registered (nothing is written then).
        """
        ...

    async def inbox_read(
        self, user_id: str, after: int, limit: int, max_age: float, released_only: bool = True
    ) -> list[InboxEntry]:
        """Up to ``limit`` entries with cursor > ``after``, no older than ``max_age`` seconds, in
        order, up to the first one not released yet; with ``released_only`` False, those not
        released yet too (ExportMyData: their ``joined_at`` is the release time, ahead)."""
        ...

    async def inbox_ack(self, user_id: str, device_id: str, cursor: int, max_age: float) -> int | None:
        """Record that a device processed every entry up to ``cursor``.

        Then delete the user's entries up to the smallest cursor acknowledged by the devices
        seen within ``max_age`` seconds, so an ack from one device never drops entries that
        another active device has not processed. Returns how many entries were deleted, or
        None when the user is not registered (nothing is written then).
        """
        ...

    async def purge_expired(self, max_age: float) -> int:
        """Delete expired watches, and inbox entries and devices older than ``max_age`` seconds."""
        ...

    def inbox_signals(self) -> AsyncIterator[set[str]]:
        """Ids of users who may have new inbox entries, as they are committed (runs until cancelled)."""
        ...

    async def inbox_epochs(self) -> list[InboxEpoch]:
        """The epochs of inbox cursors, oldest first (at most MAX_EPOCHS); the last is current.

        A backend starts a new epoch, before it issues another cursor, whenever its history
        may have lost entries it issued (Redis: another process holds the sequence, i.e. a
        promoted replica or a restart; SQLite: the file was opened, perhaps restored from a
        copy), with the newest cursor it holds as the base. Epochs are non-zero and never
        reused. A cursor is issued in the current epoch; core.joins.resume_after maps the
        cursor of an older epoch to this one.
        """
        ...


class Store(RegistryStore, QuotaStore, JoinStore, Protocol):
    """The whole persistence surface of the service."""

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""
        ...

    async def erase_traces(self) -> None:
        """Make deleted records unrecoverable from the store's files now (after a deletion):
        SQLite checkpoints and truncates its write-ahead log; Redis keeps nothing on disk that
        the store writes itself (a no-op)."""
        ...

    async def write_ready(self) -> None:
        """Raise (Unavailable) if the store would refuse an acknowledged write now: no primary, a
        read-only store, or fewer replicas than a replicated write waits for. Writes nothing
        that a reader sees."""
        ...

    async def close(self) -> None: ...
