"""Private mode loses nothing across a SIGKILL: real `discovery serve` processes, on SQLite and on Redis.

Concurrent writes through the API (RegisterUser; ChangeNumber, UnregisterUser and UpdateSettings with
discoverable off on registered users; ImportUsers calls); the server is killed with SIGKILL in the middle
of them (on Redis with AOF, Redis is killed at the same moment). After a restart on the same store, the
private set, the same through a new client's snapshot, through the delta (GetPrivateDelta) of a client
whose snapshot predates the workload and through the delta stream (SubscribePrivateDeltas) from that
snapshot's cursor, is exactly the registry (what standard mode discovers: no user without an entry, no
entry without a user), and holds of each write's users the state after it when it was acknowledged,
the state before it when it was never sent, and one of the two (never half) when its call failed.

The snapshot carries the sealed ids (a small directory), so nothing here reads buckets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from grpc import aio

from discovery.client import AsyncAdminClient, AsyncDiscoveryClient
from discovery.client.private import PrivateState
from discovery.contact_hash import contact_hash
from discovery.private_scheme import Delta, Snapshot, apply_delta
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from discovery.v1 import private_pb2, private_pb2_grpc
from tests.support.helpers import e164_numbers
from tests.support.private_view import holders
from tests.support.redis_fixtures import RedisProcess
from tests.support.serve_process import (
    AOF,
    CALL_TIMEOUT,
    ServeProcess,
    Write,
    power_cut,
    registration,
    writes_until_crash,
)
from tests.support.server import user_metadata

COUNT = 150
Found = set[tuple[str, str]]
#: Private mode on, changes released at once, and quota enough for the probes' evaluations.
PRIVATE_FLAGS = ("--private-mode", "true", "--private-jitter-seconds", "0", "--quota-capacity", "10000")


async def private_view(target: str, numbers: list[str], state: PrivateState) -> Found:
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


async def private_views(target: str, numbers: list[str], early: bytes) -> Found:
    """The private set after the restart, the same through a new snapshot, the delta from ``early`` (a
    client's state saved before the workload) and the delta stream from its cursor."""
    found = await private_view(target, numbers, PrivateState())
    assert await private_view(target, numbers, PrivateState.from_bytes(early)) == found, "delta"
    state = PrivateState.from_bytes(early)
    assert state.snapshot is not None
    streamed = await streamed_delta(target, state.snapshot)
    assert holders(streamed, state.outputs, numbers) == found, "delta stream"
    assert len(streamed) == len(found)
    return found


async def synced(target: str, numbers: list[str]) -> bytes:
    """A client's saved state, synced now (every number evaluated; the snapshot of now)."""
    async with AsyncDiscoveryClient(target, user_id="early", timeout=CALL_TIMEOUT) as client:
        await client.discover_private(numbers)
        return client.private_state.to_bytes()


async def standard_view(target: str, numbers: list[str]) -> Found:
    async with AsyncDiscoveryClient(target, user_id="probe", timeout=CALL_TIMEOUT) as client:
        return {(m.entry, m.user_id) for m in (await client.discover(numbers)).matches}


@dataclass(frozen=True)
class Step:
    """One write of a workload, and what the private set holds of its users before and after it."""

    write: Write
    users: frozenset[str]
    before: Found
    after: Found


async def crash_during(
    server: ServeProcess,
    numbers: list[str],
    steps: list[Step],
    crash: Callable[[], object] | None = None,
    restart: Callable[[], object] | None = None,
) -> None:
    """Run the steps, crash a third of the way (SIGKILL of the server), restart: the private set
    (snapshot, delta, stream) is the registry, and holds for each step its state after (acknowledged),
    before (never sent), or one of the two (the call failed: never half of it)."""
    early = await synced(server.target, numbers)
    writes = [step.write for step in steps]
    crash_after = len(steps) // 3
    acked, failed = await writes_until_crash(server.target, writes, crash or server.kill, crash_after)
    (restart or server.start)()
    found = await private_views(server.target, numbers, early)
    assert found == await standard_view(server.target, numbers), "the private set is not the registry"
    for step in steps:
        name = step.write[0]
        state = {pair for pair in found if pair[1] in step.users}
        if name in acked:
            assert state == step.after, f"{name}: acknowledged, then lost"
        elif name in failed:
            assert state in (step.before, step.after), f"{name}: half there after a failed call"
        else:
            assert state == step.before, f"{name}: changed without a call"
    assert failed, "the crash came between calls"


def server_for(
    serve_processes: Callable[..., ServeProcess], request: pytest.FixtureRequest, backend: str
) -> ServeProcess:
    store = str(request.getfixturevalue("redis_url")) if backend == "redis" else ""
    return serve_processes(*PRIVATE_FLAGS, store=store).start()


# -- registrations ----------------------------------------------------------------------------------


def registrations(numbers: list[str]) -> list[Step]:
    steps = []
    for i, number in enumerate(numbers):
        user_id = f"user-{i}"
        steps.append(Step(registration(user_id, number), frozenset([user_id]), set(), {(number, user_id)}))
    return steps


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_sigkill_during_registrations(
    serve_processes: Callable[..., ServeProcess], request: pytest.FixtureRequest, backend: str
) -> None:
    server = server_for(serve_processes, request, backend)
    numbers = e164_numbers(COUNT, seed=901)
    await crash_during(server, numbers, registrations(numbers))
    assert server.starts == 2


async def test_sigkill_of_server_and_redis_with_aof(
    serve_processes: Callable[..., ServeProcess], redis_factory: Callable[..., RedisProcess]
) -> None:
    """The server and Redis die at once (a power cut of one machine); Redis reloads its AOF."""
    redis = redis_factory(*AOF)
    server = serve_processes(*PRIVATE_FLAGS, store=redis.url).start()
    numbers = e164_numbers(COUNT, seed=904)
    await crash_during(server, numbers, registrations(numbers), *power_cut(server, redis))


# -- number changes, unregistrations and settings changes; imports -----------------------------------


USERS = 90  # a third of each kind of change


def change(i: int, numbers: list[str]) -> Step:
    """User i's write, by its index: a number change, an unregistration, or discoverability off."""
    user_id = f"user-{i}"

    async def write(channel: aio.Channel) -> object:
        admin = pb_grpc.DirectoryAdminServiceStub(channel)
        if i % 3 == 0:
            moved = pb.ChangeNumberRequest(user_id=user_id, contact_hash=contact_hash(numbers[USERS + i]))
            return await admin.ChangeNumber(moved, timeout=CALL_TIMEOUT)
        if i % 3 == 1:
            return await admin.UnregisterUser(pb.UnregisterUserRequest(user_id=user_id), timeout=CALL_TIMEOUT)
        hidden = pb.UpdateSettingsRequest(
            settings=pb.Settings(discoverable=False), update_mask=["discoverable"]
        )
        user = pb_grpc.DiscoveryServiceStub(channel)
        return await user.UpdateSettings(hidden, metadata=user_metadata(user_id), timeout=CALL_TIMEOUT)

    after = {(numbers[USERS + i], user_id)} if i % 3 == 0 else set()
    return Step((user_id, write), frozenset([user_id]), {(numbers[i], user_id)}, after)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_sigkill_during_changes_of_registered_users(
    serve_processes: Callable[..., ServeProcess], request: pytest.FixtureRequest, backend: str
) -> None:
    server = server_for(serve_processes, request, backend)
    numbers = e164_numbers(2 * USERS, seed=902)
    async with AsyncAdminClient(server.target, timeout=CALL_TIMEOUT) as admin:
        summary = await admin.import_users([(f"user-{i}", numbers[i]) for i in range(USERS)])
        assert summary.imported == USERS
    await crash_during(server, numbers, [change(i, numbers) for i in range(USERS)])


BATCHES, PER_BATCH = 40, 10


def import_call(batch: int, numbers: list[str]) -> Step:
    """One ImportUsers call of PER_BATCH users (one transaction, one Redis script)."""
    positions = range(batch * PER_BATCH, (batch + 1) * PER_BATCH)
    users = [pb.ImportUser(user_id=f"user-{i}", contact_hash=contact_hash(numbers[i])) for i in positions]

    async def write(channel: aio.Channel) -> object:
        admin = pb_grpc.DirectoryAdminServiceStub(channel)
        reply = await admin.ImportUsers(iter([pb.ImportUsersRequest(users=users)]), timeout=CALL_TIMEOUT)
        assert reply.imported == PER_BATCH
        return reply

    after = {(numbers[i], f"user-{i}") for i in positions}
    return Step((f"batch-{batch}", write), frozenset(u for _, u in after), set(), after)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_sigkill_during_imports(
    serve_processes: Callable[..., ServeProcess], request: pytest.FixtureRequest, backend: str
) -> None:
    server = server_for(serve_processes, request, backend)
    numbers = e164_numbers(BATCHES * PER_BATCH, seed=903)
    await crash_during(server, numbers, [import_call(batch, numbers) for batch in range(BATCHES)])
