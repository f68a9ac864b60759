"""Graceful shutdown on SIGTERM, and join streams across recycled connections.

A real `discovery serve` process gets SIGTERM while a join stream, a health Watch and a
client-streaming import are open: it reports NOT_SERVING, refuses new calls, lets the
import finish, ends the streams, and exits 0 within its grace period. The SDK's join
iterator takes the end as "reconnect" and, once the server is back on the same port and
data directory, resumes from its cursor without losing or repeating an event.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, JoinEvent, JoinSubscription, Settings
from discovery.core.hashing import contact_hash
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.helpers import e164_numbers
from tests.support.serve_process import (
    ServeProcess,
    health_status,
)
from tests.support.server import StartServer

WATCHING = Settings(discoverable=True, announce_join=True, notify_on_join=True)
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
GRACE = 5.0


async def consume(subscription: JoinSubscription, into: asyncio.Queue[JoinEvent]) -> None:
    async for event in subscription:
        await into.put(event)


async def next_event(received: asyncio.Queue[JoinEvent], timeout: float = 20.0) -> JoinEvent:
    return await asyncio.wait_for(received.get(), timeout=timeout)


def import_request(*users: tuple[str, str]) -> pb.ImportUsersRequest:
    return pb.ImportUsersRequest(
        users=[pb.ImportUser(user_id=u, contact_hash=contact_hash(n)) for u, n in users]
    )


async def test_sigterm_drains_refuses_and_the_sdk_resumes(
    serve_processes: Callable[..., ServeProcess],
) -> None:
    bob, carol, dave, erin, alice = e164_numbers(5, seed=701)
    server = serve_processes("--grace-seconds", str(GRACE)).start()
    async with AsyncAdminClient(server.target) as admin:
        await admin.register_user("alice", alice, WATCHING)
    received: asyncio.Queue[JoinEvent] = asyncio.Queue()
    async with (
        AsyncDiscoveryClient(server.target, user_id="alice", default_region="DE") as client,
        aio.insecure_channel(server.target) as channel,
    ):
        await client.discover([bob, carol, dave])  # not registered yet: watched
        subscription = client.subscribe_joins([bob, carol, dave], initial_backoff=0.05, max_backoff=0.5)
        consumer = asyncio.create_task(consume(subscription, received))
        await asyncio.wait_for(subscription.live.wait(), timeout=20)
        async with AsyncAdminClient(server.target) as admin:
            await admin.register_user("bob", bob)
        assert (await next_event(received)).user_id == "bob"

        # A health Watch and a client-streaming import are in flight when SIGTERM arrives.
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert (await asyncio.wait_for(watch.read(), timeout=10)).status == SERVING
        admin_stub = pb_grpc.DirectoryAdminServiceStub(channel)
        importing = admin_stub.ImportUsers(timeout=30)
        await importing.write(import_request(("erin", erin)))

        server.signal(signal.SIGTERM)
        signalled = time.monotonic()

        # 1. NOT_SERVING, pushed to the watcher, whose stream then ends cleanly at once
        # instead of holding the drain for the grace period.
        assert (await asyncio.wait_for(watch.read(), timeout=10)).status == NOT_SERVING
        assert await asyncio.wait_for(watch.read(), timeout=10) is aio.EOF
        assert await watch.code() == grpc.StatusCode.OK
        # 2. No new call is accepted, on this connection or on a new one (a health Check neither).
        for target_channel in (channel, None):
            with pytest.raises(aio.AioRpcError) as refused:
                if target_channel is None:
                    async with aio.insecure_channel(server.target) as fresh:
                        await health_status(fresh)
                else:
                    await admin_stub.RegisterUser(
                        pb.RegisterUserRequest(user_id="late", contact_hash=contact_hash(carol)), timeout=5
                    )
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # 3. The call in flight still finishes: its second batch (dave, whom alice watches) commits.
        await importing.write(import_request(("dave", dave)))
        await importing.done_writing()
        report = await asyncio.wait_for(importing, timeout=10)
        assert report.imported == 2
        # 4. The process exits 0 within the grace period.
        assert await server.wait(timeout=GRACE + 10) == 0
        assert time.monotonic() - signalled < GRACE, "the drain did not wait out the grace period"
        assert subscription.reconnects >= 1, "the SDK took the end of the stream as 'reconnect'"
        assert received.empty()

        # The SDK resumes on the restarted server from its cursor: dave's event (committed
        # during the drain) arrives, then carol's, each once, and bob's is not repeated.
        server.start()
        event = await next_event(received)
        assert (event.user_id, event.e164) == ("dave", dave)
        async with AsyncAdminClient(server.target) as admin:
            await admin.register_user("carol", carol)
        assert (await next_event(received)).user_id == "carol"
        matches = await client.discover([bob, carol, dave, erin])
        assert {m.user_id for m in matches.matches} == {"bob", "carol", "dave", "erin"}
        consumer.cancel()
    assert received.empty()


async def test_sdk_resumes_across_recycled_connections(start_server: StartServer) -> None:
    """Connections live 1 s; the stream is cut after 0.5 s more, and resumes from its cursor."""
    server = await start_server(max_connection_age_seconds=1.0, max_connection_age_grace_seconds=0.5)
    target = f"127.0.0.1:{server.port}"
    numbers = e164_numbers(9, seed=702)
    joiners = numbers[:8]
    async with AsyncAdminClient(target) as admin:
        await admin.register_user("alice", numbers[8], WATCHING)
    received: asyncio.Queue[JoinEvent] = asyncio.Queue()
    async with AsyncDiscoveryClient(target, user_id="alice", default_region="DE") as client:
        await client.discover(joiners)
        subscription = client.subscribe_joins(joiners, initial_backoff=0.05, max_backoff=0.5)
        consumer = asyncio.create_task(consume(subscription, received))
        await asyncio.wait_for(subscription.live.wait(), timeout=10)
        got: list[str] = []
        async with AsyncAdminClient(target) as admin:
            for i, number in enumerate(joiners):  # about 4 s: several recycles
                await admin.register_user(f"joiner-{i}", number)
                got.append((await next_event(received, timeout=10)).user_id)
                await asyncio.sleep(0.5)
        consumer.cancel()
    assert got == [f"joiner-{i}" for i in range(8)]
    assert received.empty()
    assert subscription.reconnects >= 2, "the connection was recycled under the stream"
