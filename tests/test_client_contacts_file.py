"""parse_contacts and parse_import_rows: address-book and import files (CSV or one per line)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery.client import parse_contacts, parse_import_rows
from discovery.client.contacts_file import looks_like_number
from tests.support.phone_numbers import german_mobile

# ---------------------------------------------------------------------------
# contacts file parsing


def test_contacts_csv_with_phone_header() -> None:
    text = 'name,phone,notes\n"Doe, John",0151 23456789,x\nBob,+1 650 253 0000,\nJunk,12,\nNoPhone,,\n'
    assert parse_contacts(text) == ["0151 23456789", "+1 650 253 0000", "12"]


@pytest.mark.parametrize("header", ["Phone", "NUMBER", "tel", "Mobile", "Mobile Number", "phone_number"])
def test_contacts_header_names(header: str) -> None:
    text = f"id,{header}\n1,+4915123456789\n2,+16502530000\n"
    assert parse_contacts(text) == ["+4915123456789", "+16502530000"]


def test_contacts_csv_without_header_picks_number_column() -> None:
    text = "Alice,Smith,+4915123456789\nBob,Jones,+16502530000\n"
    assert parse_contacts(text) == ["+4915123456789", "+16502530000"]


def test_contacts_csv_unknown_header_skipped_and_dates_ignored() -> None:
    text = "Given,Birthday,Phone 1 - Value\nAlice,1990-01-31,+4915123456789\nBob,31.01.1990,+16502530000\n"
    assert parse_contacts(text) == ["+4915123456789", "+16502530000"]


def test_contacts_semicolon_and_tab() -> None:
    assert parse_contacts("name;tel\nA;0151 23456789\n") == ["0151 23456789"]
    assert parse_contacts("name\tmobile\nA\t+4915123456789\n") == ["+4915123456789"]


def test_contacts_one_per_line() -> None:
    text = "\ufeff+4915123456789\n\n  0151 23456789  \r\nnot a number\n"
    assert parse_contacts(text) == ["+4915123456789", "0151 23456789", "not a number"]
    assert parse_contacts("phone\n+4915123456789\n") == ["+4915123456789"]
    assert parse_contacts("") == []
    assert parse_contacts("\n \n") == []


def test_contacts_from_file_object() -> None:
    f = io.StringIO("number\n+4915123456789\n+16502530000\n")
    assert parse_contacts(f) == ["+4915123456789", "+16502530000"]


def test_contacts_invalid_values_are_kept_for_reporting() -> None:
    text = "name,phone\nA,call me\nB,+4915123456789\n"
    assert parse_contacts(text) == ["call me", "+4915123456789"]


@given(st.lists(german_mobile(), min_size=1, max_size=20), st.sampled_from([",", ";", "\t"]))
def test_contacts_csv_roundtrip(samples: list[tuple[str, str]], delimiter: str) -> None:
    lines = [f"name{delimiter}phone"] + [f"person {i}{delimiter}{raw}" for i, (raw, _) in enumerate(samples)]
    assert parse_contacts("\n".join(lines)) == [raw.strip() for raw, _ in samples]


def test_looks_like_number() -> None:
    assert looks_like_number("+49 (151) 234-567-89")
    assert looks_like_number("tel:+16502530000")
    assert not looks_like_number("1234")
    assert not looks_like_number("Alice")
    assert not looks_like_number("1990-01-31")
    assert not looks_like_number("flat 12345b")


# ---------------------------------------------------------------------------
# import file parsing


def test_import_rows_with_and_without_header() -> None:
    assert list(parse_import_rows("user_id,number\nalice,+4915123456789\n\nbob,0151 2\n")) == [
        ("alice", "+4915123456789"),
        ("bob", "0151 2"),
    ]
    assert list(parse_import_rows("alice,+4915123456789\nbob,+16502530000\n")) == [
        ("alice", "+4915123456789"),
        ("bob", "+16502530000"),
    ]
    assert list(parse_import_rows("")) == []


def test_import_rows_header_reorders_columns() -> None:
    text = "phone;name;user id\n+4915123456789;Alice;alice\n"
    assert list(parse_import_rows(text)) == [("alice", "+4915123456789")]


def test_import_rows_short_rows_are_not_dropped() -> None:
    assert list(parse_import_rows("alice\n,+4915123456789\n")) == [("alice", ""), ("", "+4915123456789")]


def test_import_rows_are_lazy() -> None:
    def lines() -> Any:
        yield "user_id,number\n"
        yield "alice,+4915123456789\n"
        raise AssertionError("read too far")

    rows = parse_import_rows(lines())
    assert next(rows) == ("alice", "+4915123456789")
