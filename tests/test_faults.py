"""Faults survived, with real processes on loopback: nothing acknowledged is lost.

* SIGKILL of the server during a stream of registrations (embedded store; and Redis with
  AOF, killed at the same moment): after a restart every acknowledged registration is
  there, and the watcher's inbox holds an event for each registration that is there.
* Redis restarted under load: calls fail fast with UNAVAILABLE while it is down, the
  server stays up and reports NOT_SERVING, and recovers by itself once Redis is back.
* A stalled subscriber holds a bounded amount of server memory, and does not hold up
  the other subscribers.

Every loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
from grpc import aio

from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, DiscoveryError, Settings
from discovery.v1 import joins_pb2, joins_pb2_grpc
from tests.support.helpers import e164_numbers
from tests.support.redis_fixtures import RedisProcess
from tests.support.serve_process import (
    AOF,
    CALL_TIMEOUT,
    NOT_SERVING,
    SERVING,
    ServeProcess,
    discovered,
    power_cut,
    registered_across_crash,
    replay_joins,
    wait_health,
)
from tests.support.server import user_metadata

WATCHING = Settings(discoverable=True, announce_join=True, notify_on_join=True)


# -- helpers ----------------------------------------------------------------------------------


async def watcher_with_book(target: str, user_id: str, own: str, book: list[str]) -> None:
    """Register ``user_id`` with join notifications on; upload ``book`` (watched: not registered yet)."""
    async with AsyncAdminClient(target, timeout=CALL_TIMEOUT) as admin:
        await admin.register_user(user_id, own, WATCHING)
    async with AsyncDiscoveryClient(target, user_id=user_id, timeout=CALL_TIMEOUT) as client:
        assert (await client.discover(book)).matches == []


async def crash_during_registrations(
    server: ServeProcess, crash: Callable[[], object], restart: Callable[[], object], seed: int
) -> None:
    """The scenario of the SIGKILL tests: a watcher, registrations, a crash, a restart."""
    count = 300
    numbers = e164_numbers(count + 1, seed=seed)
    joiners = numbers[:count]
    await watcher_with_book(server.target, "alice", numbers[count], joiners)
    registered = await registered_across_crash(server, joiners, crash, restart)
    async with aio.insecure_channel(server.target) as channel:
        events = await replay_joins(channel, "alice")
    # At least once, and only for registrations that happened (they commit together).
    assert {e.user_id for e in events} == registered
    assert len(events) == len({e.event_id for e in events})


# -- SIGKILL during registrations ---------------------------------------------------------------


async def test_sigkill_during_registrations_on_the_embedded_store(
    serve_processes: Callable[..., ServeProcess],
) -> None:
    server = serve_processes().start()
    await crash_during_registrations(server, crash=server.kill, restart=server.start, seed=801)
    assert server.starts == 2


# -- a stalled subscriber ---------------------------------------------------------------------


def metric(port: int, name: str) -> float:
    """One unlabelled sample from the server's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not exported"
    return float(found.group(1))


