"""Every documented limit, at its value and one past it (docs/configuration.md, docs/errors.md)."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
from grpc import aio

from discovery.core.hashing import contact_hash
from discovery.core.joins import MAX_CURSOR, MAX_DEVICE_ID
from discovery.core.validation import MAX_USER_ID_BYTES
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from discovery.v1 import joins_pb2, joins_pb2_grpc
from tests.support.rpc import reason
from tests.support.server import StartServer, user_metadata

HASHES = [contact_hash(f"+4915120{i:05d}") for i in range(40)]
ON = pb.Settings(discoverable=True, announce_join=True, notify_on_join=True)


def hashes(n: int, start: int = 0) -> bytes:
    return b"".join(HASHES[start : start + n])


async def refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return reason(info.value) if code != grpc.StatusCode.RESOURCE_EXHAUSTED or _ours(info.value) else ""


def _ours(error: aio.AioRpcError) -> bool:
    return any(k == "grpc-status-details-bin" for k, _ in error.trailing_metadata() or ())


async def setup(
    start_server: StartServer, **options: object
) -> tuple[aio.Channel, pb_grpc.DirectoryAdminServiceStub]:
    server = await start_server(**options)
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    admin = pb_grpc.DirectoryAdminServiceStub(channel)
    await admin.RegisterUser(
        pb.RegisterUserRequest(user_id="alice", contact_hash=contact_hash("+4915100000701"), settings=ON)
    )
    return channel, admin


async def test_max_hashes_per_request(start_server: StartServer) -> None:
    channel, _ = await setup(start_server, max_hashes_per_request=5, rate_limit_burst=0)
    client = pb_grpc.DiscoveryServiceStub(channel)
    await client.Discover(pb.DiscoverRequest(contact_hashes=hashes(5)), metadata=user_metadata("alice"))
    call = client.Discover(pb.DiscoverRequest(contact_hashes=hashes(6)), metadata=user_metadata("alice"))
    assert await refused(call, grpc.StatusCode.INVALID_ARGUMENT) == "TOO_MANY_CONTACT_HASHES"
    await channel.close()


async def test_max_import_batch_is_a_cap_per_message(start_server: StartServer) -> None:
    channel, admin = await setup(start_server, max_import_batch=4)

    def message(start: int, n: int) -> pb.ImportUsersRequest:
        return pb.ImportUsersRequest(
            users=[pb.ImportUser(user_id=f"u{i}", contact_hash=HASHES[i]) for i in range(start, start + n)]
        )

    report = await admin.ImportUsers(iter([message(0, 4), message(4, 4)]))
    assert report.imported == 8
    call = admin.ImportUsers(iter([message(10, 2), message(12, 5)]))
    assert await refused(call, grpc.StatusCode.INVALID_ARGUMENT) == "IMPORT_BATCH_TOO_LARGE"
    # The first message stayed imported, nothing of the second was.
    again = await admin.ImportUsers(iter([message(10, 4), message(14, 3)]))
    assert (again.unchanged, again.imported) == (2, 5)
    await channel.close()


async def test_import_transactions_follow_each_other(start_server: StartServer) -> None:
    """A stream of several transactions (the next is prepared while one is written): each is
    written after the one before, so a later message sees the earlier ones registered; a
    too-large message still leaves every message before it imported."""
    server = await start_server(max_import_batch=4)
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    admin = pb_grpc.DirectoryAdminServiceStub(channel)
    server.directory.limits = dataclasses.replace(server.directory.limits, import_transaction_users=3)

    def message(*users: tuple[str, int]) -> pb.ImportUsersRequest:
        return pb.ImportUsersRequest(
            users=[pb.ImportUser(user_id=u, contact_hash=HASHES[h]) for u, h in users]
        )

    stream = [
        message(("a", 20), ("b", 21)),
        message(("c", 22), ("d", 23)),  # 4 users: the first transaction
        message(("a", 20), ("e", 24)),  # a again, same number: unchanged
        message(("b", 25), ("f", 21)),  # b's id and b's number again: rejected
        pb.ImportUsersRequest(  # settings of their own for one user of the message
            users=[
                pb.ImportUser(user_id="g", contact_hash=HASHES[26], settings=pb.Settings(discoverable=False)),
                pb.ImportUser(user_id="g2", contact_hash=HASHES[31]),
            ]
        ),
    ]
    report = await admin.ImportUsers(iter(stream))
    assert (report.imported, report.unchanged, report.rejected_total) == (7, 1, 2)
    hidden, shown = await server.directory.store.get_user("g"), await server.directory.store.get_user("g2")
    assert hidden is not None and not hidden.settings.discoverable
    assert shown is not None and shown.settings.discoverable
    assert sorted((r.position, r.reason) for r in report.rejections) == [
        (6, pb.REJECTION_REASON_USER_ID_TAKEN),
        (7, pb.REJECTION_REASON_CONTACT_HASH_TAKEN),
    ]
    call = admin.ImportUsers(
        iter([message(("h", 27), ("i", 28)), message(("j", 29)), message(*[("k", 30)] * 5)])
    )
    assert await refused(call, grpc.StatusCode.INVALID_ARGUMENT) == "IMPORT_BATCH_TOO_LARGE"
    again = await admin.ImportUsers(iter([message(("h", 27), ("i", 28), ("j", 29))]))
    assert (again.unchanged, again.imported) == (3, 0)
    # A bad message after a transaction that is being written: that transaction still commits.
    bad = pb.ImportUsersRequest(
        users=[pb.ImportUser(user_id="m", contact_hash=HASHES[34], settings=pb.Settings(announce_mode=99))]
    )
    call = admin.ImportUsers(iter([message(("k", 32), ("l", 33), ("n", 35)), bad]))
    await refused(call, grpc.StatusCode.INVALID_ARGUMENT)
    again = await admin.ImportUsers(iter([message(("k", 32), ("l", 33), ("n", 35))]))
    assert (again.unchanged, again.imported) == (3, 0)
    await channel.close()


async def test_max_receive_message_bytes(start_server: StartServer) -> None:
    limit = 4096
    channel, _ = await setup(start_server, max_receive_message_bytes=limit, rate_limit_burst=0)
    client = pb_grpc.DiscoveryServiceStub(channel)

    def request_of(size: int) -> pb.DiscoverRequest:
        request = pb.DiscoverRequest(contact_hashes=b"x" * (size - 3))  # tag + 2-byte length
        assert request.ByteSize() == size
        return request

    # At the limit the message is read (and refused for its content); one byte more is not read.
    at = client.Discover(request_of(limit), metadata=user_metadata("alice"))
    assert await refused(at, grpc.StatusCode.INVALID_ARGUMENT) == "MALFORMED_CONTACT_HASHES"
    past = client.Discover(request_of(limit + 1), metadata=user_metadata("alice"))
    await refused(past, grpc.StatusCode.RESOURCE_EXHAUSTED)
    await channel.close()


async def test_max_metadata_bytes(start_server: StartServer) -> None:
    limit = 8192
    channel, _ = await setup(start_server, max_metadata_bytes=limit)
    client = pb_grpc.DiscoveryServiceStub(channel)
    # gRPC counts each entry as its key, its value and 32 bytes (RFC 7541); the user header and
    # the ones gRPC adds itself (te, content-type, user-agent, ...) take their share.
    fits = (*user_metadata("alice"), ("x-pad", "a" * (limit - 1024)))
    await client.GetSettings(pb.GetSettingsRequest(), metadata=fits)
    too_big = (*user_metadata("alice"), ("x-pad", "a" * (limit + 1)))
    await refused(
        client.GetSettings(pb.GetSettingsRequest(), metadata=too_big), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    await channel.close()


async def test_streams_per_user_and_per_instance(start_server: StartServer) -> None:
    channel, admin = await setup(start_server, join_max_streams_per_user=2, join_max_streams=3)
    await admin.RegisterUser(
        pb.RegisterUserRequest(user_id="bob", contact_hash=contact_hash("+4915100000702"))
    )
    joins = joins_pb2_grpc.JoinNotificationServiceStub(channel)

    def stream(user: str) -> aio.UnaryStreamCall:
        return joins.SubscribeJoins(joins_pb2.SubscribeJoinsRequest(), metadata=user_metadata(user))

    held = [stream("alice"), stream("alice")]
    for call in held:
        await call.read()
    third = stream("alice")
    assert await refused(third.read(), grpc.StatusCode.RESOURCE_EXHAUSTED) == "TOO_MANY_STREAMS"
    held.append(stream("bob"))
    await held[-1].read()  # the instance's third: at its limit
    fourth = stream("bob")
    assert await refused(fourth.read(), grpc.StatusCode.RESOURCE_EXHAUSTED) == "SERVER_STREAMS_FULL"
    for call in held:
        call.cancel()
    await channel.close()


async def test_device_id_length_user_id_length_and_cursor_range(start_server: StartServer) -> None:
    channel, admin = await setup(start_server)
    joins = joins_pb2_grpc.JoinNotificationServiceStub(channel)
    me = user_metadata("alice")
    await joins.AckJoins(joins_pb2.AckJoinsRequest(device_id="d" * MAX_DEVICE_ID), metadata=me)
    call = joins.AckJoins(joins_pb2.AckJoinsRequest(device_id="d" * (MAX_DEVICE_ID + 1)), metadata=me)
    assert await refused(call, grpc.StatusCode.INVALID_ARGUMENT) == "INVALID_DEVICE_ID"
    await admin.RegisterUser(pb.RegisterUserRequest(user_id="u" * MAX_USER_ID_BYTES, contact_hash=HASHES[30]))
    call = admin.RegisterUser(
        pb.RegisterUserRequest(user_id="u" * (MAX_USER_ID_BYTES + 1), contact_hash=HASHES[31])
    )
    assert await refused(call, grpc.StatusCode.INVALID_ARGUMENT) == "INVALID_USER_ID"
    # Cursors run from 0 to the last one issued (at most 2^63-1): 0 is fine, one past is not.
    await joins.AckJoins(joins_pb2.AckJoinsRequest(cursor=0), metadata=me)
    for cursor in (1, MAX_CURSOR, MAX_CURSOR + 1):
        call = joins.AckJoins(joins_pb2.AckJoinsRequest(cursor=cursor), metadata=me)
        assert await refused(call, grpc.StatusCode.INVALID_ARGUMENT) == "CURSOR_OUT_OF_RANGE"
    await channel.close()


async def test_page_size_and_watch_cap(start_server: StartServer) -> None:
    page, cap = 3, 5
    channel, admin = await setup(
        start_server, join_page_size=page, join_watch_cap=cap + 1, rate_limit_burst=0
    )
    client = pb_grpc.DiscoveryServiceStub(channel)
    await client.Discover(pb.DiscoverRequest(contact_hashes=hashes(cap + 1)), metadata=user_metadata("alice"))
    # page + 1 events: one full page, then the last with caught_up.
    for i in range(page + 1):
        await admin.RegisterUser(pb.RegisterUserRequest(user_id=f"j{i}", contact_hash=HASHES[i]))
    joins = joins_pb2_grpc.JoinNotificationServiceStub(channel)
    stream = joins.SubscribeJoins(joins_pb2.SubscribeJoinsRequest(), metadata=user_metadata("alice"))
    first, second = await stream.read(), await stream.read()
    assert (len(first.events), first.caught_up) == (page, False)
    assert (len(second.events), second.caught_up) == (1, True)
    stream.cancel()
    await channel.close()


async def test_watch_cap(start_server: StartServer) -> None:
    cap = 4
    server = await start_server(join_watch_cap=cap, rate_limit_burst=0)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        admin = pb_grpc.DirectoryAdminServiceStub(channel)
        await admin.RegisterUser(
            pb.RegisterUserRequest(user_id="alice", contact_hash=contact_hash("+4915100000703"), settings=ON)
        )
        client = pb_grpc.DiscoveryServiceStub(channel)
        await client.Discover(pb.DiscoverRequest(contact_hashes=hashes(cap)), metadata=user_metadata("alice"))
        assert await server.store.count_watches("alice") == cap  # type: ignore[attr-defined]
        await client.Discover(
            pb.DiscoverRequest(contact_hashes=hashes(cap + 1, 10)), metadata=user_metadata("alice")
        )
        assert await server.store.count_watches("alice") == cap  # type: ignore[attr-defined]


async def test_rate_limit_burst_and_quota_capacity(start_server: StartServer) -> None:
    channel, _ = await setup(start_server, rate_limit_burst=3, quota_capacity=4)
    client = pb_grpc.DiscoveryServiceStub(channel)
    me = user_metadata("alice")
    await client.Discover(pb.DiscoverRequest(contact_hashes=hashes(4)), metadata=me)  # the whole quota
    call = client.Discover(pb.DiscoverRequest(contact_hashes=hashes(1, 4)), metadata=me)  # one past it
    assert await refused(call, grpc.StatusCode.RESOURCE_EXHAUSTED) == "QUOTA_EXCEEDED"
    await client.Discover(pb.DiscoverRequest(), metadata=me)  # the third request of the burst
    call = client.Discover(pb.DiscoverRequest(), metadata=me)
    assert await refused(call, grpc.StatusCode.RESOURCE_EXHAUSTED) == "RATE_LIMITED"
    await channel.close()
