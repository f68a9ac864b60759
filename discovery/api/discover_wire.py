"""Discover on the wire: the request decoded without a message object, the response encoded straight
from a DirectoryMatch and padded to a fixed size.

**Decoding.** A DiscoverRequest is three bytes fields. :func:`decode_request` reads the canonical
form (each field as a length-delimited record, in any order, the last of a field winning, as protobuf
reads it) by hand; anything else (an unknown field, another wire type, an odd length) goes through
protobuf's parser,
so every request decodes exactly as protobuf decodes it.

**Encoding.** The index hands over its matches packed (index/packed.py): the positions as varints and
each user id behind the key of ``match_user_ids``. The response is those bytes framed as the
message's fields, in field-number order (``match_indices`` packed, ``match_user_ids``, ``token``,
``padding``), which is how protobuf itself serialises it. Building a ``pb.DiscoverResponse`` instead
costs a Python object per match and two passes over them for the size and the bytes: about a
quarter of the instructions of a whole Discover (docs/perf/end-to-end-default.md).
tests/test_discover_wire.py checks that the bytes parse as the message with the same content.

**Padding** (as CDSI answers). A response is padded (``DiscoverResponse.padding``, zero bytes) to a
size fixed by the number of contact hashes asked about: ``BASE + n * SLOT`` bytes, rounded up to a
multiple of ``BUCKET``. ``SLOT`` covers one match (a position of up to 3 bytes and a user id of up
to 40 bytes with its 2 bytes of framing: a UUID is 36), so every response to a request of n hashes
has that size whatever matched. Only a response whose matches carry longer user ids than the slot
allows outgrows it; it is then rounded up to the next ``BUCKET`` bytes, which reveals no more than a
bucket of the excess (see docs/threat-model.md). The SDK ignores the field.
"""

from __future__ import annotations

from typing import NamedTuple

from discovery.core.model import DirectoryMatch
from discovery.index.packed import varint, varint_size
from discovery.v1 import discovery_pb2 as pb

BASE = 64  # the token (41 bytes and framing) and the field tags
SLOT = 48
BUCKET = 256

_FIELDS = pb.DiscoverResponse.DESCRIPTOR.fields_by_name


def _key(name: str) -> bytes:
    """The key of a length-delimited field (wire type 2: bytes, strings and packed scalars)."""
    return varint(_FIELDS[name].number << 3 | 2)


INDICES_KEY = _key("match_indices")
#: What precedes each packed user id: the key of ``match_user_ids``.
USER_ID_PREFIX = _key("match_user_ids")
TOKEN_KEY = _key("token")
PADDING_KEY = _key("padding")
_ZEROS = bytes(64 * 1024)


class DiscoverCall(NamedTuple):
    """The fields of a DiscoverRequest (the servicer reads them by the message's names)."""

    contact_hashes: bytes = b""
    previous_token: bytes = b""
    previous_contact_hashes: bytes = b""


_REQUEST_FIELDS = pb.DiscoverRequest.DESCRIPTOR.fields_by_name
#: The key byte of each field (wire type 2) -> its index in DiscoverCall.
_REQUEST_KEYS = {_REQUEST_FIELDS[name].number << 3 | 2: i for i, name in enumerate(DiscoverCall._fields)}
assert all(key < 0x80 for key in _REQUEST_KEYS)  # one-byte keys: fields 1 to 15


def decode_request(data: bytes) -> DiscoverCall:
    """The request's fields, as ``pb.DiscoverRequest.FromString(data)`` reads them (protobuf's
    DecodeError for bytes that are not a DiscoverRequest)."""
    fields = [b"", b"", b""]
    at, end = 0, len(data)
    while at < end:
        index = _REQUEST_KEYS.get(data[at])
        if index is None:
            return _decoded_by_protobuf(data)
        length = shift = 0
        while True:
            at += 1
            if at >= end or shift > 28:  # truncated, or a length of more than 5 bytes
                return _decoded_by_protobuf(data)
            byte = data[at]
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        at += 1
        if at + length > end:
            return _decoded_by_protobuf(data)  # which refuses it
        fields[index] = data[at : at + length]
        at += length
    return DiscoverCall(*fields)


def _decoded_by_protobuf(data: bytes) -> DiscoverCall:
    message = pb.DiscoverRequest.FromString(data)
    return DiscoverCall(*(getattr(message, name) for name in DiscoverCall._fields))


def target_size(n: int) -> int:
    """The padded size of a response to a request of ``n`` contact hashes."""
    return -(-(BASE + n * SLOT) // BUCKET) * BUCKET


def padding_length(natural: int, n: int) -> int:
    """How many padding bytes bring a response of ``natural`` bytes to ``target_size(n)`` (or, when
    the matches outgrow that, to the next multiple of BUCKET); 0: none is needed."""
    target = target_size(n)
    while True:
        if target < natural:
            target += -(-(natural - target) // BUCKET) * BUCKET
        gap = target - natural
        if gap == 0:
            return 0
        # The field costs its key, its length prefix and the bytes; a gap of 1 or 2 cannot be
        # filled (an empty bytes field is not sent), so such a response takes the next bucket.
        length = gap - len(PADDING_KEY) - 1
        while length >= 0 and len(PADDING_KEY) + varint_size(length) + length != gap:
            length -= 1
        if length > 0:
            return length
        target += BUCKET


def encode_response(match: DirectoryMatch) -> bytes:
    """The serialised DiscoverResponse of ``match``, padded (its ids packed behind USER_ID_PREFIX)."""
    if match.packed_user_ids and match.id_prefix != USER_ID_PREFIX:
        raise ValueError("the match's user ids are not packed behind the key of match_user_ids")
    parts: list[bytes | memoryview] = []
    if match.packed_positions:
        parts += [INDICES_KEY, varint(len(match.packed_positions)), match.packed_positions]
    parts.append(match.packed_user_ids)
    if match.token:
        parts += [TOKEN_KEY, varint(len(match.token)), match.token]
    length = padding_length(sum(map(len, parts)), match.checked)
    if length:
        parts += [
            PADDING_KEY,
            varint(length),
            memoryview(_ZEROS)[:length] if length <= len(_ZEROS) else bytes(length),
        ]
    return b"".join(parts)
