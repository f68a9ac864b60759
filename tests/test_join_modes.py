"""Who is told of a join (announce modes, release jitter, number changes), responses padded to
the request size, and ExportMyData / DeleteMyData, through a real server on every backend."""

from __future__ import annotations

import argparse
import asyncio
import json
import stat
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from grpc import aio

from discovery.app.server import DiscoveryServer
from discovery.cli.client_commands import add_client_commands
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, Settings
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.helpers import e164_numbers
from tests.support.server import StartServer, status_details, user_metadata

BACKENDS = ["sqlite", "redis", "redis-cluster"]


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    """The store of each backend ("" is the default SQLite file)."""
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    if request.param == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return ""


@pytest.fixture
async def server(store_url: str, start_server: StartServer) -> DiscoveryServer:
    return await start_server(
        store=store_url, quota_capacity=0, rate_limit_burst=0, default_announce_mode="mutual"
    )


def target(server: DiscoveryServer) -> str:
    return f"127.0.0.1:{server.port}"


async def pending(server: DiscoveryServer, user_id: str) -> list[str]:
    """The joiners named by the user's deliverable events."""
    assert server.store is not None
    entries = await server.store.inbox_read(user_id, 0, 10_000, 3600.0)
    return [notice.user_id for notice in server.service.joins.events(entries)]


EVERYONE = Settings(True, True, False, "EVERYONE")


async def watched_then_joined(server: DiscoveryServer, numbers: list[str], watcher: str, joiner: str) -> None:
    """``watcher`` registers with numbers[0] (server defaults), turns notify_on_join on and
    discovers numbers[1:] (watches on them); then ``joiner`` registers with numbers[1],
    announcing to everyone."""
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user(watcher, numbers[0])
        async with AsyncDiscoveryClient(target(server), user_id=watcher) as client:
            await client.update_settings(notify_on_join=True)
            await client.discover(numbers[1:])
        await admin.register_user(joiner, numbers[1], settings=EVERYONE)


async def test_state_scale_watcher_learns_nothing_of_mutual_or_off_joiners(server: DiscoveryServer) -> None:
    """Many accounts watch a whole number range; joiners with MUTUAL (who do not have the
    watchers' numbers) and OFF register and Discover: no watcher hears of them. A MUTUAL joiner
    who has a watcher's number tells exactly that watcher, once; EVERYONE tells all."""
    numbers = e164_numbers(260, seed=11)
    watchers, joiners = numbers[:20], numbers[20:]
    mutual, off, everyone = joiners[:100], joiners[100:200], joiners[200:220]
    async with AsyncAdminClient(target(server)) as admin:
        await admin.import_users([(f"state-{i}", n) for i, n in enumerate(watchers)])
    for i in range(len(watchers)):
        async with AsyncDiscoveryClient(target(server), user_id=f"state-{i}") as state:
            await state.update_settings(notify_on_join=True)
            await state.discover(joiners)  # the whole range: nothing matches yet, all watched
    async with AsyncAdminClient(target(server)) as admin:
        for i, n in enumerate(mutual):
            await admin.register_user(f"mutual-{i}", n)  # the server default: MUTUAL
        for i, n in enumerate(off):
            await admin.register_user(f"off-{i}", n)
        for i, n in enumerate(everyone):
            await admin.register_user(f"everyone-{i}", n)
    for i in range(len(off)):
        async with AsyncDiscoveryClient(target(server), user_id=f"off-{i}") as client:
            await client.update_settings(announce_mode="OFF")
    for i in range(len(everyone)):
        async with AsyncDiscoveryClient(target(server), user_id=f"everyone-{i}") as client:
            assert (await client.get_settings()).announce_mode == "MUTUAL"
    # The joiners Discover their own address books: contacts, none of them a watcher.
    others = e164_numbers(300, seed=12)[250:]
    for prefix, group in (("mutual", mutual), ("off", off)):
        for i in range(len(group)):
            async with AsyncDiscoveryClient(target(server), user_id=f"{prefix}-{i}") as client:
                await client.discover(others)
    told = [await pending(server, f"state-{i}") for i in range(len(watchers))]
    assert sum(map(len, told)) == 0, "a MUTUAL or OFF joiner reached a state-scale watcher"
    # An OFF joiner who has a watcher's number still tells no one.
    async with AsyncDiscoveryClient(target(server), user_id="off-0") as client:
        await client.discover(watchers)
    assert [await pending(server, f"state-{i}") for i in range(len(watchers))] == [[]] * len(watchers)
    # A MUTUAL joiner who has the number of state-3 tells state-3 only, and only once.
    async with AsyncDiscoveryClient(target(server), user_id="mutual-7") as client:
        await client.discover([watchers[3], *others[:5]])
        await client.discover([watchers[3], *others[:5]])
    assert [await pending(server, f"state-{i}") for i in range(len(watchers))] == [
        ["mutual-7"] if i == 3 else [] for i in range(len(watchers))
    ]
    print(
        f"\nstate-scale: {len(watchers)} watchers x {len(joiners)} watched numbers; events from "
        f"{len(mutual)} MUTUAL and {len(off)} OFF joiners: 0; from one mutual contact: 1"
    )


