"""One contract for every Store backend, run against real SQLite, redis-server and Redis Cluster."""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest

from discovery.core.errors import ContactHashTaken, FeedTruncated, UserIdTaken, UserNotRegistered
from discovery.core.index_sync import IndexSync
from discovery.core.model import (
    AnnounceMode,
    BucketCharge,
    FeedRun,
    ImportGroup,
    ImportRejectionReason,
    ImportReport,
    NewUser,
    PrivacySettings,
    RegisterOutcome,
)
from discovery.store import Store, open_store
from discovery.store.redis import RedisStore
from discovery.store.sqlite import SqliteStore
from tests.support.announce import announcement, joined_key, joiner, jtag, new_user, tags
from tests.support.stores import OpenStore


def key() -> bytes:
    return os.urandom(16)


def user(user_id: str, directory_key: bytes | None = None, **settings: Any) -> NewUser:
    return new_user(user_id, directory_key or key(), PrivacySettings(**settings))


async def test_register_and_conflicts(store: Store) -> None:
    alice = user("alice", notify_on_join=True)
    assert await store.register(alice) is RegisterOutcome.CREATED
    assert await store.register(alice) is RegisterOutcome.UNCHANGED
    with pytest.raises(UserIdTaken):
        await store.register(user("alice"))
    with pytest.raises(ContactHashTaken):
        await store.register(user("bob", alice.directory_key))
    record = await store.get_user("alice")
    assert record is not None
    assert (record.user_id, record.directory_key, record.settings) == (
        "alice",
        alice.directory_key,
        PrivacySettings(notify_on_join=True),
    )
    assert await store.get_user("bob") is None
    assert await store.registry_size() == 1


async def test_unicode_user_ids_round_trip(store: Store) -> None:
    for user_id in ("zoë", "用户-1", "a}b{c", "x" * 128):
        assert await store.register(user(user_id)) is RegisterOutcome.CREATED
        record = await store.get_user(user_id)
        assert record is not None and record.user_id == user_id
    assert await store.registry_size() == 4


async def test_unregister_frees_the_key(store: Store) -> None:
    alice = user("alice", discoverable=False)
    await store.register(alice)
    removed = await store.unregister("alice", jtag("alice"))
    assert removed is not None
    assert removed.directory_key == alice.directory_key
    assert removed.settings.discoverable is False
    assert await store.unregister("alice", jtag("alice")) is None
    assert await store.get_user("alice") is None
    assert await store.registry_size() == 0
    assert await store.register(user("bob", alice.directory_key)) is RegisterOutcome.CREATED


async def test_change_number(store: Store) -> None:
    old, new = key(), key()
    await store.register(user("dave", old, announce_mode=AnnounceMode.OFF))
    taken = user("erin")
    await store.register(taken)
    with pytest.raises(UserNotRegistered):
        await store.change_number("nobody", key(), announcement("nobody", bytes(16)))
    with pytest.raises(ContactHashTaken):
        await store.change_number("dave", taken.directory_key, announcement("dave", taken.directory_key))
    before = await store.change_number("dave", new, announcement("dave", new))
    assert before.directory_key == old
    record = await store.get_user("dave")
    assert record is not None
    assert record.directory_key == new
    assert record.settings == PrivacySettings(announce_mode=AnnounceMode.OFF)
    # The old key is free again; moving to the same key changes nothing.
    assert await store.register(user("frank", old)) is RegisterOutcome.CREATED
    head = await store.feed_head()
    assert (await store.change_number("dave", new, announcement("dave", new))).directory_key == new
    assert await store.feed_head() == head


async def test_update_settings(store: Store) -> None:
    assert await store.update_settings("nobody", PrivacySettings()) is None
    await store.register(user("alice"))
    head = await store.feed_head()
    quiet = PrivacySettings(discoverable=True, announce_mode=AnnounceMode.OFF, notify_on_join=True)
    record = await store.update_settings("alice", quiet)
    assert record is not None and record.settings == quiet
    assert await store.feed_head() == head, "only discoverability is in the feed"
    hidden = PrivacySettings(discoverable=False, announce_mode=AnnounceMode.OFF, notify_on_join=True)
    await store.update_settings("alice", hidden)
    stored = await store.get_user("alice")
    assert stored is not None and stored.settings == hidden
    changes = await store.feed_read(head, 10)
    assert [(c.user_id, c.discoverable) for c in changes] == [("alice", False)]


