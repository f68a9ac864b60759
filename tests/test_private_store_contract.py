"""Private mode's part of the Store contract, on every backend of the ``store`` fixture.

Each user's private-mode entry (tag || sealed id) is kept with the registration in the same atomic step,
``iter_private`` yields the entries of the discoverable users, and every feed change that names or removes
a user with an entry carries it (``RegistryChange.private``). What private mode builds of that is checked
with the real parts (core/private_index.py) after every step:

* the stored set (``iter_private``, in small batches) is exactly the discoverable users' entries;
* an index that followed the feed from the empty store, and one loaded from the store now, hold that set;
* the delta from every earlier cursor (read from the index's log, and from the store's feed for an index
  loaded later), applied to the snapshot of that cursor, gives the snapshot of now, with sealed ids and
  with tags only.

Key rotation adds ``private_entries`` (read) and ``refill_private`` (a compare-and-set of a user's entry,
announced on the feed or not).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from discovery.core.errors import ContactHashTaken, UserIdTaken, UserNotRegistered
from discovery.core.model import (
    ImportGroup,
    ImportRejectionReason,
    NewUser,
    PrivacySettings,
    PrivateRefill,
    RegisterOutcome,
)
from discovery.core.ports import Store
from discovery.core.private import OffLoopEvaluator, OprfKey, PrivateEntry, entry_of_epoch, pack_entries
from discovery.core.private_index import PrivateDiscovery, PrivateIndex
from discovery.core.quota import ALLOW_ALL
from discovery.private_scheme import TAG_SIZE, Delta, Snapshot, apply_delta, sealed_size
from tests.support.announce import announcement, jtag, new_user
from tests.support.domain import SECRET

EPOCH = 1
BATCH = 3  # iter_private's batch size here: several batches even for a handful of users


def key() -> bytes:
    return os.urandom(16)


def entry(tag: bytes | None = None) -> bytes:
    """A private-mode entry as the registrar makes it (tag || sealed id), random."""
    return (tag or os.urandom(TAG_SIZE)) + os.urandom(sealed_size())


def user(user_id: str, private: bytes | None, directory_key: bytes | None = None, **settings: Any) -> NewUser:
    made = new_user(user_id, directory_key or key(), PrivacySettings(**settings))
    return NewUser(made.user_id, made.directory_key, made.settings, made.announcement, private)


class PrivateView:
    """What private mode must find in a store: the entry of every discoverable user, by user id."""

    def __init__(self, store: Store, follower: PrivateIndex, key: OprfKey) -> None:
        self.store = store
        self.follower = follower
        self.key = key
        self.expected: dict[str, bytes] = {}
        self.marks: list[tuple[int, dict[str, bytes]]] = []

    async def mark(self) -> int:
        """Remember the cursor of now and the set it stands for (a client's snapshot)."""
        head = await self.store.feed_head()
        self.marks.append((head, dict(self.expected)))
        return head

    async def register(self, user_id: str, directory_key: bytes | None = None, **settings: Any) -> NewUser:
        """Register a user with a new entry, expected in the set while discoverable."""
        private = entry()
        made = user(user_id, private, directory_key, **settings)
        assert await self.store.register(made) is RegisterOutcome.CREATED
        if made.settings.discoverable:
            self.expected[user_id] = private
        return made

    async def set_discoverable(self, user_id: str, on: bool, private: bytes | None) -> None:
        """Turn discoverability on or off: one feed change, carrying the entry; the set follows."""
        head = await self.store.feed_head()
        assert await self.store.update_settings(user_id, PrivacySettings(discoverable=on)) is not None
        assert await self.changes_since(head) == [(user_id, on, private)]
        assert private is not None
        if on:
            self.expected[user_id] = private
        else:
            self.expected.pop(user_id, None)

    async def change_number(self, user_id: str, directory_key: bytes) -> bytes:
        """Move a user to a new key with a new entry (expected in the set while discoverable)."""
        private = entry()
        await self.store.change_number(user_id, directory_key, announcement(user_id, directory_key), private)
        if user_id in self.expected:
            self.expected[user_id] = private
        return private

    async def changes_since(self, cursor: int) -> list[tuple[str | None, bool, bytes | None]]:
        return [(c.user_id, c.discoverable, c.private) for c in await self.store.feed_read(cursor, 10_000)]

    async def verify(self) -> None:
        stored: list[bytes] = []
        async for batch in self.store.iter_private(BATCH):
            assert len(batch) <= BATCH
            stored += batch
        assert Counter(stored) == Counter(self.expected.values()), "iter_private is not the discoverable set"
        await self.follower.catch_up()
        loaded = PrivateIndex(self.store, EPOCH)
        await loaded.load()
        head = await self.store.feed_head()
        for index in (self.follower, loaded):
            assert index._entries == _as_sets(self.expected.values())
            assert index.count == len(self.expected)
            assert index.cursor == head
            for cursor, then in self.marks:
                for with_ids in (True, False):
                    await self._check_delta(index, cursor, then, with_ids)

    async def _check_delta(self, index: PrivateIndex, cursor: int, then: dict[str, bytes], ids: bool) -> None:
        """The delta from ``cursor`` brings the snapshot of then to the snapshot of now."""
        index.small_directory_max = 1 << 30 if ids else 0
        ids = index.with_sealed_ids  # an empty set is a small directory whatever the threshold
        discovery = PrivateDiscovery(index, self.key, OffLoopEvaluator(kind="thread"), ALLOW_ALL)
        delta = await discovery.delta(EPOCH, cursor)
        assert delta is not None, f"no delta from cursor {cursor}"
        assert (delta.from_cursor, delta.to_cursor, delta.with_sealed_ids) == (cursor, index.cursor, ids)
        old = Snapshot.build(EPOCH, cursor, _pairs(then.values()), ids)
        new = apply_delta(old, Delta.deserialize(delta.serialize()))
        now = Snapshot.build(EPOCH, index.cursor, _pairs(self.expected.values()), ids)
        if ids:
            assert sorted(new.entries()) == sorted(now.entries()), f"delta from {cursor}"
        else:
            assert new.tags.tolist() == now.tags.tolist(), f"delta from {cursor} (tags only)"


def _pairs(entries: Any) -> list[tuple[bytes, bytes]]:
    """The (tag, sealed id) of each blob's record of the served epoch."""
    served = [entry_of_epoch(raw, EPOCH) for raw in entries]
    return [(e.tag, e.sealed) for e in served if e is not None]


def _as_sets(entries: Any) -> dict[bytes, set[bytes]]:
    out: dict[bytes, set[bytes]] = {}
    for tag, sealed in _pairs(entries):
        out.setdefault(tag, set()).add(sealed)
    return out


@pytest.fixture
async def view(store: Store) -> AsyncIterator[PrivateView]:
    follower = PrivateIndex(store, EPOCH)
    await follower.load()
    yield PrivateView(store, follower, OprfKey.from_secret(SECRET, EPOCH))


async def test_register_keeps_the_entry_of_discoverable_users_only(view: PrivateView) -> None:
    store = view.store
    await view.mark()
    alice, hidden = entry(), entry()
    assert await store.register(user("alice", alice)) is RegisterOutcome.CREATED
    assert await store.register(user("hidden", hidden, discoverable=False)) is RegisterOutcome.CREATED
    assert await store.register(user("plain", None)) is RegisterOutcome.CREATED  # private mode was off
    assert await view.changes_since(0) == [
        ("alice", True, alice),
        ("hidden", False, hidden),
        ("plain", True, None),
    ]
    view.expected["alice"] = alice
    await view.verify()


async def test_a_refused_registration_leaves_no_entry(view: PrivateView) -> None:
    store = view.store
    alice = await view.register("alice")
    head = await view.mark()
    same = NewUser("alice", alice.directory_key, alice.settings, alice.announcement, entry())
    assert await store.register(same) is RegisterOutcome.UNCHANGED
    with pytest.raises(UserIdTaken):
        await store.register(user("alice", entry()))
    with pytest.raises(ContactHashTaken):
        await store.register(user("bob", entry(), alice.directory_key))
    assert await store.feed_head() == head
    await view.verify()


async def test_users_sharing_a_tag_are_kept_apart(view: PrivateView) -> None:
    """Two users whose entries have one tag (one in 2^40 pairs): removing one keeps the other."""
    store = view.store
    tag = os.urandom(TAG_SIZE)
    first, second = entry(tag), entry(tag)
    await store.register(user("first", first))
    await store.register(user("second", second))
    view.expected.update(first=first, second=second)
    await view.mark()
    await view.verify()
    await store.unregister("first", jtag("first"))
    del view.expected["first"]
    await view.verify()


async def test_import_stores_the_entries_of_imported_users_only(view: PrivateView) -> None:
    store = view.store
    existing = await view.register("existing")
    head = await view.mark()
    # More users than one Redis script call takes (500), so the batch spans several.
    bulk = [user(f"bulk-{i}", entry(), discoverable=i % 5 != 0) for i in range(700)]
    refused = [
        NewUser("existing", existing.directory_key, existing.settings, existing.announcement, entry()),
        user("existing", entry()),  # another key: USER_ID_TAKEN
        user("thief", entry(), existing.directory_key),  # CONTACT_HASH_TAKEN
    ]
    report = await store.import_users([*bulk[:300], *refused, *bulk[300:]], 0)
    assert (report.imported, report.unchanged, report.rejected_total) == (700, 1, 2)
    assert [(r.position, r.reason) for r in report.rejections] == [
        (301, ImportRejectionReason.USER_ID_TAKEN),
        (302, ImportRejectionReason.CONTACT_HASH_TAKEN),
    ]
    changes = await view.changes_since(head)
    assert changes == [(u.user_id, u.settings.discoverable, u.private) for u in bulk]
    view.expected.update((u.user_id, u.private or b"") for u in bulk if u.settings.discoverable)
    await view.verify()


async def test_import_groups_keep_entries_group_by_group(view: PrivateView) -> None:
    store = view.store
    await view.mark()
    bob, carl = entry(), entry()
    first = user("bob", bob)
    groups = [[first, user("carl", carl)], [user("bob", entry()), user("dora", entry(), first.directory_key)]]
    reports = await store.import_groups([ImportGroup.of(group) for group in groups])
    assert [r.imported for r in reports] == [2, 0]
    assert [r.rejected_total for r in reports] == [0, 2]
    view.expected.update(bob=bob, carl=carl)
    await view.verify()


async def test_a_duplicate_user_id_in_a_batch_leaves_nothing_half_written(view: PrivateView) -> None:
    """A store either refuses the duplicate row or the whole batch (the domain screens duplicates out
    before the store, ImportRejectionReason.DUPLICATE_IN_IMPORT): never a user without its entry, never
    an entry without its user, never the refused row's entry."""
    store = view.store
    head = await view.mark()
    first, again, other = user("dup", entry()), user("dup", entry()), user("other", entry())
    try:
        report = await store.import_users([first, again, other], 0)
    except Exception:
        assert await store.feed_head() == head
        assert await store.get_user("dup") is None and await store.get_user("other") is None
    else:
        assert report.imported == 2 and report.rejected_total == 1
        assert [r.position for r in report.rejections] == [1]
        record = await store.get_user("dup")
        assert record is not None and record.directory_key == first.directory_key
        view.expected.update(dup=first.private or b"", other=other.private or b"")
    await view.verify()


async def test_change_number_replaces_the_entry(view: PrivateView) -> None:
    store = view.store
    new_key, new = key(), entry()
    old = (await view.register("dave")).private
    taken_key = (await view.register("erin")).directory_key
    head = await view.mark()
    with pytest.raises(UserNotRegistered):
        await store.change_number("nobody", key(), announcement("nobody", key()), entry())
    with pytest.raises(ContactHashTaken):
        await store.change_number("dave", taken_key, announcement("dave", taken_key), entry())
    assert await store.feed_head() == head, "a refused number change writes nothing"
    await view.verify()
    await store.change_number("dave", new_key, announcement("dave", new_key), new)
    # The feed carries both states: the old entry leaves with the old key, the new one comes with the new.
    assert await view.changes_since(head) == [(None, False, old), ("dave", True, new)]
    view.expected["dave"] = new
    await view.mark()
    await view.verify()
    # Moving to the key the user holds changes nothing, whatever entry comes with it.
    head = await store.feed_head()
    await store.change_number("dave", new_key, announcement("dave", new_key), entry())
    assert await store.feed_head() == head
    await view.verify()


async def test_a_hidden_user_changes_number_and_reappears_with_the_new_entry(view: PrivateView) -> None:
    await view.register("fay", discoverable=False)
    await view.mark()
    new = await view.change_number("fay", key())
    await view.verify()  # hidden: neither entry is in the set
    await view.mark()
    await view.set_discoverable("fay", True, new)
    await view.verify()


async def test_discoverable_off_and_on_removes_and_restores_the_entry(view: PrivateView) -> None:
    store = view.store
    alice = (await view.register("alice")).private
    head = await view.mark()
    await store.update_settings("alice", PrivacySettings(discoverable=True, notify_on_join=True))
    assert await store.feed_head() == head, "only discoverability reaches the feed"
    await view.set_discoverable("alice", False, alice)
    await view.mark()
    await view.verify()
    await view.set_discoverable("alice", True, alice)
    await view.verify()


async def test_unregister_removes_the_entry(view: PrivateView) -> None:
    store = view.store
    first = await view.register("alice")
    alice, alice_key = first.private, first.directory_key
    hidden = (await view.register("hidden", discoverable=False)).private
    head = await view.mark()
    await store.unregister("alice", jtag("alice"))
    await store.unregister("hidden", jtag("hidden"))
    assert await store.unregister("alice", jtag("alice")) is None
    assert await view.changes_since(head) == [(None, False, alice), (None, False, hidden)]
    del view.expected["alice"]
    await view.verify()
    # The freed key takes a new user with a new entry.
    await view.register("bob", alice_key)
    await view.verify()


async def test_every_kind_of_change_in_one_history(view: PrivateView) -> None:
    """Registrations, an import, number changes, settings changes and unregistrations, interleaved; the
    deltas from every cursor along the way (a client at each of them) are checked at the end."""
    store = view.store
    await view.mark()
    a_key = (await view.register("a")).directory_key
    b, c = user("b", entry()), user("c", entry())
    await store.import_users([b, c], 0)
    view.expected.update(b=b.private or b"", c=c.private or b"")  # (never None here)
    await view.mark()
    await view.change_number("b", key())
    await view.set_discoverable("c", False, c.private or b"")
    await view.mark()
    await view.change_number("b", key())
    c_new = await view.change_number("c", key())
    await store.unregister("a", jtag("a"))
    del view.expected["a"]
    await view.register("d", a_key)  # a's old key, a new user
    await view.mark()
    await view.set_discoverable("c", True, c_new)
    await view.set_discoverable("b", False, view.expected["b"])
    await view.verify()


def with_next_epoch(private: bytes) -> bytes:
    """The blob of a user whose entry gains a next epoch's record (the served one, epoch 1, unchanged)."""
    served = PrivateEntry.unpack(private)
    return pack_entries({EPOCH: served, EPOCH + 1: PrivateEntry.unpack(entry())})


async def test_refill_replaces_an_entry_that_is_still_stored(view: PrivateView) -> None:
    """Key rotation: ``refill_private`` replaces a user's entry only while it is the one read before, quietly
    (the served record is unchanged: no feed entry) or announced (one feed change naming the user, which
    supersedes the user's previous one, as a settings change does)."""
    store = view.store
    alice = await view.register("alice")
    hidden = await view.register("hidden", discoverable=False)
    assert await store.register(user("plain", None)) is RegisterOutcome.CREATED  # before private mode
    plain_key = await _key(store, "plain")
    assert await store.private_entries(["alice", "nobody", "plain", "hidden"]) == [
        (alice.directory_key, alice.private),
        None,
        (plain_key, None),
        (hidden.directory_key, hidden.private),
    ]
    head = await view.mark()
    assert alice.private is not None and hidden.private is not None
    refilled = with_next_epoch(alice.private)
    assert await store.refill_private([PrivateRefill("alice", alice.private, refilled, False)]) == 1
    assert await store.feed_head() == head, "a quiet refill writes no feed entry"
    view.expected["alice"] = refilled
    # Read before a concurrent change: nothing is replaced.
    stale = [
        PrivateRefill("alice", alice.private, entry(), True),
        PrivateRefill("plain", entry(), entry(), True),
        PrivateRefill("nobody", None, entry(), True),
    ]
    assert await store.refill_private(stale) == 0
    assert await store.feed_head() == head
    await view.verify()
    plain, hidden_new = entry(), entry()
    announced = [
        PrivateRefill("plain", None, plain, True),
        PrivateRefill("hidden", hidden.private, hidden_new, True),
    ]
    assert await store.refill_private(announced) == 2
    assert await view.changes_since(head) == [("plain", True, plain), ("hidden", False, hidden_new)]
    named = [c for c in await view.changes_since(0) if c[0] == "plain"]
    assert named == [("plain", True, plain)], "the registration's feed entry is superseded"
    assert await store.private_entries(["plain", "alice"]) == [
        (plain_key, plain),
        (alice.directory_key, refilled),
    ]
    view.expected["plain"] = plain
    await view.mark()
    await view.verify()
    # The refilled entries are the ones that leave with the users.
    head = await store.feed_head()
    await store.unregister("plain", jtag("plain"))
    await store.unregister("alice", jtag("alice"))
    assert await view.changes_since(head) == [(None, False, plain), (None, False, refilled)]
    del view.expected["plain"], view.expected["alice"]
    await view.set_discoverable("hidden", True, hidden_new)
    await view.verify()


async def _key(store: Store, user_id: str) -> bytes:
    record = await store.get_user(user_id)
    assert record is not None
    return record.directory_key
