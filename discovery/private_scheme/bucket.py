"""The bucket of a prefix: every registered entry whose tag starts with it, padded to one fixed size.

Bucket bytes (integers big-endian)::

    "DPB" | version u8 = 1 | epoch u32 | prefix_bits u8 | capacity u16 | id_pad u8 | prefix |
    capacity x (tag (5 bytes) | sealed id)

Entries are sorted by (tag, sealed). Padding entries have a tag with the bucket's prefix and random other bits
and a random sealed id, so a bucket reads the same whatever it holds; a client opens every entry whose tag is
its own (AES-GCM rejects the others). Every bucket of a layout has exactly ``bucket_size(layout, id_pad)``
bytes.

The layout follows the number of registered users ``n``: ``prefix_bits = max(0, floor(log2(n / MIN_LOAD)))``,
so a prefix stands for ``MIN_LOAD`` to ``2 * MIN_LOAD`` registered users on average, and the capacity is
``ceil(m + 6 * sqrt(m)) + 4`` with ``m = n / 2^prefix_bits``: a Poisson bucket overflows it with a probability
below 1e-9. A server that finds a fuller bucket raises the capacity to that bucket's load.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from discovery.private_scheme.derive import (
    DEFAULT_ID_PAD,
    TAG_BITS,
    TAG_SIZE,
    bucket_prefix,
    open_sealed,
    prefix_size,
    sealed_size,
    tag_of,
)
from discovery.private_scheme.errors import BucketOverflow, SchemeError

VERSION = 1
MIN_LOAD = 32  # the smallest average number of registered users a bucket prefix stands for
_HEADER = struct.Struct(">3sBIBHB")


@dataclass(frozen=True, slots=True)
class BucketLayout:
    prefix_bits: int
    capacity: int


def bucket_layout(registered: int, min_load: int = MIN_LOAD, observed_max_load: int = 0) -> BucketLayout:
    prefix_bits = max(0, (max(registered, 1) // min_load).bit_length() - 1)
    mean = registered / (1 << prefix_bits)
    capacity = math.ceil(mean + 6 * math.sqrt(mean)) + 4
    return BucketLayout(min(prefix_bits, TAG_BITS), max(capacity, observed_max_load))


def bucket_size(layout: BucketLayout, id_pad: int = DEFAULT_ID_PAD) -> int:
    return _HEADER.size + prefix_size(layout.prefix_bits) + layout.capacity * (TAG_SIZE + sealed_size(id_pad))


def prefix_problem(prefix: bytes, prefix_bits: int) -> str | None:
    """Why `prefix` is not a bucket prefix of `prefix_bits` bits, or None."""
    if len(prefix) != prefix_size(prefix_bits):
        return f"must be {prefix_size(prefix_bits)} bytes for a {prefix_bits}-bit prefix"
    if prefix_bits % 8 and prefix[-1] & ((1 << (8 - prefix_bits % 8)) - 1):
        return f"bits after the first {prefix_bits} must be zero"
    return None


def _padding_tag(prefix: bytes, prefix_bits: int) -> bytes:
    top = int.from_bytes(prefix, "big") >> ((-prefix_bits) % 8) if prefix_bits else 0
    rest_bits = TAG_BITS - prefix_bits
    rest = int.from_bytes(os.urandom(TAG_SIZE), "big") & ((1 << rest_bits) - 1)
    return ((top << rest_bits) | rest).to_bytes(TAG_SIZE, "big")


@dataclass(frozen=True)
class Bucket:
    epoch: int
    layout: BucketLayout
    prefix: bytes
    entries: tuple[tuple[bytes, bytes], ...]  # (tag, sealed), `capacity` of them, padding included
    id_pad: int = DEFAULT_ID_PAD

    @classmethod
    def build(
        cls,
        epoch: int,
        layout: BucketLayout,
        prefix: bytes,
        entries: Iterable[tuple[bytes, bytes]],
        id_pad: int = DEFAULT_ID_PAD,
    ) -> Bucket:
        """Pad the registered entries of one prefix to the layout's capacity."""
        problem = prefix_problem(prefix, layout.prefix_bits)
        if problem:
            raise SchemeError(f"bucket prefix {problem}")
        real = list(entries)
        size = sealed_size(id_pad)
        for tag, sealed in real:
            if bucket_prefix(tag, layout.prefix_bits) != prefix or len(sealed) != size:
                raise SchemeError("an entry does not belong to this bucket")
        if len(real) > layout.capacity:
            raise BucketOverflow(f"{len(real)} entries exceed the bucket capacity of {layout.capacity}")
        padding = [
            (_padding_tag(prefix, layout.prefix_bits), os.urandom(size))
            for _ in range(layout.capacity - len(real))
        ]
        return cls(epoch, layout, bytes(prefix), tuple(sorted(real + padding)), id_pad)

    def serialize(self) -> bytes:
        header = _HEADER.pack(
            b"DPB", VERSION, self.epoch, self.layout.prefix_bits, self.layout.capacity, self.id_pad
        )
        return header + self.prefix + b"".join(tag + sealed for tag, sealed in self.entries)

    @classmethod
    def deserialize(cls, data: bytes) -> Bucket:
        if len(data) < _HEADER.size:
            raise SchemeError("a bucket is too short")
        magic, version, epoch, prefix_bits, capacity, id_pad = _HEADER.unpack_from(data)
        if magic != b"DPB" or version != VERSION or prefix_bits > TAG_BITS:
            raise SchemeError("not a version 1 bucket")
        layout = BucketLayout(prefix_bits, capacity)
        if len(data) != bucket_size(layout, id_pad):
            raise SchemeError("a bucket's length does not match its header")
        at = _HEADER.size + prefix_size(prefix_bits)
        step = TAG_SIZE + sealed_size(id_pad)
        entries = tuple(
            (bytes(data[i : i + TAG_SIZE]), bytes(data[i + TAG_SIZE : i + step]))
            for i in range(at, len(data), step)
        )
        return cls(epoch, layout, bytes(data[_HEADER.size : at]), entries, id_pad)

    def open(self, y: bytes) -> list[str]:
        """The user ids sealed for ``y`` in this bucket (none for a false positive of the snapshot)."""
        tag = tag_of(y)
        return [
            user_id
            for entry_tag, sealed in self.entries
            if entry_tag == tag and (user_id := open_sealed(y, self.epoch, sealed, self.id_pad)) is not None
        ]
