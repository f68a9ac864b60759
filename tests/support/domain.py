"""The domain (Directory, quota gate, Joins) assembled over the in-memory store, with a clock
the test moves: for unit tests of the rules, without gRPC, files or sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import cast

from discovery.core.directory import Directory, DirectoryLimits
from discovery.core.hashing import KeyRing, contact_hash
from discovery.core.index_sync import IndexSync
from discovery.core.joins import JoinBatch, JoinPolicy, Joins
from discovery.core.model import AnnounceMode, PrivacySettings
from discovery.core.quota import ALLOW_ALL, DiscoverGate, Gate, QuotaPolicy
from tests.support.memory_store import MemoryStore

SECRET = bytes(range(32))
WATCHING = PrivacySettings(notify_on_join=True)
#: The settings of a new user unless a test gives others: joins announced to every watcher
#: (the server's default is MUTUAL, tested in tests/test_join_modes.py).
ANNOUNCING = PrivacySettings(announce_mode=AnnounceMode.EVERYONE)


def join_policy(**changes: float) -> JoinPolicy:
    """A JoinPolicy with ``changes``, no settings cache (a test that flips notify_on_join sees
    it at once) and no release jitter (events are deliverable at once)."""
    return JoinPolicy(**{"settings_cache_seconds": 0.0, "release_jitter": 0.0, **changes})  # type: ignore[arg-type]


class Clock:
    """Wall-clock seconds that move only when the test says so."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def number(i: int) -> bytes:
    """The contact hash of the i-th test number."""
    return contact_hash(f"+4915{i:09d}")


def packed(*indexes: int) -> bytes:
    return b"".join(number(i) for i in indexes)


@dataclass
class Domain:
    clock: Clock
    store: MemoryStore
    keys: KeyRing
    sync: IndexSync
    joins: Joins
    gate: Gate
    directory: Directory

    def key(self, i: int) -> bytes:
        """The directory key of the i-th test number."""
        return self.keys.directory_key_of(number(i))

    def tag(self, i: int) -> bytes:
        """The watch tag of the i-th test number (what the store keeps for a watch on it)."""
        return self.keys.watch_tags(self.key(i))

    async def joiners(self, watcher: str, max_age: float = 86400.0) -> list[str]:
        """Who joined, per the watcher's stored events (their sealed notices opened)."""
        entries = await self.store.inbox_read(watcher, 0, 100, max_age)
        return [self.keys.open_notice(entry.notice)[0] for entry in entries]

    def subscribe(self, user_id: str, device_id: str = "", after: int = 0) -> AsyncGenerator[JoinBatch]:
        """A join stream (an async generator: close it with ``aclose``)."""
        return cast(AsyncGenerator[JoinBatch], self.joins.subscribe(user_id, device_id, after))

    async def restarted(self) -> Directory:
        """A new instance on the same store: its index is loaded from the registry."""
        sync = IndexSync(self.store)
        await sync.load()
        return Directory(self.store, sync, self.keys, gate=self.gate, joins=self.joins)


async def build_domain(
    *,
    quota: QuotaPolicy | None = None,
    joins: JoinPolicy | None = None,
    limits: DirectoryLimits | None = None,
    defaults: PrivacySettings | None = None,
) -> Domain:
    """The domain over a fresh in-memory store; ``quota`` None: no gate (allow all)."""
    clock = Clock()
    store = MemoryStore(clock=clock)
    keys = KeyRing.from_secret(SECRET)
    limits = limits or DirectoryLimits()
    sync = IndexSync(store)
    await sync.load()
    policy = joins or join_policy()
    join_rules = Joins(store, keys, policy)
    gate: Gate = ALLOW_ALL
    if quota is not None:
        gate = DiscoverGate(store, keys, quota, limits.max_hashes_per_request, clock)
    directory = Directory(
        store, sync, keys, limits=limits, default_settings=defaults or ANNOUNCING, gate=gate, joins=join_rules
    )
    return Domain(clock, store, keys, sync, join_rules, gate, directory)


async def batches_until_caught_up(stream: AsyncIterator[JoinBatch], limit: int = 100) -> list[JoinBatch]:
    """The batches of a join stream up to the one that completes the replay (bounded)."""
    batches: list[JoinBatch] = []
    for _ in range(limit):
        batch = await asyncio.wait_for(anext(stream), timeout=2.0)
        batches.append(batch)
        if batch.caught_up:
            return batches
    raise AssertionError(f"no caught_up batch within {limit} batches")
