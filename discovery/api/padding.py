"""Discover responses whose size depends only on the request size (as CDSI answers).

A response is padded (``DiscoverResponse.padding``, zero bytes) to a size fixed by the number
of contact hashes asked about: ``BASE + n * SLOT`` bytes, rounded up to a multiple of
``BUCKET``. ``SLOT`` covers one match (a position of up to 3 bytes and a user id of up to 40
bytes with its 2 bytes of framing: a UUID is 36), so every response to a request of n hashes
has that size whatever matched. Only a response whose matches carry longer user ids than the
slot allows outgrows it; it is then rounded up to the next ``BUCKET`` bytes, which reveals no
more than a bucket of the excess (see docs/threat-model.md). The SDK ignores the field.
"""

from __future__ import annotations

from discovery.v1 import discovery_pb2 as pb

BASE = 64  # the token (41 bytes and framing) and the field tags
SLOT = 48
BUCKET = 256
_TAG = 1  # the padding field's tag byte


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def target_size(n: int) -> int:
    """The padded size of a response to a request of ``n`` contact hashes."""
    return -(-(BASE + n * SLOT) // BUCKET) * BUCKET


def pad(response: pb.DiscoverResponse, n: int) -> pb.DiscoverResponse:
    """Set ``response.padding`` so that it serialises to ``target_size(n)`` bytes (or, when the
    matches outgrow that, to the next multiple of BUCKET)."""
    natural = response.ByteSize()
    target = target_size(n)
    while True:
        if target < natural:
            target += -(-(natural - target) // BUCKET) * BUCKET
        gap = target - natural
        if gap == 0:
            return response
        # The field costs its tag, its length prefix and the bytes; a gap of 1 or 2 cannot be
        # filled (an empty bytes field is not sent), so such a response takes the next bucket.
        length = gap - _TAG - 1
        while length >= 0 and _TAG + _varint_size(length) + length != gap:
            length -= 1
        if length > 0:
            response.padding = bytes(length)
            return response
        target += BUCKET
