"""The in-memory directory index: directory key -> (user id, discoverable).

This is the hot path of contact discovery. A lookup is a batch of about a thousand
16-byte directory keys and is answered with a fixed number of numpy calls per batch
(plus a few more per *probe round*, and rounds are rare); there is no Python loop per key.

Layout
======

Keys are AES outputs, so they are uniformly random and need no further hashing. The
16 key bytes are read as two little-endian 64-bit words, ``lo`` (bytes 0..7) and ``hi``
(bytes 8..15).

* Rows (one per registered user), in ``_rec``, a ``(rows, 3)`` uint64 array:
  ``[lo, hi, meta]`` with ``meta = id offset (bits 0..39) | id length (bits 40..47)
  | discoverable (bit 63)``. Keeping the three words of a row in one 24-byte record
  means verifying a hit costs one gather (one cache line, mostly) instead of the five
  gathers that separate ``key_hi``/``key_lo``/``flags``/``id_off``/``id_len`` arrays
  would cost. Rows freed by :meth:`DirectoryIndex.remove` go on a free stack and are
  reused.
* User ids, in ``_ids``, one growable uint8 buffer: each id is stored as UTF-8 followed
  by ``b"\\x00"`` (the stored length includes the terminator, at most 129). Bytes of
  removed or replaced ids are counted as garbage; the buffer is compacted (vectorised)
  when the garbage exceeds both the live bytes and 1 MiB.
* The hash table, in ``_flat``, uint64 slots: ``fingerprint << 32 | row`` with a 31-bit
  fingerprint ``hi >> 33`` (so an occupied slot is < 2**63) and ``EMPTY = 2**64 - 1``.
  It is linear probing over slots, with two twists, both to make a batched probe cheap:

  - *Homes are bucket starts.* The slots are grouped in buckets of 8 (64 bytes, one
    cache line; the array is 64-byte aligned) and a key's home slot is the first slot of
    bucket ``((lo >> 32) * n_buckets) >> 32`` (Lemire's multiply-shift range reduction,
    so the bucket count need not be a power of two and the table can be sized to the
    load target instead of the next power of two: 16 bytes per entry at the maximum
    load of 0.5 rather than up to 32). Since an entry always sits in the run of
    occupied slots that starts at its home, a bucket is always filled as a prefix, and
    a key is absent as soon as a bucket that does not hold it has a free slot. So a
    lookup reads *one cache line per key* in the first round, and only keys whose home
    bucket is full (a few percent at load 0.5) go on to the next bucket in a further
    round. The fingerprints in the slots let the round decide "hit" without touching
    the rows; a hit is then verified against the full key in the row (a fingerprint
    false positive, probability about 2**-31 per occupied slot read, falls back to an
    exact scalar probe for that key).
  - *No wrap-around.* The probe sequence runs off the end of the home buckets into a
    tail of spare buckets instead of wrapping; the last bucket of the array is kept
    empty (the tail is extended if an insert would land in it), so every probe stops
    inside the array. This keeps backward-shift deletion (no tombstones) simple: an
    entry can move back into the hole iff its home is at or before the hole.

  The table grows (to load 0.4) when the load would exceed 0.5. A rebuild (growth,
  large bulk loads) is vectorised: entries are sorted by their home (with ``np.sort`` on
  ``(lo >> 32) << 32 | index``, several times faster than ``np.argsort``) and the
  linear-probing position of the i-th is ``i + cummax(home - i)``. Smaller bulk loads
  are inserted in vectorised rounds: every pending key tries its current slot, a
  write-then-read-back decides which of the keys racing for one free slot won, the rest
  move one slot on.

A lookup gathers the matched ids' bytes (with their terminators) from ``_ids`` into one
contiguous array (``np.repeat``/``cumsum``), and one ``bytes.decode().split("\\x00")``
makes the list of ``str``.

Memory per entry at the maximum load: 16 (slots) + 24 (row) + id bytes + 1, plus the
slack of growth (row and id arrays grow by 1.5x; a bulk load into an empty index sizes
them exactly).

The index is not thread-safe; it is meant to be used from one event loop.
"""