async def settled(port: int, name: str, quiet: float = 0.5, timeout: float = 20.0) -> float:
    """The metric's value once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    value, since = metric(port, name), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"{name} still changing after {timeout} s"
        await asyncio.sleep(0.05)
        if (now := metric(port, name)) != value:
            value, since = now, time.monotonic()
    return value


def metrics_port(server: ServeProcess) -> int:
    for line in server.log().splitlines():
        if '"metrics_listening"' in line:
            return int(json.loads(line)["port"])
    raise AssertionError("the server did not log its metrics port")


async def test_a_stalled_subscriber_holds_bounded_memory(
    serve_processes: Callable[..., ServeProcess],
) -> None:
    """4 streams of one user stop reading after their first message while 20,000 events wait
    for each: the server hands gRPC only what the HTTP/2 flow-control window lets through
    (the servicer's yield waits), its memory stays flat, and another user's event still
    arrives at once. Nothing is lost: a stream that reads again gets every event."""
    owed, stalled = 20_000, 4
    server = serve_processes(
        "--join-watch-cap", str(owed), "--metrics-listen", "127.0.0.1:0", "--log-level", "INFO"
    ).start()
    numbers = e164_numbers(owed + 3, seed=802)
    joiners, slow_own, fast_own, fast_joiner = numbers[:owed], *numbers[owed:]
    await watcher_with_book(server.target, "slow", slow_own, joiners)
    await watcher_with_book(server.target, "fast", fast_own, [fast_joiner])
    async with AsyncAdminClient(server.target, timeout=60) as admin:
        await admin.import_users((f"joiner-{i}", n) for i, n in enumerate(joiners))
    port = metrics_port(server)
    rss_before = server.rss_bytes()

    # One connection per stream; without BDP probing the client's HTTP/2 window stays at its
    # initial 64 KiB, so what the server owes each stream (about 1.6 MB) is far more than
    # flow control lets it hand over.
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)]
    channels = [aio.insecure_channel(server.target, options=options) for _ in range(stalled)]
    try:
        calls = [
            joins_pb2_grpc.JoinNotificationServiceStub(channel).SubscribeJoins(
                joins_pb2.SubscribeJoinsRequest(), metadata=user_metadata("slow")
            )
            for channel in channels
        ]
        # One page each, then the readers stall.
        firsts = [await asyncio.wait_for(call.read(), timeout=30) for call in calls]
        assert all(len(first.events) > 0 for first in firsts)
        handed = await settled(port, "discovery_join_events_delivered_total")
        # Another subscriber is served at once while the stalled ones wait.
        async with aio.insecure_channel(server.target) as channel:
            fast = joins_pb2_grpc.JoinNotificationServiceStub(channel).SubscribeJoins(
                joins_pb2.SubscribeJoinsRequest(), metadata=user_metadata("fast")
            )
            assert (await asyncio.wait_for(fast.read(), timeout=10)).caught_up
            async with AsyncAdminClient(server.target, timeout=CALL_TIMEOUT) as admin:
                await admin.register_user("fast-joiner", fast_joiner)
            event = await asyncio.wait_for(fast.read(), timeout=5)
            assert [e.user_id for e in event.events] == ["fast-joiner"]
            fast.cancel()
        rss_stalled = server.rss_bytes()
        assert handed < stalled * owed / 4, f"{handed:.0f} of {stalled * owed} events went to stalled streams"
        assert rss_stalled - rss_before < 32 * 2**20, (
            f"server RSS grew by {(rss_stalled - rss_before) / 2**20:.1f} MiB"
        )
        # Nothing was lost: a stalled stream that reads again gets every event, in order.
        cursors = [e.cursor for e in firsts[0].events]
        while len(cursors) < owed:
            message = await asyncio.wait_for(calls[0].read(), timeout=10)
            assert message is not aio.EOF
            cursors.extend(e.cursor for e in message.events)
        assert len(cursors) == owed and cursors == sorted(set(cursors))
        for call in calls:
            call.cancel()
    finally:
        for channel in channels:
            await channel.close()


# -- Redis: SIGKILL of the server and of Redis (AOF, fsync always) --------------------------------


async def test_sigkill_during_registrations_on_redis_with_aof(
    serve_processes: Callable[..., ServeProcess], redis_factory: Callable[..., RedisProcess]
) -> None:
    """The server and Redis die at once (as on a power cut of one machine); Redis reloads its AOF."""
    redis = redis_factory(*AOF)
    server = serve_processes(store=redis.url)
    server.start()
    crash, restart = power_cut(server, redis)
    await crash_during_registrations(server, crash=crash, restart=restart, seed=803)


# -- Redis restarted under load -------------------------------------------------------------------


@dataclass
class Outcome:
    method: str
    started: float
    code: grpc.StatusCode
    retry_after: float | None = None


@dataclass
class Load:
    """Discover and RegisterUser in two loops, one call at a time each, 1 s deadlines."""

    target: str
    numbers: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _loop(self, method: str, call: Callable[[int], Awaitable[None]], limit: int) -> None:
        for i in range(limit):
            if self.stop.is_set():
                return
            started = time.monotonic()
            try:
                await call(i)
                self.outcomes.append(Outcome(method, started, grpc.StatusCode.OK))
            except DiscoveryError as error:
                self.outcomes.append(Outcome(method, started, error.code, error.retry_after))
            await asyncio.sleep(0.02)

    async def run(self) -> None:
        async with (
            AsyncAdminClient(self.target, timeout=1.0) as admin,
            AsyncDiscoveryClient(self.target, user_id="probe", timeout=1.0) as client,
        ):

            async def register(i: int) -> None:
                await admin.register_user(f"load-{i}", self.numbers[i])
                self.acked.add(f"load-{i}")

            async def discover(i: int) -> None:
                await client.discover(self.numbers[:50])

            await asyncio.gather(
                self._loop("register", register, len(self.numbers)),
                self._loop("discover", discover, len(self.numbers)),
            )

    def since(self, moment: float, method: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= moment and method in (None, o.method)]


async def eventually_ok(load: Load, method: str, since: float, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(o.code == grpc.StatusCode.OK for o in load.since(since, method)):
        assert time.monotonic() < deadline, f"no {method} succeeded within {timeout} s"
        await asyncio.sleep(0.05)


async def test_redis_restarted_under_load(
    serve_processes: Callable[..., ServeProcess], redis_factory: Callable[..., RedisProcess]
) -> None:
    redis = redis_factory(*AOF)
    server = serve_processes("--store-check-seconds", "0.2", "--rate-limit-burst", "0", store=redis.url)
    server.start()
    load = Load(server.target, e164_numbers(3000, seed=804))
    running = asyncio.create_task(load.run())
    try:
        began = time.monotonic()
        await eventually_ok(load, "register", began)
        await asyncio.sleep(0.5)

        redis.kill()  # AOF with fsync always: no acknowledged write is lost
        down = time.monotonic()
        await wait_health(server.target, NOT_SERVING, timeout=10)
        await asyncio.sleep(1.0)
        during = [o for o in load.since(down) if o.code != grpc.StatusCode.OK]
        assert len(during) >= 5, "calls were made and failed during the outage"

        redis.start()
        back = time.monotonic()
        await wait_health(server.target, SERVING, timeout=15)
        await eventually_ok(load, "register", back)
        await eventually_ok(load, "discover", back)
        recovered = time.monotonic() - back
    finally:
        load.stop.set()
        await asyncio.wait_for(running, timeout=10)
    assert server.running(), "the server survived the outage"
    codes = Counter(o.code.name for o in load.outcomes)
    # Failures are UNAVAILABLE (with RetryInfo), answered before the 1 s deadline: never
    # INTERNAL, UNKNOWN or DEADLINE_EXCEEDED.
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert all(o.retry_after for o in load.outcomes if o.code != grpc.StatusCode.OK), "RetryInfo"
    assert recovered < 15
    attempted = len([o for o in load.outcomes if o.method == "register"])
    assert load.acked <= await discovered(server.target, load.numbers[:attempted])
    assert '"call_failed"' not in server.log(), "an unexpected error reached a caller"
