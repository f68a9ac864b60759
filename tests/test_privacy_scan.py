"""The privacy scanner finds a secret in every encoding a careless line would write.

Every privacy test (store files, logs, metrics) rests on tests/support/privacy_scan.py; a
scanner that misses an encoding would let the leak through all of them.
"""

from __future__ import annotations

import base64
import json

import pytest

from discovery.core.hashing import KeyRing, contact_hash
from tests.support.helpers import e164_numbers
from tests.support.privacy_scan import Needles, find_leaks

NUMBER = "+4915123456789"
KEYS = KeyRing.from_secret(bytes(range(32)))
HASH = contact_hash(NUMBER)
DKEY = KEYS.directory_key_of(HASH)


def encodings(secret: bytes) -> dict[str, bytes]:
    """Every encoding of ``secret``, alone."""
    out = {"raw": secret, "hex": secret.hex().encode(), "HEX": secret.hex().upper().encode()}
    out["repr"] = str(secret).encode()  # what the JSON log formatter writes for bytes
    for name, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
        out[name] = encode(secret)
        out[name + "-nopad"] = encode(secret).rstrip(b"=")
    return out


def windows(secret: bytes) -> dict[str, bytes]:
    """The whole secret, prefixes, suffixes (bytes 8..32) and an inner window."""
    n = len(secret)
    return {"whole": secret, "prefix8": secret[:8], "prefix16": secret[:16], "suffix": secret[8:],
            "tail8": secret[n - 8 :], "inner": secret[3 : n - 3]}  # fmt: skip


def log_line(payload: bytes) -> bytes:
    return json.dumps({"level": "INFO", "message": "oops", "value": payload.decode("latin-1")}).encode()


@pytest.mark.parametrize("secret_name", ["contact hash", "directory key"])
def test_every_window_in_every_encoding_is_found(secret_name: str) -> None:
    needles = Needles.of([NUMBER], keys=KEYS)
    secret = HASH if secret_name == "contact hash" else DKEY
    missed = []
    for window_name, window in windows(secret).items():
        for encoding_name, encoded in encodings(window).items():
            for line in (log_line(encoded), b"\x00\x01" + encoded + b"\xff", b"x=" + encoded + b";"):
                if not find_leaks(line, needles):
                    missed.append(f"{window_name}/{encoding_name}")
    assert missed == []


@pytest.mark.parametrize("alignment", [0, 1, 2])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_of_a_hash_inside_a_longer_base64_string_is_found(alignment: int, encode: object) -> None:
    needles = Needles.of([NUMBER])
    blob = bytes([7] * alignment) + HASH[8:] + b"some trailing bytes"
    encoded = encode(blob)  # type: ignore[operator]
    assert find_leaks(b"blob=" + encoded + b"\n", needles)
    assert find_leaks(b"blobx" + encoded.rstrip(b"=") + b"\n", needles)  # glued to a word


def test_the_cases_the_old_scanner_missed() -> None:
    """A log line with a whole contact hash in base64, or the hex of bytes 8..32."""
    needles = Needles.of([NUMBER])
    assert find_leaks(log_line(base64.b64encode(HASH)), needles)
    assert find_leaks(log_line(base64.urlsafe_b64encode(HASH).rstrip(b"=")), needles)
    assert find_leaks(log_line(HASH[8:].hex().encode()), needles)
    assert find_leaks(log_line(HASH[8:].hex().upper().encode()), needles)


def test_directory_keys_are_needles_only_when_asked() -> None:
    """Directory keys may be at rest (raw, in the store); logs and metrics are scanned for them."""
    line = log_line(DKEY.hex().encode())
    assert find_leaks(line, Needles.of([NUMBER])) == []
    assert find_leaks(line, Needles.of([NUMBER], keys=KEYS))


def test_ordinary_text_is_clean() -> None:
    needles = Needles.of(e164_numbers(2000, seed=5), keys=KEYS)
    other = contact_hash("+4915199999999")
    text = b"\n".join(
        [
            log_line(b"request 3f2c1a9e-8b7d-4c6e-9f01-23456789abcd done in 12 ms"),
            log_line(base64.b64encode(other)),
            log_line(other.hex().encode()),
            b'discovery_requests_total{method="Discover",code="OK"} 1234.0',
            bytes(range(256)) * 4,
        ]
    )
    assert find_leaks(text, needles) == []
