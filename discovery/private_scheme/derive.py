"""What a client and the server derive from an OPRF output ``y`` (64 bytes).

    locator  = HMAC-SHA256(key=y, msg="discovery/private/v1/tag")
    tag      = locator[0:5]                      (40 bits, big-endian integer when sorted)
    prefix   = the top `prefix_bits` bits of tag (the bucket the client asks for)
    seal_key = HMAC-SHA256(key=y, msg="discovery/private/v1/seal")   (AES-256-GCM key)

A sealed user id is ``nonce(12) || AES-256-GCM(seal_key, nonce, plaintext, aad)`` with
``plaintext = len(id) (1 byte) || id (UTF-8) || zero bytes up to 1 + id_pad`` and
``aad = "discovery/private/v1/id" || epoch (4 bytes, big-endian) || tag``, so it always has
``12 + 1 + id_pad + 16`` bytes whatever the id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from discovery.private_scheme.errors import SchemeError
from discovery.private_scheme.oprf import OUTPUT_SIZE

LABEL = b"discovery/private/v1/"
TAG_SIZE = 5
TAG_BITS = 8 * TAG_SIZE
NONCE_SIZE = 12
GCM_TAG_SIZE = 16
DEFAULT_ID_PAD = 128  # the service's longest user id (core.validation.MAX_USER_ID_BYTES)


def _prf(y: bytes, label: bytes) -> bytes:
    if len(y) != OUTPUT_SIZE:
        raise SchemeError(f"an OPRF output is {OUTPUT_SIZE} bytes")
    return hmac.new(bytes(y), LABEL + label, hashlib.sha256).digest()


def tag_of(y: bytes) -> bytes:
    """The 5-byte tag of ``y``: what the snapshot holds and the client tests locally."""
    return _prf(y, b"tag")[:TAG_SIZE]


def tag_value(tag: bytes) -> int:
    return int.from_bytes(tag, "big")


def prefix_size(prefix_bits: int) -> int:
    """The bytes of a bucket prefix on the wire."""
    return (prefix_bits + 7) // 8


def bucket_prefix(tag: bytes, prefix_bits: int) -> bytes:
    """The top `prefix_bits` bits of the tag, big-endian in ``ceil(prefix_bits / 8)`` bytes, low bits zero."""
    if not 0 <= prefix_bits <= TAG_BITS:
        raise SchemeError(f"prefix bits must be within 0..{TAG_BITS}")
    value = (tag_value(tag) >> (TAG_BITS - prefix_bits)) << ((-prefix_bits) % 8)
    return value.to_bytes(prefix_size(prefix_bits), "big")


def sealed_size(id_pad: int = DEFAULT_ID_PAD) -> int:
    return NONCE_SIZE + 1 + id_pad + GCM_TAG_SIZE


def _aad(epoch: int, tag: bytes) -> bytes:
    return LABEL + b"id" + struct.pack(">I", epoch) + tag


def seal_user_id(
    y: bytes, epoch: int, user_id: str, id_pad: int = DEFAULT_ID_PAD, nonce: bytes | None = None
) -> bytes:
    """Seal the user id under the key derived from ``y``; only a client that evaluated the number opens it."""
    raw = user_id.encode("utf-8")
    if not raw or len(raw) > id_pad or id_pad > 255:
        raise SchemeError(f"a user id is 1 to {min(id_pad, 255)} bytes of UTF-8")
    nonce = os.urandom(NONCE_SIZE) if nonce is None else nonce
    if len(nonce) != NONCE_SIZE:
        raise SchemeError(f"a nonce is {NONCE_SIZE} bytes")
    plaintext = bytes([len(raw)]) + raw + bytes(id_pad - len(raw))
    return nonce + AESGCM(_prf(y, b"seal")).encrypt(nonce, plaintext, _aad(epoch, tag_of(y)))


def open_sealed(y: bytes, epoch: int, sealed: bytes, id_pad: int = DEFAULT_ID_PAD) -> str | None:
    """The user id sealed for ``y``, or None when the entry is not ``y``'s (another user, or padding)."""
    if len(sealed) != sealed_size(id_pad):
        raise SchemeError(f"a sealed id is {sealed_size(id_pad)} bytes")
    try:
        plaintext = AESGCM(_prf(y, b"seal")).decrypt(
            sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], _aad(epoch, tag_of(y))
        )
    except InvalidTag:
        return None
    length = plaintext[0]
    if not 0 < length <= id_pad or any(plaintext[1 + length :]):
        raise SchemeError("a sealed id opened to a malformed plaintext")
    return plaintext[1 : 1 + length].decode("utf-8")
