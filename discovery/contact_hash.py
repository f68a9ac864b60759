"""The public contact hash of an E.164 number, shared by the SDK and the server.

Any client computes it from an E.164 string with BLAKE3 in derive-key mode under
:data:`CONTACT_HASH_CONTEXT` (``docs/hashing.md``, step 2). This module needs only
``blake3``: the server's keyed step (``discovery.core.hashing.KeyRing``) lives in core.
"""

from __future__ import annotations

import blake3

__all__ = ["CONTACT_HASH_CONTEXT", "HASH_SIZE", "KEY_SIZE", "contact_hash"]

CONTACT_HASH_CONTEXT = "discovery.v1 2026-11-22 contact hash of an E.164 number"

#: Bytes of a contact hash.
HASH_SIZE = 32
#: Bytes of a contact-hash prefix (and of a directory key): a join event names a contact by it.
KEY_SIZE = 16


def contact_hash(e164: str) -> bytes:
    """The 32-byte contact hash of an E.164 string such as ``+4915123456789``."""
    return blake3.blake3(e164.encode("ascii"), derive_key_context=CONTACT_HASH_CONTEXT).digest()
