"""The snapshot of all registered tags, and its deltas: versioned, byte-exact, any language can read them.

Tags are 40-bit integers (``derive.tag_of``, big-endian). A snapshot holds them sorted, Elias-Fano coded:
with ``n`` tags and ``L = max(0, floor(log2(2^40 / n)))`` low bits,

- ``low``: the low ``L`` bits of each tag, in order, as one bit string (most significant bit first),
  zero-padded to a whole byte;
- ``high``: a bit string (most significant bit of each byte first) with bit ``(tag_i >> L) + i`` set for each
  ``i``; its set bits, in order, give ``tag_i >> L = position_i - i``.

Snapshot bytes (integers big-endian)::

    "DPS" | version u8 = 1 | flags u8 (bit 0: carries sealed ids) | epoch u32 | cursor u64 | count u32 |
    id_pad u8 | L u8 | len(high) u32 | low | high | [count x sealed id, in tag order, when flag bit 0]

A snapshot without sealed ids holds each tag once; one with sealed ids (a small directory) holds one entry per
registered user, sorted by (tag, sealed). A delta brings a snapshot from one cursor to another::

    "DPD" | version u8 = 2 | flags u8 (bit 0: carries sealed ids) | epoch u32 | from_cursor u64 |
    to_cursor u64 | count u32 | id_pad u8 |
    count x (tag (5 bytes) | users u8 | [users x sealed id, when bit 0])

A record states a tag's whole current state: how many registered users hold it (0: none, the tag is gone)
and, with flag bit 0, their sealed ids, sorted. Records are states, not operations, so a delta may be replayed
(at least once delivery), and the last record of a tag wins. A delta applies to a snapshot of its epoch whose
cursor lies within ``[from_cursor, to_cursor]``: either kind to a snapshot without sealed ids (users > 0 is
"present"), one with sealed ids to a snapshot with sealed ids (the tag's entries are replaced). A record with
sealed ids also lets a client open a joiner's id at once, without a bucket.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from discovery.private_scheme.bucket import bucket_of_rank, bucket_ranks
from discovery.private_scheme.derive import DEFAULT_ID_PAD, TAG_BITS, TAG_SIZE, sealed_size, tag_value
from discovery.private_scheme.errors import SchemeError

SNAPSHOT_VERSION = 1
DELTA_VERSION = 2
MAX_TAG_USERS = 255  # the users u8 of a delta record
FLAG_SEALED_IDS = 0x01
_SNAPSHOT = struct.Struct(">3sBBIQIBBI")
_DELTA = struct.Struct(">3sBBIQQIB")
_CHUNK = (
    1 << 20
)  # rows per vectorised step: a multiple of 8, so chunks of the low bit string stay byte-aligned

Tags = npt.NDArray[np.uint64]


def low_bits_for(count: int) -> int:
    return max(0, ((1 << TAG_BITS) // count).bit_length() - 1) if count else 0


def tags_array(tags: Iterable[bytes]) -> Tags:
    """The 5-byte big-endian tags as integers (vectorised: about 50 ms for a million tags)."""
    joined = b"".join(tags)
    if len(joined) % TAG_SIZE:
        raise SchemeError(f"a tag is {TAG_SIZE} bytes")
    wide = np.zeros((len(joined) // TAG_SIZE, 8), dtype=np.uint8)
    wide[:, 8 - TAG_SIZE :] = np.frombuffer(joined, dtype=np.uint8).reshape(-1, TAG_SIZE)
    return wide.view(">u8").ravel().astype(np.uint64)


def sorted_unique(tags: Tags) -> Tags:
    """The distinct tags, sorted (numpy's own unique hashes first, which is slower at this size)."""
    ordered = np.sort(tags)
    if len(ordered) < 2:
        return ordered
    keep = np.empty(len(ordered), dtype=np.bool_)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _encode(tags: Tags) -> tuple[int, bytes, bytes]:
    n = len(tags)
    low_bits = low_bits_for(n)
    if n == 0:
        return 0, b"", b""
    shifts = np.arange(low_bits - 1, -1, -1, dtype=np.uint64)
    low_parts: list[bytes] = []
    for start in range(0, n, _CHUNK):
        chunk = tags[start : start + _CHUNK]
        bits = ((chunk[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        low_parts.append(bits.ravel().tobytes())
    low = np.packbits(np.frombuffer(b"".join(low_parts), dtype=np.uint8)).tobytes() if low_bits else b""
    positions = (tags >> np.uint64(low_bits)) + np.arange(n, dtype=np.uint64)
    high_bits = np.zeros(int(positions[-1]) + 1, dtype=np.uint8)
    high_bits[positions.astype(np.int64)] = 1
    return low_bits, low, np.packbits(high_bits).tobytes()


def _decode(n: int, low_bits: int, low: bytes, high: bytes) -> Tags:
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if len(low) != (n * low_bits + 7) // 8:
        raise SchemeError("the low bit string has the wrong length")
    positions = np.flatnonzero(np.unpackbits(np.frombuffer(high, dtype=np.uint8)))
    if len(positions) != n:
        raise SchemeError("the high bit string does not hold one bit per tag")
    highs: Tags = (positions - np.arange(n)).astype(np.uint64)
    tags: Tags = highs << np.uint64(low_bits)
    if low_bits:
        weights = np.uint64(1) << np.arange(low_bits - 1, -1, -1, dtype=np.uint64)
        bits = np.unpackbits(np.frombuffer(low, dtype=np.uint8))
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            rows = bits[start * low_bits : stop * low_bits].reshape(stop - start, low_bits)
            tags[start:stop] |= rows.astype(np.uint64) @ weights
    if n and int(tags[-1]) >> TAG_BITS:
        raise SchemeError("a tag is wider than 40 bits")
    return tags


@dataclass(frozen=True)
class Snapshot:
    """All registered tags as of `cursor` (and, for a small directory, every sealed id)."""

    epoch: int
    cursor: int
    tags: Tags  # sorted; unique unless `sealed` is set
    sealed: tuple[bytes, ...] | None = None  # aligned with `tags`
    id_pad: int = DEFAULT_ID_PAD

    @classmethod
    def build(
        cls,
        epoch: int,
        cursor: int,
        entries: Iterable[tuple[bytes, bytes]],
        with_sealed_ids: bool = False,
        id_pad: int = DEFAULT_ID_PAD,
    ) -> Snapshot:
        """From (tag, sealed id) entries, in any order."""
        if with_sealed_ids:
            ordered = sorted(entries)
            return cls(epoch, cursor, tags_array(t for t, _ in ordered), tuple(s for _, s in ordered), id_pad)
        return cls.of_tags(epoch, cursor, (t for t, _ in entries), id_pad)

    @classmethod
    def of_tags(
        cls, epoch: int, cursor: int, tags: Iterable[bytes], id_pad: int = DEFAULT_ID_PAD
    ) -> Snapshot:
        """A snapshot without sealed ids, from the registered tags in any order."""
        return cls(epoch, cursor, sorted_unique(tags_array(tags)), None, id_pad)

    def __len__(self) -> int:
        return len(self.tags)

    def contains(self, tags: Sequence[bytes]) -> list[bool]:
        """Local membership: the client's own tags, tested without sending anything."""
        if not len(self.tags) or not tags:
            return [False] * len(tags)
        query = tags_array(tags)
        at = np.minimum(np.searchsorted(self.tags, query), len(self.tags) - 1)
        return [bool(v) for v in self.tags[at] == query]

    def bucket_range(self, tag: bytes, k: int) -> bytes:
        """The range (``first || last``, 10 bytes) of the grid bucket holding ``tag``, one of this snapshot's
        tags (docs/private-mode.md, section 4): what the client sends instead of its tag."""
        if self.sealed is not None:
            raise SchemeError("this snapshot carries the sealed ids: no bucket is needed")
        n = len(self.tags)
        rank = int(np.searchsorted(self.tags, np.uint64(tag_value(tag))))
        if rank >= n or int(self.tags[rank]) != tag_value(tag):
            raise SchemeError("the tag is not in the snapshot")
        start, stop = bucket_ranks(bucket_of_rank(rank, n, k), n, k)
        return b"".join(int(self.tags[i]).to_bytes(TAG_SIZE, "big") for i in (start, stop - 1))

    def sealed_for(self, tag: bytes) -> list[bytes]:
        """The sealed ids carried for a tag (a small directory's snapshot only)."""
        if self.sealed is None:
            raise SchemeError("this snapshot carries no sealed ids: fetch the bucket")
        value = np.uint64(tag_value(tag))
        lo, hi = np.searchsorted(self.tags, value, "left"), np.searchsorted(self.tags, value, "right")
        return list(self.sealed[int(lo) : int(hi)])

    def serialize(self) -> bytes:
        low_bits, low, high = _encode(self.tags)
        flags = FLAG_SEALED_IDS if self.sealed is not None else 0
        header = _SNAPSHOT.pack(
            b"DPS",
            SNAPSHOT_VERSION,
            flags,
            self.epoch,
            self.cursor,
            len(self.tags),
            self.id_pad,
            low_bits,
            len(high),
        )
        return header + low + high + b"".join(self.sealed or ())

    @classmethod
    def deserialize(cls, data: bytes) -> Snapshot:
        if len(data) < _SNAPSHOT.size:
            raise SchemeError("a snapshot is too short")
        magic, version, flags, epoch, cursor, n, id_pad, low_bits, high_len = _SNAPSHOT.unpack_from(data)
        if magic != b"DPS" or version != SNAPSHOT_VERSION or flags & ~FLAG_SEALED_IDS:
            raise SchemeError("not a version 1 snapshot")
        if low_bits != low_bits_for(n):
            raise SchemeError("the snapshot's low bit count does not fit its size")
        at = _SNAPSHOT.size
        low_len = (n * low_bits + 7) // 8
        low, high = data[at : at + low_len], data[at + low_len : at + low_len + high_len]
        at += low_len + high_len
        sealed: tuple[bytes, ...] | None = None
        if flags & FLAG_SEALED_IDS:
            size = sealed_size(id_pad)
            sealed = tuple(bytes(data[at + i * size : at + (i + 1) * size]) for i in range(n))
            at += n * size
        if at != len(data):
            raise SchemeError("a snapshot's length does not match its header")
        return cls(epoch, cursor, _decode(n, low_bits, bytes(low), bytes(high)), sealed, id_pad)

    def entries(self) -> list[tuple[bytes, bytes]]:
        if self.sealed is None:
            raise SchemeError("this snapshot carries no sealed ids")
        return [(int(t).to_bytes(TAG_SIZE, "big"), s) for t, s in zip(self.tags, self.sealed, strict=True)]


@dataclass(frozen=True, slots=True)
class DeltaRecord:
    """A tag's current state: ``users`` registered users hold it (0: none); their sealed ids, sorted, when
    the delta carries them."""

    tag: bytes
    users: int
    sealed: tuple[bytes, ...] = ()

    @property
    def present(self) -> bool:
        return self.users > 0


@dataclass(frozen=True)
class Delta:
    epoch: int
    from_cursor: int
    to_cursor: int
    records: tuple[DeltaRecord, ...]
    with_sealed_ids: bool = False
    id_pad: int = DEFAULT_ID_PAD

    def serialize(self) -> bytes:
        flags = FLAG_SEALED_IDS if self.with_sealed_ids else 0
        size = sealed_size(self.id_pad)
        header = _DELTA.pack(
            b"DPD",
            DELTA_VERSION,
            flags,
            self.epoch,
            self.from_cursor,
            self.to_cursor,
            len(self.records),
            self.id_pad,
        )
        parts = [header]
        for record in self.records:
            if len(record.tag) != TAG_SIZE:
                raise SchemeError(f"a tag is {TAG_SIZE} bytes")
            if not 0 <= record.users <= MAX_TAG_USERS:
                raise SchemeError(f"a delta record holds 0 to {MAX_TAG_USERS} users")
            carried = len(record.sealed) if self.with_sealed_ids else 0
            if carried != len(record.sealed) or (self.with_sealed_ids and carried != record.users):
                raise SchemeError("a delta record's sealed ids do not fit the delta's kind")
            if any(len(s) != size for s in record.sealed):
                raise SchemeError(f"a sealed id is {size} bytes")
            parts.append(record.tag + bytes([record.users]) + b"".join(record.sealed))
        return b"".join(parts)

    @classmethod
    def deserialize(cls, data: bytes) -> Delta:
        if len(data) < _DELTA.size:
            raise SchemeError("a delta is too short")
        magic, version, flags, epoch, from_cursor, to_cursor, n, id_pad = _DELTA.unpack_from(data)
        if magic != b"DPD" or version != DELTA_VERSION or flags & ~FLAG_SEALED_IDS or from_cursor > to_cursor:
            raise SchemeError(f"not a version {DELTA_VERSION} delta")
        with_ids = bool(flags & FLAG_SEALED_IDS)
        size = sealed_size(id_pad)
        records = []
        at = _DELTA.size
        for _ in range(n):
            if at + TAG_SIZE + 1 > len(data):
                raise SchemeError("a delta's length does not match its header")
            tag, users = bytes(data[at : at + TAG_SIZE]), data[at + TAG_SIZE]
            at += TAG_SIZE + 1
            sealed: tuple[bytes, ...] = ()
            if with_ids:
                if at + users * size > len(data):
                    raise SchemeError("a delta's length does not match its header")
                sealed = tuple(bytes(data[at + i * size : at + (i + 1) * size]) for i in range(users))
                at += users * size
            records.append(DeltaRecord(tag, users, sealed))
        if at != len(data):
            raise SchemeError("a delta's length does not match its header")
        return cls(epoch, from_cursor, to_cursor, tuple(records), with_ids, id_pad)


def apply_delta(snapshot: Snapshot, delta: Delta) -> Snapshot:
    """The snapshot as of the delta's `to_cursor`."""
    if delta.epoch != snapshot.epoch:
        raise SchemeError("the delta belongs to another key epoch")
    if snapshot.sealed is not None and (not delta.with_sealed_ids or delta.id_pad != snapshot.id_pad):
        raise SchemeError("a snapshot with sealed ids takes deltas with sealed ids of its id_pad")
    if not delta.from_cursor <= snapshot.cursor <= delta.to_cursor:
        raise SchemeError("the delta does not start at or before the snapshot's cursor")
    state = {r.tag: r for r in delta.records}
    if snapshot.sealed is None:
        removed = tags_array(t for t, r in state.items() if not r.present)
        added = tags_array(t for t, r in state.items() if r.present)
        tags = np.union1d(np.setdiff1d(snapshot.tags, removed), added).astype(np.uint64)
        return Snapshot(snapshot.epoch, delta.to_cursor, tags, None, snapshot.id_pad)
    kept = [(t, s) for t, s in snapshot.entries() if t not in state]
    kept += [(t, s) for t, r in state.items() for s in r.sealed]
    return Snapshot.build(snapshot.epoch, delta.to_cursor, kept, True, snapshot.id_pad)
