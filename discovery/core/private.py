"""Private discovery mode, the server's side: the OPRF key, the batch evaluation, the registered set.

The wire scheme (suite, derivations, snapshot, delta and bucket formats) is `discovery.private_scheme`, shared
with the SDK; docs/private-mode.md specifies it. Nothing here stores anything: the store keeps the entries
(tag, sealed id) and the change feed; `PrivateDirectory` is the reference model of what the store must
serve, used by the tests and the benchmark.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from multiprocessing import get_context
from typing import Literal

from voprf import ristretto

from discovery.core.errors import FieldViolation, InvalidArgument, Reason
from discovery.core.hashing import MIN_SECRET_SIZE, derive_key
from discovery.private_scheme import (
    DEFAULT_BUCKET_USERS,
    DEFAULT_ID_PAD,
    ELEMENT_SIZE,
    SMALL_DIRECTORY_MAX,
    TAG_SIZE,
    Bucket,
    Delta,
    DeltaRecord,
    Snapshot,
    bucket_capacity,
    min_users,
    range_problem,
    seal_user_id,
    sealed_size,
    tag_of,
)

OPRF_SEED_CONTEXT = "discovery.v1 2026-11-22 private-mode OPRF key seed from server secret"
KEY_INFO_PREFIX = b"discovery.v1 private-mode key epoch "
SEED_SIZE = 32
MAX_BLINDED_PER_REQUEST = 1000
BLINDED_FIELD = "blinded_elements"


def key_info(epoch: int) -> bytes:
    """RFC 9497 DeriveKeyPair `info` of an epoch: each epoch has its own key from one seed."""
    return KEY_INFO_PREFIX + struct.pack(">I", epoch)


@dataclass(frozen=True)
class OprfKey:
    """The VOPRF key of one epoch. It lives outside the store, like the server secret."""

    epoch: int
    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.seed) != SEED_SIZE or not 0 <= self.epoch < 1 << 32:
            raise ValueError(f"an OPRF key is a {SEED_SIZE}-byte seed and a 32-bit epoch")

    @classmethod
    def from_secret(cls, secret: bytes, epoch: int) -> OprfKey:
        """Derived from the server secret (BLAKE3 derive-key), so nothing more has to be kept."""
        if len(secret) < MIN_SECRET_SIZE:
            raise ValueError(f"the server secret must be at least {MIN_SECRET_SIZE} bytes")
        return cls(epoch, derive_key(OPRF_SEED_CONTEXT, secret))

    @cached_property
    def evaluator(self) -> ristretto.Evaluator:
        return ristretto.Evaluator.from_seed(self.seed, key_info(self.epoch))

    @cached_property
    def public_key(self) -> bytes:
        """The 32-byte key that clients pin, published with its epoch."""
        return self.evaluator.public_key.serialize()

    def output_of(self, contact_hash: bytes) -> bytes:
        """``y = F(key, h)``, at registration (about 0.16 ms): the server then forgets ``h``."""
        return self.evaluator.evaluate_known_input(bytes(contact_hash))


def check_blinded_shape(
    packed: bytes, max_count: int = MAX_BLINDED_PER_REQUEST, field: str = BLINDED_FIELD
) -> int:
    """The number of blinded elements, or InvalidArgument (cheap: run it before charging the quota)."""
    if len(packed) % ELEMENT_SIZE:
        raise InvalidArgument.field(
            field,
            f"length {len(packed)} is not a multiple of {ELEMENT_SIZE} bytes",
            Reason.MALFORMED_BLINDED_ELEMENTS,
        )
    count = len(packed) // ELEMENT_SIZE
    if count > max_count:
        raise InvalidArgument.field(
            field,
            f"{count} blinded elements exceed the limit of {max_count} per request",
            Reason.TOO_MANY_BLINDED_ELEMENTS,
        )
    return count


def _decode(packed: bytes) -> list[ristretto.BlindedInput] | int:
    """The elements, or the index of the first one that is not a valid encoding (about 7 us each)."""
    elements = []
    for i in range(0, len(packed), ELEMENT_SIZE):
        try:
            elements.append(ristretto.BlindedInput.deserialize(packed[i : i + ELEMENT_SIZE]))
        except ValueError:  # not a canonical ristretto255 encoding, or the identity
            return i // ELEMENT_SIZE
    return elements


def _first_invalid(packed: bytes) -> int | None:
    """The index of the first invalid element, or None; runs in a worker."""
    elements = _decode(packed)
    return elements if isinstance(elements, int) else None


def _evaluate(seed: bytes, epoch: int, packed: bytes) -> tuple[bytes, bytes] | int:
    """(evaluated elements, batch proof), or the index of the first element that is not a valid encoding.

    Runs in a worker; returns plain values so that nothing but bytes crosses the process boundary.
    """
    elements = _decode(packed)
    if isinstance(elements, int):
        return elements
    if not elements:
        return b"", b""
    out = _evaluator(seed, epoch).evaluate_batch(elements).serialize()
    return out[64:], out[:64]  # voprf lays a batch out as proof (c || s) then the elements


_EVALUATORS: dict[tuple[bytes, int], ristretto.Evaluator] = {}
_MAX_EVALUATORS = 4  # the served and the next epoch are in use at a time, across a rotation


def _evaluator(seed: bytes, epoch: int) -> ristretto.Evaluator:
    evaluator = _EVALUATORS.get((seed, epoch))
    if evaluator is None:
        if len(_EVALUATORS) >= _MAX_EVALUATORS:
            _EVALUATORS.clear()
        evaluator = _EVALUATORS[(seed, epoch)] = ristretto.Evaluator.from_seed(seed, key_info(epoch))
    return evaluator


def _outputs(seed: bytes, epoch: int, hashes: Sequence[bytes]) -> list[bytes]:
    evaluator = _evaluator(seed, epoch)
    return [evaluator.evaluate_known_input(bytes(h)) for h in hashes]


def _entries(
    seed: bytes, epochs: Sequence[int], hashes: Sequence[bytes], user_ids: Sequence[str], id_pad: int
) -> bytes:
    """The stored blobs (`pack_entries`) of registered users, one record per epoch, computed in a worker
    and concatenated (all of one size)."""
    records = [
        [entry_from_output(y, epoch, user_id, id_pad) for y, user_id in zip(ys, user_ids, strict=True)]
        for epoch, ys in ((epoch, _outputs(seed, epoch, hashes)) for epoch in epochs)
    ]
    return b"".join(
        pack_entries(dict(zip(epochs, user_records, strict=True)))
        for user_records in zip(*records, strict=True)
    )


def _invalid_element(index: int, field: str) -> InvalidArgument:
    return InvalidArgument(
        f"invalid {field}: element {index} is not a valid ristretto255 encoding or is the identity",
        [FieldViolation(f"{field}[{index}]", "not a valid, non-identity ristretto255 element")],
        Reason.MALFORMED_BLINDED_ELEMENTS,
    )


def _checked(result: tuple[bytes, bytes] | int, field: str) -> tuple[bytes, bytes]:
    if isinstance(result, int):
        raise _invalid_element(result, field)
    return result


def evaluate_blinded(
    key: OprfKey, packed: bytes, max_count: int = MAX_BLINDED_PER_REQUEST, field: str = BLINDED_FIELD
) -> tuple[bytes, bytes]:
    """Evaluate a packed batch in this thread: (n x 32 evaluated bytes, 64-byte batch proof).

    About 0.2 ms per element while holding the GIL: on a server, use `OffLoopEvaluator` instead.
    """
    check_blinded_shape(packed, max_count, field)
    return _checked(_evaluate(key.seed, key.epoch, bytes(packed)), field)


class OffLoopEvaluator:
    """Runs evaluations in worker processes, so the event loop and other callers stay responsive.

    `voprf` holds the GIL while it computes (a ticker thread stalls for the whole batch), so a thread pool
    would not help: the default is a pool of spawned processes (spawned, not forked, next to gRPC threads).
    The key's seed is sent to the workers with each call and kept in their memory only.
    """

    def __init__(self, workers: int = 1, kind: Literal["process", "thread"] = "process") -> None:
        self._executor: Executor = (
            ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
            if kind == "process"
            else ThreadPoolExecutor(max_workers=workers, thread_name_prefix="oprf")
        )

    async def start(self, key: OprfKey) -> None:
        """Start the workers and build the key in each (a first call otherwise pays the spawn)."""
        await asyncio.get_running_loop().run_in_executor(
            self._executor, _outputs, key.seed, key.epoch, [b"\0"]
        )

    async def check(
        self, packed: bytes, max_count: int = MAX_BLINDED_PER_REQUEST, field: str = BLINDED_FIELD
    ) -> int:
        """The number of elements of a valid batch (shape here, encodings in a worker), or InvalidArgument:
        about 7 us an element, against about 0.2 ms to evaluate it, so it runs before the quota is charged."""
        count = check_blinded_shape(packed, max_count, field)
        if count:
            loop = asyncio.get_running_loop()
            bad = await loop.run_in_executor(self._executor, _first_invalid, bytes(packed))
            if bad is not None:
                raise _invalid_element(bad, field)
        return count

    async def evaluate(
        self,
        key: OprfKey,
        packed: bytes,
        max_count: int = MAX_BLINDED_PER_REQUEST,
        field: str = BLINDED_FIELD,
    ) -> tuple[bytes, bytes]:
        check_blinded_shape(packed, max_count, field)
        result = await asyncio.get_running_loop().run_in_executor(
            self._executor, _evaluate, key.seed, key.epoch, bytes(packed)
        )
        return _checked(result, field)

    async def outputs_of(self, key: OprfKey, contact_hashes: Sequence[bytes]) -> list[bytes]:
        """``y`` of each hash (registration, ImportUsers, ChangeNumber), off the loop."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _outputs, key.seed, key.epoch, [bytes(h) for h in contact_hashes]
        )

    async def entries_of(
        self,
        keys: Sequence[OprfKey],
        contact_hashes: Sequence[bytes],
        user_ids: Sequence[str],
        id_pad: int,
    ) -> list[bytes]:
        """The stored blob (`pack_entries`: a record of each key's epoch) of each registered user, ``y``
        computed and dropped off the loop: one worker call for a whole import batch, whatever the epochs.
        The keys share one seed (one server secret)."""
        if len({key.seed for key in keys}) != 1:
            raise ValueError("the keys of one call are epochs of one server secret")
        packed = await asyncio.get_running_loop().run_in_executor(
            self._executor,
            _entries,
            keys[0].seed,
            [key.epoch for key in keys],
            [bytes(h) for h in contact_hashes],
            list(user_ids),
            id_pad,
        )
        size = len(packed) // len(user_ids) if user_ids else 0
        return [packed[i : i + size] for i in range(0, len(packed), size)] if size else []

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class PrivateEntry:
    """What the store keeps for one discoverable registered user, per key epoch: no ``h``, no ``y``."""

    tag: bytes  # 5 bytes
    sealed: bytes  # the user id, sealed under a key derived from y

    def pack(self) -> bytes:
        """The record's legacy stored form, one record of epoch 1: tag || sealed id."""
        return self.tag + self.sealed

    @classmethod
    def unpack(cls, raw: bytes) -> PrivateEntry:
        return cls(bytes(raw[:TAG_SIZE]), bytes(raw[TAG_SIZE:]))


