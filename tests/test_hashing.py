"""The documented hashing scheme and its test vectors."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st

from discovery.core import hashing
from discovery.core.hashing import KeyRing, contact_hash

DOCS = Path(__file__).resolve().parent.parent / "docs"
VECTORS = json.loads((DOCS / "hashing_vectors.json").read_text())


def test_contexts_are_the_documented_ones() -> None:
    assert VECTORS["contact_hash_context"] == hashing.CONTACT_HASH_CONTEXT
    assert VECTORS["directory_key_context"] == hashing.DIRECTORY_KEY_CONTEXT


def test_vectors() -> None:
    keys = KeyRing.from_secret(bytes.fromhex(VECTORS["server_secret_hex"]))
    assert keys.directory_key.hex() == VECTORS["aes_key_hex"]
    for vector in VECTORS["vectors"]:
        h = contact_hash(vector["e164"])
        assert h.hex() == vector["contact_hash_hex"]
        assert keys.directory_key_of(h).hex() == vector["directory_key_hex"]


def test_vectors_from_the_primitives() -> None:
    """Recompute with bare BLAKE3 and AES, as a client in another language would."""
    aes_key = blake3.blake3(
        bytes.fromhex(VECTORS["server_secret_hex"]), derive_key_context=VECTORS["directory_key_context"]
    ).digest()
    for vector in VECTORS["vectors"]:
        h = blake3.blake3(
            vector["e164"].encode(), derive_key_context=VECTORS["contact_hash_context"]
        ).digest()
        enc = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
        assert (enc.update(h[:16]) + enc.finalize()).hex() == vector["directory_key_hex"]


def test_markdown_lists_the_same_vectors() -> None:
    text = (DOCS / "hashing.md").read_text()
    for vector in VECTORS["vectors"]:
        assert vector["contact_hash_hex"] in text and vector["directory_key_hex"] in text


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=50))
def test_batch_equals_one_by_one_and_inverts(hashes: list[bytes]) -> None:
    keys = KeyRing.from_secret(bytes(32))
    packed = keys.directory_keys(b"".join(hashes))
    assert packed == b"".join(keys.directory_key_of(h) for h in hashes)
    for i, h in enumerate(hashes):
        assert keys.recover_prefix(packed[i * 16 : (i + 1) * 16]) == h[:16]


def test_short_secret_is_refused() -> None:
    import pytest

    with pytest.raises(ValueError):
        KeyRing.from_secret(b"short")
