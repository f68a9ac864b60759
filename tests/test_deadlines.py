"""Deadlines are honoured: a call against a blocked store ends with DEADLINE_EXCEEDED, and
the server does not leave its work running."""

from __future__ import annotations

import sqlite3
import time

import grpc
import pytest
from grpc import aio

from discovery.app.server import DiscoveryServer
from discovery.core.hashing import contact_hash
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.server import user_metadata


def db_path(server: DiscoveryServer) -> str:
    return server.config.store_url.removeprefix("sqlite://")


async def test_deadline_against_a_locked_store(server: DiscoveryServer, channel: aio.Channel) -> None:
    admin = pb_grpc.DirectoryAdminServiceStub(channel)
    client = pb_grpc.DiscoveryServiceStub(channel)
    blocker = sqlite3.connect(db_path(server), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        started = time.monotonic()
        with pytest.raises(aio.AioRpcError) as info:
            await admin.RegisterUser(
                pb.RegisterUserRequest(user_id="late", contact_hash=contact_hash("+4915100000009")),
                timeout=0.05,
            )
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.0
        # The store thread is free again at once: the abandoned write is not still waiting.
        with pytest.raises(aio.AioRpcError) as info:
            await client.GetSettings(pb.GetSettingsRequest(), metadata=user_metadata("late"), timeout=1.0)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The abandoned registration never happens later.
    assert server.store is not None
    assert await server.store.get_user("late") is None
    # grpc.aio cancelled the handler at the deadline; the call is counted as what the client saw.
    samples = {
        s.labels["code"]: s.value
        for metric in server.metrics.rpcs.collect()
        for s in metric.samples
        if s.labels.get("method") == "DirectoryAdminService/RegisterUser" and s.name.endswith("_total")
    }
    assert samples.get("DEADLINE_EXCEEDED") == 1 and "CANCELLED" not in samples


async def test_a_normal_call_within_its_deadline(server: DiscoveryServer, channel: aio.Channel) -> None:
    admin = pb_grpc.DirectoryAdminServiceStub(channel)
    await admin.RegisterUser(
        pb.RegisterUserRequest(user_id="quick", contact_hash=contact_hash("+4915100000008")), timeout=2.0
    )
