"""The in-memory directory index: directory key -> (user id, discoverable).

This is the hot path of contact discovery. A lookup is a batch of about a thousand
16-byte directory keys. It is answered by a small compiled kernel (``_probe.c``, built
by ``pip install``): one pass over the keys that prefetches each home bucket 16 keys
ahead and collects fingerprint matches, one pass that prefetches and verifies their
records, and the ``str`` of each hit, with no numpy call per batch (about 50 µs for
1,000 keys at 10M entries; docs/perf/index-kernel.md). Without the kernel, the same
layout is answered with about 35 numpy calls per batch and no Python loop per key, at
about twice the time. A cache miss costs about 0.1 µs, so the layout is built to touch
two cache-line pairs per key: its hash bucket and, for a hit, its record. The kernel
also does the presence probe of bulk loads and linear-probing insertion, and so the
rehash of a growth (:meth:`DirectoryIndex.grown_table` builds it off the event loop).

Layout
======

Keys are AES outputs, so they are uniformly random and need no further hashing. The
16 key bytes are read as two little-endian 64-bit words, ``lo`` (bytes 0..7) and ``hi``
(bytes 8..15).

**Records.** Every entry is a record in ``_log``, an append-only array of 16-byte
cells (a ``(cells, 2)`` uint64 array): one cell ``[lo, hi]`` with the key, then the
user id as UTF-8, its ``b"\\x00"`` terminator and ``0xFF`` padding (a byte that never
occurs in UTF-8) up to a whole number of cells, 1..9. Key and id are adjacent, so a
hit costs one cache miss for both; there is no row table and no separate id buffer
(an earlier design with ``[lo, hi, meta]`` rows plus an id buffer needed two misses per
hit and 8 more bytes per entry). Replacing or removing an entry leaves its old cells
as garbage; the log is compacted (vectorised) once the garbage exceeds both the live
cells and 1 MiB.

**Hash table.** ``_flat`` holds uint64 slots ``fp | discoverable << 36 | cells << 32 |
offset``: ``fp`` is the top 27 bits of ``hi`` kept in place, ``cells`` the number of id
cells, ``offset`` the record's first cell (32 bits: a log of up to 64 GiB). ``EMPTY =
2**64 - 1``; no occupied slot equals it, because ``cells`` <= 9. It is linear probing
without tombstones (backward-shift deletion), with three twists for the batched probe:

* *Homes are bucket starts.* Slots are grouped in buckets of 16 (128 bytes, two cache
  lines, 64-byte aligned). A key's home is the first slot of bucket ``((lo >> 32) *
  n_buckets) >> 32`` (multiply-shift range reduction, so the bucket count need not be a
  power of two and the table is sized to the load target: 16..20 bytes per entry rather
  than up to 32 at the next power of two). Each entry sits in the run of occupied slots
  starting at its home, so buckets fill as prefixes and a key is absent once a bucket
  without it has a free slot. A lookup reads every key's home bucket with one ``take``
  and is done, except for keys whose home bucket is full (about 0.1..0.5% at load
  0.4..0.5), which get an exact scalar probe from the next bucket on.
* *One subtraction finds the hits.* With ``f = (hi & FP_MASK) | 1 << 36`` a slot holds
  a discoverable entry with the key's fingerprint iff ``slot - f < 2**36 - 1`` (uint64
  arithmetic), and the difference then *is* ``cells << 32 | offset``. Non-discoverable
  entries never match; empty slots never match. Every hit is verified against the full
  key in its record (a fingerprint false positive, probability about ``2**-27`` per
  occupied slot read, sends that key to the exact scalar probe).
* *No wrap-around.* Probes run past the home buckets into a tail of spare buckets; the
  last bucket of the array is kept empty (the tail grows if an insert would land in
  it), so every probe and bucket read stays inside the array, and backward-shift
  deletion is simply: an entry moves back into the hole iff its home is at or before it.

The table grows (to load 0.4) when its load would exceed 0.5. A rebuild (growth, big
bulk loads) is vectorised: entries are sorted by home (``np.sort`` of ``(lo >> 32) <<
32 | index``, several times faster than ``np.argsort``) and the slot of the i-th is
``i + cummax(home - i)``. Smaller bulk loads are inserted in vectorised rounds of
linear probing: each pending entry tries its current slot, a write-then-read-back
decides which of the entries racing for a free slot won, the others move on.

**Ids of a lookup.** The id cells of all hits are gathered with one ``take`` (indices
from ``np.repeat`` of ``offset + 1 - cumsum(cells)`` plus an ``arange``); deleting the
padding (``bytes.translate``), one ``decode`` and one ``split("\\x00")`` make the list
of ``str``.

Memory per entry: 16..20 bytes of slots (load 0.5..0.4) + 16 key + the id with its
terminator rounded up to 16, plus the slack of growth (the log grows by 1.25x; a bulk
load into an empty index sizes it exactly). For ids of 10..20 bytes: about 55..59.

Within one bulk load, a key that appears more than once takes its *last* occurrence.

The index is not thread-safe; it is meant to be used from one event loop.
"""

from __future__ import annotations

import codecs
import importlib
import itertools
import math
import sys
from dataclasses import dataclass
from typing import Final, Protocol, cast

import numpy as np
import numpy.typing as npt

from discovery.index.packed import pack_strings, pack_varints

