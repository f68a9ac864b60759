"""The hashing scheme: E.164 number -> contact hash -> directory key.

* The contact hash ``h`` is public: any client computes it from an E.164 string
  with BLAKE3 in derive-key mode under :data:`CONTACT_HASH_CONTEXT`
  (:mod:`discovery.contact_hash`, shared with the SDK).
* The directory key ``k`` is a PRF of ``h`` under the server secret:
  AES-256 over the first 16 bytes of ``h``, with an AES key derived from the
  secret with BLAKE3 derive-key under :data:`DIRECTORY_KEY_CONTEXT`. AES on a
  single block is a PRF, and one ECB call keys a whole batch at native speed.

The scheme and its test vectors are documented in ``docs/hashing.md``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import blake3
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from discovery.contact_hash import CONTACT_HASH_CONTEXT as CONTACT_HASH_CONTEXT
from discovery.contact_hash import HASH_SIZE as HASH_SIZE
from discovery.contact_hash import KEY_SIZE as KEY_SIZE
from discovery.contact_hash import contact_hash as contact_hash

DIRECTORY_KEY_CONTEXT = "discovery.v1 2026-11-22 directory key AES-256 from server secret"
TOKEN_KEY_CONTEXT = "discovery.v1 2026-11-22 previous-set token MAC key from server secret"

MIN_SECRET_SIZE = 32
_BLOCK = np.dtype((np.void, KEY_SIZE))  # one AES block


def derive_key(context: str, secret: bytes) -> bytes:
    """A 32-byte subkey of the server secret for one purpose."""
    return blake3.blake3(secret, derive_key_context=context).digest()


@dataclass(frozen=True, slots=True)
class KeyRing:
    """Every key derived from the server secret. The secret itself is not kept."""

    directory_key: bytes
    token_key: bytes
    _per_thread: threading.local = field(
        default_factory=threading.local, init=False, repr=False, compare=False
    )

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyRing:
        if len(secret) < MIN_SECRET_SIZE:
            raise ValueError(f"the server secret must be at least {MIN_SECRET_SIZE} bytes")
        return cls(
            directory_key=derive_key(DIRECTORY_KEY_CONTEXT, secret),
            token_key=derive_key(TOKEN_KEY_CONTEXT, secret),
        )

    def directory_keys(self, packed_hashes: bytes | memoryview) -> bytes:
        """Directory keys for n packed 32-byte hashes, as n packed 16-byte keys, in one AES call."""
        view = memoryview(packed_hashes)
        n = len(view) // HASH_SIZE
        if n * HASH_SIZE != len(view):
            raise ValueError("packed hashes must be a multiple of 32 bytes")
        if n == 0:
            return b""
        # The 16-byte prefixes are every other 16-byte block: one strided copy, no Python loop.
        prefixes = np.frombuffer(view, dtype=_BLOCK)[::2].tobytes()
        return self._directory_encryptor().update(prefixes)

    def _directory_encryptor(self) -> CipherContext:
        """This thread's AES-ECB encryptor under the directory key, made once.

        ECB keeps no state between blocks, so one context serves every batch (``update``
        on whole blocks returns exactly their ciphertext) and saves building a cipher per
        call, which costs more than encrypting 1,000 blocks. One per thread, because a
        cipher context must not be used by two threads at once.
        """
        encryptor: CipherContext | None = getattr(self._per_thread, "encryptor", None)
        if encryptor is None:
            encryptor = Cipher(algorithms.AES(self.directory_key), modes.ECB()).encryptor()
            self._per_thread.encryptor = encryptor
        return encryptor

    def directory_key_of(self, contact_hash: bytes) -> bytes:
        return self.directory_keys(contact_hash)

    def recover_prefix(self, directory_key: bytes) -> bytes:
        """The 16-byte contact-hash prefix behind a directory key (AES decryption).

        Used only to name a contact to its watcher in a join notification; the
        prefix is as sensitive as the hash, so it is never stored or logged.
        """
        decryptor = Cipher(algorithms.AES(self.directory_key), modes.ECB()).decryptor()
        return decryptor.update(directory_key) + decryptor.finalize()
