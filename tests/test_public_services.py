"""Health and reflection need no token: undecodable requests get INVALID_ARGUMENT with details
(not UNKNOWN), and a flood of them costs one throttled log line, not a stack trace each."""

from __future__ import annotations

import asyncio
import io
import json

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from grpc.aio import _server as aio_server
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discovery.app.server import DiscoveryServer
from discovery.logs import LogThrottle
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from discovery.v1 import private_pb2, private_pb2_grpc
from tests.support.error_cases import HEALTH, REFLECTION
from tests.support.rpc import invoke, reason
from tests.support.server import StartServer, status_details, user_metadata

GARBAGE = [b"\x0a\xff\xff\xff\xff\x0f", b"\xff" * 40, b"\x08"]
CALLS = 1000


async def test_undecodable_requests_get_invalid_argument(channel: aio.Channel) -> None:
    for method in [*HEALTH.methods, *REFLECTION.methods]:
        for payload in GARBAGE:
            error = await invoke(channel, method, payload, ())
            assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, method.full_name
            assert reason(error) == "MALFORMED_REQUEST"
            [bad_request] = [d for d in status_details(error) if isinstance(d, error_details_pb2.BadRequest)]
            assert bad_request.field_violations[0].field == "request"


def levels(log: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line["level"] != "debug"]


async def test_a_thousand_garbage_calls_add_a_few_log_lines(
    server: DiscoveryServer, channel: aio.Channel, log_capture: io.StringIO
) -> None:
    before = len(levels(log_capture))
    methods = [*HEALTH.methods, *REFLECTION.methods]
    for start in range(0, CALLS, 100):
        errors = await asyncio.gather(
            *(
                invoke(channel, methods[i % len(methods)], GARBAGE[i % 2], ())
                for i in range(start, start + 100)
            )
        )
        assert all(e is not None and e.code() == grpc.StatusCode.INVALID_ARGUMENT for e in errors)
    added = levels(log_capture)[before:]
    # One line per method and code and minute (three methods), saying how many it left out.
    assert len(added) <= 2 * len(methods), added
    assert all(line["level"] == "info" and "stack" not in line for line in added)
    assert {line.get("reason") for line in added} == {"MALFORMED_REQUEST"}


def test_the_throttle_counts_what_it_leaves_out() -> None:
    now = [0.0]
    throttle = LogThrottle(interval=60.0, clock=lambda: now[0])
    assert throttle.allow("k") == 0
    assert [throttle.allow("k") for _ in range(5)] == [None] * 5
    assert throttle.allow("other") == 0
    now[0] = 61.0
    assert throttle.allow("k") == 5
    assert throttle.allow("k") is None


async def test_no_method_is_registered_with_the_accept_loop(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """grpc.aio waits on one pending request per registered method for every incoming call, so
    the service adds generic handlers only (app/wiring.py), private mode included; every service,
    health and reflection still answer through them."""
    registered: list[str] = []
    original = aio_server.Server.add_registered_method_handlers

    def record(self: aio_server.Server, service: str, handlers: object) -> None:
        registered.append(service)
        original(self, service, handlers)  # type: ignore[arg-type]

    monkeypatch.setattr(aio_server.Server, "add_registered_method_handlers", record)
    server = await start_server(private_mode=True, private_jitter_seconds=0.0)
    assert registered == []
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            await health.Check(health_pb2.HealthCheckRequest())
        ).status == health_pb2.HealthCheckResponse.SERVING
        for method in [*HEALTH.methods, *REFLECTION.methods]:
            error = await invoke(channel, method, GARBAGE[0], ())
            assert error is not None and reason(error) == "MALFORMED_REQUEST", method.full_name
        caller = user_metadata("nobody")
        found = await pb_grpc.DiscoveryServiceStub(channel).Discover(pb.DiscoverRequest(), metadata=caller)
        assert list(found.match_user_ids) == []
        private = private_pb2_grpc.PrivateDiscoveryServiceStub(channel)
        params = await private.GetPrivateParams(private_pb2.GetPrivateParamsRequest(), metadata=caller)
        assert params.epoch == 1 and params.public_key
