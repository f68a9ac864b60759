"""Scans bytes (files of a datastore, logs) for any trace of phone numbers or contact hashes.

Looks for: E.164 strings and their digit runs in ASCII, every 8-byte fragment of every
contact hash at any offset (so a hash prefix, a truncated hash or one inside a larger
blob is found too), and hex encodings of hashes.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from discovery.core.hashing import contact_hash


@dataclass
class Needles:
    numbers: set[bytes] = field(default_factory=set)
    digit_runs: set[bytes] = field(default_factory=set)
    fragments: set[int] = field(default_factory=set)
    hexes: set[bytes] = field(default_factory=set)
    tokens: set[bytes] = field(default_factory=set)

    @classmethod
    def of(cls, e164_numbers: Iterable[str]) -> Needles:
        needles = cls()
        for number in e164_numbers:
            needles.numbers.add(number.encode())
            needles.digit_runs.add(number[1:].encode())
            needles.digit_runs.add(number[3:].encode())  # national significant number
            h = contact_hash(number)
            needles.hexes.add(h.hex()[:16].encode())
            for offset in range(0, 32, 8):
                needles.fragments.add(int.from_bytes(h[offset : offset + 8], "little"))
        return needles

    def add_token(self, token: str | bytes) -> None:
        """Also look for a credential: a bearer JWT (whole, or its signature) or a Discover
        token (raw, hex or base64)."""
        if isinstance(token, str):
            self.tokens.add(token.encode())
            self.tokens.add(token.rsplit(".", 1)[-1].encode())
        else:
            self.tokens.update({token, token.hex().encode(), base64.b64encode(token).rstrip(b"=")})


_NUMBER = re.compile(rb"\+\d{7,15}")
_DIGITS = re.compile(rb"\d{7,15}")
_HEX = re.compile(rb"[0-9a-fA-F]{16,}")


def find_leaks(data: bytes, needles: Needles) -> list[str]:
    leaks: list[str] = []
    leaks += [f"token at byte {data.find(t)}" for t in needles.tokens if t and t in data]
    leaks += [f"E.164 at byte {m.start()}" for m in _NUMBER.finditer(data) if m.group() in needles.numbers]
    for m in _DIGITS.finditer(data):
        run = m.group()
        if any(run[i:j] in needles.digit_runs for i in range(len(run)) for j in range(i + 7, len(run) + 1)):
            leaks.append(f"number digits at byte {m.start()}")
    for m in _HEX.finditer(data):
        text = m.group().lower()
        if any(text[i : i + 16] in needles.hexes for i in range(len(text) - 15)):
            leaks.append(f"hex hash at byte {m.start()}")
    if len(data) >= 8 and needles.fragments:
        arr = np.frombuffer(data, dtype=np.uint8)
        windows = np.lib.stride_tricks.sliding_window_view(arr, 8)
        words = np.ascontiguousarray(windows).view("<u8").ravel()
        targets = np.fromiter(needles.fragments, dtype=np.uint64, count=len(needles.fragments))
        hits = np.flatnonzero(np.isin(words, targets))
        leaks += [f"contact hash fragment at byte {int(i)}" for i in hits[:20]]
    return leaks


def scan_tree(root: Path, needles: Needles) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            leaks = find_leaks(path.read_bytes(), needles)
            if leaks:
                found[str(path)] = leaks[:10]
    return found