async def test_everyone_announces_at_registration_and_number_changes_are_separate(
    server: DiscoveryServer,
) -> None:
    numbers = e164_numbers(6, seed=21)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("watcher", numbers[0])
        await admin.register_user("mover", numbers[1])
        await admin.register_user("mover2", numbers[4])
    async with AsyncDiscoveryClient(target(server), user_id="watcher") as watcher:
        await watcher.update_settings(notify_on_join=True)
        await watcher.discover(numbers[2:4] + numbers[5:6])
    async with AsyncDiscoveryClient(target(server), user_id="mover") as mover:
        await mover.update_settings(announce_mode="EVERYONE")
    async with AsyncDiscoveryClient(target(server), user_id="mover2") as mover2:
        settings = await mover2.update_settings(announce_mode="EVERYONE", announce_number_change=True)
        assert (settings.announce_mode, settings.announce_number_change, settings.announce_join) == (
            "EVERYONE",
            True,
            True,
        )
    async with AsyncAdminClient(target(server)) as admin:
        await admin.change_number("mover", numbers[2])  # no announce_number_change: silent
        await admin.change_number("mover2", numbers[5])
        await admin.register_user(
            "newcomer",
            numbers[3],
        )  # MUTUAL: nothing yet
    assert await pending(server, "watcher") == ["mover2"]


async def test_release_jitter_delays_delivery(start_server: StartServer) -> None:
    server = await start_server(join_release_jitter_seconds=3600.0)
    await watched_then_joined(server, e164_numbers(2, seed=31), "watcher", "j")
    assert server.store is not None
    assert await server.store.count_watches("watcher") == 0  # consumed: the event is stored
    assert await pending(server, "watcher") == []  # but not deliverable for up to an hour


