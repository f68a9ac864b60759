"""What a client and the server derive from an OPRF output ``y`` (64 bytes).

    locator  = HMAC-SHA256(key=y, msg="discovery/private/v1/tag")
    tag      = locator[0:5]                      (40 bits, big-endian integer when sorted)
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
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from discovery.private_scheme.errors import SchemeError
from discovery.private_scheme.oprf import OUTPUT_SIZE

LABEL = b"discovery/private/v1/"
TAG_SIZE = 5
TAG_BITS = 8 * TAG_SIZE
NONCE_SIZE = 12
GCM_TAG_SIZE = 16
# The default padded user id: UUID strings (36 bytes), ULIDs (26) and 64-bit integers (20) fit; longer ids
# need --private-id-pad (up to 255), at a cost per bucket entry (docs/private-mode.md, section 5).
DEFAULT_ID_PAD = 64


def _prf(y: bytes, label: bytes) -> bytes:
    if len(y) != OUTPUT_SIZE:
        raise SchemeError(f"an OPRF output is {OUTPUT_SIZE} bytes")
    return hmac.new(bytes(y), LABEL + label, hashlib.sha256).digest()


def tag_of(y: bytes) -> bytes:
    """The 5-byte tag of ``y``: what the snapshot holds and the client tests locally."""
    return _prf(y, b"tag")[:TAG_SIZE]


def tag_value(tag: bytes) -> int:
    return int.from_bytes(tag, "big")


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
    found = open_any(y, epoch, [sealed], id_pad)
    return found[0] if found else None


def open_any(y: bytes, epoch: int, sealed: Iterable[bytes], id_pad: int = DEFAULT_ID_PAD) -> list[str]:
    """The user ids sealed for ``y`` among ``sealed`` (trial opens: AES-GCM rejects the others, about 2 us
    each), in order. The key is derived once."""
    size = sealed_size(id_pad)
    aead, aad = AESGCM(_prf(y, b"seal")), _aad(epoch, tag_of(y))
    found: list[str] = []
    for item in sealed:
        if len(item) != size:
            raise SchemeError(f"a sealed id is {size} bytes")
        try:
            plaintext = aead.decrypt(item[:NONCE_SIZE], item[NONCE_SIZE:], aad)
        except InvalidTag:
            continue
        length = plaintext[0]
        if not 0 < length <= id_pad or any(plaintext[1 + length :]):
            raise SchemeError("a sealed id opened to a malformed plaintext")
        found.append(plaintext[1 : 1 + length].decode("utf-8"))
    return found
