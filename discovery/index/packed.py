"""The packed form of lookup results (``DirectoryIndex.lookup_packed``), and its helpers.

A transport frames a lookup's results without a Python object per match when they come packed:

* positions: each as an unsigned LEB128 varint (the body of a protobuf packed ``uint32`` field);
* user ids: each as ``prefix || varint(length) || UTF-8 bytes``. With the protobuf key of a
  ``repeated string`` field as the prefix, that is the field's encoding, element by element.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

_ONE_BYTE = [bytes((v,)) for v in range(0x80)]


def varint(value: int) -> bytes:
    """``value`` (>= 0) as an unsigned LEB128 varint."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_size(value: int) -> int:
    """The length of ``varint(value)``."""
    return max(1, -(-value.bit_length() // 7))


def pack_varints(values: npt.NDArray[np.uint32] | Iterable[int]) -> bytes:
    return b"".join(varint(int(v)) for v in values)


def pack_strings(strings: Iterable[str], prefix: bytes = b"") -> bytes:
    """Each string as ``prefix || varint(length) || UTF-8``."""
    parts = []
    for text in strings:
        raw = text.encode("utf-8")
        parts += [prefix, varint(len(raw)), raw]
    return b"".join(parts)


def unpack_strings(packed: bytes, prefix_size: int = 0) -> list[str]:
    """The strings of :func:`pack_strings` (whatever the prefix, of ``prefix_size`` bytes)."""
    out = []
    at, end = 0, len(packed)
    while at < end:
        at += prefix_size
        length = shift = 0
        while True:
            byte = packed[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        out.append(packed[at : at + length].decode("utf-8"))
        at += length
    return out
