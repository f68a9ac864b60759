"""DiscoveryError.from_rpc_error: status code, message and google.rpc details of a failed call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from discovery.client import DiscoveryError


class _FakeCallError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: Any, details: str, trailing: tuple[tuple[str, bytes], ...] = ()) -> None:
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailing


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def test_discovery_error_parses_rich_status() -> None:
    delay = duration_pb2.Duration(seconds=2, nanos=500_000_000)
    status = status_pb2.Status(
        code=code_pb2.RESOURCE_EXHAUSTED,
        message="slow down",
        details=[
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field="contact_hashes", description="too many"
                        )
                    ]
                )
            ),
            _packed(error_details_pb2.RetryInfo(retry_delay=delay)),
            _packed(error_details_pb2.ErrorInfo(reason="X")),
        ],
    )
    error = DiscoveryError.from_rpc_error(
        _FakeCallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            (("grpc-status-details-bin", status.SerializeToString()),),
        )
    )
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "slow down"
    assert error.field_violations == [("contact_hashes", "too many")]
    assert error.retry_after == 2.5
    assert str(error) == "RESOURCE_EXHAUSTED: slow down (contact_hashes: too many) (retry after 2.5s)"


def test_discovery_error_without_details() -> None:
    error = DiscoveryError.from_rpc_error(_FakeCallError(grpc.StatusCode.UNAVAILABLE, "down"))
    assert (error.code, error.message, error.field_violations, error.retry_after) == (
        grpc.StatusCode.UNAVAILABLE,
        "down",
        [],
        None,
    )
    # A rich status that disagrees with the call's code is still read.
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message="other",
        details=[_packed(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))],
    )
    error = DiscoveryError.from_rpc_error(
        _FakeCallError(
            grpc.StatusCode.UNAVAILABLE, "down", (("grpc-status-details-bin", status.SerializeToString()),)
        )
    )
    assert error.retry_after == 1.0
    assert error.code is grpc.StatusCode.UNAVAILABLE
    # Not a grpc.Call at all.
    error = DiscoveryError.from_rpc_error(grpc.RpcError())
    assert error.code is grpc.StatusCode.UNKNOWN


def test_undecodable_details_count_as_none() -> None:
    error = DiscoveryError.from_rpc_error(
        _FakeCallError(grpc.StatusCode.INTERNAL, "odd", (("grpc-status-details-bin", b"\xff\xff\xff"),))
    )
    assert (error.code, error.message, error.field_violations, error.retry_after) == (
        grpc.StatusCode.INTERNAL,
        "odd",
        [],
        None,
    )


class _BrokenCallError(_FakeCallError):
    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        raise RuntimeError("a bug in reading the details")


def test_a_bug_while_reading_details_is_not_hidden() -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        DiscoveryError.from_rpc_error(_BrokenCallError(grpc.StatusCode.INTERNAL, "x"))
