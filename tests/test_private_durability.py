"""Private mode loses nothing across a SIGKILL: real `discovery serve` processes, on SQLite and on Redis.

Concurrent RegisterUser calls through the admin API; the server is killed with SIGKILL in the middle of
them (on Redis with AOF, Redis is killed at the same moment). After a restart on the same store:

* every acknowledged registration is in the private set, found through a new client's snapshot, through
  the delta (GetPrivateDelta) of a client whose snapshot predates the workload, and through the delta
  stream (SubscribePrivateDeltas) from that snapshot's cursor;
* the private set is exactly the registry (what standard mode discovers): no user without an entry, no
  entry without a user, and a registration whose call failed is either wholly there or not at all.

The snapshot carries the sealed ids (a small directory), so nothing here reads buckets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from grpc import aio

from discovery.client import AsyncDiscoveryClient
from discovery.client.private import PrivateState
from discovery.private_scheme import Delta, Snapshot, apply_delta
from discovery.v1 import private_pb2, private_pb2_grpc
from tests.support.helpers import e164_numbers
from tests.support.private_view import holders
from tests.support.redis_fixtures import RedisProcess
from tests.support.serve_process import (
    AOF,
    CALL_TIMEOUT,
    ServeProcess,
    power_cut,
    registered_across_crash,
)
from tests.support.server import user_metadata

COUNT = 150
#: Private mode on, changes released at once, and quota enough for the probes' evaluations.
PRIVATE_FLAGS = ("--private-mode", "true", "--private-jitter-seconds", "0", "--quota-capacity", "10000")


async def private_view(target: str, numbers: list[str], state: PrivateState) -> set[tuple[str, str]]:
    """What ``discover_private`` finds from ``state`` (a snapshot, or a delta from its cursor)."""
    async with AsyncDiscoveryClient(target, user_id="private-probe", timeout=CALL_TIMEOUT) as client:
        client.private_state = state
        result = await client.discover_private(numbers)
    snapshot = state.snapshot
    assert snapshot is not None and snapshot.sealed is not None
    pairs = {(m.entry, m.user_id) for m in result.matches}
    assert len(snapshot) == len(pairs), "the private set holds entries of no registered number"
    return pairs


async def streamed_delta(target: str, snapshot: Snapshot) -> Snapshot:
    """``snapshot`` brought up to date by the first message of SubscribePrivateDeltas from its cursor."""
    async with aio.insecure_channel(target) as channel:
        stub = private_pb2_grpc.PrivateDiscoveryServiceStub(channel)
        request = private_pb2.SubscribePrivateDeltasRequest(epoch=snapshot.epoch, cursor=snapshot.cursor)
        stream = stub.SubscribePrivateDeltas(request, metadata=user_metadata("stream-probe"))
        try:
            message = await asyncio.wait_for(stream.read(), timeout=CALL_TIMEOUT)
        finally:
            stream.cancel()
    assert message is not aio.EOF and not message.reset
    return apply_delta(snapshot, Delta.deserialize(message.delta))


async def crash_and_check(
    server: ServeProcess, crash: Callable[[], object], restart: Callable[[], object]
) -> None:
    numbers = e164_numbers(COUNT, seed=901)
    # A client synced before the workload: after the restart its delta comes from the store's feed.
    async with AsyncDiscoveryClient(server.target, user_id="early", timeout=CALL_TIMEOUT) as client:
        assert (await client.discover_private(numbers)).matches == []
        early = client.private_state.to_bytes()
    registered = await registered_across_crash(server, numbers, crash, restart)
    expected = {(numbers[int(u.removeprefix("user-"))], u) for u in registered}
    assert await private_view(server.target, numbers, PrivateState()) == expected, "snapshot"
    assert await private_view(server.target, numbers, PrivateState.from_bytes(early)) == expected, "delta"
    state = PrivateState.from_bytes(early)
    assert state.snapshot is not None
    streamed = await streamed_delta(server.target, state.snapshot)
    assert holders(streamed, state.outputs, numbers) == expected, "delta stream"
    assert len(streamed) == len(expected)


async def test_sigkill_during_registrations_on_the_embedded_store(
    serve_processes: Callable[..., ServeProcess],
) -> None:
    server = serve_processes(*PRIVATE_FLAGS).start()
    await crash_and_check(server, crash=server.kill, restart=server.start)
    assert server.starts == 2


async def test_sigkill_during_registrations_on_redis(
    serve_processes: Callable[..., ServeProcess], redis_url: str
) -> None:
    server = serve_processes(*PRIVATE_FLAGS, store=redis_url).start()
    await crash_and_check(server, crash=server.kill, restart=server.start)


async def test_sigkill_of_server_and_redis_with_aof(
    serve_processes: Callable[..., ServeProcess], redis_factory: Callable[..., RedisProcess]
) -> None:
    """The server and Redis die at once (a power cut of one machine); Redis reloads its AOF."""
    redis = redis_factory(*AOF)
    server = serve_processes(*PRIVATE_FLAGS, store=redis.url).start()
    crash, restart = power_cut(server, redis)
    await crash_and_check(server, crash=crash, restart=restart)
