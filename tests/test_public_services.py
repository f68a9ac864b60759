"""Health and reflection need no token: undecodable requests get INVALID_ARGUMENT with details
(not UNKNOWN), and a flood of them costs one throttled log line, not a stack trace each."""

from __future__ import annotations

import asyncio
import io
import json

import grpc
from google.rpc import error_details_pb2
from grpc import aio

from discovery.app.server import DiscoveryServer
from discovery.logs import LogThrottle
from tests.support.error_cases import HEALTH, REFLECTION
from tests.support.rpc import invoke, reason
from tests.support.server import status_details

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
