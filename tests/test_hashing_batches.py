"""KeyRing.directory_keys reuses one AES-ECB context per thread: every batch, of any size,
from any thread, must still be exactly AES of each hash's 16-byte prefix."""

from __future__ import annotations

import os
import threading

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from discovery.core.hashing import HASH_SIZE, KEY_SIZE, KeyRing


def reference(keys: KeyRing, packed: bytes) -> bytes:
    """A fresh cipher per hash: the scheme as docs/hashing.md states it."""
    out = b""
    for i in range(0, len(packed), HASH_SIZE):
        encryptor = Cipher(algorithms.AES(keys.directory_key), modes.ECB()).encryptor()
        out += encryptor.update(packed[i : i + KEY_SIZE]) + encryptor.finalize()
    return out


def test_batches_of_every_size_in_a_row() -> None:
    keys = KeyRing.from_secret(os.urandom(32))
    for n in (1, 2, 3, 17, 1000, 1, 0, 5):
        packed = os.urandom(HASH_SIZE * n)
        assert keys.directory_keys(packed) == reference(keys, packed)
        assert keys.directory_keys(memoryview(packed)) == reference(keys, packed)


def test_threads_share_a_keyring() -> None:
    keys = KeyRing.from_secret(os.urandom(32))
    failures: list[int] = []

    def work(seed: int) -> None:
        for round_ in range(50):
            packed = os.urandom(HASH_SIZE * (1 + (seed * 7 + round_) % 64))
            if keys.directory_keys(packed) != reference(keys, packed):
                failures.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_keyrings_compare_by_keys_only() -> None:
    secret = os.urandom(32)
    a, b = KeyRing.from_secret(secret), KeyRing.from_secret(secret)
    a.directory_keys(os.urandom(HASH_SIZE))  # a now holds a cipher context, b does not
    assert a == b and hash(a) == hash(b)