__all__ = ["KERNEL", "KEY_SIZE", "MAX_ID_BYTES", "DirectoryIndex", "GrownTable"]


U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
BoolArr = npt.NDArray[np.bool_]


class _Kernel(Protocol):
    """The compiled probe loops of ``_probe.c`` (its comment documents them)."""

    def lookup(
        self, flat: U64, log: U64, n_buckets: int, keys: bytes, out: npt.NDArray[np.uint32]
    ) -> tuple[int, list[str]]: ...

    def lookup_packed(
        self, flat: U64, log: U64, n_buckets: int, keys: bytes, out: npt.NDArray[np.uint32], prefix: bytes
    ) -> tuple[int, bytes, bytes]: ...

    def find(self, flat: U64, log: U64, n_buckets: int, keys: U64, out_at: I64, out_slot: I64) -> int: ...

    def insert(
        self, flat: U64, log: U64, n_buckets: int, vals: U64, start: int, release_gil: bool
    ) -> int: ...


def _load_kernel() -> _Kernel | None:
    """The compiled probe loops (built from ``_probe.c`` by ``pip install``), or None."""
    if sys.byteorder != "little":  # the kernel reads keys as native words
        return None
    try:
        module = importlib.import_module("discovery.index._probe")
    except ImportError:
        return None
    # A build older than this file lacks some functions: the numpy loops serve until it is rebuilt.
    wanted = [name for name in dir(_Kernel) if not name.startswith("_")]
    return cast(_Kernel, module) if all(hasattr(module, name) for name in wanted) else None


# The compiled loops when they are built, else the numpy ones; both give the same results
# (tests/test_index.py runs the tests on both). Tests switch the kernel off by setting this to None.
_kernel: _Kernel | None = _load_kernel()
KERNEL: Final = _kernel is not None

KEY_SIZE: Final = 16
MAX_ID_BYTES: Final = 128

BUCKET: Final = 16  # slots per bucket: 16 x 8 bytes = two cache lines
_BUCKET_SHIFT: Final = 4
_CELL: Final = 16  # bytes per log cell

_EMPTY_INT: Final = 0xFFFF_FFFF_FFFF_FFFF
_EMPTY: Final = np.uint64(_EMPTY_INT)
_OFF_MASK_INT: Final = 0xFFFF_FFFF  # slot: offset of the record, in cells
_OFF_MASK: Final = np.uint64(_OFF_MASK_INT)
_MAX_CELLS: Final = 1 << 32
_S32: Final = np.uint64(32)
_NCELL_MASK_INT: Final = 0xF  # slot, bits 32..35: id cells of the record
_DBIT_INT: Final = 1 << 36  # slot: discoverable
_DBIT: Final = np.uint64(_DBIT_INT)
_FP_MASK_INT: Final = 0xFFFF_FFE0_0000_0000  # slot: the top 27 bits of hi, in place
_FP_MASK: Final = np.uint64(_FP_MASK_INT)
_HIT_DISC: Final = np.uint64((1 << 36) - 1)  # slot - (fp | DBIT) below this: a discoverable hit
_HIT_ANY: Final = np.uint64((1 << 37) - 1)  # slot - fp below this: a hit, discoverable or not
_HIT_VALUE_INT: Final = (_NCELL_MASK_INT << 32) | _OFF_MASK_INT  # what a lookup hit yields
_PAD: Final = 0xFF  # pads an id to whole cells; never occurs in UTF-8

MAX_LOAD: Final = 0.5  # grow when the load of the home buckets would exceed this
GROW_LOAD: Final = 0.4  # load right after growing
_TAIL_BUCKETS: Final = 8  # spare buckets after the home buckets; the last one stays empty
_CHUNK: Final = 1 << 16  # keys per vectorised probe (bounds temporaries)
_BUILD_CHUNK: Final = 1 << 18  # entries per chunk when writing records in bulk
_REBUILD_FRACTION: Final = 4  # a bulk insert of more than count / 4 new keys rebuilds the table
_COMPACT_MIN_CELLS: Final = (1 << 20) // _CELL
_KEY_DTYPE: Final = np.dtype("<u8")

_changes = itertools.count()  # DirectoryIndex._version: a fresh number at every change

_ARANGE_CACHE_MAX: Final = 1 << 20
_arange_cache: list[I64] = [np.arange(1 << 16, dtype=np.int64)]


def _arange(n: int) -> I64:
    """0..n-1 (int64); a view of a cached array when small."""
    cached = _arange_cache[0]
    if n > cached.size:
        if n > _ARANGE_CACHE_MAX:
            return np.arange(n, dtype=np.int64)
        cached = np.arange(min(max(n, 2 * cached.size), _ARANGE_CACHE_MAX), dtype=np.int64)
        _arange_cache[0] = cached
    return cached[:n]


def _nb_for(entries: int, load: float) -> int:
    """Home buckets needed to hold ``entries`` at ``load``."""
    return max(1, math.ceil(entries / (load * BUCKET)))


def _new_flat(n_buckets: int) -> tuple[U64, U64]:
    """A 64-byte aligned slot array of ``n_buckets`` empty buckets, and its allocation."""
    raw: U64 = np.empty(n_buckets * BUCKET + 8, dtype=np.uint64)
    skip = (-int(raw.ctypes.data) % 64) // 8
    flat = raw[skip : skip + n_buckets * BUCKET]
    flat.fill(_EMPTY)
    return raw, flat


