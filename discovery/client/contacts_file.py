"""Reading address books and import files (CSV or one entry per line).

API::

    parse_contacts(source: str | Iterable[str]) -> list[str]
    parse_import_rows(source: str | Iterable[str]) -> Iterator[tuple[str, str]]
    looks_like_number(cell: str) -> bool

``source`` is the whole text (``str``) or an iterable of lines such as an open
text file.

Contacts: if the first non-blank line has a ``,``, ``;`` or tab delimiter the
file is CSV. The number is taken from the column whose header is ``phone``,
``number``, ``tel``, ``mobile`` (or a close variant such as ``phone number``,
case-insensitive); without such a header, from the first column where at least
half of the values look like phone numbers (else the first column that has any
number-like value). Otherwise the file holds one entry per line; a first line
that is just such a header name is skipped. Blank lines and empty cells are
not entries; every other value is returned as-is (stripped) for
normalisation, so invalid ones are reported, not dropped.

Import files: CSV rows ``user_id,number``; the header is optional (recognised
when a cell is ``user_id``/``user``/``id`` or one of the phone header names,
which may also reorder the columns). Rows are yielded lazily, so large files
stream. A short row yields ``""`` for the missing value (reported as a rejection
later); blank rows are skipped.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from itertools import chain

__all__ = ["looks_like_number", "parse_contacts", "parse_import_rows"]

_DELIMITERS = (",", ";", "\t")

PHONE_HEADERS = frozenset(
    {
        "phone",
        "number",
        "tel",
        "mobile",
        "phone number",
        "phonenumber",
        "telephone",
        "telephone number",
        "tel number",
        "mobile number",
        "mobile phone",
        "cell",
        "cell phone",
        "cellphone",
        "msisdn",
        "e164",
    }
)
USER_ID_HEADERS = frozenset({"user id", "userid", "user", "id", "uid", "account", "account id"})

_NUMBER_LIKE = re.compile(r"^(?:tel:)?\s*[+\uff0b]?[\d\s().\-/]*$", re.IGNORECASE)
_DATE_LIKE = re.compile(r"^\s*(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./]\d{1,2}[./]\d{2,4})\s*$")


def looks_like_number(cell: str) -> bool:
    """True for a value that plausibly holds a phone number (at least 5 digits, phone punctuation only)."""
    text = cell.strip()
    if sum(ch.isdigit() for ch in text) < 5:
        return False
    return bool(_NUMBER_LIKE.match(text)) and not _DATE_LIKE.match(text)


def _header_key(cell: str) -> str:
    text = cell.strip().strip("\"'").strip().lower()
    return re.sub(r"[\s_\-.]+", " ", text).strip()


def _is_phone_header(cell: str) -> bool:
    return _header_key(cell) in PHONE_HEADERS


def _lines(source: str | Iterable[str]) -> Iterator[str]:
    lines: Iterable[str] = source.splitlines() if isinstance(source, str) else source
    first = True
    for line in lines:
        text = line.rstrip("\r\n")
        if first:
            text = text.removeprefix("\ufeff")
            first = False
        yield text


def _detect_delimiter(line: str) -> str | None:
    best: str | None = None
    best_cells = 1
    for delimiter in _DELIMITERS:
        if delimiter not in line:
            continue
        cells = len(next(csv.reader([line], delimiter=delimiter), []))
        if cells > best_cells:
            best, best_cells = delimiter, cells
    return best


def _pick_number_column(rows: list[list[str]]) -> int:
    width = max((len(r) for r in rows), default=0)
    first_any: int | None = None
    for col in range(width):
        values = [r[col] for r in rows if col < len(r) and r[col].strip()]
        hits = sum(looks_like_number(v) for v in values)
        if hits and first_any is None:
            first_any = col
        if values and hits * 2 >= len(values):
            return col
    return first_any if first_any is not None else 0


def parse_contacts(source: str | Iterable[str]) -> list[str]:
    """The raw address-book entries in a contacts file (see the module docstring)."""
    lines = [line for line in _lines(source) if line.strip()]
    if not lines:
        return []
    delimiter = _detect_delimiter(lines[0])
    if delimiter is None:
        entries = [line.strip() for line in lines]
        if _is_phone_header(entries[0]):
            entries = entries[1:]
        return entries
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = rows[0]
    column = next((i for i, cell in enumerate(header) if _is_phone_header(cell)), None)
    if column is not None:
        data = rows[1:]
    else:
        has_header = len(rows) > 1 and not any(looks_like_number(cell) for cell in header)
        data = rows[1:] if has_header else rows
        column = _pick_number_column(data)
    return [row[column].strip() for row in data if column < len(row) and row[column].strip()]


def parse_import_rows(source: str | Iterable[str]) -> Iterator[tuple[str, str]]:
    """``(user_id, number)`` rows of an import file, lazily (see the module docstring)."""
    lines = (line for line in _lines(source) if line.strip())
    first = next(lines, None)
    if first is None:
        return
    delimiter = _detect_delimiter(first) or ","
    reader = csv.reader(chain([first], lines), delimiter=delimiter)
    header = next(reader)
    user_col, number_col = 0, 1
    keys = [_header_key(cell) for cell in header]
    is_header = any(k in USER_ID_HEADERS or k in PHONE_HEADERS for k in keys)
    if is_header:
        user_col = next((i for i, k in enumerate(keys) if k in USER_ID_HEADERS), 0)
        number_col = next(
            (i for i, k in enumerate(keys) if k in PHONE_HEADERS and i != user_col),
            1 if user_col == 0 else 0,
        )
        rows: Iterable[list[str]] = reader
    else:
        rows = chain([header], reader)
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        user_id = row[user_col].strip() if user_col < len(row) else ""
        number = row[number_col].strip() if number_col < len(row) else ""
        yield user_id, number
