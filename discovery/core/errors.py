"""Domain errors. The api layer maps each to one gRPC status with google.rpc details.

Every error carries one :class:`Reason`: the ``google.rpc.ErrorInfo`` reason a client branches
on. The reasons are the wire contract of proto/discovery/v1/errors.proto (``ErrorReason``) and
docs/errors.md; tests/test_error_contract.py keeps the three equal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar


class Reason(enum.StrEnum):
    """The ErrorInfo reasons of domain ``discovery.v1``: see docs/errors.md for each."""

    # INVALID_ARGUMENT
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    MALFORMED_REQUEST = "MALFORMED_REQUEST"
    MALFORMED_CONTACT_HASHES = "MALFORMED_CONTACT_HASHES"
    TOO_MANY_CONTACT_HASHES = "TOO_MANY_CONTACT_HASHES"
    DUPLICATE_CONTACT_HASHES = "DUPLICATE_CONTACT_HASHES"
    PREVIOUS_SET_REFUSED = "PREVIOUS_SET_REFUSED"
    INVALID_USER_ID = "INVALID_USER_ID"
    INVALID_CONTACT_HASH = "INVALID_CONTACT_HASH"
    INVALID_UPDATE_MASK = "INVALID_UPDATE_MASK"
    INVALID_DEVICE_ID = "INVALID_DEVICE_ID"
    CURSOR_OUT_OF_RANGE = "CURSOR_OUT_OF_RANGE"
    IMPORT_BATCH_TOO_LARGE = "IMPORT_BATCH_TOO_LARGE"
    MALFORMED_BLINDED_ELEMENTS = "MALFORMED_BLINDED_ELEMENTS"
    TOO_MANY_BLINDED_ELEMENTS = "TOO_MANY_BLINDED_ELEMENTS"
    BUCKET_RANGE_REFUSED = "BUCKET_RANGE_REFUSED"
    TOO_MANY_BUCKET_RANGES = "TOO_MANY_BUCKET_RANGES"
    PRIVATE_CURSOR_REFUSED = "PRIVATE_CURSOR_REFUSED"
    PRIVATE_EPOCH_REFUSED = "PRIVATE_EPOCH_REFUSED"
    # UNAUTHENTICATED
    CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
    CREDENTIALS_MALFORMED = "CREDENTIALS_MALFORMED"
    CREDENTIALS_DUPLICATED = "CREDENTIALS_DUPLICATED"
    TOKEN_INVALID = "TOKEN_INVALID"
    TOKEN_EXPIRED = "TOKEN_EXPIRED"
    SUBJECT_INVALID = "SUBJECT_INVALID"
    # PERMISSION_DENIED
    PERMISSION_DENIED = "PERMISSION_DENIED"
    # ALREADY_EXISTS
    HASH_TAKEN = "HASH_TAKEN"
    USER_ID_TAKEN = "USER_ID_TAKEN"
    # NOT_FOUND
    NOT_REGISTERED = "NOT_REGISTERED"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"
    # RESOURCE_EXHAUSTED
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    SERVER_STREAMS_FULL = "SERVER_STREAMS_FULL"
    # UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of every error a caller may see. Messages never hold a number, a hash or a token."""

    #: The reason of an error raised without one.
    default_reason: ClassVar[Reason] = Reason.INTERNAL

    def __init__(self, message: str, reason: Reason | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason


class InvalidArgument(DomainError):
    default_reason = Reason.INVALID_ARGUMENT

    def __init__(
        self, message: str, violations: list[FieldViolation] | None = None, reason: Reason | None = None
    ) -> None:
        super().__init__(message, reason)
        self.violations = violations or []

    @classmethod
    def field(cls, field: str, description: str, reason: Reason | None = None) -> InvalidArgument:
        return cls(f"invalid {field}: {description}", [FieldViolation(field, description)], reason)


class NotFound(DomainError):
    default_reason = Reason.NOT_REGISTERED

    def __init__(
        self, message: str, resource_type: str = "", resource_name: str = "", reason: Reason | None = None
    ) -> None:
        super().__init__(message, reason)
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExists(DomainError):
    def __init__(self, message: str, field: str, reason: Reason) -> None:
        super().__init__(message, reason)
        self.field = field


class Unauthenticated(DomainError):
    default_reason = Reason.TOKEN_INVALID


class PermissionDenied(DomainError):
    default_reason = Reason.PERMISSION_DENIED


class QuotaExceeded(DomainError):
    default_reason = Reason.QUOTA_EXCEEDED

    def __init__(
        self,
        message: str,
        subject: str,
        description: str,
        retry_after: float,
        reason: Reason | None = None,
    ) -> None:
        super().__init__(message, reason)
        self.subject = subject
        self.description = description
        self.retry_after = retry_after


class Unavailable(DomainError):
    """The store or the index is not ready; the caller should retry."""

    default_reason = Reason.STORE_UNAVAILABLE

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(DomainError):
    """The caller's deadline passed; the work for the call was abandoned."""

    default_reason = Reason.DEADLINE_EXCEEDED


# Store-level conflicts, raised by every Store implementation.
class ContactHashTaken(AlreadyExists):
    def __init__(self) -> None:
        super().__init__("the contact hash is registered to another user", "contact_hash", Reason.HASH_TAKEN)


class UserIdTaken(AlreadyExists):
    def __init__(self) -> None:
        super().__init__(
            "the user id is registered with another contact hash; use ChangeNumber",
            "user_id",
            Reason.USER_ID_TAKEN,
        )


class UserNotRegistered(NotFound):
    """The one "not registered": ``who`` is "user" for a backend's target, "caller" for a client."""

    def __init__(self, who: str = "user") -> None:
        super().__init__(f"the {who} is not registered", "user", "", Reason.NOT_REGISTERED)


class FeedTruncated(Exception):
    """The change feed no longer holds the changes after the requested cursor: reload."""


class StartupRefused(Exception):
    """The store holds state that this configuration cannot serve; the message says what to change."""
