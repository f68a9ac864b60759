"""The directory's rules, tested on the domain over the in-memory store (no gRPC)."""

from __future__ import annotations

import pytest

from discovery.core.directory import DirectoryLimits, ImportCandidate
from discovery.core.errors import ContactHashTaken, InvalidArgument, UserNotRegistered
from discovery.core.model import ImportRejectionReason, PrivacySettings
from discovery.core.quota import QuotaPolicy
from tests.support.domain import WATCHING, build_domain, number, packed


async def test_discover_returns_registered_users_at_their_positions() -> None:
    d = await build_domain()
    await d.directory.register("alice", number(1))
    await d.directory.register("bob", number(2))
    match = await d.directory.discover("carol", packed(7, 2, 8, 1))
    assert (match.positions.tolist(), match.user_ids, match.checked) == ([1, 3], ["bob", "alice"], 4)
    assert (await d.directory.discover("carol", b"")).positions.tolist() == []


async def test_undiscoverable_users_are_never_returned() -> None:
    d = await build_domain()
    await d.directory.register("hidden", number(1), PrivacySettings(discoverable=False))
    await d.directory.register("shy", number(2))
    await d.directory.register("open", number(3))
    await d.directory.update_settings("shy", PrivacySettings(discoverable=False), ["discoverable"])
    assert (await d.directory.discover("carol", packed(1, 2, 3))).user_ids == ["open"]
    # Neither after a restart: the index loaded from the registry honours the flag too.
    restarted = await d.restarted()
    assert (await restarted.discover("carol", packed(1, 2, 3))).user_ids == ["open"]
    await d.directory.update_settings("shy", PrivacySettings(discoverable=True), ["discoverable"])
    assert (await d.directory.discover("carol", packed(1, 2, 3))).user_ids == ["shy", "open"]


async def test_new_users_get_the_configured_defaults() -> None:
    d = await build_domain(defaults=PrivacySettings(discoverable=False, notify_on_join=True))
    await d.directory.register("alice", number(1))
    assert await d.directory.get_settings("alice") == PrivacySettings(discoverable=False, notify_on_join=True)
    assert (await d.directory.discover("carol", packed(1))).user_ids == []


async def test_only_unmatched_contacts_become_watches_and_only_for_watchers() -> None:
    d = await build_domain()
    await d.directory.register("bob", number(1))
    await d.directory.register("quiet", number(10))
    await d.directory.register("alice", number(11), WATCHING)
    await d.directory.discover("quiet", packed(1, 2, 3))  # notify_on_join off: nothing kept
    await d.directory.discover("stranger", packed(1, 2, 3))  # not registered: nothing kept
    assert d.store.data.watches.get("quiet", {}) == {} and "stranger" not in d.store.data.watches
    match = await d.directory.discover("alice", packed(2, 1, 3))
    assert match.user_ids == ["bob"]
    assert set(d.store.data.watches["alice"]) == {d.tag(2), d.tag(3)}, "the matched contact is no watch"
    # Opting out drops them at once.
    await d.directory.update_settings("alice", PrivacySettings(notify_on_join=False), ["notify_on_join"])
    assert await d.store.count_watches("alice") == 0


async def test_the_store_sees_directory_keys_only() -> None:
    d = await build_domain()
    await d.directory.register("alice", number(1), WATCHING)
    await d.directory.discover("alice", packed(2))
    record = await d.store.get_user("alice")
    assert record is not None and record.directory_key == d.key(1) != number(1)[:16]
    assert list(d.store.data.watches["alice"]) == [d.tag(2)]


async def test_request_limits() -> None:
    d = await build_domain(limits=DirectoryLimits(max_hashes_per_request=3, max_import_batch=2))
    with pytest.raises(InvalidArgument, match="contact_hashes"):
        await d.directory.discover("carol", packed(1, 2, 3, 4))
    with pytest.raises(InvalidArgument, match="contact_hashes"):
        await d.directory.discover("carol", packed(1, 1))
    with pytest.raises(InvalidArgument, match="contact_hashes"):
        await d.directory.discover("carol", number(1)[:31])
    with pytest.raises(InvalidArgument, match="batch limit"):
        await d.directory.import_batch([ImportCandidate(f"u{i}", number(i), None) for i in range(3)], 0)


