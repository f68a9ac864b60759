"""normalize_number: E.164 normalisation and the reasons a number is invalid (SDK, no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery.client import InvalidNumberError, InvalidReason, check_region, normalize_number
from tests.support.phone_numbers import german_mobile


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+4915123456789", None, "+4915123456789"),
        ("+49 151 23456789", None, "+4915123456789"),
        ("+49 (151) 234-567-89", None, "+4915123456789"),
        ("  +49 151 23456789\t", None, "+4915123456789"),
        ("0151 23456789", "DE", "+4915123456789"),
        ("0151 23456789", "de", "+4915123456789"),
        ("(0)151 23456789", "DE", "+4915123456789"),
        ("0049 151 23456789", "DE", "+4915123456789"),
        ("+1 650 253 0000", "DE", "+16502530000"),  # an explicit country code wins over the region
        ("(650) 253-0000", "US", "+16502530000"),
        ("tel:+1-650-253-0000", None, "+16502530000"),
        ("+1 650 253 0000 ext. 12", None, "+16502530000"),
        ("\uff0b49 151 23456789", None, "+4915123456789"),  # full-width plus
        ("+44 20 7946 0958", None, "+442079460958"),
        ("1-800-FLOWERS", "US", "+18003569377"),
    ],
)
def test_normalize_valid(raw: str, region: str | None, expected: str) -> None:
    assert normalize_number(raw, region) == expected


@pytest.mark.parametrize(
    ("raw", "region", "reason"),
    [
        ("", None, InvalidReason.EMPTY),
        ("   ", "DE", InvalidReason.EMPTY),
        ("hello", None, InvalidReason.NOT_A_NUMBER),
        ("hello", "DE", InvalidReason.NOT_A_NUMBER),
        ("+", None, InvalidReason.NOT_A_NUMBER),
        ("0151 23456789", None, InvalidReason.MISSING_REGION),
        ("12", None, InvalidReason.MISSING_REGION),
        ("+999 1234567", None, InvalidReason.INVALID_COUNTRY_CODE),
        ("+49 1", None, InvalidReason.TOO_SHORT),
        ("+49 12345678901234567890", None, InvalidReason.TOO_LONG),
        ("+1 212 555 01999", None, InvalidReason.TOO_LONG),
        ("+49 000 1234567", None, InvalidReason.INVALID_NUMBER),
        ("+1 555 010 0000", None, InvalidReason.INVALID_NUMBER),
        ("+49 151 234", None, InvalidReason.INVALID_NUMBER),
        ("12", "DE", InvalidReason.INVALID_NUMBER),
    ],
)
def test_normalize_invalid_reasons(raw: str, region: str | None, reason: InvalidReason) -> None:
    with pytest.raises(InvalidNumberError) as info:
        normalize_number(raw, region)
    assert info.value.reason is reason
    assert isinstance(info.value, ValueError)


def test_invalid_number_error_does_not_contain_the_number() -> None:
    with pytest.raises(InvalidNumberError) as info:
        normalize_number("0151 23456789", None)
    assert "23456789" not in str(info.value)
    assert "missing region" in str(info.value)


def test_unknown_region_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown default region"):
        normalize_number("0151 23456789", "XX")
    with pytest.raises(ValueError):
        check_region("Germany")
    assert check_region(" de ") == "DE"
    assert check_region(None) is None
    assert check_region("") is None


@given(st.text(max_size=40))
def test_normalize_never_raises_anything_else(raw: str) -> None:
    try:
        e164 = normalize_number(raw, "DE")
    except InvalidNumberError as exc:
        assert isinstance(exc.reason, InvalidReason)
    else:
        assert e164.startswith("+")
        assert e164[1:].isdigit()
        assert normalize_number(e164, None) == e164  # idempotent


@given(german_mobile())
def test_normalize_formats_agree(sample: tuple[str, str]) -> None:
    raw, e164 = sample
    assert normalize_number(raw, "DE") == e164
