"""The anti-enumeration rules of Discover (core/quota.py) over the in-memory store, with a moved clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from discovery.core.errors import InvalidArgument, QuotaExceeded
from discovery.core.model import BucketCharge, QuotaCharge
from discovery.core.quota import QuotaPolicy
from tests.support.domain import Domain, build_domain, join_policy, packed

NO_RATE = {"rate_burst": 0}


def contacts_level(d: Domain, user: str = "alice") -> float:
    return d.store.data.buckets[f"contacts:{user}"][0]


async def test_only_new_contacts_are_charged() -> None:
    d = await build_domain(quota=QuotaPolicy(capacity=10, refill_per_hour=0, **NO_RATE))
    book = packed(*range(6))
    first = await d.directory.discover("alice", book)
    assert contacts_level(d) == 6 and first.token
    # The same six again with their token, and four new: only the four are charged.
    grown = packed(*range(10))
    second = await d.directory.discover("alice", grown, book, first.token)
    assert contacts_level(d) == 10
    # Without the token the same book counts as new, and does not fit: refused, charging nothing.
    with pytest.raises(QuotaExceeded) as refused:
        await d.directory.discover("alice", grown)
    assert refused.value.subject == "user:alice" and refused.value.retry_after > 0
    assert contacts_level(d) == 10
    # With the token, a request of known contacts only is free even when the quota is spent.
    await d.directory.discover("alice", grown, grown, second.token)
    with pytest.raises(QuotaExceeded):
        await d.directory.discover("alice", packed(*range(11)), grown, second.token)
    assert contacts_level(d) == 10


async def test_previous_set_token_rules() -> None:
    d = await build_domain(quota=QuotaPolicy(capacity=100, refill_per_hour=0, token_ttl=3600.0, **NO_RATE))
    book = packed(1, 2, 3)
    token = (await d.directory.discover("alice", book)).token
    cases = [
        ("alice", book, b"", "previous_token: is required"),  # hashes without a token
        ("bob", book, token, "does not match"),  # another caller's token
        ("alice", packed(1, 2), token, "does not match"),  # another set
        ("alice", book, b"\x01" + token[1:20], "not a token"),  # truncated
        ("alice", book, b"\x03" + token[1:], "not a token"),  # unknown version
        ("alice", book, b"\x01" + token[1:], "does not match"),  # relabelled as the sorted-keys format
    ]
    for caller, previous, sent, message in cases:
        with pytest.raises(InvalidArgument, match=message):
            await d.directory.discover(caller, book, previous, sent)
    # The token's order is the set's: the same hashes in another order prove the same set.
    await d.directory.discover("alice", book, packed(3, 1, 2), token)
    d.clock.advance(3601)
    with pytest.raises(InvalidArgument, match="expired"):
        await d.directory.discover("alice", book, book, token)
    level = contacts_level(d)
    # A refused token charged nothing; a fresh request without one starts over.
    assert level == 3
    await d.directory.discover("alice", book)
    assert contacts_level(d) == 6


async def test_a_token_from_the_future_is_refused_beyond_the_clock_skew() -> None:
    d = await build_domain(quota=QuotaPolicy(capacity=100, max_clock_skew=300.0, **NO_RATE))
    d.clock.advance(1000)
    token = (await d.directory.discover("alice", packed(1))).token
    d.clock.advance(-299)
    await d.directory.discover("alice", packed(1), packed(1), token)
    d.clock.advance(-2)
    with pytest.raises(InvalidArgument, match="expired"):
        await d.directory.discover("alice", packed(1), packed(1), token)


async def test_the_quota_refills_over_time() -> None:
    d = await build_domain(quota=QuotaPolicy(capacity=10, refill_per_hour=3600.0, **NO_RATE))  # 1 a second
    await d.directory.discover("alice", packed(*range(10)))
    with pytest.raises(QuotaExceeded) as refused:
        await d.directory.discover("alice", packed(100))
    assert refused.value.retry_after == pytest.approx(1.0)
    d.clock.advance(5)
    with pytest.raises(QuotaExceeded):
        await d.directory.discover("alice", packed(*range(100, 106)))  # 6 new, 5 fit
    await d.directory.discover("alice", packed(*range(100, 105)))
    assert contacts_level(d) == pytest.approx(10)
    # Every user has their own bucket.
    await d.directory.discover("bob", packed(*range(10)))


async def test_the_request_rate_is_charged_first_for_every_request() -> None:
    d = await build_domain(quota=QuotaPolicy(capacity=1000, rate_burst=2, rate_per_minute=60.0))
    await d.directory.discover("alice", packed(1))
    with pytest.raises(InvalidArgument):
        await d.directory.discover("alice", b"short")  # invalid, yet it counts
    with pytest.raises(QuotaExceeded, match="too many Discover requests") as refused:
        await d.directory.discover("alice", packed(1))
    assert refused.value.retry_after == pytest.approx(1.0)
    assert contacts_level(d) == 1, "a request refused by the rate charges no contacts"
    d.clock.advance(1)
    await d.directory.discover("alice", packed(1))


async def test_a_cost_that_never_fits_gets_a_finite_retry() -> None:
    """More new contacts than the capacity never fit: the retry is the time until the bucket is empty."""
    d = await build_domain(quota=QuotaPolicy(capacity=3, refill_per_hour=3600.0, **NO_RATE))
    await d.directory.discover("alice", packed(1, 2))
    with pytest.raises(QuotaExceeded) as refused:
        await d.directory.discover("alice", packed(5, 6, 7, 8))
    assert refused.value.retry_after == pytest.approx(2.0)
    assert contacts_level(d) == 2


async def test_no_contact_quota_means_no_token_and_no_charge() -> None:
    d = await build_domain(quota=QuotaPolicy(capacity=0, **NO_RATE))
    match = await d.directory.discover("alice", packed(*range(50)))
    assert match.token == b"" and d.store.data.buckets == {}


async def test_private_mode_charges_the_rate_and_every_element_in_one_round_trip() -> None:
    policy = QuotaPolicy(capacity=10, refill_per_hour=0, rate_burst=2, rate_per_minute=60.0)
    d = await build_domain(quota=policy)
    calls: list[list[str]] = []
    charge = d.store.charge

    async def counted(charges: Sequence[BucketCharge], now: float) -> list[QuotaCharge]:
        calls.append([c.bucket for c in charges])
        return await charge(charges, now)

    d.store.charge = counted  # type: ignore[method-assign]
    await d.gate.charge_count("alice", 4)
    assert calls == [["requests:alice", "contacts:alice"]] and contacts_level(d) == 4
    with pytest.raises(QuotaExceeded, match="new contacts"):
        await d.gate.charge_count("alice", 7)
    with pytest.raises(QuotaExceeded, match="too many Discover requests"):
        await d.gate.charge_count("alice", 1)
    assert contacts_level(d) == 4 and len(calls) == 3


async def test_discover_reads_its_caller_with_the_charge_in_one_round_trip() -> None:
    """The caller's record (notify_on_join, announce mode) comes with the quota charge: no
    separate get_user; within the record cache's lifetime, the plain charge alone."""
    policy = QuotaPolicy(capacity=100, refill_per_hour=0, **NO_RATE)
    d = await build_domain(quota=policy, joins=join_policy(settings_cache_seconds=60.0))
    calls: list[str] = []
    depth = [0]  # the calls Discover makes, not those the store makes of itself
    for name in ("charge", "charge_and_read", "get_user"):
        inner = getattr(d.store, name)

        async def counted(*args: object, _name: str = name, _inner: object = inner) -> object:
            if not depth[0]:
                calls.append(_name)
            depth[0] += 1
            try:
                return await _inner(*args)  # type: ignore[operator]
            finally:
                depth[0] -= 1

        setattr(d.store, name, counted)
    await d.directory.discover("alice", packed(1, 2, 3))
    assert calls == ["charge_and_read"]
    await d.directory.discover("alice", packed(1, 2, 3))
    assert calls == ["charge_and_read", "charge"]
