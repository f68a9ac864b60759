"""Private mode on every instance: two real servers on one store (one SQLite file, redis-server, Redis
Cluster). Registrations, an import, number changes, settings changes and unregistrations made through
instance A reach instance B's private snapshot (a new client), the delta of a client that keeps its
state from step to step (GetPrivateDelta), and a delta stream opened on B before the first change
(SubscribePrivateDeltas); A serves the same set, and so does an instance started after the last change
(it loads the set from the store instead of following the feed). The snapshot carries the sealed ids (a
small directory), so nothing here reads buckets; changes are released at once (no jitter).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from grpc import aio

from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, Settings
from discovery.client.private import PrivateState
from discovery.private_scheme import Delta, Snapshot, apply_delta
from discovery.v1 import private_pb2, private_pb2_grpc
from tests.support.helpers import e164_numbers
from tests.support.private_view import holders
from tests.support.server import StartServer, user_metadata

BACKENDS = ["sqlite", "redis", "redis_cluster"]
WITHIN = 10.0  # seconds for a change to reach an instance (B follows the store within a second)
HIDDEN = Settings(discoverable=False, announce_join=False, notify_on_join=False)

Found = set[tuple[str, str]]


def target(server: DiscoveryServer) -> str:
    return f"127.0.0.1:{server.port}"


@dataclass
class Stream:
    """A SubscribePrivateDeltas stream read in the background: the snapshot its deltas lead to."""

    snapshot: Snapshot
    deltas: int = 0
    reset: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    async def follow(self, channel: aio.Channel) -> None:
        stub = private_pb2_grpc.PrivateDiscoveryServiceStub(channel)
        request = private_pb2.SubscribePrivateDeltasRequest(
            epoch=self.snapshot.epoch, cursor=self.snapshot.cursor
        )
        async for message in stub.SubscribePrivateDeltas(request, metadata=user_metadata("streamer")):
            if message.reset:
                self.reset = True
                return
            self.snapshot = apply_delta(self.snapshot, Delta.deserialize(message.delta))
            self.deltas += 1


@dataclass
class Views:
    """Everything that must show the same private set: fresh clients on A and B, a client on B that keeps
    its state, and the stream on B."""

    a: DiscoveryServer
    b: DiscoveryServer
    numbers: list[str]
    warm: PrivateState  # every number evaluated once, on B
    kept: PrivateState
    stream: Stream
    start: Callable[[str], Awaitable[DiscoveryServer]]  # another instance on the store, by name

    async def found(self, server: DiscoveryServer, state: PrivateState) -> Found:
        async with AsyncDiscoveryClient(target(server), user_id="carol") as client:
            client.private_state = state
            result = await client.discover_private(self.numbers)
        assert state.evaluations == self.warm.evaluations, "the outputs are cached: nothing evaluated again"
        assert state.snapshot is not None and state.snapshot.sealed is not None
        return {(m.entry, m.user_id) for m in result.matches}

    async def fresh(self, server: DiscoveryServer) -> Found:
        """A client with no snapshot yet: the snapshot, then (it may be a few changes old) a delta."""
        state = PrivateState.from_bytes(self.warm.to_bytes())
        state.snapshot = None
        await self.found(server, state)
        return await self.found(server, state)

    async def reach(self, expected: Found) -> None:
        """Every view holds ``expected`` within WITHIN seconds (polled; bounded)."""
        deadline = time.monotonic() + WITHIN
        while True:
            seen = {
                "stream on B": holders(self.stream.snapshot, self.warm.outputs, self.numbers),
                "kept state on B": await self.found(self.b, self.kept),
                "snapshot on B": await self.fresh(self.b),
                "snapshot on A": await self.fresh(self.a),
            }
            wrong = {name: found for name, found in seen.items() if found != expected}
            if not wrong:
                return
            assert not self.stream.reset, "the stream asked for a new snapshot"
            assert time.monotonic() < deadline, f"expected {sorted(expected)}, got {wrong}"
            await asyncio.sleep(0.1)


@pytest.fixture(params=BACKENDS)
async def views(
    request: pytest.FixtureRequest, start_server: StartServer, tmp_path: Path
) -> AsyncIterator[Views]:
    backend: str = request.param
    if backend == "sqlite":
        store = f"sqlite://{tmp_path / 'shared.db'}"
    else:
        store = str(request.getfixturevalue("redis_url" if backend == "redis" else "redis_cluster_url"))
    secret = tmp_path / "shared.secret"
    secret.write_text(bytes(range(32)).hex())
    secret.chmod(0o600)
    common: dict[str, object] = {
        "store": store,
        "secret_file": str(secret),
        "private_mode": True,
        "private_jitter_seconds": 0.0,
    }

    async def start(name: str) -> DiscoveryServer:
        return await start_server(**common, data_dir=tmp_path / name)

    a, b = await start("a"), await start("b")
    numbers = e164_numbers(10, seed=61)
    warm = PrivateState()
    async with AsyncDiscoveryClient(target(b), user_id="carol") as client:
        client.private_state = warm
        assert (await client.discover_private(numbers)).matches == []
    assert warm.snapshot is not None
    kept = PrivateState.from_bytes(warm.to_bytes())
    stream = Stream(warm.snapshot)
    async with aio.insecure_channel(target(b)) as channel:
        stream.task = asyncio.create_task(stream.follow(channel))
        try:
            yield Views(a, b, numbers, warm, kept, stream, start)
        finally:
            stream.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stream.task


async def settings_of(views: Views, user_id: str, discoverable: bool) -> None:
    """The user turns discoverability on or off through instance A."""
    async with AsyncDiscoveryClient(target(views.a), user_id=user_id) as client:
        await client.update_settings(discoverable=discoverable)


async def test_every_change_through_a_reaches_b(views: Views) -> None:
    alice, bob, bob2, carol, dan, imp0, imp1, stray, _, _ = views.numbers
    async with AsyncAdminClient(target(views.a)) as admin:
        await admin.register_user("alice", alice)
        await admin.register_user("bob", bob)
        await admin.register_user("dan", dan, HIDDEN)
        summary = await admin.import_users(
            [("imp0", imp0), ("imp1", imp1), ("thief", alice), ("imp0", stray)]
        )
        assert (summary.imported, summary.rejected_total) == (2, 2)
        expected = {(alice, "alice"), (bob, "bob"), (imp0, "imp0"), (imp1, "imp1")}
        await views.reach(expected)

        await admin.change_number("bob", bob2)
        expected = expected - {(bob, "bob")} | {(bob2, "bob")}
        await views.reach(expected)

        await admin.unregister_user("alice")
        await admin.register_user("carol", carol)
        expected = expected - {(alice, "alice")} | {(carol, "carol")}
        await views.reach(expected)

    await settings_of(views, "bob", False)
    await settings_of(views, "dan", True)
    expected = expected - {(bob2, "bob")} | {(dan, "dan")}
    await views.reach(expected)

    await settings_of(views, "bob", True)
    async with AsyncAdminClient(target(views.a)) as admin:
        await admin.change_number("dan", alice)  # a number freed by an unregistration
        await admin.unregister_user("imp1")
    expected = expected - {(dan, "dan"), (imp1, "imp1")} | {(bob2, "bob"), (alice, "dan")}
    await views.reach(expected)
    assert views.stream.deltas > 0
    # An instance started now loads the same set from the store (iter_private), not from the feed.
    assert await views.fresh(await views.start("c")) == expected
