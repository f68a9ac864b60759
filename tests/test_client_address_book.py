"""prepare_address_book and pack_chunks: dedupe, hash, chunk and map results back (SDK, no server)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discovery.client import (
    DEFAULT_MAX_PER_REQUEST,
    InvalidEntry,
    InvalidReason,
    Match,
    normalize_number,
    pack_chunks,
    prepare_address_book,
)
from discovery.contact_hash import contact_hash
from tests.support.phone_numbers import german_mobile

# ---------------------------------------------------------------------------
# prepare_address_book: dedupe, hash, map back


def test_dedupe_and_map_back() -> None:
    entries = [
        "0151 23456789",
        "junk",
        "+49 151 23456789",
        "+1 650 253 0000",
        "0151 23456789",  # the same raw string twice
        "",
        "+4915123456789",
    ]
    book = prepare_address_book(entries, "DE")
    assert book.numbers == ["+4915123456789", "+16502530000"]
    assert book.hashes == [contact_hash("+4915123456789"), contact_hash("+16502530000")]
    assert book.positions == [[0, 2, 4, 6], [3]]
    assert book.invalid == [
        InvalidEntry("junk", InvalidReason.NOT_A_NUMBER),
        InvalidEntry("", InvalidReason.EMPTY),
    ]
    assert book.entries == entries

    result = book.result([(0, "alice")])
    assert result.matches == [
        Match("0151 23456789", "+4915123456789", "alice"),
        Match("+49 151 23456789", "+4915123456789", "alice"),
        Match("0151 23456789", "+4915123456789", "alice"),
        Match("+4915123456789", "+4915123456789", "alice"),
    ]
    assert result.invalid == book.invalid

    # Matches come back in input order whatever order the server answers in.
    result = book.result([(1, "bob"), (0, "alice")])
    assert [m.entry for m in result.matches] == [entries[i] for i in (0, 2, 3, 4, 6)]
    assert result.matches[2] == Match("+1 650 253 0000", "+16502530000", "bob")


def test_invalid_reason_compares_as_plain_string() -> None:
    book = prepare_address_book(["0151 23456789"], None)
    assert book.invalid == [InvalidEntry("0151 23456789", "missing region")]
    assert book.result([]).to_dict() == {
        "matches": [],
        "invalid": [{"entry": "0151 23456789", "reason": "missing region"}],
    }


def test_result_rejects_out_of_range_index() -> None:
    book = prepare_address_book(["+4915123456789"])
    with pytest.raises(IndexError):
        book.result([(1, "x")])


def test_non_string_entry_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        prepare_address_book(["+4915123456789", 4915123456789])  # type: ignore[list-item]


def test_accepts_any_iterable_once() -> None:
    book = prepare_address_book(iter(["+4915123456789", "+4915123456789"]))
    assert book.positions == [[0, 1]]


_ENTRY = st.one_of(
    german_mobile().map(lambda s: s[0]),
    st.sampled_from(["", "junk", "12", "+999 1", "+49 000 1234567", "0151 23456789"]),
    st.text(max_size=12),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_ENTRY, max_size=40), st.integers(min_value=1, max_value=7), st.data())
def test_every_entry_is_accounted_for(entries: list[str], max_per_request: int, data: st.DataObject) -> None:
    book = prepare_address_book(entries, "DE", max_per_request)
    # Each entry is either behind exactly one unique number or invalid, never both, never dropped.
    valid_positions = sorted(p for ps in book.positions for p in ps)
    assert len(valid_positions) == len(set(valid_positions))
    assert len(valid_positions) + len(book.invalid) == len(entries)
    assert len(set(book.numbers)) == len(book.numbers)
    assert all(book.hashes[i] == contact_hash(n) for i, n in enumerate(book.numbers))
    for i, ps in enumerate(book.positions):
        assert ps and all(normalize_number(entries[p], "DE") == book.numbers[i] for p in ps)

    # Chunks: at most max_per_request each, together exactly the hashes in order.
    chunks = book.chunks()
    assert len(chunks) == math.ceil(len(book.hashes) / max_per_request)
    assert b"".join(packed for _, packed in chunks) == b"".join(book.hashes)
    for offset, packed in chunks:
        assert offset % max_per_request == 0
        assert 0 < len(packed) <= 32 * max_per_request

    # Mapping back: exactly the entries whose number matched, in input order.
    matched = data.draw(st.sets(st.sampled_from(range(len(book.numbers))))) if book.numbers else set()
    result = book.result([(i, f"user{i}") for i in sorted(matched)])
    expected = [
        Match(entries[p], book.numbers[i], f"user{i}")
        for p in range(len(entries))
        for i in matched
        if p in book.positions[i]
    ]
    assert result.matches == expected


def test_ten_thousand_entries() -> None:
    # Many entries, with duplicates in other formats; only correctness is checked (benchmarks live in bench/).
    base = [f"+49151{n:08d}" for n in range(10_000, 16_000)]
    entries = base + [f"0151 {n[6:]}" for n in base[:4_000]] + ["junk"] * 10
    book = prepare_address_book(entries, "DE")
    assert len(book.numbers) == 6_000
    assert len(book.invalid) == 10
    chunks = book.chunks()
    assert [len(p) // 32 for _, p in chunks] == [5_000, 1_000]
    result = book.result([(0, "a"), (5_999, "b")])
    assert [m.entry for m in result.matches] == [base[0], base[-1], "0151 " + base[0][6:]]


# ---------------------------------------------------------------------------
# chunking


def test_pack_chunks() -> None:
    hashes = [bytes([i]) * 32 for i in range(7)]
    chunks = pack_chunks(hashes, 3)
    assert [offset for offset, _ in chunks] == [0, 3, 6]
    assert [len(packed) for _, packed in chunks] == [96, 96, 32]
    assert chunks[2][1] == hashes[6]
    assert pack_chunks([], 3) == []
    assert DEFAULT_MAX_PER_REQUEST == 5000
    assert len(pack_chunks(hashes, DEFAULT_MAX_PER_REQUEST)) == 1


def test_pack_chunks_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="position 4"):
        pack_chunks([b"\0" * 32] * 4 + [b"\0" * 31], 3)
    with pytest.raises(ValueError):
        pack_chunks([b"\0" * 32], 0)
    with pytest.raises(ValueError):
        prepare_address_book([], None, 0)