#: The stored blob of a user's entries (``NewUser.private``, the stores' private column, the feed's
#: ``RegistryChange.private``), opaque to the stores:
#:
#:     "DPE" | version u8 = 1 | id_pad u8 | count u8 | count x (epoch u32 | tag (5) | sealed id (29 + id_pad))
#:
#: Anything else is the legacy form, ``tag || sealed id``, one record of epoch 1 (what every store held
#: before key rotation). A lone epoch-1 record is still written in the legacy form, so a store of a
#: deployment that never rotates is byte for byte what it was (and an older release still reads it).
#: A legacy blob passes for the new form only if its first 4 bytes are the magic and the next 2 bytes
#: match its length: about 2^-48 per entry.
ENTRIES_MAGIC = b"DPE\x01"
LEGACY_EPOCH = 1
_ENTRIES_HEAD = struct.Struct(">4sBB")
_EPOCH = struct.Struct(">I")
_MIN_SEALED = sealed_size(1)


def _record_size(id_pad: int) -> int:
    return _EPOCH.size + TAG_SIZE + sealed_size(id_pad)


def _new_form(raw: bytes) -> int | None:
    """The id pad of a blob of the epoch form, or None for the legacy form (ValueError: too short for
    either)."""
    if len(raw) >= _ENTRIES_HEAD.size and raw[:4] == ENTRIES_MAGIC:
        _, id_pad, count = _ENTRIES_HEAD.unpack_from(raw)
        if count and len(raw) == _ENTRIES_HEAD.size + count * _record_size(id_pad):
            return int(id_pad)
    if len(raw) < TAG_SIZE + _MIN_SEALED:
        raise ValueError(f"a private-mode entry of {len(raw)} bytes is too short")
    return None