async def test_import_report(store: Store) -> None:
    existing = user("existing")
    await store.register(existing)
    batch = [
        user("new-1", discoverable=False),
        new_user("existing", existing.directory_key, PrivacySettings()),
        user("existing"),
        user("thief", existing.directory_key),
        *[user(f"bulk-{i}") for i in range(1200)],
    ]
    report = await store.import_users(batch, 100)
    assert (report.imported, report.unchanged, report.rejected_total) == (1201, 1, 2)
    assert [(r.position, r.user_id, r.reason) for r in report.rejections] == [
        (102, "existing", ImportRejectionReason.USER_ID_TAKEN),
        (103, "thief", ImportRejectionReason.CONTACT_HASH_TAKEN),
    ]
    assert await store.registry_size() == 1202
    record = await store.get_user("new-1")
    assert record is not None and record.settings.discoverable is False


async def test_import_groups_run_in_order(store: Store) -> None:
    """Groups of one import_groups call are imported one after the other: a later
    group sees the earlier ones registered, exactly as separate import_users calls."""
    bob = user("bob")
    groups = [
        [bob, user("carl")],
        [
            user("bob", bob.directory_key),
            user("bob"),
            user("dora", bob.directory_key),
        ],
    ]
    reports = await store.import_groups([ImportGroup.of(group) for group in groups])
    first, second = reports
    assert (first.imported, first.unchanged, first.rejected_total) == (2, 0, 0)
    assert (second.imported, second.unchanged, second.rejected_total) == (0, 1, 2)
    assert [(r.position, r.user_id, r.reason) for r in second.rejections] == [
        (1, "bob", ImportRejectionReason.USER_ID_TAKEN),
        (2, "dora", ImportRejectionReason.CONTACT_HASH_TAKEN),
    ]
    changes = await store.feed_read(0, 100)
    assert sorted(c.user_id or "" for c in changes) == ["bob", "carl"]


async def test_iter_registry_yields_everyone(store: Store) -> None:
    users = [user(f"u{i}", discoverable=i % 3 != 0) for i in range(2500)]
    await store.import_users(users, 0)
    await store.unregister("u7", jtag("u7"))
    seen: dict[str, tuple[bytes, bool]] = {}
    async for piece in store.iter_registry(1000):
        assert len(piece.keys) == 16 * len(piece.user_ids) == 16 * len(piece.discoverable)
        for i, user_id in enumerate(piece.user_ids):
            seen[user_id] = (piece.keys[16 * i : 16 * i + 16], bool(piece.discoverable[i]))
    expected = {u.user_id: (u.directory_key, u.settings.discoverable) for u in users if u.user_id != "u7"}
    assert seen == expected
    assert await store.registry_size() == 2499


async def test_feed_orders_changes_and_forgets_departed_users(store: Store) -> None:
    assert await store.feed_head() == 0
    assert await store.feed_read(0, 10) == []
    a, b, b2 = key(), key(), key()
    await store.register(user("alice", a))
    await store.register(user("bob", b))
    await store.change_number("bob", b2, announcement("bob", b2))
    await store.unregister("alice", jtag("alice"))
    head = await store.feed_head()
    changes = await store.feed_read(0, 100)
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    assert changes[-1].seq == head
    # alice's entry and bob's first one were superseded and are gone.
    assert [(c.directory_key, c.user_id) for c in changes] == [(b, None), (b2, "bob"), (a, None)]
    assert all(c.user_id != "alice" for c in changes)
    assert await store.feed_read(head, 10) == []
    assert len(await store.feed_read(0, 2)) == 2


async def test_pruned_feed_raises_truncated(open_backend: OpenStore) -> None:
    store = await open_backend(feed_retention=0.0)
    for i in range(3):
        await store.register(user(f"u{i}"))
    # Prune on the next write regardless of the interval between prunes.
    store._last_prune = 0.0  # type: ignore[attr-defined]
    await store.register(user("last"))
    head = await store.feed_head()
    with pytest.raises(FeedTruncated):
        await store.feed_read(0, 10)
    assert await store.feed_read(head, 10) == []


async def test_feed_length_cap(open_backend: OpenStore) -> None:
    store = await open_backend(feed_max_len=5)
    await store.import_users([user(f"u{i}") for i in range(20)], 0)
    store._last_prune = 0.0  # type: ignore[attr-defined]
    await store.register(user("last"))
    head = await store.feed_head()
    with pytest.raises(FeedTruncated):
        await store.feed_read(head - 10, 100)
    assert [c.user_id for c in await store.feed_read(head - 5, 100)] == [
        "u16",
        "u17",
        "u18",
        "u19",
        "last",
    ]


