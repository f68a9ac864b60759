"""After UnregisterUser and DeleteMyData return, no file of a running server's SQLite data
directory (db, -wal, -shm) and no key, value or stream of Redis or of any Redis Cluster node
holds the deleted user's id or the directory keys (or watch tags) of their watches, in any
encoding (every 8-byte window, raw, hex or base64: tests/support/privacy_scan.py). Each case
runs with private mode off and on (the user's private-mode entry is stored with the registration)."""

from __future__ import annotations

import time

import pytest
import redis

from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient
from discovery.contact_hash import contact_hash
from discovery.core.hashing import KEY_SIZE
from tests.support.helpers import e164_numbers
from tests.support.privacy_scan import Needles, find_leaks, scan_tree
from tests.support.redis_fixtures import RedisClusterProcesses, dump_everything
from tests.support.server import StartServer

GONE = "gone-user-5f0c2b7e"
#: Private mode off, and on (entries stored with each registration, released at once).
MODES = pytest.mark.parametrize(
    "mode",
    [{}, {"private_mode": True, "private_jitter_seconds": 0.0}],
    ids=["standard", "private-mode"],
)


async def watch_then_delete(server: DiscoveryServer, unregister: bool) -> Needles:
    """GONE watches 300 contacts and receives one event; then its data is deleted."""
    target = f"127.0.0.1:{server.port}"
    numbers = e164_numbers(302, seed=71)
    async with AsyncAdminClient(target) as admin:
        await admin.register_user(GONE, numbers[0])
    async with AsyncDiscoveryClient(target, user_id=GONE) as client:
        await client.update_settings(notify_on_join=True)
        await client.discover(numbers[1:])
        async with AsyncAdminClient(target) as admin:
            await admin.register_user("joiner-x", numbers[1])
        started = time.perf_counter()
        if unregister:
            async with AsyncAdminClient(target) as admin:
                await admin.unregister_user(GONE)
        else:
            await client.delete_my_data()
        took = 1000 * (time.perf_counter() - started)
        print(f"\n{'UnregisterUser' if unregister else 'DeleteMyData'}: {took:.1f} ms")
    directory = server.service.directory
    if directory.private is not None:
        stored = [entry async for batch in directory.store.iter_private(100) for entry in batch]
        assert stored, "positive control: private-mode entries are stored with the registrations"
    ring = directory.keys
    keys = ring.directory_keys(b"".join(contact_hash(n) for n in numbers[2:]))
    needles = Needles()
    needles.add_secrets(keys, KEY_SIZE)
    needles.add_secrets(ring.watch_tags(keys), KEY_SIZE)
    if unregister:
        needles.add_token(GONE.encode())
    return needles


@MODES
@pytest.mark.parametrize("unregister", [True, False], ids=["unregister", "delete-my-data"])
async def test_sqlite_files_of_a_running_server_keep_no_trace(
    start_server: StartServer, unregister: bool, mode: dict[str, object]
) -> None:
    server = await start_server(default_announce_mode="everyone", **mode)
    needles = await watch_then_delete(server, unregister)
    found = scan_tree(server.config.data_dir, needles)
    assert found == {}, f"traces left in the data directory: {found}"


@MODES
@pytest.mark.parametrize("unregister", [True, False], ids=["unregister", "delete-my-data"])
async def test_redis_keeps_no_trace(
    start_server: StartServer, redis_url: str, unregister: bool, mode: dict[str, object]
) -> None:
    server = await start_server(store=redis_url, default_announce_mode="everyone", **mode)
    needles = await watch_then_delete(server, unregister)
    with redis.Redis.from_url(redis_url) as client:
        assert find_leaks(dump_everything([client]), needles) == []


@MODES
@pytest.mark.parametrize("unregister", [True, False], ids=["unregister", "delete-my-data"])
async def test_redis_cluster_keeps_no_trace_on_any_node(
    start_server: StartServer,
    redis_cluster_url: str,
    redis_cluster_session: RedisClusterProcesses,
    unregister: bool,
    mode: dict[str, object],
) -> None:
    server = await start_server(store=redis_cluster_url, default_announce_mode="everyone", **mode)
    needles = await watch_then_delete(server, unregister)
    clients = [node.client() for node in redis_cluster_session.nodes]
    try:
        dumped = dump_everything(clients)
        assert b"joiner-x" in dumped, "positive control: the scan reads the nodes that hold the registry"
        assert find_leaks(dumped, needles) == []
    finally:
        for client in clients:
            client.close()
