"""After a realistic workload, no number and no contact hash is in the datastore or the logs."""

from __future__ import annotations

import io
import random

from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient
from tests.support.helpers import e164_numbers, local_formats
from tests.support.privacy_scan import Needles, find_leaks, scan_tree, server_keys
from tests.support.server import StartServer


async def privacy_workload(server: DiscoveryServer) -> list[str]:
    """A realistic workload through the API; returns every number it used (the needles).

    Shared with the same test on other stores (tests/test_redis_privacy.py).
    """
    rng = random.Random(42)
    population = e164_numbers(20_000, seed=42)
    registered = population[:3000]
    target = f"127.0.0.1:{server.port}"
    async with AsyncAdminClient(target) as admin:
        await admin.import_users([(f"user-{i}", n) for i, n in enumerate(registered[:2500])])
        for i, number in enumerate(registered[2500:], start=2500):
            await admin.register_user(f"user-{i}", number)
        for i in range(0, 100):
            await admin.change_number(f"user-{i}", population[3000 + i])
        for i in range(100, 200):
            await admin.unregister_user(f"user-{i}")
    # 40 users upload address books of 200-600 contacts in mixed formats, twice, with changes.
    for u in range(2500, 2540):
        book = [local_formats(n, rng) for n in rng.sample(population, rng.randrange(200, 600))]
        async with AsyncDiscoveryClient(target, user_id=f"user-{u}", default_region="DE") as client:
            if u % 2:
                await client.update_settings(notify_on_join=True)
            if u % 5 == 0:
                await client.update_settings(discoverable=False)
            await client.discover(book)
            await client.discover([*book[: len(book) // 2], "+49 (0) 151 1", "garbage"])
            await client.delete_my_data()
    # Join notifications: 20 users keep watches on their unmatched contacts, 300 of those
    # contacts register, and one watcher streams and acknowledges an event.
    joiners = population[3100:3400]
    for u in range(2540, 2560):
        book = [local_formats(n, rng) for n in rng.sample(population[3100:], 400)]
        async with AsyncDiscoveryClient(target, user_id=f"user-{u}", default_region="DE") as client:
            await client.update_settings(notify_on_join=True)
            await client.discover(book)
    async with AsyncDiscoveryClient(target, user_id="user-2559", default_region="DE") as client:
        subscription = client.subscribe_joins(book, device_id="phone")  # user-2559's own book
        async with AsyncAdminClient(target) as admin:
            await admin.import_users([(f"joiner-{i}", n) for i, n in enumerate(joiners[:150])])
            for i, number in enumerate(joiners[150:], start=150):
                await admin.register_user(f"joiner-{i}", number)
        first = await anext(subscription)
        await subscription.ack(first.cursor)
        await subscription.aclose()
    store = server.store
    assert store is not None and await store.count_watches("user-2541") > 0
    assert len(await store.inbox_read("user-2541", 0, 10, 3600)) > 0
    return population


async def test_no_number_or_hash_at_rest_or_in_logs(
    start_server: StartServer, log_capture: io.StringIO, tmp_path: object
) -> None:
    server = await start_server()
    population = await privacy_workload(server)
    data_dir = server.config.data_dir
    needles = Needles.of(population)
    assert scan_tree(data_dir, needles) == {}, "leak in the live data directory (db + WAL)"
    await server.stop(grace=0.5)
    assert scan_tree(data_dir, needles) == {}, "leak in the data directory after shutdown"
    logs = log_capture.getvalue().encode()
    assert logs, "the workload should have produced logs"
    assert find_leaks(logs, Needles.of(population, keys=server_keys(data_dir))) == []


def test_the_scanner_finds_what_it_looks_for() -> None:
    from discovery.core.hashing import contact_hash

    number = "+4915123456789"
    needles = Needles.of([number])
    h = contact_hash(number)
    assert find_leaks(b"xx" + number.encode() + b"yy", needles)
    assert find_leaks(b"tel=15123456789;", needles)
    assert find_leaks(b"\x00\x01" + h[5:29] + b"\x02", needles)
    assert find_leaks(b"k=" + h.hex().encode(), needles)
    assert find_leaks(b"nothing to see here 12345", needles) == []
