"""The JoinStore contract, run on every backend by the ``store`` fixture of tests/support/stores.py.

Directory keys here are arbitrary 16-byte values: the store never sees a contact hash.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from discovery.core.errors import InvalidArgument
from discovery.core.model import Announcement, AnnounceMode, ImportGroup, PrivacySettings
from discovery.store import Store
from discovery.store.redis import RedisStore
from discovery.store.sqlite import SqliteStore
from tests.support.announce import announcement, joined_key, joiner, jtag, new_user, tags

WATCHING = PrivacySettings(discoverable=True, announce_mode=AnnounceMode.EVERYONE, notify_on_join=True)
DAY = 86400.0


def key(n: int) -> bytes:
    return n.to_bytes(16, "big")


async def open_sqlite(path: Path) -> SqliteStore:
    store = SqliteStore(path, poll_interval=0.05)
    await store.open()
    return store


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = await open_sqlite(tmp_path / "store.db")
    yield opened
    await opened.close()


async def add_user(store: Store, user_id: str, n: int, settings: PrivacySettings = WATCHING) -> None:
    await store.register(new_user(user_id, key(n), settings))


async def test_watches_need_notify_on_and_are_capped_oldest_first(store: Store) -> None:
    await add_user(store, "quiet", 1, PrivacySettings())
    assert await store.add_watches("quiet", tags(key(100)), DAY, 10) == 0
    assert await store.add_watches("stranger", tags(key(100)), DAY, 10) == 0
    await add_user(store, "alice", 2)
    assert await store.add_watches("alice", tags(key(100), key(101)), DAY, 3) == 2
    assert await store.add_watches("alice", tags(key(102)), DAY, 3) == 3
    assert await store.add_watches("alice", tags(key(100)), DAY, 3) == 3  # refreshed: now the newest
    assert await store.add_watches("alice", tags(key(103)), DAY, 3) == 3  # drops 101, the oldest
    await add_user(store, "w101", 101)
    await add_user(store, "w100", 100)
    assert [joiner(e) for e in await store.inbox_read("alice", 0, 10, DAY)] == ["w100"]
    assert await store.count_watches("alice") == 2
    assert await store.drop_watches("alice") == 2


async def test_fan_out_is_part_of_the_registration(store: Store) -> None:
    for i, user in enumerate(("alice", "bob", "off")):
        await add_user(store, user, i + 1)
    await store.add_watches("alice", tags(key(50), key(51), key(52)), DAY, 10)
    await store.add_watches("bob", tags(key(50)), DAY, 10)
    await store.add_watches("off", tags(key(50)), DAY, 10)
    await store.update_settings("off", PrivacySettings())  # opted out after watching
    await add_user(store, "joiner", 50)
    (entry,) = await store.inbox_read("alice", 0, 10, DAY)
    assert (joiner(entry), joined_key(entry), entry.event_id) == ("joiner", key(50), str(entry.cursor))
    assert [joiner(e) for e in await store.inbox_read("bob", 0, 10, DAY)] == ["joiner"]
    assert await store.inbox_read("off", 0, 10, DAY) == []
    # Silent and undiscoverable joiners consume the watches without telling anyone.
    await add_user(store, "silent", 51, PrivacySettings(True, AnnounceMode.OFF, False))
    await add_user(store, "hidden", 52, PrivacySettings(False, AnnounceMode.EVERYONE, False))
    assert await store.count_watches("alice") == 0
    assert len(await store.inbox_read("alice", 0, 10, DAY)) == 1
    # A failed registration rolls its fan-out back with it.
    await store.add_watches("alice", tags(key(53)), DAY, 10)
    with pytest.raises(Exception, match="another user"):
        await store.register(new_user("dup", key(50), WATCHING))
    assert await store.count_watches("alice") == 1


async def test_an_import_asks_for_the_announcements_of_watched_users(store: Store) -> None:
    """A store asks an ImportGroup for announcements only where somebody watches (SQLite: the
    watched users; Redis: the script calls of 500 users that hold one), and every watched user
    imported is announced; the feed entries reported are the feed's, in its order."""
    await add_user(store, "alice", 1)
    await add_user(store, "bob", 2)
    watched = [3, 1100]  # in the first and the third script call of Redis's 500 users each
    await store.add_watches("alice", tags(*(key(1000 + i) for i in watched)), DAY, 10)
    await store.add_watches("bob", tags(key(1000 + 3)), DAY, 10)
    ids = [f"u{i}" for i in range(1500)]
    keys = [key(1000 + i) for i in range(1500)]
    asked: list[int] = []

    def announce(positions: Sequence[int]) -> list[Announcement]:
        asked.extend(positions)
        return [announcement(ids[i], keys[i]) for i in positions]

    head = await store.feed_head()
    group = ImportGroup(ids, b"".join(keys), [WATCHING] * 1500, tags(*keys), announce, distinct=True)
    (report,) = await store.import_groups([group])
    assert report.imported == 1500
    assert sorted(joiner(e) for e in await store.inbox_read("alice", 0, 10, DAY)) == ["u1100", "u3"]
    assert [joiner(e) for e in await store.inbox_read("bob", 0, 10, DAY)] == ["u3"]
    assert await store.count_watches("alice") == 0
    assert set(watched) <= set(asked)
    if isinstance(store, SqliteStore | RedisStore):
        assert len(asked) <= 1000
    changes = await store.feed_read(head, 10_000)
    reported = [
        (run.first + i, run.directory_keys[16 * i : 16 * i + 16], user_id)
        for run in report.feed
        for i, user_id in enumerate(run.user_ids)
    ]
    assert reported == [(c.seq, c.directory_key, c.user_id) for c in changes]
    assert sorted(c.user_id or "" for c in changes) == sorted(ids)