def _records(raw: bytes, id_pad: int) -> Iterator[tuple[int, int]]:
    """(epoch, offset of its tag) of each record of a blob of the epoch form."""
    for at in range(_ENTRIES_HEAD.size, len(raw), _record_size(id_pad)):
        yield _EPOCH.unpack_from(raw, at)[0], at + _EPOCH.size


def _record_at(raw: bytes, tag_at: int, id_pad: int) -> PrivateEntry:
    sealed_at = tag_at + TAG_SIZE
    return PrivateEntry(bytes(raw[tag_at:sealed_at]), bytes(raw[sealed_at : sealed_at + sealed_size(id_pad)]))


def unpack_entries(raw: bytes) -> dict[int, PrivateEntry]:
    """The records of a stored blob, by epoch (ValueError: not a blob of entries)."""
    id_pad = _new_form(raw)
    if id_pad is None:
        return {LEGACY_EPOCH: PrivateEntry.unpack(raw)}
    out: dict[int, PrivateEntry] = {}
    for epoch, tag_at in _records(raw, id_pad):
        if epoch in out:
            raise ValueError(f"epoch {epoch} twice in one private-mode entry")
        out[epoch] = _record_at(raw, tag_at, id_pad)
    return out


def pack_entries(entries: Mapping[int, PrivateEntry]) -> bytes:
    """The stored blob of a user's records (the legacy form for a lone record of epoch 1)."""
    if not entries:
        raise ValueError("a private-mode entry has at least one epoch's record")
    if len(entries) == 1 and LEGACY_EPOCH in entries:
        return entries[LEGACY_EPOCH].pack()
    sizes = {len(e.sealed) for e in entries.values()}
    id_pad = sizes.pop() - sealed_size(0)
    if sizes or not 1 <= id_pad <= 255 or any(len(e.tag) != TAG_SIZE for e in entries.values()):
        raise ValueError("the records of a private-mode entry have one tag size and one id pad")
    parts = [_ENTRIES_HEAD.pack(ENTRIES_MAGIC, id_pad, len(entries))]
    parts += [_EPOCH.pack(epoch) + e.tag + e.sealed for epoch, e in entries.items()]
    return b"".join(parts)


