"""Promises that only a careful black-box observation catches when they break.

* Discover keeps watches only on the contacts that did not match.
* The index loaded at start respects the discoverable flag (not only the live updates).
* Join delivery loses no event at a page boundary.

Each runs a real server on 127.0.0.1 over a real SQLite file, through the SDK.
"""

from __future__ import annotations

import pytest
from grpc import aio

from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, Settings
from tests.support.helpers import e164_numbers
from tests.support.serve_process import replay_joins
from tests.support.server import StartServer

WATCHING = Settings(discoverable=True, announce_join=True, notify_on_join=True)
HIDDEN = Settings(discoverable=False, announce_join=True, notify_on_join=False)


async def test_a_contact_that_matched_leaves_no_watch(start_server: StartServer) -> None:
    """Alice uploads bob (registered: a match) and carol (not yet). Bob leaves and his number
    registers again, then carol joins: alice hears of carol only. A watch kept on bob's key
    would name the second registration of his number first (events arrive in order)."""
    server = await start_server()
    target = f"127.0.0.1:{server.port}"
    alice, bob, carol = e164_numbers(3, seed=601)
    async with AsyncAdminClient(target) as admin:
        await admin.register_user("alice", alice, WATCHING)
        await admin.register_user("bob", bob)
        async with AsyncDiscoveryClient(target, user_id="alice") as client:
            result = await client.discover([bob, carol])
        assert [m.user_id for m in result.matches] == ["bob"]
        await admin.unregister_user("bob")
        await admin.register_user("bob-again", bob)
        await admin.register_user("carol", carol)
    async with aio.insecure_channel(target) as channel:
        events = await replay_joins(channel, "alice")
    assert [e.user_id for e in events] == ["carol"]


async def test_hidden_users_stay_hidden_after_a_restart(start_server: StartServer) -> None:
    """The index is rebuilt from the store at start: a user registered undiscoverable, and
    one who turned discoverable off later, are not returned after a restart either."""
    shown, hidden, turned_off, caller = e164_numbers(4, seed=602)
    server = await start_server()
    target = f"127.0.0.1:{server.port}"
    async with AsyncAdminClient(target) as admin:
        await admin.register_user("shown", shown)
        await admin.register_user("hidden", hidden, HIDDEN)
        await admin.register_user("turned-off", turned_off)
        await admin.register_user("caller", caller)
    async with AsyncDiscoveryClient(target, user_id="turned-off") as client:
        await client.update_settings(discoverable=False)
    async with AsyncDiscoveryClient(target, user_id="caller") as client:
        before = await client.discover([shown, hidden, turned_off])
    await server.stop(grace=0.5)

    restarted = await start_server()  # the same data directory
    async with AsyncDiscoveryClient(f"127.0.0.1:{restarted.port}", user_id="caller") as client:
        after = await client.discover([shown, hidden, turned_off])
    assert [m.user_id for m in before.matches] == ["shown"]
    assert [m.user_id for m in after.matches] == ["shown"]


PAGE = 4


@pytest.mark.parametrize("events", [PAGE - 1, PAGE, 3 * PAGE, 3 * PAGE + 1, 3 * PAGE + PAGE - 1])
async def test_join_delivery_crosses_page_boundaries(start_server: StartServer, events: int) -> None:
    """With a page of 4 events, a backlog of 3, 4, 12, 13 and 15 events arrives whole, in order."""
    server = await start_server(join_page_size=PAGE)
    target = f"127.0.0.1:{server.port}"
    watcher, *joiners = e164_numbers(events + 1, seed=603 + events)
    async with AsyncAdminClient(target) as admin:
        await admin.register_user("watcher", watcher, WATCHING)
        async with AsyncDiscoveryClient(target, user_id="watcher") as client:
            await client.discover(joiners)
        for i, number in enumerate(joiners):
            await admin.register_user(f"joiner-{i:02d}", number)
    async with aio.insecure_channel(target) as channel:
        delivered = await replay_joins(channel, "watcher")
        assert sorted(e.user_id for e in delivered) == [f"joiner-{i:02d}" for i in range(events)]
        cursors = [e.cursor for e in delivered]
        assert cursors == sorted(set(cursors))
        # Resuming from every cursor delivers exactly the rest (a page may start anywhere).
        for k in sorted({1, min(PAGE, events - 1), events - 1}):
            rest = await replay_joins(channel, "watcher", after=cursors[k - 1])
            assert [e.cursor for e in rest] == cursors[k:]