async def test_index_follows_writes_of_another_instance(open_backend: OpenStore) -> None:
    writer, reader = await open_backend(), await open_backend()
    await writer.import_users([user(f"u{i}") for i in range(50)], 0)
    sync = IndexSync(reader)
    await sync.load()
    assert sync.users == 50
    stop = asyncio.Event()
    follower = asyncio.create_task(sync.follow(stop))
    try:
        newcomer = user("newcomer")
        await writer.register(newcomer)
        started = time.monotonic()
        while time.monotonic() - started < 5:
            _, ids = sync.lookup(newcomer.directory_key)
            if ids:
                break
            await asyncio.sleep(0.02)
        assert ids == ["newcomer"]
        assert time.monotonic() - started < 1.0, "a registration reaches every instance within a second"
        await writer.unregister("u3", jtag("u3"))
        await writer.update_settings("u4", PrivacySettings(discoverable=False))
        deadline = time.monotonic() + 5
        while sync.users != 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert sync.users == 50
    finally:
        stop.set()
        follower.cancel()
        # IndexSync.follow honours the cancellation even when redis-py swallows it mid-reply.
        with pytest.raises(asyncio.CancelledError):
            await follower


async def test_index_reloads_when_it_fell_behind_the_feed(open_backend: OpenStore) -> None:
    writer = await open_backend(feed_max_len=10)
    reader = await open_backend(feed_max_len=10)
    await writer.import_users([user(f"u{i}") for i in range(5)], 0)
    sync = IndexSync(reader)
    await sync.load()
    # The reader is "down" while many registrations happen and the feed is pruned.
    users = [user(f"late-{i}") for i in range(40)]
    await writer.import_users(users[:30], 0)
    writer._last_prune = 0.0  # type: ignore[attr-defined]
    for u in users[30:]:
        await writer.register(u)
    await writer.unregister("u0", jtag("u0"))
    await sync.catch_up()
    assert sync.users == 44
    _, ids = sync.lookup(b"".join(u.directory_key for u in users))
    assert sorted(ids) == sorted(u.user_id for u in users)


def _reported(runs: list[FeedRun]) -> list[tuple[int, bytes, str, bool]]:
    return [
        (run.first + i, run.directory_keys[16 * i : 16 * i + 16], user_id, run.discoverable[i])
        for run in runs
        for i, user_id in enumerate(run.user_ids)
    ]


async def test_import_reports_the_feed_entries_it_appended(store: Store) -> None:
    kept = user("kept")
    await store.register(user("taken"))
    await store.register(kept)
    head = await store.feed_head()
    # More users than one Redis script call takes, a refused and an unchanged one among them.
    users = [user(f"u{i}", discoverable=i % 3 != 0) for i in range(1200)]
    users[700] = user("taken")
    users[900] = kept
    report = await store.import_users(users, 0)
    assert (report.imported, report.unchanged, report.rejected_total) == (1198, 1, 1)
    changes = await store.feed_read(head, 10_000)
    assert _reported(report.feed) == [(c.seq, c.directory_key, c.user_id, c.discoverable) for c in changes]


async def test_an_imported_users_feed_entry_is_deleted_when_superseded(store: Store) -> None:
    """Each imported user's record names its own feed entry (Redis numbers them in the script,
    across the hundreds), so leaving or a number change deletes it."""
    users = [user(f"u{i}") for i in range(250)]
    users[40] = user("u0")  # refused: seqs after it shift by one
    report = await store.import_users(users, 0)
    assert (report.imported, report.rejected_total) == (249, 1)
    await store.unregister("u5", jtag("u5"))
    await store.unregister("u150", jtag("u150"))
    moved = key()
    await store.change_number("u99", moved, announcement("u99", moved))
    await store.update_settings("u120", PrivacySettings(discoverable=False))
    changes = await store.feed_read(0, 10_000)
    named: dict[str, list[tuple[bytes, bool]]] = {}
    for c in changes:
        if c.user_id is not None:
            named.setdefault(c.user_id, []).append((c.directory_key, c.discoverable))
    assert "u5" not in named and "u150" not in named
    assert named["u99"] == [(moved, True)]
    assert named["u120"][-1] == (users[120].directory_key, False)
    assert named["u249"] == [(users[249].directory_key, True)]
    assert len(named) == 249 - 2


