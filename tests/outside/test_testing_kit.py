"""discovery.testing used the way an outside application would: this file imports nothing but
discovery.client and discovery.testing (tests/test_layering.py checks it)."""

from __future__ import annotations

import pytest

from discovery.client import DiscoveryError, Settings
from discovery.testing import DiscoveryTestServer, ThreadedDiscoveryTestServer

ALICE, BOB = "+49 151 23456789", "0151 98765432"


async def test_async_context_manager() -> None:
    async with DiscoveryTestServer() as server:
        await server.register("alice", ALICE)
        await server.register(
            "bob", BOB, Settings(discoverable=True, announce_join=True, notify_on_join=False)
        )
        async with server.client("bob") as bob:
            result = await bob.discover([ALICE, "+49 151 00000000"])
            assert [m.user_id for m in result.matches] == ["alice"]
        async with server.client("carol") as carol:
            with pytest.raises(DiscoveryError) as info:
                await carol.get_settings()
            assert info.value.reason == "NOT_REGISTERED" and info.value.request_id


async def test_the_async_fixture(discovery_server: DiscoveryTestServer) -> None:
    await discovery_server.register("alice", ALICE)
    async with discovery_server.client("alice") as alice:
        assert (await alice.get_settings()).discoverable


def test_from_sync_code() -> None:
    with ThreadedDiscoveryTestServer() as server, server.client("bob") as bob:
        assert bob.discover([ALICE]).matches == []
        server.register("alice", ALICE)
        assert [m.user_id for m in bob.discover([ALICE]).matches] == ["alice"]
        with pytest.raises(DiscoveryError) as info:
            bob.get_settings()
        assert info.value.reason == "NOT_REGISTERED"


def test_the_sync_fixture(discovery_server_sync: ThreadedDiscoveryTestServer) -> None:
    with discovery_server_sync.admin() as admin:
        summary = admin.import_users([("alice", ALICE), ("bob", BOB)])
    assert summary.imported == 2
    with discovery_server_sync.client("alice") as alice:
        assert [m.user_id for m in alice.discover([BOB]).matches] == ["bob"]


def test_this_file_imports_only_the_sdk_and_the_kit() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    } | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name.startswith("discovery")} == {
        "discovery.client",
        "discovery.testing",
    }
    assert not {name for name in imported if name.startswith("tests")}
