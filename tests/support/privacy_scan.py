"""Scans bytes (files of a datastore, logs, metrics) for any trace of phone numbers, contact
hashes or directory keys.

Looks for: E.164 strings and their digit runs in ASCII; and every window of 8 or more bytes
of every contact hash (and, when a key ring is given, of every directory key), at any
offset, in every encoding a careless line of code would write:

* raw bytes (a hash, a prefix, a suffix such as bytes 8..32, or one inside a larger blob);
* hex, lower or upper case, at either nibble alignment;
* base64, standard or urlsafe, with or without padding, at any of the 3 byte alignments
  (so the base64 of a window inside a longer base64 string is found too);
* escaped, as a bytes repr or a JSON string writes bytes (``\\xab``, ``\\u00ab``).

One needle set is built per call of :meth:`Needles.of` (every 8-byte window of every hash,
as sorted uint64 words). A scan decodes every hex run and every base64 run of the data
back to bytes (at every alignment), and probes the raw data and the decoded bytes with one
vectorised pass each: a window of 8 bytes of a secret, in any encoding, is found.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from discovery.core.hashing import HASH_SIZE, KEY_SIZE, KeyRing, contact_hash

WINDOW = 8  # bytes: the shortest fragment of a secret the scanner finds
MAX_REPORTED = 20
_FILTER_BITS = 27  # a 16 MiB bit set over the top 27 bits of each window
_SHIFT = np.uint64(64 - _FILTER_BITS)
_BIT = np.left_shift(np.uint8(1), np.arange(8, dtype=np.uint8))


@dataclass
class Needles:
    numbers: set[bytes] = field(default_factory=set)
    digit_runs: set[bytes] = field(default_factory=set)
    tokens: set[bytes] = field(default_factory=set)
    windows: npt.NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    _filter: npt.NDArray[np.uint8] = field(default_factory=lambda: np.empty(0, dtype=np.uint8), repr=False)

    @classmethod
    def of(cls, e164_numbers: Iterable[str], keys: KeyRing | None = None) -> Needles:
        """Needles for these numbers and their contact hashes; with ``keys``, also for their
        directory keys (which may exist at rest, raw, but never in logs or metrics)."""
        needles = cls()
        numbers = list(e164_numbers)
        for number in numbers:
            needles.numbers.add(number.encode())
            needles.digit_runs.add(number[1:].encode())
            needles.digit_runs.add(number[3:].encode())  # national significant number
        packed = b"".join(contact_hash(n) for n in numbers)
        needles.add_secrets(packed, HASH_SIZE)
        if keys is not None and packed:
            needles.add_secrets(keys.directory_keys(packed), KEY_SIZE)
        return needles

    def add_secrets(self, packed: bytes, size: int) -> None:
        """Also look for every 8-byte window of each ``size``-byte secret packed in ``packed``."""
        if not packed:
            return
        rows = np.frombuffer(packed, dtype=np.uint8).reshape(-1, size)
        windows = np.lib.stride_tricks.sliding_window_view(rows, WINDOW, axis=1)
        words = np.sort(np.concatenate([self.windows, np.ascontiguousarray(windows).view("<u8").ravel()]))
        self.windows = words[np.concatenate([[True], words[1:] != words[:-1]])]
        self._filter = np.zeros(1 << (_FILTER_BITS - 3), dtype=np.uint8)
        np.bitwise_or.at(
            self._filter, self.windows >> (64 + 3 - _FILTER_BITS), _BIT[self.windows >> _SHIFT & 7]
        )

    def candidates(self, words: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """A cheap superset test of membership (one bit per top-27-bit prefix), so that only
        about 2 % of the words pay for the binary search."""
        bits: npt.NDArray[np.uint8] = self._filter[words >> (64 + 3 - _FILTER_BITS)]
        return (bits & _BIT[words >> _SHIFT & 7]) != 0

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
_HEX = re.compile(rb"[0-9a-fA-F]{%d,}" % (2 * WINDOW))
# Both base64 alphabets in one class; runs shorter than the encoding of one window are skipped.
_BASE64 = re.compile(rb"[A-Za-z0-9+/_-]{%d,}" % -(-WINDOW * 4 // 3))
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
# A bytes repr (``str(b"...")``, which the JSON log formatter writes for bytes) or a JSON
# string escape, once or twice escaped: \\xab, \\u00ab, \\n.
_ESCAPE = re.compile(rb"\\+(?:x|u00)([0-9a-fA-F]{2})|\\+([nrt])")
_CONTROL = {b"n": b"\n", b"r": b"\r", b"t": b"\t"}


def _unescaped(data: bytes) -> Iterable[tuple[int, bytes]]:
    """The data with escapes of bytes resolved, when it holds any."""
    if _ESCAPE.search(data):
        yield 0, _ESCAPE.sub(lambda m: bytes.fromhex(m[1].decode()) if m[1] else _CONTROL[m[2]], data)


def _hex_decodings(data: bytes) -> Iterable[tuple[int, bytes]]:
    """Every hex run, decoded at both nibble alignments."""
    for m in _HEX.finditer(data):
        run = m.group()
        for start in (0, 1):
            end = start + (len(run) - start) // 2 * 2
            yield m.start(), bytes.fromhex(run[start:end].decode())


def _base64_decodings(data: bytes) -> Iterable[tuple[int, bytes]]:
    """Every base64 run (either alphabet), decoded at the 4 character alignments: the window
    of a secret encoded at any byte alignment inside the run is in one of the decodings."""
    for m in _BASE64.finditer(data):
        run = m.group().translate(_URLSAFE_TO_STANDARD)
        for start in range(4):
            body = run[start:]
            body = body[: len(body) - 1] if len(body) % 4 == 1 else body
            yield m.start(), base64.b64decode(body + b"=" * (-len(body) % 4))


def _window_hits(data: bytes, needles: Needles) -> npt.NDArray[np.intp]:
    """Offsets in ``data`` where an 8-byte window equals one of the needles' windows."""
    targets = needles.windows
    if len(data) < WINDOW or not targets.size:
        return np.empty(0, dtype=np.intp)
    arr = np.frombuffer(data, dtype=np.uint8)
    words = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(arr, WINDOW)).view("<u8").ravel()
    at = np.flatnonzero(needles.candidates(words))
    found = np.searchsorted(targets, words[at])
    found[found == targets.size] = 0
    return at[targets[found] == words[at]]