def _index_view(sync: IndexSync, keys: bytes) -> tuple[list[int], list[str]]:
    positions, ids = sync.lookup(keys)
    return positions.tolist(), ids


async def test_index_applies_an_import_as_written(open_backend: OpenStore) -> None:
    """IndexSync.apply_written gives the index that reading the feed gives: with another
    instance's writes before and after the import's entries, and runs already applied in part."""
    writer, other = await open_backend(), await open_backend()
    sync = IndexSync(writer)
    await sync.load()
    before = user("before")
    await other.register(before)  # not read yet: read with the import's entries
    first = [user(f"a{i}", discoverable=i % 2 == 0) for i in range(600)]
    assert await sync.apply_written((await writer.import_users(first, 0)).feed) == 601
    second = [user(f"b{i}") for i in range(300)]
    report = await writer.import_users(second, 0)
    after = user("after")
    await other.register(after)  # after the runs: the last read brings them
    await other.unregister("a5", jtag("a5"))
    assert await sync.apply_written(report.feed) == 300 + 2
    third = [user(f"c{i}") for i in range(300)]
    (run,) = (await writer.import_users(third, 0)).feed
    part = FeedRun(run.first, run.directory_keys[: 16 * 100], run.user_ids[:100], run.discoverable[:100])
    assert await sync.apply_written([part, run]) == 300
    assert await sync.apply_written([run]) == 0
    keys = b"".join(u.directory_key for u in [before, *first, *second, after, *third])
    fresh = IndexSync(writer)
    await fresh.load()
    assert _index_view(sync, keys) == _index_view(fresh, keys)
    assert sync.users == fresh.users == 1 + 599 + 300 + 1 + 300
    assert sync.cursor == await writer.feed_head()


async def test_a_catch_up_does_not_wait_for_an_import_being_written(store: Store) -> None:
    """A registration through the importing instance reads its own write at once (only the
    follow loop waits for the import, which applies its own entries)."""
    sync = IndexSync(store)
    await sync.load()
    release = asyncio.Event()

    async def write() -> ImportReport:
        await release.wait()
        return await store.import_users([user("imported")], 0)

    importing = asyncio.create_task(sync.write_and_apply(write, lambda report: report.feed))
    await asyncio.sleep(0)
    await store.register(user("registered"))
    assert await asyncio.wait_for(sync.catch_up(), 5) == 1
    release.set()
    assert (await importing).imported == 1
    assert sync.users == 2
    assert sync.cursor == await store.feed_head()


async def test_feed_wait_wakes_on_another_instances_write(open_backend: OpenStore) -> None:
    writer, waiter = await open_backend(), await open_backend()
    head = await waiter.feed_head()
    started = time.monotonic()
    await waiter.feed_wait(head, timeout=0.05)
    assert time.monotonic() - started < 1.0
    task = asyncio.create_task(waiter.feed_wait(head, timeout=5.0))
    await asyncio.sleep(0.05)
    await writer.register(user("alice"))
    await asyncio.wait_for(task, timeout=1.0)
    assert [c.user_id for c in await waiter.feed_read(head, 10)] == ["alice"]


async def test_open_store_selects_the_backend_by_url(tmp_path: Path, redis_url: str) -> None:
    sqlite = await open_store(f"sqlite:///{tmp_path}/a.db")
    redis_store = await open_store(redis_url)
    try:
        assert isinstance(sqlite, SqliteStore)
        assert isinstance(redis_store, RedisStore)
        await redis_store.ping()
    finally:
        await sqlite.close()
        await redis_store.close()
    with pytest.raises(ValueError, match="unknown store URL scheme"):
        await open_store("mongodb://127.0.0.1/x")


