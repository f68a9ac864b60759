"""Join notifications end to end: a real server on 127.0.0.1, a real SQLite file, the SDK.

"No event" is never asserted by waiting: a later, announced registration that the same
watcher also watches must be the next event the watcher gets (events arrive in order).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio

from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, JoinEvent, JoinSubscription, Settings
from discovery.v1 import joins_pb2, joins_pb2_grpc
from tests.support.helpers import e164_numbers
from tests.support.server import StartServer, status_details, user_metadata

WATCHING = Settings(discoverable=True, announce_join=True, notify_on_join=True)


def target(server: DiscoveryServer) -> str:
    return f"127.0.0.1:{server.port}"


def national(e164: str) -> str:
    """How a German number appears in an address book: 0151 ..."""
    return "0" + e164[3:]


def db_rows(server: DiscoveryServer, sql: str, *args: object) -> list[tuple[object, ...]]:
    """Read the live SQLite file directly (WAL lets a second reader in)."""
    conn = sqlite3.connect(server.config.data_dir / "discovery.db")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def rows_naming(server: DiscoveryServer, user_id: str) -> list[str]:
    """Every stored row, in any table (quota buckets included), with a value that contains ``user_id``."""
    found: list[str] = []
    conn = sqlite3.connect(server.config.data_dir / "discovery.db")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f"SELECT * FROM {table}"):
                if any(isinstance(v, str | bytes) and user_id in str(v) for v in row):
                    found.append(table)
    finally:
        conn.close()
    return found


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a background effect (the sweeper); not a timing assertion."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def watch(server: DiscoveryServer, user_id: str, book: list[str]) -> None:
    """Register ``user_id`` with notify_on_join on (if new) and upload ``book``."""
    async with AsyncDiscoveryClient(target(server), user_id=user_id, default_region="DE") as client:
        await client.discover(book)


async def register(
    server: DiscoveryServer, user_id: str, number: str, settings: Settings | None = None
) -> None:
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user(user_id, number, settings)


class RawStream:
    """SubscribeJoins through the generated stub, message by message."""

    def __init__(self, channel: aio.Channel, user_id: str, after: int = 0, device_id: str = "") -> None:
        stub = joins_pb2_grpc.JoinNotificationServiceStub(channel)
        self.call = stub.SubscribeJoins(
            joins_pb2.SubscribeJoinsRequest(after_cursor=after, device_id=device_id),
            metadata=user_metadata(user_id),
        )

    async def replay(self) -> list[joins_pb2.JoinEvent]:
        """The stored events, up to the caught_up message."""
        events: list[joins_pb2.JoinEvent] = []
        while True:
            message = await asyncio.wait_for(self.call.read(), timeout=10)
            assert message is not aio.EOF
            events.extend(message.events)
            if message.caught_up:
                return events

    async def next_event(self, timeout: float = 10.0) -> joins_pb2.JoinEvent:
        message = await asyncio.wait_for(self.call.read(), timeout=timeout)
        assert message is not aio.EOF, "the stream ended"
        assert len(message.events) == 1
        return message.events[0]


@asynccontextmanager
async def channel_to(server: DiscoveryServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(target(server)) as channel:
        yield channel


async def ack(channel: aio.Channel, user_id: str, cursor: int, device_id: str = "") -> int:
    stub = joins_pb2_grpc.JoinNotificationServiceStub(channel)
    response = await stub.AckJoins(
        joins_pb2.AckJoinsRequest(cursor=cursor, device_id=device_id), metadata=user_metadata(user_id)
    )
    return int(response.events_deleted)


async def reachable(server: DiscoveryServer) -> None:
    """Wait until a new channel to ``server`` is ready. gRPC shares subchannels between channels
    to one target, so right after a restart on the same port a new channel can inherit the
    reconnect backoff of a connection refused while the server was down, and fail fast."""
    async with aio.insecure_channel(target(server)) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)


async def consume(subscription: JoinSubscription, into: asyncio.Queue[JoinEvent]) -> None:
    async for event in subscription:
        await into.put(event)


# -- delivery ----------------------------------------------------------------------------------


async def test_open_stream_gets_the_event_within_a_second(server: DiscoveryServer) -> None:
    bob, other = e164_numbers(2, seed=101)
    book = [national(bob), "+49 " + other[3:], "not a number"]
    await register(server, "alice", "+4915100000101", WATCHING)
    await watch(server, "alice", book)
    received: asyncio.Queue[JoinEvent] = asyncio.Queue()
    async with AsyncDiscoveryClient(target(server), user_id="alice", default_region="DE") as client:
        subscription = client.subscribe_joins(book)
        task = asyncio.create_task(consume(subscription, received))
        await asyncio.wait_for(subscription.live.wait(), timeout=10)
        await register(server, "bob", bob)
        event = await asyncio.wait_for(received.get(), timeout=1.0)
        task.cancel()
    assert event.user_id == "bob"
    assert event.entries == (national(bob),) and event.entry == national(bob)
    assert event.e164 == bob
    assert event.cursor > 0 and event.event_id
    # The watch on bob was consumed; the one on the other contact is still there.
    assert await server.store.count_watches("alice") == 1  # type: ignore[union-attr]


async def test_offline_watcher_resumes_from_its_cursor(server: DiscoveryServer) -> None:
    bob, carol = e164_numbers(2, seed=102)
    await register(server, "alice", "+4915100000102", WATCHING)
    await watch(server, "alice", [bob, carol])
    await register(server, "bob", bob)
    async with channel_to(server) as channel:
        stream = RawStream(channel, "alice")
        (first,) = await stream.replay()
        stream.call.cancel()
        assert first.user_id == "bob"
        await register(server, "carol", carol)  # alice is offline
        again = RawStream(channel, "alice", after=first.cursor)
        assert [e.user_id for e in await again.replay()] == ["carol"]
        again.call.cancel()


async def test_event_survives_a_server_restart(start_server: StartServer) -> None:
    (bob,) = e164_numbers(1, seed=103)
    server = await start_server()
    await register(server, "alice", "+4915100000103", WATCHING)
    await watch(server, "alice", [national(bob)])
    await register(server, "bob", bob)
    await server.stop(grace=0.5)
    restarted = await start_server()
    received: asyncio.Queue[JoinEvent] = asyncio.Queue()
    async with AsyncDiscoveryClient(target(restarted), user_id="alice", default_region="DE") as client:
        task = asyncio.create_task(consume(client.subscribe_joins([national(bob)]), received))
        event = await asyncio.wait_for(received.get(), timeout=10)
        task.cancel()
    assert (event.user_id, event.entries) == ("bob", (national(bob),))


async def test_two_streams_each_get_it_and_acks_are_per_device(server: DiscoveryServer) -> None:
    bob, carol = e164_numbers(2, seed=104)
    await register(server, "alice", "+4915100000104", WATCHING)
    await watch(server, "alice", [bob, carol])
    async with channel_to(server) as channel:
        phone = RawStream(channel, "alice", device_id="phone")
        desktop = RawStream(channel, "alice", device_id="desktop")
        assert await phone.replay() == [] and await desktop.replay() == []
        await register(server, "bob", bob)
        on_phone, on_desktop = await phone.next_event(), await desktop.next_event()
        assert on_phone == on_desktop and on_phone.user_id == "bob"
        desktop.call.cancel()
        # The phone's ack deletes nothing: the desktop has not acknowledged the event yet.
        assert await ack(channel, "alice", on_phone.cursor, "phone") == 0
        back = RawStream(channel, "alice", device_id="desktop")
        assert [e.event_id for e in await back.replay()] == [on_phone.event_id]
        assert await ack(channel, "alice", on_phone.cursor, "desktop") == 1
        back.call.cancel()
        # A device resumes after its own ack even when it asks for everything.
        phone.call.cancel()
        await register(server, "carol", carol)
        resumed = RawStream(channel, "alice", after=0, device_id="phone")
        assert [e.user_id for e in await resumed.replay()] == ["carol"]
        resumed.call.cancel()


async def test_sdk_reconnects_across_a_restart_and_removes_duplicates(
    start_server: StartServer, tmp_path: Path
) -> None:
    bob, carol, dave = e164_numbers(3, seed=105)
    server = await start_server()
    port = server.port
    await register(server, "alice", "+4915100000105", WATCHING)
    await watch(server, "alice", [bob, carol, dave])
    received: asyncio.Queue[JoinEvent] = asyncio.Queue()
    async with AsyncDiscoveryClient(f"127.0.0.1:{port}", user_id="alice", default_region="DE") as client:
        subscription = client.subscribe_joins([bob, carol, dave], initial_backoff=0.05, max_backoff=0.2)
        task = asyncio.create_task(consume(subscription, received))
        await asyncio.wait_for(subscription.live.wait(), timeout=10)
        await register(server, "bob", bob)
        assert (await asyncio.wait_for(received.get(), timeout=10)).user_id == "bob"
        await server.stop(grace=0.5)
        restarted = await start_server(listen=f"127.0.0.1:{port}")
        await reachable(restarted)
        await register(restarted, "carol", carol)
        event = await asyncio.wait_for(received.get(), timeout=10)
        assert (event.user_id, event.entries) == ("carol", (carol,))
        assert subscription.reconnects >= 1
        # As if the client resumed from an old cursor: the next stream replays bob and carol
        # again, and the iterator drops them by event id.
        subscription.cursor = 0
        await restarted.stop(grace=0.5)
        again = await start_server(listen=f"127.0.0.1:{port}")
        await reachable(again)
        await register(again, "dave", dave)
        assert (await asyncio.wait_for(received.get(), timeout=10)).user_id == "dave"
        task.cancel()
    assert received.empty()


async def test_server_shutdown_ends_streams_cleanly(server: DiscoveryServer) -> None:
    await register(server, "alice", "+4915100000106", WATCHING)
    async with channel_to(server) as channel:
        stream = RawStream(channel, "alice")
        await stream.replay()
        started = asyncio.get_running_loop().time()
        await server.stop(grace=30)
        assert await stream.call.read() is aio.EOF
        assert await stream.call.code() == grpc.StatusCode.OK
        # The stream did not hold the shutdown for the grace period.
        assert asyncio.get_running_loop().time() - started < 30


# -- who is told -------------------------------------------------------------------------------


async def test_announce_off_notify_off_and_undiscoverable_give_no_event(server: DiscoveryServer) -> None:
    quiet, hidden, loud, later = e164_numbers(4, seed=107)
    await register(server, "alice", "+4915100000107", WATCHING)
    await register(server, "dave", "+4915100000108", WATCHING)
    await watch(server, "alice", [quiet, hidden, loud, later])
    await watch(server, "dave", [loud, later])
    async with AsyncDiscoveryClient(target(server), user_id="dave") as dave:
        await dave.update_settings(notify_on_join=False)
    assert await server.store.count_watches("dave") == 0  # type: ignore[union-attr]
    async with channel_to(server) as channel:
        stream = RawStream(channel, "alice")
        assert await stream.replay() == []
        await register(server, "quiet", quiet, Settings(True, False, False))
        await register(server, "hidden", hidden, Settings(False, True, False))
        await register(server, "loud", loud)
        assert (await stream.next_event()).user_id == "loud"
        stream.call.cancel()
        dave_stream = RawStream(channel, "dave")
        assert await dave_stream.replay() == []
        dave_stream.call.cancel()
    # dave turned notify_on_join off: his later uploads are not watched either.
    await watch(server, "dave", [later])
    assert await server.store.count_watches("dave") == 0  # type: ignore[union-attr]


async def test_change_number_and_import_fire_events(server: DiscoveryServer) -> None:
    """A number change announces only with announce_number_change (off by default); an
    import announces as a registration does."""
    old, moved, imported, old2, moved2 = e164_numbers(5, seed=108)
    await register(server, "alice", "+4915100000109", WATCHING)
    await register(server, "erin", old)
    changes = Settings(
        discoverable=True, announce_join=True, notify_on_join=False, announce_number_change=True
    )
    await register(server, "hal", old2, changes)
    await watch(server, "alice", [moved, imported, moved2])
    async with channel_to(server) as channel:
        stream = RawStream(channel, "alice")
        await stream.replay()
        async with AsyncAdminClient(target(server)) as admin:
            await admin.change_number("erin", moved)  # not announced: frank's event comes first
            summary = await admin.import_users([("frank", imported), ("gina", "+4915100000110")])
            assert summary.imported == 2
            assert (await stream.next_event()).user_id == "frank"
            await admin.change_number("hal", moved2)
            assert (await stream.next_event()).user_id == "hal"
        stream.call.cancel()


async def test_unregistered_watcher_gets_nothing_and_nothing_of_theirs_remains(
    server: DiscoveryServer,
) -> None:
    bob, carol = e164_numbers(2, seed=109)
    await register(server, "watcher-zz", "+4915100000111", WATCHING)
    await register(server, "alice", "+4915100000112", WATCHING)
    await watch(server, "watcher-zz", [bob, carol])
    await watch(server, "alice", [carol])
    await register(server, "bob", bob)  # an event waits in watcher-zz's inbox
    async with channel_to(server) as channel:
        stream = RawStream(channel, "watcher-zz", device_id="phone")
        assert len(await stream.replay()) == 1
        await ack(channel, "watcher-zz", 0, "phone")
        async with AsyncAdminClient(target(server)) as admin:
            await admin.unregister_user("watcher-zz")
        with pytest.raises(aio.AioRpcError) as info:
            await stream.next_event()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        await register(server, "carol", carol)
        alice = RawStream(channel, "alice")
        assert [e.user_id for e in await alice.replay()] == ["carol"]
        alice.call.cancel()
        again = RawStream(channel, "watcher-zz")
        with pytest.raises(aio.AioRpcError) as info:
            await again.replay()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert rows_naming(server, "watcher-zz") == []
    await server.stop(grace=0.5)
    assert rows_naming(server, "watcher-zz") == []


async def test_unregistered_joiner_is_not_named_by_any_inbox(server: DiscoveryServer) -> None:
    (bob,) = e164_numbers(1, seed=110)
    await register(server, "alice", "+4915100000113", WATCHING)
    await watch(server, "alice", [bob])
    await register(server, "bob", bob)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.unregister_user("bob")
    assert db_rows(server, "SELECT COUNT(*) FROM join_inbox") == [(0,)]


async def test_delete_my_data_drops_watches_inbox_and_devices(server: DiscoveryServer) -> None:
    bob, carol = e164_numbers(2, seed=111)
    await register(server, "alice", "+4915100000114", WATCHING)
    await watch(server, "alice", [bob, carol])
    await register(server, "bob", bob)
    async with channel_to(server) as channel:
        stream = RawStream(channel, "alice", device_id="tablet")
        assert len(await stream.replay()) == 1
        stream.call.cancel()
    async with AsyncDiscoveryClient(target(server), user_id="alice") as client:
        # One watch (carol), one inbox entry (bob), one device (tablet).
        assert await client.delete_my_data() == 3
    await register(server, "carol", carol)
    assert db_rows(server, "SELECT COUNT(*) FROM join_inbox") == [(0,)]


# -- retention -----------------------------------------------------------------------------------


async def test_watches_and_inbox_entries_expire(start_server: StartServer) -> None:
    stale, fresh, kept = e164_numbers(3, seed=112)
    server = await start_server(
        join_watch_ttl_seconds=0.5, join_inbox_ttl_seconds=0.5, join_sweep_interval_seconds=0.1
    )
    await register(server, "alice", "+4915100000115", WATCHING)
    await watch(server, "alice", [stale, kept])
    await eventually(lambda: db_rows(server, "SELECT COUNT(*) FROM join_watches") == [(0,)])
    await watch(server, "alice", [fresh])
    await register(server, "stale", stale)
    await register(server, "fresh", fresh)
    async with channel_to(server) as channel:
        stream = RawStream(channel, "alice")
        assert [e.user_id for e in await stream.replay()] == ["fresh"]
        stream.call.cancel()
        # Unread and unacknowledged, the event is deleted when its retention ends.
        await eventually(lambda: db_rows(server, "SELECT COUNT(*) FROM join_inbox") == [(0,)])
        later = RawStream(channel, "alice")
        assert await later.replay() == []
        later.call.cancel()
    await eventually(lambda: db_rows(server, "SELECT COUNT(*) FROM join_devices") == [(0,)])


async def test_watch_cap_drops_the_oldest_and_uploads_refresh(start_server: StartServer) -> None:
    c1, c2, c3, c4 = e164_numbers(4, seed=113)
    server = await start_server(join_watch_cap=3)
    await register(server, "alice", "+4915100000116", WATCHING)
    for book in ([c1], [c2], [c3], [c1], [c4]):  # c1 again: refreshed, so c2 is the oldest
        await watch(server, "alice", book)
    assert await server.store.count_watches("alice") == 3  # type: ignore[union-attr]
    async with channel_to(server) as channel:
        stream = RawStream(channel, "alice")
        await stream.replay()
        for i, number in enumerate((c2, c1, c3, c4)):
            await register(server, f"user-{i}", number)
        assert [(await stream.next_event()).user_id for _ in range(3)] == ["user-1", "user-2", "user-3"]
        stream.call.cancel()


# -- bad input ---------------------------------------------------------------------------------


async def test_bad_requests_get_clear_statuses(server: DiscoveryServer) -> None:
    await register(server, "alice", "+4915100000117", WATCHING)
    async with channel_to(server) as channel:
        bad_device = RawStream(channel, "alice", device_id="phone with spaces")
        with pytest.raises(aio.AioRpcError) as info:
            await bad_device.replay()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        (_, details) = status_details(info.value)
        assert isinstance(details, error_details_pb2.BadRequest)
        assert details.field_violations[0].field == "device_id"
        ahead = RawStream(channel, "alice", after=10**9)
        with pytest.raises(aio.AioRpcError) as info:
            await ahead.replay()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        (_, details) = status_details(info.value)
        assert isinstance(details, error_details_pb2.BadRequest)
        assert details.field_violations[0].field == "after_cursor"
        with pytest.raises(aio.AioRpcError) as info:
            await ack(channel, "alice", 2**64 - 1)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(aio.AioRpcError) as info:
            await ack(channel, "nobody", 0)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        stranger = RawStream(channel, "nobody")
        with pytest.raises(aio.AioRpcError) as info:
            await stranger.replay()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert db_rows(server, "SELECT COUNT(*) FROM join_devices WHERE user_id = 'nobody'") == [(0,)]


async def test_streams_per_user_are_capped(start_server: StartServer) -> None:
    server = await start_server(join_max_streams_per_user=2)
    await register(server, "alice", "+4915100000118", WATCHING)
    async with channel_to(server) as channel:
        streams = [RawStream(channel, "alice") for _ in range(2)]
        for stream in streams:
            await stream.replay()
        third = RawStream(channel, "alice")
        with pytest.raises(aio.AioRpcError) as info:
            await third.replay()
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        kinds = {type(d) for d in status_details(info.value)}
        assert kinds == {
            error_details_pb2.ErrorInfo,
            error_details_pb2.QuotaFailure,
            error_details_pb2.RetryInfo,
        }
        for stream in streams:
            stream.call.cancel()


# -- CLI ---------------------------------------------------------------------------------------


async def test_cli_watch_joins_prints_events_with_the_original_entry(
    server: DiscoveryServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from discovery.cli import main

    bob, carol = e164_numbers(2, seed=114)
    await register(server, "alice", "+4915100000119", WATCHING)
    await watch(server, "alice", [national(bob), carol])
    await register(server, "bob", bob)
    await register(server, "carol", carol)
    contacts = tmp_path / "book.txt"
    contacts.write_text(f"{national(bob)}\n{carol}\n")
    argv = ["watch-joins", "--target", target(server), "--user-id", "alice", "--region", "DE"]
    argv += ["--contacts", str(contacts), "--max-events", "2", "--ack", "--device-id", "cli"]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert [line.split(" joined as ")[0] for line in lines] == [national(bob), carol]
    assert "resume with --cursor" in out.err
    assert db_rows(server, "SELECT COUNT(*) FROM join_inbox") == [(0,)]  # acknowledged


async def test_health_and_reflection_know_the_join_service(server: DiscoveryServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    name = "discovery.v1.JoinNotificationService"
    async with channel_to(server) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for answer in reflection.ServerReflectionInfo(iter([request])):
            assert name in {s.name for s in answer.list_services_response.service}
            break
