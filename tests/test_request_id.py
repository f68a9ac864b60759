"""Request ids: a caller's UUID is kept for correlation; free text is never taken into the logs."""

from __future__ import annotations

import io
import uuid

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.error_cases import ERROR_CASES, World, run_case
from tests.support.server import user_metadata


async def trailing_request_id(channel: aio.Channel, supplied: str) -> str:
    call = pb_grpc.DiscoveryServiceStub(channel).Discover(
        pb.DiscoverRequest(), metadata=(*user_metadata("u"), ("x-request-id", supplied))
    )
    await call
    return dict(await call.trailing_metadata())["x-request-id"]


async def test_request_ids(channel: aio.Channel, log_capture: io.StringIO) -> None:
    mine = str(uuid.uuid4())
    assert await trailing_request_id(channel, mine) == mine
    replaced = await trailing_request_id(channel, "+4915123456789")
    assert replaced != "+4915123456789" and uuid.UUID(replaced)
    assert "4915123456789" not in log_capture.getvalue()


CODES = [
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
]


@pytest.mark.parametrize("code", CODES, ids=lambda c: c.name)
async def test_errors_echo_the_request_id(error_world: World, code: grpc.StatusCode) -> None:
    """Every case of that code (run_case checks the echo), undecodable bytes among INVALID_ARGUMENT."""
    cases = [case for case in ERROR_CASES if case.code == code]
    assert cases
    for case in cases:
        await run_case(error_world, case)


async def test_undecodable_requests_echo_the_request_id(error_world: World) -> None:
    cases = [case for case in ERROR_CASES if case.reason == "MALFORMED_REQUEST"]
    assert {case.method.split(".")[0] for case in cases} >= {"discovery", "grpc"}
    for case in cases:
        await run_case(error_world, case)


async def test_dashless_uuids_are_echoed_and_health_carries_one(channel: aio.Channel) -> None:
    mine = uuid.uuid4().hex
    assert await trailing_request_id(channel, mine) == mine
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), metadata=(("x-request-id", mine),)
    )
    await health
    assert dict(await health.trailing_metadata())["x-request-id"] == mine