from __future__ import annotations

import codecs
import math
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["KEY_SIZE", "MAX_ID_BYTES", "DirectoryIndex"]

U8 = npt.NDArray[np.uint8]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]
IP = npt.NDArray[np.intp]
BoolArr = npt.NDArray[np.bool_]

KEY_SIZE: Final = 16
MAX_ID_BYTES: Final = 128

BUCKET: Final = 8  # slots per bucket: 8 x 8 bytes = one cache line
_BUCKET_SHIFT: Final = 3
_EMPTY_INT: Final = 0xFFFF_FFFF_FFFF_FFFF
_EMPTY: Final = np.uint64(_EMPTY_INT)
_ROW_MASK_INT: Final = 0xFFFF_FFFF
_ROW_MASK: Final = np.uint64(_ROW_MASK_INT)
_MAX_ROWS: Final = 0xFFFF_FFFF  # rows are 0 .. 2**32 - 2, so no occupied slot's row field is all ones
_FP_SHIFT: Final = 33  # fingerprint: the top 31 bits of hi
_OFF_MASK_INT: Final = (1 << 40) - 1
_OFF_MASK: Final = np.uint64(_OFF_MASK_INT)
_LEN_SHIFT: Final = 40
_DISC_INT: Final = 1 << 63
_DISC: Final = np.uint64(_DISC_INT)
_MAX_ID_BUF: Final = 1 << 40

MAX_LOAD: Final = 0.5  # grow when the load of the home buckets would exceed this
GROW_LOAD: Final = 0.4  # load right after growing
_TAIL_BUCKETS: Final = 16  # spare buckets after the home buckets; the last one stays empty
_CHUNK: Final = 1 << 16  # keys per vectorised probe (bounds temporaries)
_REBUILD_FRACTION: Final = 4  # a bulk insert of more than count / 4 new keys rebuilds the table
_COMPACT_MIN: Final = 1 << 20
_COMPACT_ROWS: Final = 1 << 18  # rows per chunk while compacting the id buffer
_KEY_DTYPE: Final = np.dtype("<u8")


def _nb_for(entries: int, load: float) -> int:
    """Home buckets needed to hold ``entries`` at ``load``."""
    return max(1, math.ceil(entries / (load * BUCKET)))


def _new_flat(n_buckets: int) -> tuple[U64, U64]:
    """A 64-byte aligned slot array of ``n_buckets`` empty buckets, and its allocation."""
    raw: U64 = np.empty(n_buckets * BUCKET + BUCKET, dtype=np.uint64)
    skip = (-int(raw.ctypes.data) % 64) // 8
    flat = raw[skip : skip + n_buckets * BUCKET]
    flat.fill(_EMPTY)
    return raw, flat


def _key_words(key: bytes) -> tuple[int, int]:
    if len(key) != KEY_SIZE:
        raise ValueError(f"a directory key is {KEY_SIZE} bytes, got {len(key)}")
    return int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")


def _parse_keys(keys: bytes) -> U64:
    """n packed keys as an (n, 2) uint64 array of [lo, hi]."""
    size = memoryview(keys).nbytes
    if size % KEY_SIZE:
        raise ValueError(f"packed keys must be a multiple of {KEY_SIZE} bytes, got {size}")
    words = np.frombuffer(keys, dtype=_KEY_DTYPE)
    if words.dtype != np.dtype(np.uint64):  # big-endian host
        words = words.astype(np.uint64)
    return words.reshape(-1, 2)


def _encode_id(user_id: str) -> bytes:
    data = user_id.encode("utf-8")
    if not 1 <= len(data) <= MAX_ID_BYTES:
        raise ValueError(f"a user id is 1..{MAX_ID_BYTES} UTF-8 bytes, got {len(data)}")
    if b"\x00" in data:
        raise ValueError("a user id must not contain NUL")
    return data + b"\x00"