async def test_quota_charge_contract(store: Store) -> None:
    """Each row: (bucket, cost, capacity, leak per second, now) -> (allowed, level, retry_after)."""
    steps = [
        (("b", 6, 10, 1.0, 100.0), (True, 6.0, 0.0)),
        (("b", 8, 10, 1.0, 101.0), (False, 5.0, 3.0)),  # leaked to 5; 13 > 10
        (("b", 5, 10, 1.0, 101.0), (True, 10.0, 0.0)),  # the refusal charged nothing
        (("b", 11, 10, 1.0, 101.0), (False, 10.0, math.inf)),  # never fits
        (("b", 0, 10, 1.0, 50.0), (True, 10.0, 0.0)),  # a clock behind the stored time leaks nothing
        (("b", 0, 10, 1.0, 10_000.0), (True, 0.0, 0.0)),
        (("c", 10, 10, 0.0, 0.0), (True, 10.0, 0.0)),
        (("c", 1, 10, 0.0, 1e9), (False, 10.0, math.inf)),  # no leak
        (("requests:alice", 0.5, 1, 2.0, 7.25), (True, 0.5, 0.0)),
    ]
    for (bucket, cost, capacity, rate, now), expected in steps:
        (outcome,) = await store.charge([BucketCharge(bucket, cost, capacity, rate)], now)
        assert (outcome.allowed, outcome.level, outcome.retry_after) == expected, (bucket, cost, now)


async def test_quota_charges_of_one_call_stop_at_the_first_refusal(store: Store) -> None:
    """One round trip applies a user's charges in order; a refusal ends it and changes nothing."""
    rate, contacts = "requests:carol", "contacts:carol"
    outcomes = await store.charge([BucketCharge(rate, 1, 2, 0.0), BucketCharge(contacts, 5, 10, 0.0)], 1.0)
    assert [(o.allowed, o.level) for o in outcomes] == [(True, 1.0), (True, 5.0)]
    outcomes = await store.charge([BucketCharge(rate, 1, 2, 0.0), BucketCharge(contacts, 6, 10, 0.0)], 2.0)
    assert [(o.allowed, o.level) for o in outcomes] == [(True, 2.0), (False, 5.0)]  # rate kept, contacts not
    outcomes = await store.charge([BucketCharge(rate, 1, 2, 0.0), BucketCharge(contacts, 1, 10, 0.0)], 3.0)
    assert [(o.allowed, o.level) for o in outcomes] == [(False, 2.0)]  # the rate refuses: contacts untouched
    (check,) = await store.charge([BucketCharge(contacts, 0, 10, 0.0)], 4.0)
    assert check.level == 5.0
    assert await store.charge([], 5.0) == []


async def test_charge_and_read_charges_and_reads_the_caller_in_one_call(store: Store) -> None:
    """Discover's round trip: the charge as ``charge`` makes it, and the record as ``get_user`` reads it."""
    settings = PrivacySettings(notify_on_join=True, announce_mode=AnnounceMode.MUTUAL)
    await store.register(new_user("dave", key(), settings))
    charges = [BucketCharge("requests:dave", 1, 2, 0.0), BucketCharge("contacts:dave", 5, 10, 0.0)]
    outcomes, record = await store.charge_and_read(charges, 1.0, "dave")
    assert [(o.allowed, o.level) for o in outcomes] == [(True, 1.0), (True, 5.0)]
    assert record == await store.get_user("dave") and record is not None and record.settings == settings
    outcomes, record = await store.charge_and_read(
        [BucketCharge("requests:nobody", 1, 2, 0.0)], 2.0, "nobody"
    )
    assert [(o.allowed, o.level) for o in outcomes] == [(True, 1.0)] and record is None
    more = [charges[0], BucketCharge("contacts:dave", 6, 10, 0.0)]
    outcomes, record = await store.charge_and_read(more, 3.0, "dave")
    assert [(o.allowed, o.level) for o in outcomes] == [(True, 2.0), (False, 5.0)] and record is not None


async def test_join_signals_reach_another_instance(open_backend: OpenStore) -> None:
    writer, listener = await open_backend(), await open_backend()
    watching = PrivacySettings(notify_on_join=True, announce_mode=AnnounceMode.EVERYONE)
    for name in ("alice", "bob"):
        await writer.register(user(name, **{"notify_on_join": True}))
    joiner_key = key()
    assert await writer.add_watches("alice", tags(joiner_key), 3600.0, 10) == 1
    signals = listener.inbox_signals()
    waiting = asyncio.ensure_future(signals.__anext__())
    await asyncio.sleep(0.3)  # the listener subscribes
    await writer.register(new_user("carol", joiner_key, watching))
    assert await asyncio.wait_for(waiting, timeout=5) == {"alice"}
    (entry,) = await listener.inbox_read("alice", 0, 10, 3600.0)
    assert (joiner(entry), joined_key(entry)) == ("carol", joiner_key)
    await signals.aclose()  # type: ignore[attr-defined]