def entry_layout(raw: bytes) -> tuple[int, tuple[int, ...]]:
    """The sealed-id size and the epochs of a stored blob, without unpacking it (an instance counts the
    epochs of every stored entry at start and during a rotation). ValueError: not a blob of entries."""
    id_pad = _new_form(raw)
    if id_pad is None:
        return len(raw) - TAG_SIZE, (LEGACY_EPOCH,)
    return sealed_size(id_pad), tuple(epoch for epoch, _ in _records(raw, id_pad))


def entry_of_epoch(raw: bytes, epoch: int) -> PrivateEntry | None:
    """The record of one epoch in a stored blob, or None (ValueError: not a blob of entries)."""
    id_pad = _new_form(raw)
    if id_pad is None:
        return PrivateEntry.unpack(raw) if epoch == LEGACY_EPOCH else None
    for found, tag_at in _records(raw, id_pad):
        if found == epoch:
            return _record_at(raw, tag_at, id_pad)
    return None


def merged_entries(stored: bytes | None, fresh: bytes) -> bytes | None:
    """A user's blob after a re-import computed ``fresh`` (the epochs the server writes): the stored record
    of each of those epochs is kept (a sealed id has a random nonce, and the instances' sets hold the
    stored one), the missing ones come from ``fresh``, the other epochs' records go. None: nothing changes."""
    new = unpack_entries(fresh)
    old = unpack_entries(stored) if stored is not None else {}
    merged = {epoch: old.get(epoch, record) for epoch, record in new.items()}
    return None if merged == old else pack_entries(merged)


def entry_from_output(y: bytes, epoch: int, user_id: str, id_pad: int = DEFAULT_ID_PAD) -> PrivateEntry:
    return PrivateEntry(tag_of(y), seal_user_id(y, epoch, user_id, id_pad))


def registration_entry(
    key: OprfKey, contact_hash: bytes, user_id: str, id_pad: int = DEFAULT_ID_PAD
) -> PrivateEntry:
    """The stored entry of a registered user (computes y in this thread)."""
    return entry_from_output(key.output_of(contact_hash), key.epoch, user_id, id_pad)


def range_refused(field: str, problem: str) -> InvalidArgument:
    """A bucket range the server does not serve (BUCKET_RANGE_REFUSED): the client updates its snapshot."""
    return InvalidArgument.field(field, problem, Reason.BUCKET_RANGE_REFUSED)


def check_bucket_range(raw: bytes, field: str = "range") -> tuple[int, int]:
    """The (first, last) tags of a bucket range, as integers, or InvalidArgument (its shape only)."""
    problem = range_problem(raw)
    if problem:
        raise range_refused(field, problem)
    return int.from_bytes(raw[:TAG_SIZE], "big"), int.from_bytes(raw[TAG_SIZE:], "big")


def check_range_load(users: int, registered: int, k: int, field: str = "range") -> None:
    """A range holds between `min_users` and `bucket_capacity` registered users, or InvalidArgument."""
    capacity, least = bucket_capacity(registered, k), min_users(registered, k)
    if users > capacity:
        raise range_refused(field, f"holds more than a bucket's {capacity} users: update the snapshot")
    if users < least:
        raise range_refused(field, f"holds fewer than {least} registered users: update the snapshot")


