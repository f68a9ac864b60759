"""2,000 SubscribeJoins streams opened at once on one channel: none ends CANCELLED.

gRPC drops calls at random from its queue of calls not yet taken by the application once
that queue passes grpc.server.max_pending_requests (1,000 by default); the server sets it
from --join-max-streams (app/wiring.py, docs/errors.md "Bursts of calls")."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from grpc import aio

from discovery.app.wiring import max_pending_requests
from discovery.core.hashing import contact_hash
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from discovery.v1 import joins_pb2
from tests.support.server import StartServer, user_metadata

STREAMS = 2000


def test_pending_limits_follow_the_stream_limit() -> None:
    assert max_pending_requests(20_000) == (20_000, 40_000)
    assert max_pending_requests(10) == (1000, 2000)


async def test_a_burst_of_streams_loses_none(start_server: StartServer) -> None:
    server = await start_server(join_max_streams_per_user=STREAMS)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await pb_grpc.DirectoryAdminServiceStub(channel).RegisterUser(
            pb.RegisterUserRequest(user_id="alice", contact_hash=contact_hash("+4915100000901"))
        )
        subscribe = channel.unary_stream(
            "/discovery.v1.JoinNotificationService/SubscribeJoins",
            request_serializer=joins_pb2.SubscribeJoinsRequest.SerializeToString,
            response_deserializer=joins_pb2.SubscribeJoinsResponse.FromString,
        )
        calls = [
            subscribe(joins_pb2.SubscribeJoinsRequest(), metadata=user_metadata("alice"), timeout=120)
            for _ in range(STREAMS)
        ]

        async def first(call: aio.UnaryStreamCall) -> str:
            try:
                response = await call.read()
            except aio.AioRpcError as error:
                return error.code().name
            if response is aio.EOF:
                return (await call.code()).name
            return "CAUGHT_UP" if response.caught_up else "EVENTS"

        outcomes = Counter(await asyncio.gather(*(first(call) for call in calls)))
        for call in calls:
            call.cancel()
    assert outcomes == Counter({"CAUGHT_UP": STREAMS}), outcomes
    assert grpc.StatusCode.CANCELLED.name not in outcomes