def _placed(n_buckets: int, vals: U64, top: U64) -> tuple[U64, U64]:
    """A new slot array (allocation, slots) of ``n_buckets`` home buckets holding slot values
    ``vals``, given in ascending order of ``top``, the ``lo >> 32`` of their keys."""
    step = _arange(vals.size)
    homes = ((top * np.uint64(n_buckets)) >> _S32).view(np.int64) * BUCKET
    homes -= step
    pos = np.maximum.accumulate(homes)  # linear probing, entries in order of home
    pos += step
    end = int(pos[-1]) + 1 if vals.size else 0
    raw, flat = _new_flat(max(n_buckets, -(-end // BUCKET)) + _TAIL_BUCKETS)
    flat[pos] = vals
    return raw, flat


def _last_of_each_by_home(lo: U64, hi: U64) -> tuple[I64, U64]:
    """The entries of a batch in ascending order of home (``lo >> 32``), keeping only the
    last occurrence of a key: their batch indices, and their ``lo >> 32``."""
    n = lo.size
    # Sort by home, carrying the batch index in the low half of the sort key.
    order_key = lo >> _S32
    order_key <<= _S32
    order_key |= _arange(n).view(np.uint64)
    order_key.sort()
    order = (order_key & _OFF_MASK).view(np.int64)
    # Duplicates in the batch: keys with equal lo >> 32 are adjacent; sort those exactly.
    top = order_key >> _S32
    same = top[1:] == top[:-1]
    if not same.any():
        return order, top
    group = np.zeros(n, dtype=np.bool_)
    group[1:] |= same
    group[:-1] |= same
    sub = order[group]
    sub = sub[np.lexsort((sub, hi[sub], lo[sub]))]
    dup = (lo[sub[1:]] == lo[sub[:-1]]) & (hi[sub[1:]] == hi[sub[:-1]])
    if not dup.any():
        return order, top
    drop = np.zeros(n, dtype=np.bool_)
    drop[sub[:-1][dup]] = True  # an occurrence of a key that comes again later
    keep = ~drop[order]
    return order[keep], top[keep]


def _key_words(key: bytes) -> tuple[int, int]:
    if len(key) != KEY_SIZE:
        raise ValueError(f"a directory key is {KEY_SIZE} bytes, got {len(key)}")
    return int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")


def _parse_keys(keys: bytes) -> U64:
    """n packed keys as an (n, 2) uint64 array of [lo, hi]."""
    raw = np.frombuffer(keys, dtype=np.uint8)
    if raw.size % KEY_SIZE:
        raise ValueError(f"packed keys must be a multiple of {KEY_SIZE} bytes, got {raw.size}")
    words = raw.view(_KEY_DTYPE)
    if words.dtype != np.dtype(np.uint64):  # a big-endian host
        words = words.astype(np.uint64)
    return words.reshape(-1, 2)


def _encode_id(user_id: str) -> bytes:
    data = user_id.encode("utf-8")
    if not 1 <= len(data) <= MAX_ID_BYTES:
        raise ValueError(f"a user id is 1..{MAX_ID_BYTES} UTF-8 bytes, got {len(data)}")
    if b"\x00" in data:
        raise ValueError("a user id must not contain NUL")
    return data


def _record(lo: int, hi: int, data: bytes) -> U64:
    """The cells of one record: the key cell, then the id, its NUL and padding."""
    body = data + b"\x00"
    body += bytes([_PAD]) * (-len(body) % _CELL)
    out = np.empty((1 + len(body) // _CELL, 2), dtype=np.uint64)
    out[0] = (lo, hi)
    out[1:] = np.frombuffer(body, dtype=np.uint64).reshape(-1, 2)  # native: the bytes as they are
    return out


def _split_blob(blob: bytes, n: int) -> tuple[U8, I64]:
    """The bytes and the lengths (with terminator) of n NUL-terminated ids."""
    data: U8 = np.frombuffer(blob, dtype=np.uint8)
    ends = np.flatnonzero(data == 0) + 1
    if ends.size != n or (n and int(ends[-1]) != data.size) or (not n and data.size):
        raise ValueError(f"expected {n} NUL-terminated user ids (a user id must not contain NUL)")
    lens = np.diff(ends, prepend=0)
    if n and (int(lens.min()) < 2 or int(lens.max()) > MAX_ID_BYTES + 1):
        raise ValueError(f"a user id is 1..{MAX_ID_BYTES} UTF-8 bytes")
    return data, lens.astype(np.int64)


def _check_utf8(data: U8) -> None:
    if data.size == 0 or int(data.max()) < 0x80:
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = data.data
    step = 1 << 24
    try:
        for start in range(0, data.size, step):
            decoder.decode(view[start : start + step])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise ValueError(f"user ids must be UTF-8: {e}") from None


def _bool_flags(discoverable: npt.NDArray[np.bool_] | None, n: int) -> BoolArr | None:
    if discoverable is None:
        return None
    flags = np.asarray(discoverable, dtype=np.bool_)
    if flags.shape != (n,):
        raise ValueError(f"discoverable must have shape ({n},), got {flags.shape}")
    return flags


@dataclass(frozen=True)
class GrownTable:
    """A bigger slot array for a DirectoryIndex (see :meth:`DirectoryIndex.grown_table`)."""

    version: int
    n_buckets: int
    raw: U64
    flat: U64


class DirectoryIndex:
    """Directory key -> (user id, discoverable), read-optimised for batched lookups.

    ``capacity`` is the number of entries to size for up front: the table then holds
    ``1.25 * capacity`` entries before it has to grow (a rehash, which blocks for about a
    second per 10M entries), and over-sizing it costs about 20 bytes per unused entry
    (the record log is allocated lazily, as ``np.empty``). Single-threaded: no locking.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._initial_capacity = capacity
        self._reset(capacity)

    # ------------------------------------------------------------------ state

    def _reset(self, capacity: int) -> None:
        self._version = next(_changes)  # renewed by every change (see grown_table)
        capacity = max(capacity, 16)
        n_buckets = _nb_for(capacity, GROW_LOAD)
        self._set_table(n_buckets, *_new_flat(n_buckets + _TAIL_BUCKETS))
        self._log: U64 = np.empty((capacity * 2, 2), dtype=np.uint64)
        self._used = 0  # cells of the log in use
        self._garbage = 0  # cells of the log no slot refers to
        self._count = 0

    def _set_table(self, n_buckets: int, raw: U64, flat: U64) -> None:
        self._nb = n_buckets
        self._nb_u64 = np.uint64(n_buckets)
        self._raw = raw
        self._flat = flat
        self._buckets: U64 = flat.reshape(-1, BUCKET)

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        """Remove every entry and release the memory beyond the initial capacity."""
        self._reset(self._initial_capacity)

    def memory_bytes(self) -> int:
        """Bytes held by the numpy arrays of the index (allocated, not just used)."""
        return int(self._raw.nbytes + self._log.nbytes)

    # ----------------------------------------------------------------- growth

    def needs_growth(self, more: int) -> bool:
        """Whether ``more`` new entries would make the table grow (a rehash of every entry)."""
        return self._count + more > MAX_LOAD * self._nb * BUCKET

    def grown_table(self, more: int) -> GrownTable:
        """The bigger table that ``more`` new entries would need, built without changing the index.

        It only reads the index, and the compiled kernel releases the GIL while it rehashes
        (about 0.2 s per 10M entries), so it may run in a worker thread
        (``await asyncio.to_thread(index.grown_table, n)``) while the event loop goes on
        serving lookups. Install it with :meth:`adopt`, on the loop; no change of the index
        may run meanwhile (adopt refuses a table built before a change).
        """
        n_buckets = max(_nb_for(self._count + more, GROW_LOAD), self._nb + 1)
        return GrownTable(self._version, n_buckets, *self._rehashed(n_buckets, release_gil=True))

    def adopt(self, table: GrownTable) -> bool:
        """Install a table from :meth:`grown_table`; False (and nothing done) if the index
        changed since it was built."""
        if table.version != self._version:
            return False
        self._version = next(_changes)
        self._set_table(table.n_buckets, table.raw, table.flat)
        return True

    # ------------------------------------------------------------ single keys

    def _home(self, lo: int) -> int:
        return (((lo >> 32) * self._nb) >> 32) * BUCKET

    def _probe(self, lo: int, hi: int, start: int) -> int:
        """Exact scalar probe from slot ``start``: the slot of the key, or -1."""
        flat = self._flat
        log = self._log
        fp = hi & _FP_MASK_INT
        p = start
        while True:
            e: int = flat.item(p)
            if e == _EMPTY_INT:
                return -1
            if e & _FP_MASK_INT == fp:
                off = e & _OFF_MASK_INT
                if log.item(off, 0) == lo and log.item(off, 1) == hi:
                    return p
            p += 1

    def _find(self, lo: int, hi: int) -> int:
        return self._probe(lo, hi, self._home(lo))

    def get(self, key: bytes) -> tuple[str, bool] | None:
        """(user id, discoverable) for the key, or None."""
        lo, hi = _key_words(key)
        slot = self._find(lo, hi)
        if slot < 0:
            return None
        e: int = self._flat.item(slot)
        off = e & _OFF_MASK_INT
        body = self._log[off + 1 : off + 1 + ((e >> 32) & _NCELL_MASK_INT)].tobytes()
        return body[: body.index(0)].decode("utf-8"), bool(e & _DBIT_INT)

    def upsert(self, key: bytes, user_id: str, discoverable: bool) -> None:
        """Insert the entry for ``key``, or replace it."""
        lo, hi = _key_words(key)
        rec = _record(lo, hi, _encode_id(user_id))
        self._version = next(_changes)
        cells = rec.shape[0] - 1
        disc = _DBIT_INT if discoverable else 0
        slot = self._find(lo, hi)
        if slot >= 0:
            e: int = self._flat.item(slot)
            off = e & _OFF_MASK_INT
            old = (e >> 32) & _NCELL_MASK_INT
            if cells <= old:
                self._log[off + 1 : off + 1 + cells] = rec[1:]
                self._garbage += old - cells
            else:
                off = self._append(rec)
                self._garbage += 1 + old
            self._flat[slot] = (hi & _FP_MASK_INT) | disc | (cells << 32) | off
            self._maybe_compact()
            return
        if self._count + 1 > MAX_LOAD * self._nb * BUCKET:
            self._rebuild(max(_nb_for(self._count + 1, GROW_LOAD), self._nb + 1))
        off = self._append(rec)
        self._insert_one((hi & _FP_MASK_INT) | disc | (cells << 32) | off, self._home(lo))
        self._count += 1

    def remove(self, key: bytes) -> bool:
        """Remove the entry for ``key``; True if it was there."""
        lo, hi = _key_words(key)
        slot = self._find(lo, hi)
        if slot < 0:
            return False
        self._version = next(_changes)
        e: int = self._flat.item(slot)
        self._delete_slot(slot)
        self._garbage += 1 + ((e >> 32) & _NCELL_MASK_INT)
        self._count -= 1
        self._maybe_compact()
        return True

    def set_discoverable(self, key: bytes, discoverable: bool) -> bool:
        """Set the flag of the entry for ``key``; False if there is none."""
        lo, hi = _key_words(key)
        slot = self._find(lo, hi)
        if slot < 0:
            return False
        self._version = next(_changes)
        e: int = self._flat.item(slot)
        self._flat[slot] = (e | _DBIT_INT) if discoverable else (e & ~_DBIT_INT)
        return True

    # ------------------------------------------------------------------ slots

    def _insert_one(self, val: int, home: int) -> None:
        flat = self._flat
        p = home
        while flat.item(p) != _EMPTY_INT:
            p += 1
        if p >= flat.size - BUCKET:
            self._extend_tail(p)
        self._flat[p] = val

    def _delete_slot(self, hole: int) -> None:
        """Backward-shift deletion: pull later entries of the run back into the hole."""
        flat = self._flat
        log = self._log
        j = hole + 1
        while True:
            e: int = flat.item(j)
            if e == _EMPTY_INT:
                break
            if self._home(log.item(e & _OFF_MASK_INT, 0)) <= hole:
                flat[hole] = e
                hole = j
            j += 1
        flat[hole] = _EMPTY

    def _extend_tail(self, pos: int) -> None:
        """Grow the slot array so that slot ``pos`` is not in its last bucket."""
        old = self._flat
        have = old.size // BUCKET
        n_buckets = max(pos // BUCKET + 1 + _TAIL_BUCKETS, have + (have - self._nb))  # double the tail
        raw, flat = _new_flat(n_buckets)
        flat[: old.size] = old
        self._set_table(self._nb, raw, flat)

    def _buckets_of(self, lo: U64) -> I64:
        """Home buckets of an array of lo words."""
        out: U64 = ((lo >> _S32) * self._nb_u64) >> _S32
        return out.view(np.int64)

    def _rebuild(self, n_buckets: int, extra: U64 | None = None) -> None:
        """Rebuild the table with ``n_buckets`` home buckets from its entries plus ``extra`` slots."""
        self._set_table(n_buckets, *self._rehashed(n_buckets, extra))

    def _rehashed(
        self, n_buckets: int, extra: U64 | None = None, release_gil: bool = False
    ) -> tuple[U64, U64]:
        """A new slot array (allocation, slots) of ``n_buckets`` home buckets holding the
        entries plus ``extra`` slots. Reads the index and changes nothing."""
        if _kernel is not None:  # in the order of the old slots: the new homes nearly ascend
            raw, flat = _new_flat(n_buckets + _TAIL_BUCKETS)
            raw, flat = self._kernel_insert(raw, flat, n_buckets, self._flat, release_gil)
            if extra is not None:
                raw, flat = self._kernel_insert(raw, flat, n_buckets, extra, release_gil)
            return raw, flat
        vals = self._flat[self._flat != _EMPTY]
        if extra is not None and extra.size:
            vals = np.concatenate((vals, extra))
        order_key = self._log[(vals & _OFF_MASK).view(np.int64), 0] >> _S32
        order_key <<= _S32
        order_key |= _arange(vals.size).view(np.uint64)
        order_key.sort()
        return _placed(n_buckets, vals.take((order_key & _OFF_MASK).view(np.int64)), order_key >> _S32)

    def _kernel_insert(
        self, raw: U64, flat: U64, n_buckets: int, vals: U64, release_gil: bool
    ) -> tuple[U64, U64]:
        """Insert slot values ``vals`` (of absent keys; EMPTY ones are skipped) into ``flat``
        with the compiled loop, lengthening its tail as needed; returns the slot array."""
        assert _kernel is not None
        start = 0
        while (start := _kernel.insert(flat, self._log, n_buckets, vals, start, release_gil)) < vals.size:
            if start < 0:
                raise RuntimeError("directory index: a slot points outside the record log")
            have = flat.size // BUCKET
            raw, longer = _new_flat(have + max(_TAIL_BUCKETS, have - n_buckets))  # double the tail
            longer[: flat.size] = flat
            flat = longer
        return raw, flat

    def _insert_absent(self, vals: U64, lo: U64) -> None:
        """Insert entries whose keys are absent: their slot values and the lo words of their keys."""
        if _kernel is None:
            self._insert_rounds(vals, self._buckets_of(lo) * BUCKET)
            return
        raw, flat = self._kernel_insert(self._raw, self._flat, self._nb, vals, False)
        if flat is not self._flat:
            self._set_table(self._nb, raw, flat)

    def _insert_rounds(self, vals: U64, pos: I64) -> None:
        """Insert absent entries (slot values, home slots) in vectorised rounds of linear probing."""
        while vals.size:
            top = int(pos.max())
            if top >= self._flat.size - BUCKET:
                self._extend_tail(top)
            flat = self._flat
            free = flat[pos] == _EMPTY
            advance = ~free
            if free.any():
                fpos = pos[free]
                fval = vals[free]
                flat[fpos] = fval  # of several entries racing for one slot, one wins
                advance[free] = flat[fpos] != fval
            pos = pos[advance] + 1
            vals = vals[advance]

    # -------------------------------------------------------------------- log

    def _reserve(self, cells: int) -> int:
        """Make room for ``cells`` more cells at the end of the log; returns where they start."""
        start = self._used
        end = start + cells
        if end > _MAX_CELLS:
            self._compact()
            start = self._used
            end = start + cells
            if end > _MAX_CELLS:
                raise MemoryError("the record log of the directory index is full")
        if end > self._log.shape[0]:
            log = np.empty((min(max(end, self._log.shape[0] * 5 // 4), _MAX_CELLS), 2), dtype=np.uint64)
            log[:start] = self._log[:start]
            self._log = log
        self._used = end
        return start

    def _append(self, rec: U64) -> int:
        start = self._reserve(rec.shape[0])
        self._log[start : start + rec.shape[0]] = rec
        return start

    def _id_cells(self, vals: U64) -> U64:
        """The id cells of the records of hits ``vals`` (``cells << 32 | offset``), concatenated."""
        cells = (vals >> _S32).view(np.int64)
        first = (vals & _OFF_MASK).view(np.int64) - cells.cumsum()
        first += cells
        src = first.repeat(cells)
        src += _arange(src.size + 1)[1:]  # + 1: the id starts in the cell after the key
        out: U64 = self._log.take(src, axis=0)
        return out

    def _maybe_compact(self) -> None:
        if self._garbage > _COMPACT_MIN_CELLS and self._garbage > self._used - self._garbage:
            self._compact()

    def _compact(self) -> None:
        """Copy the live records into a new log, dropping the garbage, and repoint the slots."""
        where = (self._flat != _EMPTY).nonzero()[0]
        live = self._used - self._garbage
        log = np.empty((max(1024, live + live // 4), 2), dtype=np.uint64)
        used = 0
        flat = self._flat
        for start in range(0, where.size, _BUILD_CHUNK):
            part = where[start : start + _BUILD_CHUNK]
            vals = flat[part]
            sizes = ((vals >> _S32) & np.uint64(_NCELL_MASK_INT)).view(np.int64) + 1
            ends = sizes.cumsum()
            src = (vals & _OFF_MASK).view(np.int64) - ends + sizes
            src = src.repeat(sizes)
            src += _arange(src.size)
            log[used : used + src.size] = self._log.take(src, axis=0)
            flat[part] = (vals & ~_OFF_MASK) | (ends - sizes + used).view(np.uint64)
            used += src.size
        self._log = log
        self._used = used
        self._garbage = 0

    # ---------------------------------------------------------------- lookups

    def lookup(self, keys: bytes) -> tuple[npt.NDArray[np.uint32], list[str]]:
        """Of n packed 16-byte keys, the ones present and discoverable.

        Returns their ascending positions in ``keys`` (uint32) and their user ids, in
        the same order. Raises ValueError if ``keys`` is not a multiple of 16 bytes.
        """
        if _kernel is not None:
            out = np.empty(len(keys) // KEY_SIZE, dtype=np.uint32)
            found, found_ids = _kernel.lookup(self._flat, self._log, self._nb, keys, out)
            return out[:found], found_ids
        q = _parse_keys(keys)
        n = q.shape[0]
        if n == 0 or self._count == 0:
            return np.empty(0, dtype=np.uint32), []
        if n <= _CHUNK:
            return self._lookup(q)
        parts: list[npt.NDArray[np.uint32]] = []
        ids: list[str] = []
        for start in range(0, n, _CHUNK):
            p, i = self._lookup(q[start : start + _CHUNK])
            parts.append(p + np.uint32(start))
            ids += i
        return np.concatenate(parts), ids

    def lookup_packed(
        self, keys: bytes, id_prefix: bytes = b""
    ) -> tuple[npt.NDArray[np.uint32], bytes, bytes]:
        """:meth:`lookup` with its results also packed (index/packed.py): the positions, the
        positions as varints, and each user id as ``id_prefix || varint(length) || UTF-8``."""
        if _kernel is not None:
            out = np.empty(len(keys) // KEY_SIZE, dtype=np.uint32)
            found, positions, ids = _kernel.lookup_packed(
                self._flat, self._log, self._nb, keys, out, id_prefix
            )
            return out[:found], positions, ids
        at, found_ids = self.lookup(keys)
        return at, pack_varints(at), pack_strings(found_ids, id_prefix)

    def _lookup(self, q: U64) -> tuple[npt.NDArray[np.uint32], list[str]]:
        homes = q[:, 0] >> _S32
        homes *= self._nb_u64
        homes >>= _S32
        window = self._buckets.take(homes.view(np.int64), axis=0)  # (n, BUCKET): each key's home bucket
        f = q[:, 1] & _FP_MASK
        f |= _DBIT
        diff = np.subtract(window, f[:, None]).reshape(-1)
        hits = (diff < _HIT_DISC).nonzero()[0]
        vals = diff[hits]  # cells << 32 | offset, of each hit's record
        pos = hits >> _BUCKET_SHIFT
        same = self._log.take((vals & _OFF_MASK).view(np.int64), axis=0) == q.take(pos, axis=0)
        if not same.all():
            pos, vals = self._lookup_exact(q, homes, window, pos, vals, same)
        elif window[:, BUCKET - 1].min() != _EMPTY:  # some home bucket is full
            pos, vals = self._lookup_deep(q, homes, window, pos, vals)
        if not pos.size:
            return np.empty(0, dtype=np.uint32), []
        body = self._id_cells(vals).tobytes().translate(None, b"\xff")
        ids = body.decode("utf-8").split("\x00")
        ids.pop()
        return pos.astype(np.uint32), ids

    def _lookup_deep(self, q: U64, homes: U64, window: U64, pos: I64, vals: U64) -> tuple[I64, U64]:
        """Keys whose home bucket is full and holds no hit may lie further on: probe those
        (a handful per thousand keys) with the exact scalar probe from the next bucket."""
        deep = (window[:, BUCKET - 1] != _EMPTY).nonzero()[0]
        if pos.size:
            at = pos.searchsorted(deep)
            np.minimum(at, pos.size - 1, out=at)
            deep = deep[pos[at] != deep]
        more: list[int] = []
        more_vals: list[int] = []
        for i in deep.tolist():
            slot = self._probe(q.item(i, 0), q.item(i, 1), (homes.item(i) + 1) * BUCKET)
            if slot >= 0:
                e: int = self._flat.item(slot)
                if e & _DBIT_INT:
                    more.append(i)
                    more_vals.append(e & _HIT_VALUE_INT)
        return self._merge(pos, vals, more, more_vals)

    def _lookup_exact(
        self, q: U64, homes: U64, window: U64, pos: I64, vals: U64, same: BoolArr
    ) -> tuple[I64, U64]:
        """After a fingerprint false positive (rare): keep the verified hits, and decide
        every other key that had a hit or whose home bucket is full with the exact probe."""
        ok = same.all(axis=1)
        undecided = np.zeros(q.shape[0], dtype=np.bool_)
        undecided[pos[~ok]] = True
        undecided[window[:, BUCKET - 1] != _EMPTY] = True
        pos, vals = pos[ok], vals[ok]
        undecided[pos] = False
        more: list[int] = []
        more_vals: list[int] = []
        for i in undecided.nonzero()[0].tolist():
            slot = self._probe(q.item(i, 0), q.item(i, 1), homes.item(i) * BUCKET)
            if slot >= 0:
                e: int = self._flat.item(slot)
                if e & _DBIT_INT:
                    more.append(i)
                    more_vals.append(e & _HIT_VALUE_INT)
        return self._merge(pos, vals, more, more_vals)

    @staticmethod
    def _merge(pos: I64, vals: U64, more: list[int], more_vals: list[int]) -> tuple[I64, U64]:
        if not more:
            return pos, vals
        pos = np.concatenate((pos, np.array(more, dtype=np.int64)))
        vals = np.concatenate((vals, np.array(more_vals, dtype=np.uint64)))
        order = pos.argsort(kind="stable")
        return pos[order], vals[order]

    def _probe_all(self, q: U64) -> tuple[I64, I64]:
        """Present keys of q, discoverable or not: their positions in q and their slots."""
        n = q.shape[0]
        if _kernel is not None:
            at = np.empty(n, dtype=np.int64)
            slots = np.empty(n, dtype=np.int64)
            found = _kernel.find(self._flat, self._log, self._nb, np.ascontiguousarray(q), at, slots)
            return at[:found], slots[:found]
        buckets = self._buckets_of(q[:, 0])
        f = q[:, 1] & _FP_MASK
        who = _arange(n)
        found_at: list[I64] = []
        found_slot: list[I64] = []
        while who.size:
            block = self._buckets.take(buckets, axis=0)
            diff = block.reshape(-1) - f.repeat(BUCKET)
            hits = (diff < _HIT_ANY).nonzero()[0]
            at = hits >> _BUCKET_SHIFT
            found_at.append(who[at])
            found_slot.append(buckets[at] * BUCKET + (hits & (BUCKET - 1)))
            going = block[:, BUCKET - 1] != _EMPTY  # a full bucket without a hit: on to the next
            going[at] = False
            who = who[going]
            buckets = buckets[going] + 1
            f = f[going]
        at = np.concatenate(found_at)
        slots = np.concatenate(found_slot)
        offs = (self._flat.take(slots) & _OFF_MASK).view(np.int64)
        ok = (self._log.take(offs, axis=0) == q.take(at, axis=0)).all(axis=1)
        if ok.all():
            return at, slots
        # Fingerprint false positives: probe their keys exactly.
        at, slots, wrong = at[ok], slots[ok], at[~ok]
        undecided = np.zeros(n, dtype=np.bool_)
        undecided[wrong] = True
        undecided[at] = False
        more = [(i, self._find(int(q[i, 0]), int(q[i, 1]))) for i in undecided.nonzero()[0].tolist()]
        more = [(i, s) for i, s in more if s >= 0]
        if more:
            at = np.concatenate((at, np.array([i for i, _ in more], dtype=np.int64)))
            slots = np.concatenate((slots, np.array([s for _, s in more], dtype=np.int64)))
        return at, slots

    # ------------------------------------------------------------------- bulk

    def bulk_load(
        self,
        keys: bytes,
        user_ids: list[str],
        discoverable: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """Upsert n entries at once: n packed 16-byte keys and their n user ids.

        ``discoverable`` is an (n,) bool array (default: all discoverable). Entries
        already in the index are replaced; if a key appears more than once in the
        batch, its last occurrence wins.
        """
        q = _parse_keys(keys)
        n = len(user_ids)
        if q.shape[0] != n:
            raise ValueError(f"{q.shape[0]} keys but {n} user ids")
        blob = ("\x00".join(user_ids) + "\x00").encode("utf-8") if n else b""
        data, lens = _split_blob(blob, n)
        self._bulk(q, data, lens, _bool_flags(discoverable, n))

    def bulk_load_packed(
        self,
        keys: bytes,
        id_blob: bytes,
        discoverable: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """:meth:`bulk_load` with the ids as one blob of n NUL-terminated UTF-8 ids."""
        q = _parse_keys(keys)
        n = q.shape[0]
        data, lens = _split_blob(id_blob, n)
        _check_utf8(data)
        self._bulk(q, data, lens, _bool_flags(discoverable, n))

    def _bulk(self, q: U64, data: U8, lens: I64, disc: BoolArr | None) -> None:
        n = q.shape[0]
        if n == 0:
            return
        self._version = next(_changes)
        lo = np.ascontiguousarray(q[:, 0])
        hi = np.ascontiguousarray(q[:, 1])
        order, top = _last_of_each_by_home(lo, hi)
        cells = (lens + (_CELL - 1)) // _CELL  # id cells of each entry
        offs = self._write_records(lo, hi, data, lens, cells)
        if order.size < n:  # the records of the dropped duplicates are garbage at once
            self._garbage += int(cells.sum() - cells[order].sum()) + n - order.size
        vals = hi[order] & _FP_MASK
        vals |= _DBIT if disc is None else disc[order].astype(np.uint64) << np.uint64(36)
        vals |= cells[order].view(np.uint64) << _S32
        vals |= offs[order].view(np.uint64)
        new_lo = lo[order]
        if self._count:
            absent = self._replace_present(np.stack((new_lo, hi[order]), axis=1), vals)
            if absent is not None:
                vals, new_lo, top = vals[absent], new_lo[absent], top[absent]
        if vals.size:
            self._insert_new(vals, new_lo, top)
        self._maybe_compact()

    def _replace_present(self, q: U64, vals: U64) -> BoolArr | None:
        """Write slot values ``vals`` over the entries of the keys ``q`` that are present;
        returns which keys are absent (None: all of them)."""
        exists = np.zeros(q.shape[0], dtype=np.bool_)
        for start in range(0, q.shape[0], _CHUNK):
            at, slots = self._probe_all(q[start : start + _CHUNK])
            if at.size:
                at += start
                old = self._flat.take(slots)
                self._garbage += int(((old >> _S32) & np.uint64(_NCELL_MASK_INT)).sum()) + at.size
                self._flat[slots] = vals[at]
                exists[at] = True
        return ~exists if exists.any() else None

    def _insert_new(self, vals: U64, lo: U64, top: U64) -> None:
        """Insert entries of absent keys: slot values, lo words, ``lo >> 32`` (ascending)."""
        count = self._count + vals.size
        grow = count > MAX_LOAD * self._nb * BUCKET
        n_buckets = max(_nb_for(count, GROW_LOAD), self._nb + 1) if grow else self._nb
        if not self._count:  # vals are in order of home already
            self._set_table(n_buckets, *_placed(n_buckets, vals, top))
        elif grow or (_kernel is None and vals.size * _REBUILD_FRACTION > self._count):
            self._rebuild(n_buckets, vals)
        else:
            self._insert_absent(vals, lo)
        self._count = count

    def _write_records(self, lo: U64, hi: U64, data: U8, lens: I64, cells: I64) -> I64:
        """Append the records of a batch, in batch order; returns their offsets (in cells).

        ``data`` holds the batch's ids with terminators back to back, ``lens`` their lengths.
        """
        sizes = cells + 1
        ends = sizes.cumsum()
        total = int(ends[-1])
        base = self._reserve(total)
        log = self._log
        log[base : base + total] = _EMPTY  # every byte 0xFF: the padding
        offs = ends - sizes + base
        log[offs, 0] = lo
        log[offs, 1] = hi
        raw = log.reshape(-1).view(np.uint8)
        byte_ends = lens.cumsum()
        for start in range(0, lens.size, _BUILD_CHUNK):
            stop = min(start + _BUILD_CHUNK, lens.size)
            length = lens[start:stop]
            first = int(byte_ends[start - 1]) if start else 0
            last = int(byte_ends[stop - 1])
            # byte j of the blob, in entry i, goes to (offs[i] + 1) * CELL + j - (start of entry i)
            dst = ((offs[start:stop] + 1) * _CELL + length - byte_ends[start:stop]).repeat(length)
            dst += np.arange(first, last, dtype=np.int64)
            raw[dst] = data[first:last]
        return offs
