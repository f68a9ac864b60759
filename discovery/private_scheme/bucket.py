"""Range buckets: every registered entry whose tag lies in a range of the snapshot's tags, padded to one size.

The grid. A client holds the snapshot's sorted distinct tags ``T`` (``n`` of them). With ``k`` (the server's
``bucket_users``) there are ``B = max(1, n // k)`` buckets; bucket ``j`` covers the ranks
``[floor(j * n / B), floor((j + 1) * n / B))``, so it holds ``floor(n / B)`` or ``ceil(n / B)`` tags: ``k`` or
``k + 1`` once ``n >= k * k``, and ``k`` to ``2k - 1`` below (all ``n`` when ``n < 2k``). The tag of rank
``r`` is in bucket ``j = ((r + 1) * B - 1) // n``. The client asks for the bucket's *range*,
``T[first] || T[last]`` (5 + 5 bytes), the same for every tag of the bucket, so the server learns only that
the contact is one of the ``k`` or more registered users of that range.

The server refuses (``BUCKET_RANGE_REFUSED``) a range that is not 10 bytes, whose first tag is above its
last, or that holds more than ``capacity`` or fewer than ``min_users`` registered users of its released set:
the client's snapshot is then out of date (bring it up to date with a delta and ask again). With ``N`` the
server's registered users, ``capacity = ceil(N / max(1, N // k)) + SLACK`` and
``min_users = max(1, min(k, N) - SLACK)``: ``SLACK`` covers registrations since the client's snapshot and
users that share a tag.

Bucket bytes (integers big-endian)::

    "DPB" | version u8 = 2 | epoch u32 | k u32 | capacity u32 | id_pad u8 | first (5) | last (5) |
    capacity x sealed id

The sealed ids of the range's registered users and random padding, sorted bytewise: no tags. A client opens
the bucket with its own output ``y`` (AES-GCM rejects every other entry).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from discovery.private_scheme.derive import DEFAULT_ID_PAD, TAG_SIZE, open_any, sealed_size
from discovery.private_scheme.errors import SchemeError

VERSION = 2
DEFAULT_BUCKET_USERS = 32  # k: the registered users a bucket fetch hides a contact among, at least
SLACK = 3  # registrations since the client's snapshot, and users sharing a tag
RANGE_SIZE = 2 * TAG_SIZE
_HEADER = struct.Struct(">3sBIIIB")


def bucket_count(n: int, k: int) -> int:
    """``B``: the buckets of a grid over ``n`` distinct tags."""
    if k < 1:
        raise SchemeError("bucket_users is at least 1")
    return max(1, n // k)


def bucket_of_rank(rank: int, n: int, k: int) -> int:
    """The bucket ``j`` holding the tag of rank ``rank`` (0-based) among ``n``."""
    if not 0 <= rank < n:
        raise SchemeError("a rank lies within the snapshot")
    return ((rank + 1) * bucket_count(n, k) - 1) // n


def bucket_ranks(j: int, n: int, k: int) -> tuple[int, int]:
    """Bucket ``j``'s ranks: ``[floor(j n / B), floor((j + 1) n / B))``."""
    b = bucket_count(n, k)
    return j * n // b, (j + 1) * n // b


def bucket_capacity(registered: int, k: int) -> int:
    """The entries of every bucket the server sends, for ``registered`` users."""
    return -(-registered // bucket_count(registered, k)) + SLACK


def min_users(registered: int, k: int) -> int:
    """The fewest registered users a range the server accepts holds."""
    return max(1, min(k, registered) - SLACK)


def range_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a bucket range (``first || last``, first <= last), or None."""
    if len(raw) != RANGE_SIZE:
        return f"must be {RANGE_SIZE} bytes (the first and the last tag of a bucket)"
    if raw[:TAG_SIZE] > raw[TAG_SIZE:]:
        return "its first tag is above its last"
    return None


def bucket_size(capacity: int, id_pad: int = DEFAULT_ID_PAD) -> int:
    return _HEADER.size + RANGE_SIZE + capacity * sealed_size(id_pad)


@dataclass(frozen=True)
class Bucket:
    epoch: int
    k: int
    capacity: int
    range: bytes  # first || last
    sealed: tuple[bytes, ...]  # `capacity` of them, padding included, sorted
    id_pad: int = DEFAULT_ID_PAD

    @classmethod
    def build(
        cls,
        epoch: int,
        k: int,
        capacity: int,
        range_: bytes,
        sealed: Iterable[bytes],
        id_pad: int = DEFAULT_ID_PAD,
    ) -> Bucket:
        """Pad the sealed ids of one range's registered users to the capacity."""
        problem = range_problem(range_)
        if problem:
            raise SchemeError(f"a bucket range {problem}")
        real = list(sealed)
        size = sealed_size(id_pad)
        if any(len(s) != size for s in real):
            raise SchemeError(f"a sealed id is {size} bytes")
        if len(real) > capacity:
            raise SchemeError(f"{len(real)} entries exceed the bucket capacity of {capacity}")
        padding = [os.urandom(size) for _ in range(capacity - len(real))]
        return cls(epoch, k, capacity, bytes(range_), tuple(sorted(real + padding)), id_pad)

    def serialize(self) -> bytes:
        header = _HEADER.pack(b"DPB", VERSION, self.epoch, self.k, self.capacity, self.id_pad)
        return header + self.range + b"".join(self.sealed)

    @classmethod
    def deserialize(cls, data: bytes) -> Bucket:
        if len(data) < _HEADER.size + RANGE_SIZE:
            raise SchemeError("a bucket is too short")
        magic, version, epoch, k, capacity, id_pad = _HEADER.unpack_from(data)
        if magic != b"DPB" or version != VERSION:
            raise SchemeError(f"not a version {VERSION} bucket")
        if len(data) != bucket_size(capacity, id_pad):
            raise SchemeError("a bucket's length does not match its header")
        at = _HEADER.size + RANGE_SIZE
        step = sealed_size(id_pad)
        sealed = tuple(bytes(data[i : i + step]) for i in range(at, len(data), step))
        return cls(epoch, k, capacity, bytes(data[_HEADER.size : at]), sealed, id_pad)

    def open(self, y: bytes) -> list[str]:
        """The user ids sealed for ``y`` in this bucket (none for a false positive of the snapshot)."""
        return open_any(y, self.epoch, self.sealed, self.id_pad)