def _split_blob(blob: bytes, n: int) -> tuple[U8, IP, IP]:
    """The bytes, starts and lengths (with terminator) of n NUL-terminated ids in ``blob``."""
    data: U8 = np.frombuffer(blob, dtype=np.uint8)
    ends = np.flatnonzero(data == 0) + 1
    if ends.size != n or (n and int(ends[-1]) != data.size) or (not n and data.size):
        raise ValueError(f"expected {n} NUL-terminated user ids (a user id must not contain NUL)")
    lens = np.diff(ends, prepend=0)
    if n and (int(lens.min()) < 2 or int(lens.max()) > MAX_ID_BYTES + 1):
        raise ValueError(f"a user id is 1..{MAX_ID_BYTES} UTF-8 bytes")
    return data, ends - lens, lens


def _check_utf8(data: U8) -> None:
    if data.size == 0 or int(data.max()) < 0x80:
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = np.ascontiguousarray(data).data
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


class DirectoryIndex:
    """Directory key -> (user id, discoverable), read-optimised for batched lookups.

    ``capacity`` is the number of entries to size for up front (it grows beyond that as
    needed). Single-threaded: no locking.
    """

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._initial_capacity = capacity
        self._reset(capacity)

    # ------------------------------------------------------------------ state

    def _reset(self, capacity: int) -> None:
        capacity = max(capacity, 16)
        self._nb = _nb_for(capacity, MAX_LOAD)
        self._raw, self._flat = _new_flat(self._nb + _TAIL_BUCKETS)
        self._buckets: U64 = self._flat.reshape(-1, BUCKET)
        self._rec: U64 = np.zeros((capacity, 3), dtype=np.uint64)
        self._nrows = 0
        self._free: U32 = np.empty(0, dtype=np.uint32)
        self._nfree = 0
        self._ids: U8 = np.empty(max(1024, capacity * 16), dtype=np.uint8)
        self._id_used = 0
        self._garbage = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def clear(self) -> None:
        """Remove every entry and release the memory beyond the initial capacity."""
        self._reset(self._initial_capacity)

    def memory_bytes(self) -> int:
        """Bytes held by the numpy arrays of the index (allocated, not just used)."""
        return int(self._raw.nbytes + self._rec.nbytes + self._ids.nbytes + self._free.nbytes)

    # ------------------------------------------------------------ single keys

    def _home(self, lo: int) -> int:
        return (((lo >> 32) * self._nb) >> 32) * BUCKET

    def _find(self, lo: int, hi: int) -> tuple[int, int]:
        """(slot, row) of the key, or (-1, -1)."""
        flat = self._flat
        rec = self._rec
        fp = hi >> _FP_SHIFT
        p = self._home(lo)
        while True:
            e: int = flat.item(p)
            if e == _EMPTY_INT:
                return -1, -1
            if e >> 32 == fp:
                row = e & _ROW_MASK_INT
                if rec.item(row, 0) == lo and rec.item(row, 1) == hi:
                    return p, row
            p += 1

    def get(self, key: bytes) -> tuple[str, bool] | None:
        """(user id, discoverable) for the key, or None."""
        lo, hi = _key_words(key)
        _, row = self._find(lo, hi)
        if row < 0:
            return None
        meta: int = self._rec.item(row, 2)
        off = meta & _OFF_MASK_INT
        length = (meta >> _LEN_SHIFT) & 0xFF
        user_id = self._ids[off : off + length - 1].tobytes().decode("utf-8")
        return user_id, bool(meta & _DISC_INT)

    def upsert(self, key: bytes, user_id: str, discoverable: bool) -> None:
        """Insert the entry for ``key``, or replace it."""
        lo, hi = _key_words(key)
        data = _encode_id(user_id)
        length = len(data)
        disc = _DISC_INT if discoverable else 0
        _, row = self._find(lo, hi)
        if row >= 0:
            meta: int = self._rec.item(row, 2)
            off = meta & _OFF_MASK_INT
            old = (meta >> _LEN_SHIFT) & 0xFF
            if length <= old:
                self._ids[off : off + length] = np.frombuffer(data, dtype=np.uint8)
                self._garbage += old - length
            else:
                off = self._append_ids(np.frombuffer(data, dtype=np.uint8))
                self._garbage += old
            self._rec[row, 2] = off | (length << _LEN_SHIFT) | disc
            self._maybe_compact()
            return
        if self._count + 1 > MAX_LOAD * self._nb * BUCKET:
            self._rebuild(max(_nb_for(self._count + 1, GROW_LOAD), self._nb + 1))
        off = self._append_ids(np.frombuffer(data, dtype=np.uint8))
        row = int(self._alloc_rows(1)[0])
        self._rec[row] = (lo, hi, off | (length << _LEN_SHIFT) | disc)
        self._insert_one(((hi >> _FP_SHIFT) << 32) | row, self._home(lo))
        self._count += 1

    def remove(self, key: bytes) -> bool:
        """Remove the entry for ``key``; True if it was there."""
        lo, hi = _key_words(key)
        slot, row = self._find(lo, hi)
        if row < 0:
            return False
        self._delete_slot(slot)
        meta: int = self._rec.item(row, 2)
        self._garbage += (meta >> _LEN_SHIFT) & 0xFF
        self._rec[row] = 0
        self._push_free(row)
        self._count -= 1
        self._maybe_compact()
        return True

    def set_discoverable(self, key: bytes, discoverable: bool) -> bool:
        """Set the flag of the entry for ``key``; False if there is none."""
        lo, hi = _key_words(key)
        _, row = self._find(lo, hi)
        if row < 0:
            return False
        meta: int = self._rec.item(row, 2)
        self._rec[row, 2] = (meta | _DISC_INT) if discoverable else (meta & ~_DISC_INT)
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
        rec = self._rec
        j = hole + 1
        while True:
            e: int = flat.item(j)
            if e == _EMPTY_INT:
                break
            if self._home(rec.item(e & _ROW_MASK_INT, 0)) <= hole:
                flat[hole] = e
                hole = j
            j += 1
        flat[hole] = _EMPTY

    def _extend_tail(self, pos: int) -> None:
        """Grow the slot array so that ``pos`` is not in its last bucket."""
        old = self._flat
        have = old.size // BUCKET
        # at least double the tail
        n_buckets = max(pos // BUCKET + 1 + _TAIL_BUCKETS, have + (have - self._nb))
        raw, flat = _new_flat(n_buckets)
        flat[: old.size] = old
        self._raw, self._flat = raw, flat
        self._buckets = flat.reshape(-1, BUCKET)

    def _buckets_of(self, lo: U64) -> npt.NDArray[np.int64]:
        """Home buckets for an array of lo words."""
        top = (lo >> np.uint64(32)).view(np.int64)
        return (top * self._nb) >> 32

    def _homes(self, lo: U64) -> npt.NDArray[np.int64]:
        """Home slots (bucket starts) for an array of lo words."""
        return self._buckets_of(lo) * BUCKET

    def _rebuild(self, n_buckets: int, extra: U64 | None = None) -> None:
        """Rebuild the table with ``n_buckets`` home buckets from its entries plus ``extra`` slot values."""
        vals = self._flat[self._flat != _EMPTY]
        if extra is not None and extra.size:
            vals = np.concatenate((vals, extra))
        total = vals.size
        rows = (vals & _ROW_MASK).view(np.int64)
        order_key = np.take(self._rec[:, 0], rows) >> np.uint64(32)
        order_key <<= np.uint64(32)
        order_key |= np.arange(total, dtype=np.uint64)
        order_key.sort()
        vals = vals[(order_key & _ROW_MASK).view(np.int64)]
        step = np.arange(total, dtype=np.int64)
        homes = (((order_key >> np.uint64(32)).view(np.int64) * n_buckets) >> 32) * BUCKET
        homes -= step
        pos = np.maximum.accumulate(homes)
        pos += step
        end = int(pos[-1]) + 1 if total else 0
        self._nb = n_buckets
        self._raw, self._flat = _new_flat(max(n_buckets, -(-end // BUCKET)) + _TAIL_BUCKETS)
        self._buckets = self._flat.reshape(-1, BUCKET)
        self._flat[pos] = vals

    def _insert_rounds(self, vals: U64, homes: npt.NDArray[np.int64]) -> None:
        """Insert absent entries in vectorised rounds of linear probing."""
        pos = homes
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
                flat[fpos] = fval  # of several keys racing for one slot, one wins
                advance[free] = flat[fpos] != fval
            pos = pos[advance] + 1
            vals = vals[advance]

    # ------------------------------------------------------------------- rows

    def _alloc_rows(self, k: int) -> IP:
        reuse = min(k, self._nfree)
        parts: list[IP] = []
        if reuse:
            parts.append(self._free[self._nfree - reuse : self._nfree].astype(np.intp))
            self._nfree -= reuse
        fresh = k - reuse
        if fresh:
            start = self._nrows
            end = start + fresh
            if end > _MAX_ROWS:
                raise MemoryError("the directory index is full (2**32 - 1 rows)")
            if end > self._rec.shape[0]:
                cap = min(max(end, self._rec.shape[0] * 3 // 2), _MAX_ROWS)
                rec = np.zeros((cap, 3), dtype=np.uint64)
                rec[:start] = self._rec[:start]
                self._rec = rec
            self._nrows = end
            parts.append(np.arange(start, end, dtype=np.intp))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts)

    def _push_free(self, row: int) -> None:
        if self._nfree == self._free.size:
            free = np.empty(max(64, self._free.size * 2), dtype=np.uint32)
            free[: self._nfree] = self._free[: self._nfree]
            self._free = free
        self._free[self._nfree] = row
        self._nfree += 1

    # -------------------------------------------------------------------- ids

    def _append_ids(self, data: U8) -> int:
        start = self._id_used
        end = start + data.size
        if end > _MAX_ID_BUF:
            raise MemoryError("the user id buffer of the directory index is full")
        if end > self._ids.size:
            buf = np.empty(max(end, self._ids.size * 3 // 2), dtype=np.uint8)
            buf[:start] = self._ids[:start]
            self._ids = buf
        self._ids[start:end] = data
        self._id_used = end
        return start

    def _maybe_compact(self) -> None:
        if self._garbage > _COMPACT_MIN and self._garbage > self._id_used - self._garbage:
            self._compact_ids()

    def _compact_ids(self) -> None:
        """Copy the live ids into a new buffer, dropping the garbage."""
        rows = (self._flat[self._flat != _EMPTY] & _ROW_MASK).view(np.int64)
        live = self._id_used - self._garbage
        buf = np.empty(max(1024, live + live // 4), dtype=np.uint8)
        used = 0
        for start in range(0, rows.size, _COMPACT_ROWS):
            part = rows[start : start + _COMPACT_ROWS]
            meta = self._rec[part, 2]
            lens = ((meta >> np.uint64(_LEN_SHIFT)) & np.uint64(0xFF)).view(np.int64)
            ends = np.cumsum(lens)
            size = int(ends[-1])
            buf[used : used + size] = self._gather(meta, lens, ends)
            new_off = (ends - lens + used).view(np.uint64)
            self._rec[part, 2] = (meta & ~_OFF_MASK) | new_off
            used += size
        self._ids = buf
        self._id_used = used
        self._garbage = 0

    def _gather(self, meta: U64, lens: npt.NDArray[np.int64], ends: npt.NDArray[np.int64]) -> U8:
        """The id bytes of ``meta`` concatenated (lens: their lengths, ends: cumsum of lens)."""
        offs = (meta & _OFF_MASK).view(np.int64)
        src = np.repeat(offs - ends + lens, lens)
        src += np.arange(src.size, dtype=np.int64)
        return np.take(self._ids, src)

    def _decode_ids(self, meta: U64) -> list[str]:
        lens = ((meta >> np.uint64(_LEN_SHIFT)) & np.uint64(0xFF)).view(np.int64)
        data = self._gather(meta, lens, np.cumsum(lens))
        ids = data.tobytes().decode("utf-8").split("\x00")
        ids.pop()
        return ids

    # ------------------------------------------------------------------ batch

    def _match(self, q: U64) -> tuple[IP, IP, U64]:
        """Present keys of q (an (n, 2) [lo, hi] array): ascending query positions, rows, records."""
        n = q.shape[0]
        lo = q[:, 0]
        hi = q[:, 1]
        homes = self._buckets_of(lo)
        fps = (hi >> np.uint64(_FP_SHIFT)) << np.uint64(32)
        found = np.full(n, _EMPTY, dtype=np.uint64)  # the row of the fingerprint hit, per query
        buckets = self._buckets
        todo: IP | None = None  # queries still probing (None: all of them)
        while True:
            block = np.take(buckets, homes, axis=0)
            diff = block.reshape(-1) - np.repeat(fps, BUCKET)
            # A slot holding fingerprint f is f << 32 | row: slot - (f << 32) < 2**32 is a hit, and the row.
            hits = np.flatnonzero(diff < np.uint64(1 << 32))
            where = hits >> _BUCKET_SHIFT
            if todo is not None:
                where = todo[where]
            found[where] = diff[hits]
            # A bucket with a free (last) slot ends the probe; a full one without a hit goes on.
            full = np.flatnonzero(block[:, BUCKET - 1] != _EMPTY)
            if not full.size:
                break
            pending = full if todo is None else todo[full]
            going = found[pending] == _EMPTY
            if not going.any():
                break
            keep = full[going]
            todo = pending[going]
            homes = homes[keep] + 1
            fps = fps[keep]
        pos = np.flatnonzero(found != _EMPTY)
        rows = found[pos].view(np.int64)
        recs = np.take(self._rec, rows, axis=0)
        ok = (recs[:, 0] == lo[pos]) & (recs[:, 1] == hi[pos])
        if not ok.all():
            # Fingerprint false positive: decide those keys with an exact scalar probe.
            fixed = [(int(i), self._find(int(lo[i]), int(hi[i]))[1]) for i in pos[~ok]]
            extra = [(i, r) for i, r in fixed if r >= 0]
            pos, rows = pos[ok], rows[ok]
            if extra:
                pos = np.concatenate((pos, np.array([i for i, _ in extra], dtype=np.intp)))
                rows = np.concatenate((rows, np.array([r for _, r in extra], dtype=np.int64)))
                order = np.argsort(pos, kind="stable")
                pos, rows = pos[order], rows[order]
            recs = np.take(self._rec, rows, axis=0)
        return pos, rows, recs

    def lookup(self, keys: bytes) -> tuple[npt.NDArray[np.uint32], list[str]]:
        """Of n packed 16-byte keys, the ones present and discoverable.

        Returns their ascending positions in ``keys`` (uint32) and their user ids, in
        the same order.
        """
        q = _parse_keys(keys)
        n = q.shape[0]
        if n == 0 or self._count == 0:
            return np.empty(0, dtype=np.uint32), []
        if n > _CHUNK:
            parts: list[npt.NDArray[np.uint32]] = []
            ids: list[str] = []
            for start in range(0, n, _CHUNK):
                p, i = self._lookup(q[start : start + _CHUNK])
                parts.append(p + np.uint32(start))
                ids += i
            return np.concatenate(parts), ids
        return self._lookup(q)

    def _lookup(self, q: U64) -> tuple[npt.NDArray[np.uint32], list[str]]:
        pos, _, recs = self._match(q)
        meta = recs[:, 2]
        disc = meta >= _DISC
        if not disc.all():
            pos = pos[disc]
            meta = meta[disc]
        if not pos.size:
            return np.empty(0, dtype=np.uint32), []
        return pos.astype(np.uint32), self._decode_ids(meta)

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
        batch, the last occurrence wins.
        """
        q = _parse_keys(keys)
        n = len(user_ids)
        if q.shape[0] != n:
            raise ValueError(f"{q.shape[0]} keys but {n} user ids")
        blob = ("\x00".join(user_ids) + "\x00").encode("utf-8") if n else b""
        data, starts, lens = _split_blob(blob, n)
        self._bulk(q, data, starts, lens, _bool_flags(discoverable, n))

    def bulk_load_packed(
        self,
        keys: bytes,
        id_blob: bytes,
        discoverable: npt.NDArray[np.bool_] | None = None,
    ) -> None:
        """:meth:`bulk_load` with the ids as one blob of n NUL-terminated UTF-8 ids."""
        q = _parse_keys(keys)
        n = q.shape[0]
        data, starts, lens = _split_blob(id_blob, n)
        _check_utf8(data)
        self._bulk(q, data, starts, lens, _bool_flags(discoverable, n))

    def _bulk(self, q: U64, data: U8, starts: IP, lens: IP, disc: BoolArr | None) -> None:
        n = q.shape[0]
        if n == 0:
            return
        if n >= _MAX_ROWS:
            raise ValueError("too many entries for one bulk load")
        lo = np.ascontiguousarray(q[:, 0])
        hi = np.ascontiguousarray(q[:, 1])
        # Sort by home (lo >> 32), carrying the batch index in the low half of the sort key.
        order_key = lo >> np.uint64(32)
        order_key <<= np.uint64(32)
        order_key |= np.arange(n, dtype=np.uint64)
        order_key.sort()
        order = (order_key & _ROW_MASK).view(np.int64)
        garbage = 0
        # Duplicates within the batch: keys with equal lo >> 32 are adjacent; among those, sort exactly.
        top = order_key >> np.uint64(32)
        same = top[1:] == top[:-1]
        if same.any():
            group = np.zeros(n, dtype=np.bool_)
            group[1:] |= same
            group[:-1] |= same
            sub = order[group]
            sub = sub[np.lexsort((sub, hi[sub], lo[sub]))]
            dup = (lo[sub[1:]] == lo[sub[:-1]]) & (hi[sub[1:]] == hi[sub[:-1]])
            if dup.any():
                drop = np.zeros(n, dtype=np.bool_)
                drop[sub[:-1][dup]] = True  # an earlier occurrence of a key that comes again
                garbage += int(lens[drop].sum())
                order = order[~drop[order]]
        base = self._append_ids(data)
        meta = (starts + base).view(np.uint64) | (lens.view(np.uint64) << np.uint64(_LEN_SHIFT))
        if disc is None:
            meta |= _DISC
        else:
            meta |= disc.astype(np.uint64) << np.uint64(63)
        new = order
        if self._count:
            q_sorted = np.stack((lo[order], hi[order]), axis=1)
            found_at: list[IP] = []
            for start in range(0, order.size, _CHUNK):
                at, rows, recs = self._match(q_sorted[start : start + _CHUNK])
                if at.size:
                    old = recs[:, 2]
                    garbage += int(((old >> np.uint64(_LEN_SHIFT)) & np.uint64(0xFF)).sum())
                    self._rec[rows, 2] = meta[order[at + start]]
                    found_at.append(at + start)
            if found_at:
                exists = np.zeros(order.size, dtype=np.bool_)
                exists[np.concatenate(found_at)] = True
                new = order[~exists]
        k = new.size
        if k:
            rows = self._alloc_rows(k)
            new_lo = lo[new]
            new_hi = hi[new]
            rec = self._rec
            rec[rows, 0] = new_lo
            rec[rows, 1] = new_hi
            rec[rows, 2] = meta[new]
            vals = (new_hi >> np.uint64(_FP_SHIFT)) << np.uint64(32)
            vals |= rows.astype(np.uint64)
            count = self._count + k
            if count > MAX_LOAD * self._nb * BUCKET:
                self._rebuild(max(_nb_for(count, GROW_LOAD), self._nb + 1), vals)
            elif k * _REBUILD_FRACTION > self._count:
                self._rebuild(self._nb, vals)
            else:
                self._insert_rounds(vals, self._homes(new_lo))
            self._count = count
        self._garbage += garbage
        self._maybe_compact()