def _decoded_hits(kind: str, decodings: Iterable[tuple[int, bytes]], needles: Needles) -> list[str]:
    """Probe every decoding at once: they are joined into one buffer (the 8 zero bytes
    between two keep a window from spanning both) and the hits mapped back to the data."""
    origins: list[int] = []
    pieces: list[bytes] = []
    for at, decoded in decodings:
        origins.append(at)
        pieces.append(decoded + bytes(WINDOW))
    if not pieces:
        return []
    ends = np.cumsum([len(p) for p in pieces])
    hits = _window_hits(b"".join(pieces), needles)
    runs = sorted({origins[int(i)] for i in np.searchsorted(ends, hits, side="right")})
    return [f"secret fragment ({kind}) at byte {at}" for at in runs]


def find_leaks(data: bytes, needles: Needles) -> list[str]:
    leaks: list[str] = []
    leaks += [f"token at byte {data.find(t)}" for t in needles.tokens if t and t in data]
    leaks += [f"E.164 at byte {m.start()}" for m in _NUMBER.finditer(data) if m.group() in needles.numbers]
    for m in _DIGITS.finditer(data):
        run = m.group()
        if any(run[i:j] in needles.digit_runs for i in range(len(run)) for j in range(i + 7, len(run) + 1)):
            leaks.append(f"number digits at byte {m.start()}")
    if needles.windows.size:
        leaks += [f"secret fragment (raw) at byte {int(i)}" for i in _window_hits(data, needles)]
        leaks += _decoded_hits("hex", _hex_decodings(data), needles)
        leaks += _decoded_hits("base64", _base64_decodings(data), needles)
        leaks += _decoded_hits("escaped", _unescaped(data), needles)
    return leaks[:MAX_REPORTED]


def server_keys(data_dir: Path) -> KeyRing:
    """The key ring of a server that made its secret in ``data_dir`` (the default secret file)."""
    return KeyRing.from_secret(bytes.fromhex((data_dir / "server.secret").read_text().strip()))


def scan_tree(root: Path, needles: Needles) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            leaks = find_leaks(path.read_bytes(), needles)
            if leaks:
                found[str(path)] = leaks[:10]
    return found
