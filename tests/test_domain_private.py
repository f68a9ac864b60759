"""Private mode's registered set (core/private_index.py) over the in-memory store: what registrations,
number changes, settings changes and unregistrations leave in it, and the snapshot built off the loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from discovery.core.directory import Directory, ImportCandidate
from discovery.core.errors import FeedTruncated, InvalidArgument, Unavailable
from discovery.core.hashing import KeyRing
from discovery.core.index_sync import IndexSync
from discovery.core.model import ImportRejectionReason, PrivacySettings, RegistryChange
from discovery.core.private import OffLoopEvaluator, OprfKey
from discovery.core.private_index import PrivateDiscovery, PrivateIndex, PrivateRegistrar
from discovery.core.quota import ALLOW_ALL
from discovery.private_scheme import Bucket, Snapshot, open_sealed, sealed_size, tag_of
from tests.support.domain import SECRET, number
from tests.support.memory_store import MemoryStore


@pytest.fixture
async def private() -> AsyncIterator[tuple[Directory, PrivateDiscovery]]:
    store = MemoryStore()
    key = OprfKey.from_secret(SECRET, 1)
    evaluator = OffLoopEvaluator(kind="thread")
    discovery = PrivateDiscovery(PrivateIndex(store, key.epoch), key, evaluator, ALLOW_ALL)
    sync = IndexSync(store)
    await sync.load()
    keys = KeyRing.from_secret(SECRET)
    try:
        yield Directory(store, sync, keys, private=discovery.registrar()), discovery
    finally:
        evaluator.close()


async def test_the_set_follows_every_kind_of_registry_change(
    private: tuple[Directory, PrivateDiscovery],
) -> None:
    directory, discovery = private
    index, key = discovery.index, discovery.key
    await directory.register("alice", number(1))
    await directory.register("bob", number(2))
    await directory.register("carol", number(3), PrivacySettings(discoverable=False))
    await directory.change_number("alice", number(4))
    await directory.unregister("bob")
    await index.catch_up()
    snapshot = Snapshot.deserialize(await index.snapshot())
    tags = [tag_of(key.output_of(number(i))) for i in range(1, 5)]
    assert snapshot.contains(tags) == [False, False, False, True]
    assert index.count == 1
    # Carol turns discoverable: her entry (kept since registration) enters the set. (A snapshot younger
    # than SNAPSHOT_MAX_AGE is still served, deltas cover the rest: rebuild to see it.)
    await directory.update_settings("carol", PrivacySettings(discoverable=True))
    await index.catch_up()
    assert Snapshot.deserialize(await index.rebuild()).contains(tags) == [False, False, True, True]
    (raw,) = await discovery.buckets([tags[3] * 2])  # the range of alice's tag alone
    assert Bucket.deserialize(raw).open(key.output_of(number(4))) == ["alice"]
    # A fresh index loaded from the store holds the same set.
    reloaded = PrivateIndex(index._store, key.epoch)
    await reloaded.load()
    assert reloaded.count == 2
    assert open_sealed(key.output_of(number(4)), 1, snapshot.sealed_for(tags[3])[0]) == "alice"


async def test_a_stale_snapshot_is_rebuilt_off_the_loop_once_for_every_caller() -> None:
    index = PrivateIndex(MemoryStore(), 1)
    filler = os.urandom(sealed_size())
    index._entries = {os.urandom(5): {filler} for _ in range(200_000)}
    index.count = len(index._entries)
    first, second = asyncio.ensure_future(index.snapshot()), asyncio.ensure_future(index.snapshot())
    turns = 0
    for _ in range(20_000):  # bounded: the build takes well under 20 s of 1 ms turns
        await asyncio.sleep(0.001)
        turns += 1
        if first.done():
            break
    assert turns > 1, "the loop kept turning while the snapshot was built"
    assert await first is await second, "one build served both callers"
    assert len(Snapshot.deserialize(await first)) == len(index._entries)
    assert index.snapshot_bytes() is await first, "a fresh snapshot is served as built"


async def test_user_ids_longer_than_the_id_pad_are_refused_at_registration() -> None:
    store = MemoryStore()
    key = OprfKey.from_secret(SECRET, 1)
    evaluator = OffLoopEvaluator(kind="thread")
    sync = IndexSync(store)
    await sync.load()
    directory = Directory(
        store, sync, KeyRing.from_secret(SECRET), private=PrivateRegistrar(key, evaluator, id_pad=8)
    )
    try:
        with pytest.raises(InvalidArgument, match="up to 8 bytes") as refused:
            await directory.register("longer-than-8", number(1))
        assert [v.field for v in refused.value.violations] == ["user_id"]
        report = await directory.import_batch(
            [ImportCandidate("short", number(2), None), ImportCandidate("longer-than-8", number(3), None)], 0
        )
        assert report.imported == 1
        assert [(r.position, r.reason) for r in report.rejections] == [
            (1, ImportRejectionReason.INVALID_USER_ID)
        ]
        with pytest.raises(InvalidArgument):
            await directory.change_number("longer-than-8", number(4))
    finally:
        evaluator.close()


class _FlakyFeed(MemoryStore):
    """A store whose feed is pruned under the reader once, and whose first full read then fails."""

    truncate_once = False
    failing_scans = 0

    async def feed_read(self, after: int, limit: int) -> list[RegistryChange]:
        if self.truncate_once:
            self.truncate_once = False
            raise FeedTruncated("pruned under the reader")
        return await super().feed_read(after, limit)

    async def iter_private(self, batch_size: int) -> AsyncIterator[list[bytes]]:
        if self.failing_scans:
            self.failing_scans -= 1
            raise Unavailable("the store is down")
        async for batch in super().iter_private(batch_size):
            yield batch


async def test_a_failed_reload_after_a_pruned_feed_is_retried_and_the_set_kept() -> None:
    store = _FlakyFeed()
    key = OprfKey.from_secret(SECRET, 1)
    evaluator = OffLoopEvaluator(kind="thread")
    index = PrivateIndex(store, key.epoch)
    discovery = PrivateDiscovery(index, key, evaluator, ALLOW_ALL)
    sync = IndexSync(store)
    await sync.load()
    directory = Directory(store, sync, KeyRing.from_secret(SECRET), private=discovery.registrar())
    stop = asyncio.Event()
    try:
        await directory.register("alice", number(1))
        await index.load()
        assert index.count == 1
        store.truncate_once, store.failing_scans = True, 1
        follow = asyncio.create_task(index.follow(stop, poll=0.01))
        await directory.register("bob", number(2))
        for _ in range(500):  # the failed reload is retried at the next poll, and bob's entry is read
            if index.count == 2:
                break
            assert not follow.done(), follow
            await asyncio.sleep(0.01)
        assert index.count == 2 and store.failing_scans == 0 and not follow.done()
    finally:
        stop.set()
        evaluator.close()
    await asyncio.wait_for(follow, 5)
