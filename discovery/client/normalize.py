"""Normalising address-book entries to E.164 with ``phonenumbers``.

API::

    normalize_number(raw: str, default_region: str | None) -> str
        # E.164 such as "+4915123456789"; raises InvalidNumberError(reason) for a bad entry,
        # ValueError for an unknown default_region.
    check_region(region: str | None) -> str | None        # validated, upper-cased region code
    class InvalidReason(StrEnum)                            # the reasons an entry is rejected
    class InvalidNumberError(ValueError): reason: InvalidReason

Reasons (``InvalidReason`` values, also usable as plain strings):

* ``"empty entry"``: nothing but whitespace.
* ``"not a phone number"``: ``phonenumbers`` cannot parse it as a number at all.
* ``"missing region"``: no leading ``+`` (international form) and no default region given.
* ``"invalid country code"``: the country calling code does not exist.
* ``"too short"`` / ``"too long"``: impossible length.
* ``"invalid number"``: parseable but not a valid number for its region
  (e.g. an unassigned range, or a local number that needs a different default region).

The error message never contains the entry itself, so it is safe to log.
"""

from __future__ import annotations

from enum import StrEnum

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, ValidationResult

__all__ = ["InvalidNumberError", "InvalidReason", "check_region", "normalize_number"]


class InvalidReason(StrEnum):
    """Why an address-book entry could not be normalised."""

    EMPTY = "empty entry"
    NOT_A_NUMBER = "not a phone number"
    MISSING_REGION = "missing region"
    INVALID_COUNTRY_CODE = "invalid country code"
    TOO_SHORT = "too short"
    TOO_LONG = "too long"
    INVALID_NUMBER = "invalid number"


class InvalidNumberError(ValueError):
    """An entry that is not a valid phone number. ``reason`` says why; the entry is not included."""

    def __init__(self, reason: InvalidReason) -> None:
        super().__init__(f"invalid phone number: {reason}")
        self.reason = reason


_PARSE_ERRORS: dict[int, InvalidReason] = {
    NumberParseException.INVALID_COUNTRY_CODE: InvalidReason.INVALID_COUNTRY_CODE,
    NumberParseException.NOT_A_NUMBER: InvalidReason.NOT_A_NUMBER,
    NumberParseException.TOO_SHORT_AFTER_IDD: InvalidReason.TOO_SHORT,
    NumberParseException.TOO_SHORT_NSN: InvalidReason.TOO_SHORT,
    NumberParseException.TOO_LONG: InvalidReason.TOO_LONG,
}

_POSSIBLE_ERRORS: dict[int, InvalidReason] = {
    ValidationResult.INVALID_COUNTRY_CODE: InvalidReason.INVALID_COUNTRY_CODE,
    ValidationResult.TOO_SHORT: InvalidReason.TOO_SHORT,
    ValidationResult.TOO_LONG: InvalidReason.TOO_LONG,
    ValidationResult.INVALID_LENGTH: InvalidReason.INVALID_NUMBER,
}


def check_region(region: str | None) -> str | None:
    """Validate a default region (ISO 3166-1 alpha-2 such as ``"DE"``); returns it upper-cased.

    Raises ``ValueError`` for a region ``phonenumbers`` does not know.
    """
    if region is None or region == "":
        return None
    upper = region.strip().upper()
    if upper not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown default region {region!r}")
    return upper


def _is_international(text: str) -> bool:
    """True if the entry carries its own country code (``+...`` or ``tel:+...``)."""
    body = text.lstrip(" \t(")
    if body[:4].lower() == "tel:":
        body = body[4:].lstrip()
    return body.startswith(("+", "\uff0b"))  # ASCII or full-width plus


def normalize_number(raw: str, default_region: str | None) -> str:
    """Normalise one address-book entry to E.164.

    ``default_region`` is used for entries written without ``+`` and a country
    code (national format such as ``"0151 2345 6789"``). Raises
    :class:`InvalidNumberError` with a reason for an entry that is not a valid
    number; never returns an invalid number.
    """
    region = check_region(default_region)
    text = raw.strip()
    if not text:
        raise InvalidNumberError(InvalidReason.EMPTY)
    if region is None and not _is_international(text):
        # Without a region phonenumbers could only guess; say so clearly, unless
        # the entry is not a number at all.
        if not any(ch.isdigit() for ch in text):
            raise InvalidNumberError(InvalidReason.NOT_A_NUMBER)
        raise InvalidNumberError(InvalidReason.MISSING_REGION)
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        raise InvalidNumberError(_PARSE_ERRORS.get(exc.error_type, InvalidReason.NOT_A_NUMBER)) from None
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible not in (ValidationResult.IS_POSSIBLE, ValidationResult.IS_POSSIBLE_LOCAL_ONLY):
        raise InvalidNumberError(_POSSIBLE_ERRORS.get(possible, InvalidReason.INVALID_NUMBER))
    if not phonenumbers.is_valid_number(number):
        raise InvalidNumberError(InvalidReason.INVALID_NUMBER)
    return str(phonenumbers.format_number(number, PhoneNumberFormat.E164))
