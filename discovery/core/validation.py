"""Input rules shared by every entry point. Error texts never echo a hash or a number."""

from __future__ import annotations

from discovery.core.errors import FieldViolation, InvalidArgument, Reason
from discovery.core.hashing import HASH_SIZE
from discovery.core.keyset import SortedKeys

MAX_USER_ID_BYTES = 128


def user_id_problem(user_id: str) -> str | None:
    """Why a user id is unacceptable, or None."""
    if not user_id:
        return "must not be empty"
    if len(user_id.encode("utf-8", "surrogatepass")) > MAX_USER_ID_BYTES:
        return f"must be at most {MAX_USER_ID_BYTES} bytes of UTF-8"
    if not user_id.isprintable():
        return "must not contain control or non-printable characters"
    try:
        user_id.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid UTF-8"
    return None


def check_user_id(user_id: str, field: str = "user_id") -> str:
    problem = user_id_problem(user_id)
    if problem is not None:
        raise InvalidArgument.field(field, problem, Reason.INVALID_USER_ID)
    return user_id


def contact_hash_problem(contact_hash: bytes) -> str | None:
    if len(contact_hash) != HASH_SIZE:
        return f"must be exactly {HASH_SIZE} bytes, got {len(contact_hash)}"
    return None


def check_contact_hash(contact_hash: bytes, field: str = "contact_hash") -> bytes:
    problem = contact_hash_problem(contact_hash)
    if problem is not None:
        raise InvalidArgument.field(field, problem, Reason.INVALID_CONTACT_HASH)
    return contact_hash


def check_packed_hashes(
    packed: bytes, max_count: int, field: str = "contact_hashes", reason: Reason | None = None
) -> int:
    """The number of hashes in a packed field, or InvalidArgument (with ``reason`` when given)."""
    if len(packed) % HASH_SIZE:
        raise InvalidArgument.field(
            field,
            f"length {len(packed)} is not a multiple of {HASH_SIZE} bytes",
            reason or Reason.MALFORMED_CONTACT_HASHES,
        )
    count = len(packed) // HASH_SIZE
    if count > max_count:
        raise InvalidArgument.field(
            field,
            f"{count} contact hashes exceed the limit of {max_count} per request",
            reason or Reason.TOO_MANY_CONTACT_HASHES,
        )
    return count


def check_no_duplicate_keys(
    keys: SortedKeys, field: str = "contact_hashes", reason: Reason | None = None
) -> None:
    """Reject a batch in which two entries share a directory key, i.e. a contact hash."""
    duplicate = keys.first_duplicate()
    if duplicate is not None:
        first, second = duplicate
        raise InvalidArgument(
            f"duplicate contact hashes in {field}",
            [FieldViolation(f"{field}[{second}]", f"duplicates {field}[{first}]")],
            reason or Reason.DUPLICATE_CONTACT_HASHES,
        )
