"""Join notifications (core/joins.py): watches, fan-out, delivery and acks, over the in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from discovery.core.errors import UserNotRegistered
from discovery.core.joins import JoinBatch
from discovery.core.model import AnnounceMode, PrivacySettings
from tests.support.domain import (
    ANNOUNCING,
    WATCHING,
    Domain,
    batches_until_caught_up,
    build_domain,
    join_policy,
    number,
    packed,
)

DAY = 86400.0


async def watched(d: Domain, watcher: str, *contacts: int) -> None:
    """``watcher`` (registered, notify_on_join on) discovers ``contacts``, none of them registered."""
    if await d.store.get_user(watcher) is None:
        await d.directory.register(watcher, number(1000 + len(watcher)), WATCHING)
    assert (await d.directory.discover(watcher, packed(*contacts))).user_ids == []


async def test_a_registration_fans_out_to_the_watchers() -> None:
    d = await build_domain()
    await watched(d, "alice", 1, 2)
    await watched(d, "bob", 1)
    await d.directory.register("joiner", number(1))
    stream = d.subscribe("alice")
    (batch,) = await batches_until_caught_up(stream)
    (event,) = batch.events
    assert (event.user_id, event.contact_prefix) == ("joiner", number(1)[:16])
    assert await d.joiners("bob") == ["joiner"]
    assert await d.store.count_watches("alice") == 1, "the watch on the joiner's number is consumed"
    await stream.aclose()


@pytest.mark.parametrize(
    "joiner", [ANNOUNCING.merged(announce_mode=AnnounceMode.OFF), ANNOUNCING.merged(discoverable=False)]
)
async def test_silent_or_hidden_joiners_tell_no_one(joiner: PrivacySettings) -> None:
    d = await build_domain()
    await watched(d, "alice", 1)
    await d.directory.register("joiner", number(1), joiner)
    assert await d.store.inbox_read("alice", 0, 10, DAY) == []
    assert await d.store.count_watches("alice") == 0


async def test_a_watcher_who_opted_out_is_not_told() -> None:
    d = await build_domain()
    await watched(d, "alice", 1)
    await d.directory.update_settings("alice", PrivacySettings(notify_on_join=False), ["notify_on_join"])
    await d.directory.register("joiner", number(1))
    assert await d.store.inbox_read("alice", 0, 10, DAY) == []


async def test_the_watch_cap_keeps_the_latest() -> None:
    d = await build_domain(joins=join_policy(watch_cap=3))
    await watched(d, "alice", 1, 2)
    d.clock.advance(1)
    await watched(d, "alice", 3, 4)
    d.clock.advance(1)
    await watched(d, "alice", 5)
    assert set(d.store.data.watches["alice"]) == {d.tag(3), d.tag(4), d.tag(5)}
    # Uploading a contact again refreshes its watch: now 3 is the newest, 4 goes first.
    d.clock.advance(1)
    await watched(d, "alice", 3, 6)
    assert set(d.store.data.watches["alice"]) == {d.tag(3), d.tag(5), d.tag(6)}


async def test_a_watch_lives_for_its_ttl() -> None:
    d = await build_domain(joins=join_policy(watch_ttl=100.0))
    await watched(d, "alice", 1, 2)
    d.clock.advance(60)
    await watched(d, "alice", 2)  # refreshed: 100 s from now
    d.clock.advance(50)
    assert await d.store.count_watches("alice") == 1
    await d.directory.register("late", number(1))
    await d.directory.register("in-time", number(2))
    assert await d.joiners("alice") == ["in-time"]


async def test_unacknowledged_events_expire_after_the_inbox_ttl() -> None:
    d = await build_domain(joins=join_policy(inbox_ttl=DAY))
    await watched(d, "alice", 1)
    await d.directory.register("joiner", number(1))
    d.clock.advance(DAY + 1)
    assert await d.store.inbox_read("alice", 0, 10, DAY) == []
    assert await d.store.purge_expired(DAY) == 1


async def _events(stream: AsyncIterator[JoinBatch]) -> list[tuple[str, bool]]:
    return [(e.user_id, b.caught_up) for b in await batches_until_caught_up(stream) for e in b.events]


@pytest.mark.parametrize("events", [5, 6, 7])
async def test_delivery_pages_lose_nothing_at_their_boundaries(events: int) -> None:
    d = await build_domain(joins=join_policy(page_size=3))
    await watched(d, "alice", *range(1, events + 1))
    for i in range(1, events + 1):
        await d.directory.register(f"j{i}", number(i))
    stream = d.subscribe("alice")
    batches = await batches_until_caught_up(stream)
    sizes = [len(b.events) for b in batches]
    assert sizes == [3] * (events // 3) + [events % 3], "full pages, then the rest marks the end"
    assert [b.caught_up for b in batches] == [False] * (len(batches) - 1) + [True]
    assert [e.user_id for b in batches for e in b.events] == [f"j{i}" for i in range(1, events + 1)]
    cursors = [e.cursor for b in batches for e in b.events]
    assert cursors == sorted(set(cursors))
    # Resuming after any cursor delivers exactly the rest.
    for n, cursor in enumerate(cursors):
        resumed = d.subscribe("alice", after=cursor)
        rest = [e.user_id for b in await batches_until_caught_up(resumed) for e in b.events]
        assert rest == [f"j{i}" for i in range(n + 2, events + 1)]
        await resumed.aclose()
    await stream.aclose()


async def test_live_events_follow_the_replay() -> None:
    d = await build_domain()
    await watched(d, "alice", 1, 2)
    d.joins.start()
    try:
        stream = d.subscribe("alice")
        assert [b.events for b in await batches_until_caught_up(stream)] == [[]]
        await d.directory.register("live", number(2))
        batch = await asyncio.wait_for(anext(stream), timeout=2.0)
        assert [e.user_id for e in batch.events] == ["live"]
        await stream.aclose()
    finally:
        await d.joins.close()


async def test_acks_are_per_device() -> None:
    d = await build_domain(joins=join_policy(inbox_ttl=DAY))
    await watched(d, "alice", 1, 2)
    await d.directory.register("x", number(1))
    await d.directory.register("y", number(2))
    phone = d.subscribe("alice", "phone")
    desktop = d.subscribe("alice", "desktop")
    first, second = (e.cursor for b in await batches_until_caught_up(phone) for e in b.events)
    await batches_until_caught_up(desktop)
    assert await d.joins.ack("alice", "phone", second) == 0, "the desktop has not processed them"
    assert await d.joins.ack("alice", "desktop", first) == 1
    # Each device resumes after its own ack.
    assert await d.store.inbox_attach("alice", "phone", 0) == second
    assert await d.store.inbox_attach("alice", "desktop", 0) == first
    assert await d.joiners("alice") == ["y"]
    # A device not seen within the inbox TTL stops holding entries back.
    d.clock.advance(DAY + 1)
    assert await d.joins.ack("alice", "phone", second) == 1
    await phone.aclose()
    await desktop.aclose()


async def test_unregister_forgets_watcher_and_joiner() -> None:
    d = await build_domain()
    await watched(d, "alice", 1, 2)
    await watched(d, "bob", 1)
    await d.directory.register("joiner", number(1))
    await d.directory.unregister("joiner")
    assert await d.store.inbox_read("bob", 0, 10, DAY) == [], "no inbox names an unregistered joiner"
    await d.directory.register("other", number(1))
    await d.directory.unregister("alice")
    assert d.store.data.inboxes.get("alice", {}) == {} and d.store.data.watches.get("alice", {}) == {}
    with pytest.raises(UserNotRegistered):
        await anext(d.subscribe("alice"))
    with pytest.raises(UserNotRegistered):
        await d.joins.ack("alice", "", 0)
    # Delete-my-data forgets watches and inbox but keeps the registration.
    await watched(d, "bob", 3, 4)
    await d.directory.register("z", number(4))
    assert (await d.directory.delete_my_data("bob"))[0] == 2  # the watch on 3 and the event of z
    assert await d.store.get_user("bob") is not None
