"""The one place that turns domain errors into gRPC statuses with google.rpc details.

Every status carries exactly one ``google.rpc.ErrorInfo`` (domain ``discovery.v1``, the
error's :class:`~discovery.core.errors.Reason`), next to the BadRequest, QuotaFailure,
RetryInfo or ResourceInfo detail of its kind: the contract of docs/errors.md.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from discovery.core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    Reason,
    Unauthenticated,
    Unavailable,
)

ERROR_DOMAIN = "discovery.v1"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, int(seconds * 1e9)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def _bad_request(violations: list[tuple[str, str]]) -> error_details_pb2.BadRequest:
    return error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations
        ]
    )


def _error_info(reason: Reason) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason.value, domain=ERROR_DOMAIN)


def status_for(error: DomainError) -> grpc.Status:
    """The gRPC status, with google.rpc details, for a domain error."""
    details: list[object] = []
    if isinstance(error, InvalidArgument):
        code = code_pb2.INVALID_ARGUMENT
        details = [_bad_request([(v.field, v.description) for v in error.violations])]
    elif isinstance(error, AlreadyExists):
        code = code_pb2.ALREADY_EXISTS
        details = [_bad_request([(error.field, error.message)])]
    elif isinstance(error, NotFound):
        code = code_pb2.NOT_FOUND
        details = [
            error_details_pb2.ResourceInfo(
                resource_type=error.resource_type,
                resource_name=error.resource_name,
                description=error.message,
            )
        ]
    elif isinstance(error, QuotaExceeded):
        code = code_pb2.RESOURCE_EXHAUSTED
        details = [
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=error.subject, description=error.description
                    )
                ]
            ),
            _retry_info(error.retry_after),
        ]
    elif isinstance(error, Unauthenticated):
        code = code_pb2.UNAUTHENTICATED
    elif isinstance(error, PermissionDenied):
        code = code_pb2.PERMISSION_DENIED
    elif isinstance(error, DeadlineExceeded):
        code = code_pb2.DEADLINE_EXCEEDED
    elif isinstance(error, Unavailable):
        code = code_pb2.UNAVAILABLE
        details = [_retry_info(error.retry_after)]
    else:
        code = code_pb2.INTERNAL
    return _status(code, error.message, error.reason, details)


def internal_status() -> grpc.Status:
    return _status(code_pb2.INTERNAL, "internal error", Reason.INTERNAL, [])


def _status(code: int, message: str, reason: Reason, details: list[object]) -> grpc.Status:
    packed = [_pack(_error_info(reason))] + [_pack(d) for d in details]
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))
