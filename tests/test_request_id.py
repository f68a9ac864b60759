"""Request ids: a caller's UUID is kept for correlation; free text is never taken into the logs."""

from __future__ import annotations

import io
import uuid

from grpc import aio

from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
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
