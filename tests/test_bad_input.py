"""Every kind of bad input gets a clear status with google.rpc details, and writes nothing."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery.app.server import DiscoveryServer
from discovery.core.hashing import contact_hash
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.server import status_details, user_metadata

ALICE = contact_hash("+4915111111111")
BOB = contact_hash("+4915122222222")


async def expect_error(call: object, code: grpc.StatusCode) -> list[object]:
    with pytest.raises(aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return status_details(info.value)


def violations(details: list[object]) -> list[tuple[str, str]]:
    out = []
    for d in details:
        if isinstance(d, error_details_pb2.BadRequest):
            out.extend((v.field, v.description) for v in d.field_violations)
    return out


@pytest.fixture
def admin(channel: aio.Channel) -> pb_grpc.DirectoryAdminServiceStub:
    return pb_grpc.DirectoryAdminServiceStub(channel)


@pytest.fixture
def client(channel: aio.Channel) -> pb_grpc.DiscoveryServiceStub:
    return pb_grpc.DiscoveryServiceStub(channel)


async def registry_size(server: DiscoveryServer) -> int:
    assert server.store is not None
    return await server.store.registry_size()


@pytest.mark.parametrize("length", [1, 31, 33, 64 + 5])
async def test_discover_hashes_not_multiple_of_32(client: pb_grpc.DiscoveryServiceStub, length: int) -> None:
    details = await expect_error(
        client.Discover(pb.DiscoverRequest(contact_hashes=b"\x01" * length), metadata=user_metadata("u")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    [(field, description)] = violations(details)
    assert field == "contact_hashes" and "multiple of 32" in description


async def test_discover_over_the_cap(client: pb_grpc.DiscoveryServiceStub) -> None:
    packed = b"".join(contact_hash(f"+49151{i:08d}") for i in range(5001))
    details = await expect_error(
        client.Discover(pb.DiscoverRequest(contact_hashes=packed), metadata=user_metadata("u")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(details)[0][0] == "contact_hashes"
    assert "5001" in violations(details)[0][1]


async def test_discover_duplicate_hashes(client: pb_grpc.DiscoveryServiceStub) -> None:
    details = await expect_error(
        client.Discover(pb.DiscoverRequest(contact_hashes=ALICE + BOB + ALICE), metadata=user_metadata("u")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(details) == [("contact_hashes[2]", "duplicates contact_hashes[0]")]


async def test_discover_empty_is_fine(client: pb_grpc.DiscoveryServiceStub) -> None:
    response = await client.Discover(pb.DiscoverRequest(), metadata=user_metadata("u"))
    assert list(response.match_indices) == []


async def test_client_call_without_identity(client: pb_grpc.DiscoveryServiceStub) -> None:
    details = await expect_error(client.Discover(pb.DiscoverRequest()), grpc.StatusCode.UNAUTHENTICATED)
    assert details


@pytest.mark.parametrize(
    ("user_id", "needle"),
    [("", "empty"), ("x" * 129, "128"), ("é" * 65, "128"), ("a\x00b", "control"), ("a\nb", "control")],
)
async def test_register_bad_user_id(
    server: DiscoveryServer, admin: pb_grpc.DirectoryAdminServiceStub, user_id: str, needle: str
) -> None:
    details = await expect_error(
        admin.RegisterUser(pb.RegisterUserRequest(user_id=user_id, contact_hash=ALICE)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    [(field, description)] = violations(details)
    assert field == "user_id" and needle in description
    assert await registry_size(server) == 0


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
async def test_register_bad_contact_hash(
    server: DiscoveryServer, admin: pb_grpc.DirectoryAdminServiceStub, size: int
) -> None:
    details = await expect_error(
        admin.RegisterUser(pb.RegisterUserRequest(user_id="u", contact_hash=b"\x02" * size)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(details)[0][0] == "contact_hash"
    assert await registry_size(server) == 0


async def test_register_conflicts(server: DiscoveryServer, admin: pb_grpc.DirectoryAdminServiceStub) -> None:
    await admin.RegisterUser(pb.RegisterUserRequest(user_id="alice", contact_hash=ALICE))
    details = await expect_error(
        admin.RegisterUser(pb.RegisterUserRequest(user_id="mallory", contact_hash=ALICE)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert violations(details)[0][0] == "contact_hash"
    details = await expect_error(
        admin.RegisterUser(pb.RegisterUserRequest(user_id="alice", contact_hash=BOB)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert violations(details)[0][0] == "user_id"
    assert await registry_size(server) == 1
    assert server.store is not None
    record = await server.store.get_user("alice")
    assert record is not None and record.directory_key == server.directory.keys.directory_key_of(ALICE)


async def test_change_number_conflicts(
    server: DiscoveryServer, admin: pb_grpc.DirectoryAdminServiceStub
) -> None:
    await admin.RegisterUser(pb.RegisterUserRequest(user_id="alice", contact_hash=ALICE))
    await admin.RegisterUser(pb.RegisterUserRequest(user_id="bob", contact_hash=BOB))
    await expect_error(
        admin.ChangeNumber(pb.ChangeNumberRequest(user_id="alice", contact_hash=BOB)),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    await expect_error(
        admin.ChangeNumber(
            pb.ChangeNumberRequest(user_id="ghost", contact_hash=contact_hash("+4915133333333"))
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        admin.ChangeNumber(pb.ChangeNumberRequest(user_id="alice", contact_hash=b"short")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await registry_size(server) == 2


async def test_unknown_users(
    admin: pb_grpc.DirectoryAdminServiceStub, client: pb_grpc.DiscoveryServiceStub
) -> None:
    await expect_error(
        admin.UnregisterUser(pb.UnregisterUserRequest(user_id="ghost")), grpc.StatusCode.NOT_FOUND
    )
    await expect_error(
        client.GetSettings(pb.GetSettingsRequest(), metadata=user_metadata("ghost")),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        client.UpdateSettings(pb.UpdateSettingsRequest(), metadata=user_metadata("ghost")),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_update_settings_unknown_mask(
    admin: pb_grpc.DirectoryAdminServiceStub, client: pb_grpc.DiscoveryServiceStub
) -> None:
    await admin.RegisterUser(pb.RegisterUserRequest(user_id="alice", contact_hash=ALICE))
    details = await expect_error(
        client.UpdateSettings(
            pb.UpdateSettingsRequest(update_mask=["colour"]), metadata=user_metadata("alice")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(details)[0][0] == "update_mask"


async def test_import_reports_each_rejection(
    server: DiscoveryServer, admin: pb_grpc.DirectoryAdminServiceStub
) -> None:
    await admin.RegisterUser(pb.RegisterUserRequest(user_id="alice", contact_hash=ALICE))
    users = [
        pb.ImportUser(user_id="bob", contact_hash=BOB),  # ok
        pb.ImportUser(user_id="", contact_hash=contact_hash("+4915100000001")),  # invalid id
        pb.ImportUser(user_id="carl", contact_hash=b"x"),  # invalid hash
        pb.ImportUser(user_id="mallory", contact_hash=ALICE),  # hash taken
        pb.ImportUser(user_id="bob", contact_hash=contact_hash("+4915100000002")),  # id taken (batch 1)
        pb.ImportUser(user_id="bob2", contact_hash=BOB),  # hash taken (batch 1)
        pb.ImportUser(user_id="alice", contact_hash=ALICE),  # unchanged
        pb.ImportUser(user_id="zed", contact_hash=contact_hash("+4915100000003")),  # ok
        pb.ImportUser(user_id="zed2", contact_hash=contact_hash("+4915100000003")),  # duplicate in import
    ]

    async def requests():  # type: ignore[no-untyped-def]
        yield pb.ImportUsersRequest(users=users[:4])
        yield pb.ImportUsersRequest(users=users[4:])

    response = await admin.ImportUsers(requests())
    assert (response.imported, response.unchanged, response.rejected_total) == (2, 1, 6)
    assert [(r.position, r.reason) for r in response.rejections] == [
        (1, pb.REJECTION_REASON_INVALID_USER_ID),
        (2, pb.REJECTION_REASON_INVALID_CONTACT_HASH),
        (3, pb.REJECTION_REASON_CONTACT_HASH_TAKEN),
        (4, pb.REJECTION_REASON_USER_ID_TAKEN),
        (5, pb.REJECTION_REASON_CONTACT_HASH_TAKEN),
        (8, pb.REJECTION_REASON_DUPLICATE_IN_IMPORT),
    ]
    assert await registry_size(server) == 3


async def test_garbage_request_bytes_get_invalid_argument(channel: aio.Channel) -> None:
    call = channel.unary_unary("/discovery.v1.DiscoveryService/Discover")
    with pytest.raises(aio.AioRpcError) as info:
        await call(b"\xff\xff\xff\xff garbage", metadata=user_metadata("u"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(status_details(info.value))[0][0] == "request"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=300), user_id=st.text(max_size=140))
async def test_fuzz_register_never_crashes(
    admin: pb_grpc.DirectoryAdminServiceStub, payload: bytes, user_id: str
) -> None:
    try:
        await admin.RegisterUser(pb.RegisterUserRequest(user_id=user_id, contact_hash=payload))
    except aio.AioRpcError as error:
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS)
        assert status_details(error)
