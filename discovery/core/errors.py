"""Domain errors. The api layer maps each to one gRPC status with google.rpc details."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of every error a caller may see. Messages never hold a number, a hash or a token."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = violations or []

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(f"invalid {field}: {description}", [FieldViolation(field, description)])


class NotFound(DomainError):
    def __init__(self, message: str, resource_type: str = "", resource_name: str = "") -> None:
        super().__init__(message)
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExists(DomainError):
    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class Unauthenticated(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class QuotaExceeded(DomainError):
    def __init__(self, message: str, subject: str, description: str, retry_after: float) -> None:
        super().__init__(message)
        self.subject = subject
        self.description = description
        self.retry_after = retry_after


class Unavailable(DomainError):
    """The store or the index is not ready; the caller should retry."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(DomainError):
    """The caller's deadline passed; the work for the call was abandoned."""


# Store-level conflicts, raised by every Store implementation.
class ContactHashTaken(AlreadyExists):
    def __init__(self) -> None:
        super().__init__("the contact hash is registered to another user", "contact_hash")


class UserIdTaken(AlreadyExists):
    def __init__(self) -> None:
        super().__init__("the user id is registered with another contact hash; use ChangeNumber", "user_id")


class UserNotRegistered(NotFound):
    """The one "not registered": ``who`` is "user" for a backend's target, "caller" for a client."""

    def __init__(self, who: str = "user") -> None:
        super().__init__(f"the {who} is not registered", "user", "")


class FeedTruncated(Exception):
    """The change feed no longer holds the changes after the requested cursor: reload."""