async def test_import_rejects_what_it_cannot_register() -> None:
    d = await build_domain()
    await d.directory.register("taken", number(1))
    await d.directory.register("owner", number(4))
    report = await d.directory.import_batch(
        [
            ImportCandidate("new", number(2), None),
            ImportCandidate("thief", number(4), None),
            ImportCandidate("twice", number(2), None),
            ImportCandidate("bad id\n", number(3), None),
            ImportCandidate("short", b"x", None),
            ImportCandidate("taken", number(1), None),
        ],
        10,
    )
    assert (report.imported, report.unchanged, report.rejected_total) == (1, 1, 4)
    assert [(r.position, r.reason) for r in report.rejections] == [
        (11, ImportRejectionReason.CONTACT_HASH_TAKEN),
        (12, ImportRejectionReason.DUPLICATE_IN_IMPORT),
        (13, ImportRejectionReason.INVALID_USER_ID),
        (14, ImportRejectionReason.INVALID_CONTACT_HASH),
    ]
    assert (await d.directory.discover("carol", packed(2))).user_ids == ["new"]


async def test_import_checks_a_whole_batch_as_the_per_user_rules_would() -> None:
    """A batch is first checked as a whole (ASCII ids); what that check does not clear goes
    through the per-user rules, with the same outcome."""
    d = await build_domain()
    longest, too_long = "x" * 128, "y" * 129
    report = await d.directory.import_batch(
        [ImportCandidate(longest, number(1), None), ImportCandidate("zoë", number(2), None)], 0
    )
    assert (report.imported, report.rejected_total) == (2, 0)
    report = await d.directory.import_batch(
        [ImportCandidate("ascii", number(3), None), ImportCandidate(too_long, number(4), None)], 0
    )
    assert report.imported == 1
    assert [(r.position, r.reason) for r in report.rejections] == [(1, ImportRejectionReason.INVALID_USER_ID)]
    report = await d.directory.import_batch(
        [ImportCandidate("", number(5), None), ImportCandidate("dup", number(6), None)], 0
    )
    assert [(r.position, r.reason) for r in report.rejections] == [(0, ImportRejectionReason.INVALID_USER_ID)]
    assert (await d.directory.discover("carol", packed(1))).user_ids == [longest]


async def test_change_number_moves_the_user() -> None:
    d = await build_domain()
    await d.directory.register("alice", number(1))
    await d.directory.register("bob", number(2))
    with pytest.raises(ContactHashTaken):
        await d.directory.change_number("alice", number(2))
    await d.directory.change_number("alice", number(3))
    assert (await d.directory.discover("carol", packed(1, 2, 3))).user_ids == ["bob", "alice"]
    with pytest.raises(UserNotRegistered):
        await d.directory.change_number("nobody", number(4))


async def test_unregister_forgets_the_user() -> None:
    d = await build_domain(quota=QuotaPolicy(capacity=10))
    await d.directory.register("alice", number(1), WATCHING)
    await d.directory.discover("alice", packed(5, 6))
    assert d.store.data.buckets and d.store.data.watches["alice"]
    await d.directory.unregister("alice")
    assert await d.store.get_user("alice") is None
    assert (await d.directory.discover("carol", packed(1))).user_ids == []
    assert not any(name.endswith(":alice") for name in d.store.data.buckets), "no bucket names alice"
    assert d.store.data.watches.get("alice", {}) == {}
    with pytest.raises(UserNotRegistered):
        await d.directory.unregister("alice")
    with pytest.raises(UserNotRegistered):
        await d.directory.get_settings("alice")
    # The number is free again.
    await d.directory.register("alice2", number(1))
