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

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import blake3
import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from discovery.contact_hash import CONTACT_HASH_CONTEXT as CONTACT_HASH_CONTEXT
from discovery.contact_hash import HASH_SIZE as HASH_SIZE
from discovery.contact_hash import KEY_SIZE as KEY_SIZE
from discovery.contact_hash import contact_hash as contact_hash

DIRECTORY_KEY_CONTEXT = "discovery.v1 2026-11-22 directory key AES-256 from server secret"
TOKEN_KEY_CONTEXT = "discovery.v1 2026-11-22 previous-set token MAC key from server secret"
WATCH_KEY_CONTEXT = "discovery.v1 2026-12-06 watch tag AES-256 from server secret"
JOINER_KEY_CONTEXT = "discovery.v1 2026-12-06 joiner tag keyed BLAKE3 from server secret"
NOTICE_KEY_CONTEXT = "discovery.v1 2026-12-06 inbox notice AES-256-GCM from server secret"
NONCE_SIZE = 12

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
    watch_key: bytes = b""
    joiner_key: bytes = b""
    notice_key: bytes = b""
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
            watch_key=derive_key(WATCH_KEY_CONTEXT, secret),
            joiner_key=derive_key(JOINER_KEY_CONTEXT, secret),
            notice_key=derive_key(NOTICE_KEY_CONTEXT, secret),
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
        return self._ecb("encryptor", self.directory_key)

    def _ecb(self, name: str, key: bytes) -> CipherContext:
        encryptor: CipherContext | None = getattr(self._per_thread, name, None)
        if encryptor is None:
            encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
            setattr(self._per_thread, name, encryptor)
        return encryptor

    # -- what the join store keeps: nothing equal to, or linkable to, a registry row ------------

    def watch_tags(self, directory_keys: bytes) -> bytes:
        """The tags under which watches on n packed directory keys are kept: AES under a key of
        their own, so a watch never equals the registry row of the watched user, and one AES
        call tags a whole batch."""
        if len(directory_keys) % KEY_SIZE:
            raise ValueError("packed directory keys must be a multiple of 16 bytes")
        return self._ecb("watch_encryptor", self.watch_key).update(directory_keys) if directory_keys else b""

    def joiner_tag(self, user_id: str) -> bytes:
        """A 16-byte keyed hash of a user id that marks the inbox events naming the user."""
        return self.joiner_tags([user_id])[0]

    def joiner_tags(self, user_ids: Sequence[str]) -> list[bytes]:
        """:meth:`joiner_tag` of each id (the keyed hasher made once)."""
        hasher = blake3.blake3(key=self.joiner_key)
        out = []
        for user_id in user_ids:
            h = hasher.copy()
            h.update(user_id.encode())
            out.append(h.digest(KEY_SIZE))
        return out

    def seal_notice(self, user_id: str, directory_key: bytes) -> bytes:
        """The sealed (user id, directory key) of a join event: AES-256-GCM, random nonce."""
        return self.seal_notices([user_id], directory_key)[0]

    def seal_notices(self, user_ids: Sequence[str], directory_keys: bytes) -> list[bytes]:
        """:meth:`seal_notice` of each (user id, packed directory key), with the random nonces
        of all drawn at once."""
        nonces = os.urandom(NONCE_SIZE * len(user_ids))
        encrypt = self._aead().encrypt
        out = []
        for i, user_id in enumerate(user_ids):
            nonce = nonces[i * NONCE_SIZE : (i + 1) * NONCE_SIZE]
            key = directory_keys[i * KEY_SIZE : (i + 1) * KEY_SIZE]
            out.append(nonce + encrypt(nonce, key + user_id.encode(), None))
        return out

    def open_notice(self, notice: bytes) -> tuple[str, bytes]:
        """(user id, directory key) of a sealed notice; raises InvalidTag when it was not ours."""
        plain = self._aead().decrypt(notice[:NONCE_SIZE], notice[NONCE_SIZE:], None)
        return plain[KEY_SIZE:].decode(), plain[:KEY_SIZE]

    def _aead(self) -> AESGCM:
        aead: AESGCM | None = getattr(self._per_thread, "aead", None)
        if aead is None:
            aead = AESGCM(self.notice_key)
            self._per_thread.aead = aead
        return aead

    def directory_key_of(self, contact_hash: bytes) -> bytes:
        return self.directory_keys(contact_hash)

    def recover_prefix(self, directory_key: bytes) -> bytes:
        """The 16-byte contact-hash prefix behind a directory key (AES decryption).

        Used only to name a contact to its watcher in a join notification; the
        prefix is as sensitive as the hash, so it is never stored or logged.
        """
        decryptor = Cipher(algorithms.AES(self.directory_key), modes.ECB()).decryptor()
        return decryptor.update(directory_key) + decryptor.finalize()
