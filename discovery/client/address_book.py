"""Address-book preparation: normalise, dedupe, hash, chunk, and map results back.

API::

    DEFAULT_MAX_PER_REQUEST = 5000
    prepare_address_book(entries: Iterable[str], default_region: str | None = None,
                         max_per_request: int = DEFAULT_MAX_PER_REQUEST) -> PreparedAddressBook
    PreparedAddressBook.chunks() -> list[tuple[int, bytes]]      # (offset into .hashes, packed n x 32 bytes)
    PreparedAddressBook.result(matches: Iterable[tuple[int, str]]) -> DiscoverResult
        # matches: (index into .numbers / .hashes, user_id)
    pack_chunks(hashes: Sequence[bytes], max_per_request: int) -> list[tuple[int, bytes]]

Every entry ends up either behind a unique number or in ``invalid`` with a
reason; nothing is dropped silently. Several entries that normalise to the same
number are hashed and sent once and all map back to a match. Identical raw
strings are normalised only once. Hashing is one native BLAKE3 call per unique
number (about 1 µs); normalisation with ``phonenumbers`` dominates the cost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from discovery.client.models import DiscoverResult, InvalidEntry, Match
from discovery.client.normalize import InvalidNumberError, InvalidReason, check_region, normalize_number
from discovery.contact_hash import HASH_SIZE, contact_hash

__all__ = ["DEFAULT_MAX_PER_REQUEST", "PreparedAddressBook", "pack_chunks", "prepare_address_book"]

#: The server's default cap on contact hashes per Discover request.
DEFAULT_MAX_PER_REQUEST = 5000


@dataclass(slots=True)
class PreparedAddressBook:
    """An address book ready to send.

    Attributes:
        entries: the original entries, in input order.
        numbers: the unique E.164 numbers, in order of first appearance.
        hashes: ``hashes[i]`` is the contact hash of ``numbers[i]``.
        positions: ``positions[i]`` lists the indices into ``entries`` that normalised to ``numbers[i]``.
        invalid: the entries that are not valid numbers, in input order.
        max_per_request: the chunk size used by :meth:`chunks`.
    """

    entries: list[str]
    numbers: list[str]
    hashes: list[bytes]
    positions: list[list[int]]
    invalid: list[InvalidEntry]
    max_per_request: int = DEFAULT_MAX_PER_REQUEST

    def chunks(self) -> list[tuple[int, bytes]]:
        """The request payloads: ``(offset, packed)`` with at most ``max_per_request`` hashes each."""
        return pack_chunks(self.hashes, self.max_per_request)

    def result(self, matches: Iterable[tuple[int, str]]) -> DiscoverResult:
        """Map ``(number index, user_id)`` pairs back to every original entry, in input order."""
        found: list[tuple[int, Match]] = []
        for index, user_id in matches:
            if not 0 <= index < len(self.numbers):
                raise IndexError("match index out of range")
            e164 = self.numbers[index]
            found.extend((pos, Match(self.entries[pos], e164, user_id)) for pos in self.positions[index])
        found.sort(key=lambda item: item[0])
        return DiscoverResult(matches=[m for _, m in found], invalid=list(self.invalid))


def _check_max(max_per_request: int) -> int:
    if max_per_request < 1:
        raise ValueError("max_per_request must be at least 1")
    return max_per_request


def pack_chunks(hashes: Sequence[bytes], max_per_request: int) -> list[tuple[int, bytes]]:
    """Pack 32-byte hashes into ``(offset, n x 32 bytes)`` chunks of at most ``max_per_request``.

    Raises ``ValueError`` if a hash is not exactly 32 bytes.
    """
    _check_max(max_per_request)
    out: list[tuple[int, bytes]] = []
    for start in range(0, len(hashes), max_per_request):
        part = hashes[start : start + max_per_request]
        packed = b"".join(part)
        if len(packed) != HASH_SIZE * len(part):
            bad = next(i for i, h in enumerate(part) if len(h) != HASH_SIZE)
            raise ValueError(f"contact hash at position {start + bad} is not {HASH_SIZE} bytes")
        out.append((start, packed))
    return out


def prepare_address_book(
    entries: Iterable[str],
    default_region: str | None = None,
    max_per_request: int = DEFAULT_MAX_PER_REQUEST,
) -> PreparedAddressBook:
    """Normalise, dedupe and hash ``entries`` (see the module docstring)."""
    region = check_region(default_region)
    _check_max(max_per_request)
    entry_list = list(entries)
    # raw string -> index into numbers, or the reason it is invalid
    seen_raw: dict[str, int | InvalidReason] = {}
    index_of_number: dict[str, int] = {}
    numbers: list[str] = []
    positions: list[list[int]] = []
    invalid: list[InvalidEntry] = []
    for pos, raw in enumerate(entry_list):
        if not isinstance(raw, str):
            raise TypeError("address-book entries must be strings")
        known = seen_raw.get(raw)
        if known is None:
            try:
                e164 = normalize_number(raw, region)
            except InvalidNumberError as exc:
                known = exc.reason
            else:
                known = index_of_number.get(e164)
                if known is None:
                    known = index_of_number[e164] = len(numbers)
                    numbers.append(e164)
                    positions.append([])
            seen_raw[raw] = known
        if isinstance(known, InvalidReason):
            invalid.append(InvalidEntry(raw, known))
        else:
            positions[known].append(pos)
    hashes = [contact_hash(n) for n in numbers]
    return PreparedAddressBook(
        entries=entry_list,
        numbers=numbers,
        hashes=hashes,
        positions=positions,
        invalid=invalid,
        max_per_request=max_per_request,
    )