async def test_acks_are_per_device_and_inactive_devices_stop_counting(store: Store) -> None:
    await add_user(store, "alice", 1)
    await store.add_watches("alice", tags(key(60), key(61)), DAY, 10)
    await add_user(store, "x", 60)
    await add_user(store, "y", 61)
    first, second = (e.cursor for e in await store.inbox_read("alice", 0, 10, DAY))
    assert await store.inbox_attach("alice", "phone", 0) == 0
    assert await store.inbox_attach("alice", "desktop", 0) == 0
    assert await store.inbox_ack("alice", "phone", second, DAY) == 0
    assert await store.inbox_attach("alice", "phone", 0) == second  # resumes after its own ack
    assert await store.inbox_ack("alice", "desktop", first, DAY) == 1
    assert await store.inbox_ack("alice", "desktop", 0, DAY) == 0  # an ack never moves back
    await asyncio.sleep(0.05)
    # Counting only devices seen in the last 10 ms: the phone acks alone and the rest goes.
    assert await store.inbox_ack("alice", "phone", second, 0.01) == 1
    assert await store.inbox_attach("nobody", "phone", 0) is None
    assert await store.inbox_ack("nobody", "phone", 0, DAY) is None


async def test_cursors_ahead_of_the_store_are_rejected(store: Store) -> None:
    await add_user(store, "alice", 1)
    with pytest.raises(InvalidArgument) as info:
        await store.inbox_attach("alice", "", 1)
    assert info.value.violations[0].field == "after_cursor"
    with pytest.raises(InvalidArgument) as info:
        await store.inbox_ack("alice", "", 1, DAY)
    assert info.value.violations[0].field == "cursor"


async def test_cursor_epochs_are_stable_and_start_at_most_at_the_head(store: Store) -> None:
    """One epoch while one process holds the history; cursors issued after it lie above its base."""
    first = await store.inbox_epochs()
    assert first and all(e.epoch > 0 for e in first) and first[-1].base == 0
    await add_user(store, "alice", 1)
    await store.add_watches("alice", tags(key(70)), DAY, 10)
    await add_user(store, "x", 70)
    (entry,) = await store.inbox_read("alice", 0, 10, DAY)
    again = await store.inbox_epochs()
    assert again == first and entry.cursor > again[-1].base


async def test_expired_rows_are_ignored_then_purged(store: Store) -> None:
    await add_user(store, "alice", 1)
    await store.add_watches("alice", tags(key(70)), 0.05, 10)
    await store.add_watches("alice", tags(key(71)), DAY, 10)
    await add_user(store, "x", 71)
    await store.inbox_attach("alice", "phone", 0)
    await asyncio.sleep(0.5)  # well past the 0.05 s lifetimes, also on a loaded machine
    assert await store.count_watches("alice") == 0
    assert await store.inbox_read("alice", 0, 10, 0.05) == []
    assert await store.purge_expired(0.05) == 3  # one watch, one entry, one device
    await add_user(store, "y", 70)  # the expired watch is gone: no event
    assert await store.inbox_read("alice", 0, 10, DAY) == []


async def test_unregister_forgets_watcher_and_joiner(store: Store) -> None:
    await add_user(store, "alice", 1)
    await add_user(store, "bob", 2)
    await store.add_watches("alice", tags(key(80), key(81)), DAY, 10)
    await store.add_watches("bob", tags(key(82)), DAY, 10)
    await add_user(store, "x", 80)
    await add_user(store, "y", 82)
    await store.inbox_attach("alice", "phone", 0)
    assert await store.delete_user_data("alice", jtag("alice")) == 3  # a watch, an entry, a device
    await store.unregister("y", jtag("y"))
    assert await store.inbox_read("bob", 0, 10, DAY) == []


async def test_signals_name_the_notified_users(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    """Needs two SQLite instances on one file; tests/test_store_contract.py covers every backend."""
    store = sqlite_store
    await add_user(store, "alice", 1)
    await add_user(store, "bob", 2)
    await store.add_watches("alice", tags(key(90)), DAY, 10)
    await store.add_watches("bob", tags(key(91)), DAY, 10)
    signals = store.inbox_signals()
    await add_user(store, "x", 90)
    assert await asyncio.wait_for(signals.__anext__(), timeout=5) == {"alice"}
    # Another process on the same file: found by the instance's single poll.
    other = await open_sqlite(tmp_path / "store.db")
    try:
        await other.register(new_user("y", key(91), WATCHING))
    finally:
        await other.close()
    assert await asyncio.wait_for(signals.__anext__(), timeout=5) == {"bob"}
    await signals.aclose()  # type: ignore[attr-defined]