async def test_discover_responses_have_one_size_per_request_size(server: DiscoveryServer) -> None:
    numbers = e164_numbers(400, seed=41)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.import_users(
            [(f"{i:08d}-aaaa-bbbb-cccc-dddddddddddd", n) for i, n in enumerate(numbers[:150])]
        )
    from discovery.contact_hash import contact_hash

    async with aio.insecure_channel(target(server)) as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)

        async def size(batch: list[str]) -> tuple[int, int, int]:
            request = pb.DiscoverRequest(contact_hashes=b"".join(contact_hash(n) for n in batch))
            response = await stub.Discover(request, metadata=user_metadata("asker"))
            total = len(response.SerializeToString())
            response.ClearField("padding")
            return total, len(response.match_user_ids), response.ByteSize()

        for n in (1, 10, 100):
            none, every = await size(numbers[400 - n :]), await size(numbers[:n])
            half = await size(numbers[: n // 2] + numbers[400 - (n - n // 2) :])
            assert none[1] == 0 and every[1] == n
            assert none[0] == every[0] == half[0], (n, none, half, every)
            print(f"\nDiscover of {n}: {none[0]} bytes padded; unpadded {none[2]} (none) to {every[2]} (all)")


async def test_export_and_delete_my_data(server: DiscoveryServer) -> None:
    numbers = e164_numbers(4, seed=51)
    await watched_then_joined(server, numbers, "me", "friend")
    async with AsyncDiscoveryClient(target(server), user_id="me") as me:
        export = await me.export_my_data()
        assert export["format"] == "discovery.v1.export/1" and export["registered"] is True
        assert export["settings"]["announce_mode"] == "ANNOUNCE_MODE_MUTUAL"
        assert export["watch_count"] == "2" and export["watches_expire_first"]
        (event,) = export["pending_events"]
        assert event["user_id"] == "friend" and event["contact_hash_prefix"]
        assert await me.delete_my_data(disable_notify_on_join=True) == 3  # 2 watches, 1 event
        assert (await me.get_settings()).notify_on_join is False
        await me.discover(numbers[2:])
        after = await me.export_my_data()
        assert after["watch_count"] == "0" and after["pending_events"] == []


async def test_the_cli_deletes_my_data_and_can_turn_notifications_off(server: DiscoveryServer) -> None:
    await watched_then_joined(server, e164_numbers(4, seed=53), "me", "friend")
    parser = argparse.ArgumentParser()
    add_client_commands(parser.add_subparsers())
    base = ["delete-my-data", "--target", target(server), "--user-id", "me", "--json"]
    args = parser.parse_args([*base, "--disable-notify-on-join"])
    assert await asyncio.to_thread(args.func, args) == 0  # the CLI blocks: off the server's loop
    async with AsyncDiscoveryClient(target(server), user_id="me") as me:
        assert (await me.get_settings()).notify_on_join is False
        assert (await me.export_my_data())["watch_count"] == "0"
    args = parser.parse_args(base)
    assert args.disable_notify_on_join is False
    assert await asyncio.to_thread(args.func, args) == 0


async def test_an_export_holds_unreleased_events_and_the_cli_writes_it(
    store_url: str, start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(store=store_url, quota_capacity=0, join_release_jitter_seconds=3600.0)
    await watched_then_joined(server, e164_numbers(2, seed=52), "me", "friend")  # released within the hour
    assert await pending(server, "me") == [], "not deliverable before its release"
    async with AsyncDiscoveryClient(target(server), user_id="me") as client:
        export = await client.export_my_data()
    (event,) = export["pending_events"]
    assert event["user_id"] == "friend" and event["pending_release"] is True
    release, exported = (datetime.fromisoformat(t) for t in (event["joined_at"], export["exported_at"]))
    assert release > exported, "joined_at is the release time, ahead"
    out = tmp_path / "export.json"
    parser = argparse.ArgumentParser()
    add_client_commands(parser.add_subparsers())
    args = parser.parse_args(
        ["export-my-data", "--out", str(out), "--target", target(server), "--user-id", "me"]
    )
    assert await asyncio.to_thread(args.func, args) == 0  # the CLI blocks: off the server's loop
    written = json.loads(out.read_text())
    assert written["pending_events"] == export["pending_events"] and written["user_id"] == "me"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("settings", "mask", "field"),
    [
        (
            pb.Settings(announce_mode=pb.ANNOUNCE_MODE_UNSPECIFIED),
            ["announce_mode"],
            "settings.announce_mode",
        ),
        (pb.Settings(announce_mode=9), ["announce_mode"], "settings.announce_mode"),  # type: ignore[arg-type]
        (pb.Settings(announce_mode=pb.ANNOUNCE_MODE_OFF, announce_join=True), [], "settings.announce_join"),
        (pb.Settings(), ["announce_everything"], "update_mask"),
    ],
)
async def test_bad_announce_settings_are_invalid_argument(
    start_server: StartServer, settings: pb.Settings, mask: list[str], field: str
) -> None:
    server = await start_server()
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("me", e164_numbers(1, seed=61)[0])
    async with aio.insecure_channel(target(server)) as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as info:
            await stub.UpdateSettings(
                pb.UpdateSettingsRequest(settings=settings, update_mask=mask), metadata=user_metadata("me")
            )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (bad,) = [d for d in status_details(info.value) if hasattr(d, "field_violations")]
    assert bad.field_violations[0].field == field  # type: ignore[attr-defined]
