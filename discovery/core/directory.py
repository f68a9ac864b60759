"""The directory: registration by backends and discovery by clients.

Every rule of the privacy model that concerns the registry lives here: only
directory keys reach the store, unmatched contacts are forgotten when the call
ends (unless the caller asked to be told when they join: then only their directory
keys are kept, as watches with a TTL, see core/joins.py), and undiscoverable users
are never returned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from discovery.core.errors import InvalidArgument, Reason, UserNotRegistered
from discovery.core.hashing import HASH_SIZE, KEY_SIZE, KeyRing
from discovery.core.index_sync import IndexSync
from discovery.core.joins import Joins
from discovery.core.keyset import sort_keys
from discovery.core.model import (
    SETTING_NAMES,
    Announcement,
    DirectoryMatch,
    ImportGroup,
    ImportRejectionReason,
    ImportReport,
    MyData,
    NewUser,
    PrivacySettings,
    PrivateRefill,
    QuotaLevel,
    RegisterOutcome,
    RejectedUser,
    UserRecord,
)
from discovery.core.options import Options, option, positive
from discovery.core.ports import Store
from discovery.core.private_index import PrivateRegistrar
from discovery.core.quota import ALLOW_ALL, Gate
from discovery.core.validation import (
    check_contact_hash,
    check_no_duplicate_keys,
    check_packed_hashes,
    check_user_id,
    contact_hash_problem,
    user_id_problem,
)


@dataclass(frozen=True, slots=True)
class DirectoryLimits(Options):
    max_hashes_per_request: int = option(
        5000, "cap on contact hashes in one Discover request", check=positive
    )
    max_import_batch: int = option(10_000, "cap on users in one ImportUsers message", check=positive)
    max_reported_rejections: int = 1000
    #: Users of an import stream committed in one transaction (whole messages, in order):
    #: each index page is then written once for several keys instead of once per key.
    import_transaction_users: int = 50_000


class ImportCandidate(NamedTuple):
    """One user of an ImportUsers message, as received."""

    user_id: str
    contact_hash: bytes
    settings: PrivacySettings | None


@dataclass(frozen=True, slots=True)
class ImportBatch:
    """One ImportUsers message, column by column (no object per user): the users' ids, contact
    hashes and own settings (None: the default), and the stream position of the first."""

    user_ids: Sequence[str]
    contact_hashes: Sequence[bytes]
    #: None when no user of the batch has settings of their own.
    settings: Sequence[PrivacySettings | None] | None
    first_position: int

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def of(cls, candidates: Sequence[ImportCandidate], first_position: int) -> ImportBatch:
        return cls(
            [c.user_id for c in candidates],
            [c.contact_hash for c in candidates],
            [c.settings for c in candidates],
            first_position,
        )


@dataclass(frozen=True, slots=True)
class Screened:
    """A batch after the rules that need no store: the rejected users, and the offsets in the
    batch of the valid ones (no id or contact hash twice among them)."""

    rejections: list[RejectedUser]
    valid: Sequence[int]


@dataclass(slots=True)
class PreparedImport:
    """Batches of an import stream screened and made ready for the store (Directory.prepare_import)."""

    batches: list[ImportBatch]
    screened: list[Screened]
    #: Per batch: the valid users, or None when there are none.
    groups: list[ImportGroup | None]


class Directory:
    def __init__(
        self,
        store: Store,
        sync: IndexSync,
        keys: KeyRing,
        *,
        limits: DirectoryLimits | None = None,
        default_settings: PrivacySettings | None = None,
        gate: Gate = ALLOW_ALL,
        joins: Joins | None = None,
        private: PrivateRegistrar | None = None,
    ) -> None:
        self.store = store
        self.sync = sync
        self.keys = keys
        self.limits = limits or DirectoryLimits()
        self.default_settings = default_settings or PrivacySettings()
        self.gate = gate
        self.joins = joins or Joins(store, keys)
        #: Private mode: computes each registered user's entry (tag, sealed id) off the loop.
        self.private = private

    # -- clients --------------------------------------------------------------------------------

    async def discover(
        self,
        caller: str,
        packed_hashes: bytes,
        previous_hashes: bytes = b"",
        previous_token: bytes = b"",
        *,
        id_prefix: bytes = b"",
    ) -> DirectoryMatch:
        """Match a batch of contact hashes against the in-memory index.

        The whole batch is one AES call and one vectorised probe, in the event loop.
        Nothing of the batch is kept but the watches on unmatched keys of a caller with
        notify_on_join on (core/joins.py). The gate (core/quota.py) charges the request rate
        and the new contacts before the lookup, in one store round trip that also reads the
        caller's record, so a refused request learns nothing. The matches come packed, each user
        id behind ``id_prefix`` (see DirectoryMatch), so a transport can frame them as they are.
        """
        try:
            check_packed_hashes(packed_hashes, self.limits.max_hashes_per_request)
            keys = self.keys.directory_keys(packed_hashes)
            ordered = sort_keys(keys)
            check_no_duplicate_keys(ordered)
        except InvalidArgument:
            await self.gate.admit(caller)  # a refused request still counts against the rate
            raise
        # The caller's record (notify_on_join, announce mode) comes with the charge, in the same
        # store round trip, unless it is remembered from a call of the last few seconds.
        known = self.joins.cached_caller(caller)
        read: list[UserRecord | None] = []
        token = await self.gate.charge(
            caller,
            ordered,
            previous_hashes,
            previous_token,
            packed_hashes,
            reader=read.append if known is None else None,
        )
        if read:
            known = (read[0],)
            self.joins.remember_caller(caller, read[0])
        checked = len(keys) // KEY_SIZE
        if not keys:
            return DirectoryMatch(
                np.empty(0, dtype=np.uint32), token=token, checked=checked, id_prefix=id_prefix
            )
        positions, packed_positions, packed_ids = self.sync.lookup_packed(keys, id_prefix)
        match = DirectoryMatch(positions, packed_positions, packed_ids, token, checked, id_prefix)
        await self.joins.watch_unmatched(caller, keys, positions, known)
        if positions.size:
            record = known[0] if known is not None else await self.joins.caller(caller)
            if record is not None and self.joins.announces_mutual(record):
                await self.joins.announce_mutual(record, match.user_ids)
        return match

    async def get_settings(self, caller: str) -> PrivacySettings:
        return (await self._registered(caller)).settings

    async def update_settings(
        self, caller: str, settings: PrivacySettings, mask: list[str] | None = None
    ) -> PrivacySettings:
        unknown = [name for name in mask or [] if name not in SETTING_NAMES]
        if unknown:
            raise InvalidArgument.field(
                "update_mask",
                f"unknown setting {unknown[0]!r}; known: {', '.join(SETTING_NAMES)}",
                Reason.INVALID_UPDATE_MASK,
            )
        current = (await self._registered(caller)).settings
        fields = set(mask or SETTING_NAMES)
        updated = current.merged(
            **{name: getattr(settings, name) for name in SETTING_NAMES if name in fields}
        )
        record = await self.store.update_settings(caller, updated)
        if record is None:
            raise UserNotRegistered()
        self.joins.settings_changed(caller)
        if current.notify_on_join and not record.settings.notify_on_join:
            # Opting out drops the watches at once. No watch can be added after the update
            # committed: the store checks notify_on_join when it adds one.
            await self.joins.drop_watches(caller)
        await self.sync.catch_up()
        return record.settings

    async def delete_my_data(
        self, caller: str, disable_notify_on_join: bool = False
    ) -> tuple[int, PrivacySettings | None]:
        """Forget the caller's watches, inbox and devices (the registration, settings and quota
        levels stay: see docs/joins.md, "Your data"); optionally turn notify_on_join off first, so that
        no watch is stored again. Returns how many records were removed and the settings."""
        settings: PrivacySettings | None = None
        dropped = 0
        if disable_notify_on_join:
            dropped = await self.store.count_watches(caller)  # the opt-out drops them
            off = PrivacySettings(notify_on_join=False)
            settings = await self.update_settings(caller, off, ["notify_on_join"])
        removed = dropped + await self.store.delete_user_data(caller, self.keys.joiner_tag(caller))
        self.joins.settings_changed(caller)
        await self.store.erase_traces()
        if settings is None:
            record = await self.store.get_user(caller)
            settings = record.settings if record is not None else None
        return removed, settings

    async def export_my_data(self, caller: str) -> MyData:
        """Everything kept on behalf of the caller (ExportMyData), with the events not released
        yet (their ``joined_at`` is after ``exported_at``)."""
        exported_at = time.time()
        record = await self.store.get_user(caller)
        events = []
        after = 0
        while True:
            ttl = self.joins.policy.inbox_ttl
            page = await self.store.inbox_read(caller, after, 1000, ttl, released_only=False)
            events += self.joins.events(page)
            if len(page) < 1000:
                break
            after = page[-1].cursor
        return MyData(
            user_id=caller,
            settings=record.settings if record is not None else None,
            watches=await self.store.watch_summary(caller),
            events=events,
            devices=await self.store.devices(caller),
            quotas=[QuotaLevel(*level) for level in await self.gate.levels(caller)],
            exported_at=exported_at,
        )

    async def _registered(self, user_id: str) -> UserRecord:
        record = await self.store.get_user(user_id)
        if record is None:
            raise UserNotRegistered("caller")
        return record

    # -- backends -------------------------------------------------------------------------------

    async def register(
        self, user_id: str, contact_hash: bytes, settings: PrivacySettings | None = None
    ) -> RegisterOutcome:
        self._check_new_user_id(user_id)
        check_contact_hash(contact_hash)
        key = self.keys.directory_key_of(contact_hash)
        user = NewUser(
            user_id,
            key,
            settings or self.default_settings,
            self.joins.announcement(user_id, key),
            await self._private_entry(contact_hash, user_id),
        )
        outcome = await self.store.register(user)
        if outcome is RegisterOutcome.UNCHANGED and self.private is not None and self.private.refills:
            await self._refill_private([(user.user_id, user.directory_key, user.private)])
        await self.sync.catch_up()
        return outcome

    async def unregister(self, user_id: str) -> None:
        check_user_id(user_id)
        if await self.store.unregister(user_id, self.keys.joiner_tag(user_id)) is None:
            raise UserNotRegistered()
        await self.gate.forget(user_id)
        self.joins.user_left(user_id)
        await self.store.erase_traces()
        await self.sync.catch_up()

    async def change_number(self, user_id: str, contact_hash: bytes) -> None:
        self._check_new_user_id(user_id)
        check_contact_hash(contact_hash)
        key = self.keys.directory_key_of(contact_hash)
        await self.store.change_number(
            user_id,
            key,
            self.joins.announcement(user_id, key),
            await self._private_entry(contact_hash, user_id),
        )
        await self.sync.catch_up()

    def _new_user_id_problem(self, user_id: str) -> str | None:
        """What is wrong with the id of a user to register (private mode seals ids of a bounded length)."""
        problem = user_id_problem(user_id)
        if problem is None and self.private is not None:
            problem = self.private.id_problem(user_id)
        return problem

    def _check_new_user_id(self, user_id: str) -> None:
        problem = self._new_user_id_problem(user_id)
        if problem is not None:
            raise InvalidArgument.field("user_id", problem, Reason.INVALID_USER_ID)

    async def _private_entry(self, contact_hash: bytes, user_id: str) -> bytes | None:
        if self.private is None:
            return None
        return (await self.private.entries([contact_hash], [user_id]))[0]

    async def import_batch(self, candidates: list[ImportCandidate], first_position: int) -> ImportReport:
        """Import one batch. Invalid entries and duplicates within the batch are rejected here,
        conflicts with the registry by the store; the rest is registered in one transaction."""
        return (await self.import_batches([ImportBatch.of(candidates, first_position)]))[0]

    def check_import_batch(self, candidates: Sized) -> None:
        """InvalidArgument (IMPORT_BATCH_TOO_LARGE) for a message over ``max_import_batch``."""
        if len(candidates) > self.limits.max_import_batch:
            raise InvalidArgument.field(
                "users",
                f"{len(candidates)} users exceed the batch limit of {self.limits.max_import_batch}",
                Reason.IMPORT_BATCH_TOO_LARGE,
            )

    async def import_batches(self, batches: list[ImportBatch]) -> list[ImportReport]:
        """Import several batches of a stream in one store transaction, each as if alone and in
        order (a later batch sees the earlier ones registered): the same outcomes as one
        transaction each, with each index page written once per transaction, not per batch."""
        return await self.write_import(await self.prepare_import(batches))

    async def prepare_import(self, batches: list[ImportBatch]) -> PreparedImport:
        """The first half of :meth:`import_batches`, which needs no store: the screening, the
        directory keys and watch tags, the private entries. A stream prepares its next batches
        while the store writes the previous ones."""
        for batch in batches:
            self.check_import_batch(batch)
        screened = [self._screen(batch) for batch in batches]
        groups = [
            await self._new_users(batch, done.valid) for batch, done in zip(batches, screened, strict=True)
        ]
        return PreparedImport(batches, screened, groups)

    async def write_import(self, prepared: PreparedImport) -> list[ImportReport]:
        """The second half of :meth:`import_batches`: one store transaction, then the index."""
        groups = prepared.groups
        stored = (
            await self.sync.write_and_apply(
                lambda: self.store.import_groups([g for g in groups if g]),
                lambda outcomes: [run for outcome in outcomes for run in outcome.feed],
            )
            if any(groups)
            else []
        )
        outcomes = iter(stored)
        reports = []
        refill: list[tuple[str, bytes, bytes | None]] = []
        refills = self.private is not None and any(r.unchanged for r in stored) and self.private.refills
        for batch, done, users in zip(prepared.batches, prepared.screened, groups, strict=True):
            report = ImportReport()
            rejections = done.rejections
            if users:
                outcome = next(outcomes)
                if refills and outcome.unchanged:
                    refill += _unrefused(users, outcome.rejections)
                # The store numbers the valid users 0..n-1; map back to stream positions.
                first, valid = batch.first_position, done.valid
                for rejection in outcome.rejections:
                    rejections.append(
                        RejectedUser(first + valid[rejection.position], rejection.user_id, rejection.reason)
                    )
                report.imported = outcome.imported
                report.unchanged = outcome.unchanged
            rejections.sort(key=lambda r: r.position)
            report.rejected_total = len(rejections)
            report.rejections = rejections[: self.limits.max_reported_rejections]
            reports.append(report)
        if refill and await self._refill_private(refill):
            await self.sync.catch_up()
        return reports

    async def _refill_private(self, users: list[tuple[str, bytes, bytes | None]]) -> bool:
        """Users registered again unchanged (same id, same contact hash) while a key epoch is prepared (or
        while users lack the served one): store the records their entries lack, computed with the
        registration (docs/private-mode.md, "Key epochs"). The stored records of the epochs written are
        kept; the feed carries the change only when the served epoch's record is new (returns whether
        it did: the index then has a feed entry to catch up on)."""
        private = self.private
        assert private is not None
        found = await self.store.private_entries([user_id for user_id, _, _ in users])
        refills: list[PrivateRefill] = []
        for (user_id, directory_key, fresh), current in zip(users, found, strict=True):
            if current is None or fresh is None or current[0] != directory_key:
                continue  # unregistered or moved meanwhile: that write computed its own entry
            stored = current[1]
            new = private.refilled(stored, fresh)
            if new is not None:
                refills.append(PrivateRefill(user_id, stored, new, private.served_changed(stored, new)))
        if refills:
            await self.store.refill_private(refills)
        return any(r.announce for r in refills)

    def _screen(self, batch: ImportBatch) -> Screened:
        """Invalid entries and duplicates within the batch, and the valid rest."""
        ids, hashes = batch.user_ids, batch.contact_hashes
        if self._all_valid(ids, hashes):
            return Screened([], range(len(ids)))
        rejections: list[RejectedUser] = []
        valid: list[int] = []
        seen_ids: set[str] = set()
        seen_hashes: set[bytes] = set()
        for offset, (user_id, contact_hash) in enumerate(zip(ids, hashes, strict=True)):
            reason: ImportRejectionReason | None = None
            if self._new_user_id_problem(user_id) is not None:
                reason = ImportRejectionReason.INVALID_USER_ID
            elif contact_hash_problem(contact_hash) is not None:
                reason = ImportRejectionReason.INVALID_CONTACT_HASH
            elif user_id in seen_ids or contact_hash in seen_hashes:
                reason = ImportRejectionReason.DUPLICATE_IN_IMPORT
            if reason is not None:
                rejections.append(RejectedUser(batch.first_position + offset, user_id, reason))
                continue
            seen_ids.add(user_id)
            seen_hashes.add(contact_hash)
            valid.append(offset)
        seen_hashes.clear()
        return Screened(rejections, valid)

    def _all_valid(self, ids: Sequence[str], hashes: Sequence[bytes]) -> bool:
        """The common case of a batch, checked for all users at once: printable ASCII ids (so
        valid UTF-8 of one byte per character) within the size limits, hashes of the right
        size, no id or hash twice. False sends the batch through the per-user rules."""
        joined = "".join(ids)
        if not (joined.isascii() and joined.isprintable() and all(ids)):
            return False
        # The longest id stands for all: the length limits are the only rules left.
        if self._new_user_id_problem("x" * max(map(len, ids), default=0)) is not None:
            return False
        if any(len(h) != HASH_SIZE for h in hashes):
            return False
        return len(set(ids)) == len(ids) and len(set(hashes)) == len(hashes)

    async def _new_users(self, batch: ImportBatch, valid: Sequence[int]) -> ImportGroup | None:
        """The valid users to store, column by column: directory keys, watch tags, (in private
        mode) private entries, and the announcements made only for the users a store asks for
        (the ones somebody watches). Screened: no user id or contact hash occurs twice."""
        if not valid:
            return None
        every = len(valid) == len(batch)  # (the offsets are ascending: then they are all)
        ids = batch.user_ids if every else [batch.user_ids[i] for i in valid]
        hashes = batch.contact_hashes if every else [batch.contact_hashes[i] for i in valid]
        keys = self.keys.directory_keys(b"".join(hashes))
        entries = list(await self.private.entries(hashes, ids)) if self.private is not None else None
        default = self.default_settings
        own = batch.settings
        settings = [default] * len(valid) if own is None else [own[i] or default for i in valid]
        joins = self.joins

        def announce(positions: Sequence[int]) -> list[Announcement]:
            chosen = b"".join(keys[i * KEY_SIZE : (i + 1) * KEY_SIZE] for i in positions)
            return joins.announcements([ids[i] for i in positions], chosen)

        return ImportGroup(ids, keys, settings, joins.watch_tags(keys), announce, entries, distinct=True)


def _unrefused(
    group: ImportGroup, rejections: Sequence[RejectedUser]
) -> list[tuple[str, bytes, bytes | None]]:
    """(user id, directory key, private entry) of the group's users the store did not refuse."""
    refused = {r.position for r in rejections}
    private = group.private
    return [
        (user_id, group.directory_keys[i * KEY_SIZE : (i + 1) * KEY_SIZE], private[i] if private else None)
        for i, user_id in enumerate(group.user_ids)
        if i not in refused
    ]