def tag_records(
    touched: Iterable[bytes], sealed_of: Callable[[bytes], Collection[bytes]], with_sealed_ids: bool
) -> tuple[DeltaRecord, ...]:
    """The delta records of the tags touched (in first-touched order): each tag's current users, and
    their sealed ids sorted when the delta carries them."""
    records = []
    for tag in dict.fromkeys(touched):
        sealed = sealed_of(tag)
        records.append(DeltaRecord(tag, len(sealed), tuple(sorted(sealed)) if with_sealed_ids else ()))
    return tuple(records)


def check_cursor(
    cursor: int, epoch: int, current_cursor: int, current_epoch: int, field: str = "cursor"
) -> int:
    """A snapshot or delta cursor from the client: not from the future, not from another epoch."""
    check_epoch(epoch, current_epoch, f"{field}.epoch")
    if not 0 <= cursor <= current_cursor:
        raise cursor_ahead(field)
    return cursor


def check_epoch(epoch: int, current_epoch: int, field: str = "epoch") -> None:
    """The key epoch of a client's snapshot must be the current one (PRIVATE_EPOCH_REFUSED)."""
    if epoch != current_epoch:
        raise InvalidArgument.field(
            field,
            f"epoch {epoch} is not the current key epoch {current_epoch}",
            Reason.PRIVATE_EPOCH_REFUSED,
        )


def cursor_ahead(field: str = "cursor") -> InvalidArgument:
    """A client's cursor ahead of every change of the directory: fetch a new snapshot."""
    return InvalidArgument.field(field, "the cursor is ahead of the directory", Reason.PRIVATE_CURSOR_REFUSED)


@dataclass
class PrivateDirectory:
    """Reference model of the registered set in OPRF form for one epoch: what every store must serve.

    Entries by user id, and a change log whose cursor counts changes. Snapshot, deltas and buckets are built
    with the `private_scheme` formats.
    """

    epoch: int
    id_pad: int = DEFAULT_ID_PAD
    small_directory_max: int = SMALL_DIRECTORY_MAX
    bucket_users: int = DEFAULT_BUCKET_USERS
    entries: dict[str, PrivateEntry] = field(default_factory=dict)
    log: list[tuple[bytes, bytes]] = field(default_factory=list)  # (tag, sealed) touched, cursor = index + 1

    @property
    def cursor(self) -> int:
        return len(self.log)

    def put(self, user_id: str, entry: PrivateEntry | None) -> int:
        """Register (or replace) a user's entry, or remove it with None; the new cursor."""
        old = self.entries.pop(user_id, None)
        if old is not None:
            self.log.append((old.tag, old.sealed))
        if entry is not None:
            self.entries[user_id] = entry
            self.log.append((entry.tag, entry.sealed))
        return self.cursor

    @property
    def with_sealed_ids(self) -> bool:
        return len(self.entries) <= self.small_directory_max

    def snapshot(self, with_sealed_ids: bool | None = None) -> Snapshot:
        ids = self.with_sealed_ids if with_sealed_ids is None else with_sealed_ids
        pairs = ((e.tag, e.sealed) for e in self.entries.values())
        return Snapshot.build(self.epoch, self.cursor, pairs, ids, self.id_pad)

    def _sealed_of(self, tag: bytes) -> list[bytes]:
        return [e.sealed for e in self.entries.values() if e.tag == tag]

    def delta(self, since: int, with_sealed_ids: bool = False) -> Delta:
        """Every change after `since`: the current state of each tag it touched (a small directory's
        deltas always carry the sealed ids)."""
        ids = self.with_sealed_ids or with_sealed_ids
        check_cursor(since, self.epoch, self.cursor, self.epoch)
        records = tag_records((t for t, _ in self.log[since:]), self._sealed_of, ids)
        return Delta(self.epoch, since, self.cursor, records, ids, self.id_pad)

    def bucket(self, range_: bytes) -> Bucket:
        """The bucket of a range, padded to the capacity of the current set (InvalidArgument: refused)."""
        first, last = check_bucket_range(range_)
        sealed = [e.sealed for e in self.entries.values() if first <= int.from_bytes(e.tag, "big") <= last]
        check_range_load(len(sealed), len(self.entries), self.bucket_users)
        capacity = bucket_capacity(len(self.entries), self.bucket_users)
        return Bucket.build(self.epoch, self.bucket_users, capacity, range_, sealed, self.id_pad)
