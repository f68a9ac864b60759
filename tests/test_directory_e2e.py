"""End to end over a real gRPC server on 127.0.0.1 and a real SQLite file, through the SDK."""

from __future__ import annotations

import random

import pytest

from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, DiscoveryError, Settings
from tests.support.helpers import e164_numbers, hashes, local_formats
from tests.support.server import StartServer


def target(server: DiscoveryServer) -> str:
    return f"127.0.0.1:{server.port}"


async def test_register_then_discover_maps_back_to_entries(server: DiscoveryServer) -> None:
    alice, bob = e164_numbers(2)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", alice)
        await admin.register_user("bob", bob)
    entries = ["0" + alice[3:], alice, "not a number", "+4915199999999"]
    async with AsyncDiscoveryClient(target(server), user_id="carol", default_region="DE") as client:
        result = await client.discover(entries)
    assert sorted((m.entry, m.user_id) for m in result.matches) == sorted(
        [("0" + alice[3:], "alice"), (alice, "alice")]
    )
    assert [i.entry for i in result.invalid] == ["not a number"]


async def test_undiscoverable_user_is_never_returned(server: DiscoveryServer) -> None:
    shy, open_ = e164_numbers(2, seed=2)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("shy", shy)
        await admin.register_user("open", open_)
    async with AsyncDiscoveryClient(target(server), user_id="shy") as shy_client:
        settings = await shy_client.update_settings(discoverable=False)
        assert settings == Settings(discoverable=False, announce_join=True, notify_on_join=False)
    async with AsyncDiscoveryClient(target(server), user_id="someone") as client:
        result = await client.discover([shy, open_])
        assert [m.user_id for m in result.matches] == ["open"]
        # Indistinguishable from an unregistered number.
        raw = await client.discover_hashes(hashes([shy, "+491519999999"]))
        assert raw == []
    async with AsyncDiscoveryClient(target(server), user_id="shy") as shy_client:
        await shy_client.update_settings(discoverable=True)
    async with AsyncDiscoveryClient(target(server), user_id="someone") as client:
        assert [m.user_id for m in (await client.discover([shy])).matches] == ["shy"]


async def test_unregister_and_change_number(server: DiscoveryServer) -> None:
    old, new, other = e164_numbers(3, seed=3)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("dave", old)
        await admin.register_user("erin", other)
        await admin.change_number("dave", new)
        async with AsyncDiscoveryClient(target(server), user_id="x") as client:
            found = {m.e164: m.user_id for m in (await client.discover([old, new, other])).matches}
            assert found == {new: "dave", other: "erin"}
            # The old number is free again.
            await admin.register_user("frank", old)
            await admin.unregister_user("dave")
            found = {m.e164: m.user_id for m in (await client.discover([old, new, other])).matches}
            assert found == {old: "frank", other: "erin"}
        with pytest.raises(DiscoveryError) as info:
            await admin.unregister_user("dave")
        assert info.value.code.name == "NOT_FOUND"


async def test_register_is_idempotent_for_the_same_pair(server: DiscoveryServer) -> None:
    (number,) = e164_numbers(1, seed=4)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("gina", number)
        await admin.register_user("gina", number)


async def test_settings_roundtrip_and_unknown_caller(server: DiscoveryServer) -> None:
    (number,) = e164_numbers(1, seed=5)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("hank", number)
    async with AsyncDiscoveryClient(target(server), user_id="hank") as client:
        assert await client.get_settings() == Settings(True, True, False)
        assert await client.update_settings(notify_on_join=True, announce_join=False) == Settings(
            True, False, True
        )
        assert await client.get_settings() == Settings(True, False, True)
        assert await client.delete_my_data() == 0
    async with AsyncDiscoveryClient(target(server), user_id="nobody") as client:
        with pytest.raises(DiscoveryError) as info:
            await client.get_settings()
        assert info.value.code.name == "NOT_FOUND"


async def test_data_survives_restart(start_server: StartServer) -> None:
    numbers = e164_numbers(50, seed=6)
    server = await start_server()
    async with AsyncAdminClient(target(server)) as admin:
        for i, number in enumerate(numbers):
            await admin.register_user(f"user-{i}", number)
    await server.stop(grace=0.5)
    again = await start_server()
    async with AsyncDiscoveryClient(target(again), user_id="u") as client:
        result = await client.discover(numbers)
    assert sorted(m.user_id for m in result.matches) == sorted(f"user-{i}" for i in range(50))


async def test_import_100k_users(server: DiscoveryServer) -> None:
    count = 100_000
    rng = random.Random(7)
    digits = rng.sample(range(10**7, 10**8), count)
    rows = [(f"imported-{i}", f"+49152{d}") for i, d in enumerate(digits)]
    rows.append(("imported-0", "+4915200000001"))  # same id, other number: rejected
    rows.append(("", "+4915200000002"))  # invalid id: rejected
    async with AsyncAdminClient(target(server)) as admin:
        summary = await admin.import_users(rows, batch_size=10_000)
        assert summary.imported == count
        assert summary.rejected_total == 2
        again = await admin.import_users(rows[:1000], batch_size=500)
        assert again.imported == 0 and again.unchanged == 1000
    sample = rng.sample(rows[:count], 3000)
    async with AsyncDiscoveryClient(target(server), user_id="checker", max_per_request=1000) as client:
        result = await client.discover([number for _, number in sample])
    assert sorted(m.user_id for m in result.matches) == sorted(uid for uid, _ in sample)


async def test_mixed_formats_in_a_large_address_book(server: DiscoveryServer) -> None:
    numbers = e164_numbers(12_000, seed=8)
    registered = numbers[::3]
    async with AsyncAdminClient(target(server)) as admin:
        await admin.import_users([(f"r{i}", n) for i, n in enumerate(registered)])
    rng = random.Random(9)
    book = [local_formats(n, rng) for n in numbers]
    async with AsyncDiscoveryClient(target(server), user_id="big", default_region="DE") as client:
        result = await client.discover(book)  # split into requests under the cap by the SDK
    assert len(result.matches) == len(registered)
    assert not result.invalid
