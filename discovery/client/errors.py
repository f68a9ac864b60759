"""The SDK's error type for failed calls.

Every failed gRPC call made through :mod:`discovery.client` raises
:class:`DiscoveryError`::

    DiscoveryError(
        code: grpc.StatusCode,
        message: str,
        field_violations: list[tuple[str, str]] = [],   # (field, description) from google.rpc.BadRequest
        retry_after: float | None = None,               # seconds, from google.rpc.RetryInfo
        quota_violations: list[tuple[str, str]] = [],   # (subject, description) from google.rpc.QuotaFailure
        reason: str = "",                               # google.rpc.ErrorInfo reason (domain discovery.v1)
        request_id: str | None = None,                  # the x-request-id trailing metadata
    )
    .reason_is(errors_pb2.PREVIOUS_SET_REFUSED) -> bool

Branch on ``reason``: every error of the server carries one ``ErrorInfo`` whose reason is
the name of a ``discovery.v1.ErrorReason`` value (docs/errors.md lists them, with what to
do for each). It is "" when the error came from gRPC itself (a broken connection, a
deadline the client set) or from a server that sent none.

A ``RESOURCE_EXHAUSTED`` error (a quota or rate limit) carries ``quota_violations`` and
``retry_after``; wait that long before sending the request again. ``request_id`` names
the call in the server's logs.

The rich details are read from the ``grpc-status-details-bin`` trailing
metadata (a serialised ``google.rpc.Status``), even when its code or message
disagrees with the call's (a proxy may rewrite the status); undecodable details
count as none. Neither the message nor the string
form of the error ever contains a phone number or a contact hash unless the
server put one there (it does not).
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from discovery.v1 import errors_pb2

__all__ = ["ERROR_DOMAIN", "DiscoveryError"]

_DETAILS_METADATA_KEY = "grpc-status-details-bin"
_REQUEST_ID_METADATA_KEY = "x-request-id"
#: The ErrorInfo domain of the discovery service's reasons.
ERROR_DOMAIN = "discovery.v1"


class DiscoveryError(Exception):
    """A failed call to the discovery service.

    Attributes:
        code: the gRPC status code (``grpc.StatusCode``).
        message: the status message sent by the server (or produced locally by gRPC).
        field_violations: ``(field, description)`` pairs from a ``google.rpc.BadRequest`` detail.
        retry_after: seconds to wait before retrying, from a ``google.rpc.RetryInfo`` detail.
        quota_violations: ``(subject, description)`` pairs from a ``google.rpc.QuotaFailure`` detail.
        reason: the ``google.rpc.ErrorInfo`` reason of domain ``discovery.v1`` ("" if none).
        request_id: the call's ``x-request-id`` from the trailing metadata, if any.
    """

    code: grpc.StatusCode
    message: str
    field_violations: list[tuple[str, str]]
    retry_after: float | None
    quota_violations: list[tuple[str, str]]
    reason: str
    request_id: str | None

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        field_violations: list[tuple[str, str]] | None = None,
        retry_after: float | None = None,
        quota_violations: list[tuple[str, str]] | None = None,
        reason: str = "",
        request_id: str | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.field_violations = list(field_violations or [])
        self.retry_after = retry_after
        self.quota_violations = list(quota_violations or [])
        self.reason = reason
        self.request_id = request_id

    def reason_is(self, reason: errors_pb2.ErrorReason.ValueType) -> bool:
        """Whether the server gave this reason, e.g. ``reason_is(errors_pb2.QUOTA_EXCEEDED)``."""
        return self.reason == errors_pb2.ErrorReason.Name(reason)

    @property
    def code_name(self) -> str:
        """The status code's name, e.g. ``"INVALID_ARGUMENT"``."""
        name = getattr(self.code, "name", None)
        return str(name) if name is not None else str(self.code)

    def __str__(self) -> str:
        text = f"{self.code_name}: {self.message}"
        if self.reason:
            text += f" [{self.reason}]"
        if self.field_violations:
            text += " (" + "; ".join(f"{field}: {desc}" for field, desc in self.field_violations) + ")"
        if self.quota_violations:
            text += " (" + "; ".join(desc for _, desc in self.quota_violations) + ")"
        if self.retry_after is not None:
            text += f" (retry after {self.retry_after:g}s)"
        return text

    def __repr__(self) -> str:
        return (
            f"DiscoveryError(code={self.code_name}, message={self.message!r}, "
            f"field_violations={self.field_violations!r}, retry_after={self.retry_after!r}, "
            f"quota_violations={self.quota_violations!r}, reason={self.reason!r}, "
            f"request_id={self.request_id!r})"
        )

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> DiscoveryError:
        """Build a :class:`DiscoveryError` from a ``grpc.RpcError`` (sync) or ``grpc.aio.AioRpcError``."""
        code = _call_attr(error, "code")
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        message = _call_attr(error, "details")
        trailing = _trailing(error)
        status = _rich_status(trailing)
        if not isinstance(message, str):
            message = status.message if status is not None else ""
        field_violations: list[tuple[str, str]] = []
        quota_violations: list[tuple[str, str]] = []
        retry_after: float | None = None
        reason = ""
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad_request = error_details_pb2.BadRequest()
                    detail.Unpack(bad_request)
                    field_violations.extend((v.field, v.description) for v in bad_request.field_violations)
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry_info = error_details_pb2.RetryInfo()
                    detail.Unpack(retry_info)
                    delay = retry_info.retry_delay
                    retry_after = delay.seconds + delay.nanos / 1e9
                elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
                    quota_failure = error_details_pb2.QuotaFailure()
                    detail.Unpack(quota_failure)
                    quota_violations.extend((v.subject, v.description) for v in quota_failure.violations)
                elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    if info.domain == ERROR_DOMAIN:
                        reason = info.reason
        request_id = next((str(v) for k, v in trailing if k == _REQUEST_ID_METADATA_KEY), None)
        return cls(code, message, field_violations, retry_after, quota_violations, reason, request_id)


def _call_attr(error: object, name: str) -> object:
    """``error.name()`` for a method of ``grpc.Call``, or None if the error has no such method
    (a bare ``grpc.RpcError``) or leaves it abstract."""
    method = getattr(error, name, None)
    if not callable(method):
        return None
    try:
        result: object = method()
    except NotImplementedError:
        return None
    return result


def _trailing(error: object) -> list[tuple[str, str | bytes]]:
    """The error's trailing metadata as ``(key, value)`` pairs; empty when it has none."""
    metadata = _call_attr(error, "trailing_metadata")
    if not isinstance(metadata, Iterable):
        return []
    return [(item[0], item[1]) for item in metadata]


def _rich_status(metadata: list[tuple[str, str | bytes]]) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` carried by the trailing metadata, or None."""
    for key, value in metadata:
        if key == _DETAILS_METADATA_KEY:
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None  # bytes from the wire that are not a Status: no details
    return None
