"""One live call for each error reason the server can emit, on every service (pytest plugin).

``error_world`` starts three real servers (development auth, JWT auth, tight limits; the first
two in private mode) with a few registered users; ``ERROR_CASES`` are calls that each must
fail with a given code and reason. tests/test_error_contract.py and tests/test_request_id.py run them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from discovery.app.credentials import jwt_secret, mint_token
from discovery.app.server import DiscoveryServer
from discovery.config import PrivateOptions
from discovery.core.hashing import contact_hash
from discovery.core.private import MAX_BLINDED_PER_REQUEST
from discovery.core.private_index import MAX_BUCKETS_PER_REQUEST
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import joins_pb2, private_pb2
from tests.support.auth_helpers import as_backend, as_user
from tests.support.rpc import METHODS, Metadata, error_info, invoke, request_id
from tests.support.server import StartServer, status_details, user_metadata

PRIVATE_EPOCH = PrivateOptions().key_epoch  # the epoch a server serves by default

ALICE, BOB = contact_hash("+4915100000201"), contact_hash("+4915100000202")
OTHER = [contact_hash(f"+49151000003{i:02d}") for i in range(8)]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
#: The detail each code carries next to its ErrorInfo.
DETAIL_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: error_details_pb2.BadRequest,
    grpc.StatusCode.ALREADY_EXISTS: error_details_pb2.BadRequest,
    grpc.StatusCode.NOT_FOUND: error_details_pb2.ResourceInfo,
    grpc.StatusCode.RESOURCE_EXHAUSTED: error_details_pb2.QuotaFailure,
    grpc.StatusCode.UNAVAILABLE: error_details_pb2.RetryInfo,
}


@dataclass
class World:
    dev: DiscoveryServer  # development auth, private mode; max 3 hashes, import batches of 2, 1 stream a user
    jwt: DiscoveryServer  # JWT auth, private mode
    tight: DiscoveryServer  # development auth; quota of 1 contact, 1 request, 1 stream in all
    channels: dict[str, aio.Channel]


def method(full_name: str) -> MethodDescriptor:
    for m in [*METHODS, *HEALTH.methods, *REFLECTION.methods]:
        if m.full_name == full_name:
            return m
    raise KeyError(full_name)


@dataclass(frozen=True)
class Case:
    name: str
    server: str  # "dev", "jwt" or "tight"
    method: str
    request: Message | bytes
    metadata: Callable[[World], Metadata]
    code: grpc.StatusCode
    reason: str


def dev(user: str) -> Callable[[World], Metadata]:
    return lambda _: user_metadata(user)


def nobody(_: World) -> Metadata:
    return ()


def jwt_token(subject: str, ttl: float = 600.0, scope: str = "") -> Callable[[World], Metadata]:
    def metadata(world: World) -> Metadata:
        token = mint_token("HS256", jwt_secret(world.jwt.config), subject, ttl, scope=scope)
        return (("authorization", f"Bearer {token}"),)

    return metadata


C, A, J, P = (
    "discovery.v1.DiscoveryService",
    "discovery.v1.DirectoryAdminService",
    "discovery.v1.JoinNotificationService",
    "discovery.v1.PrivateDiscoveryService",
)
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f"
#: PrivateDiscoveryService on, changes released at once.
PRIVATE = {"private_mode": True, "private_jitter_seconds": 0.0}

ERROR_CASES = [
    Case(
        "garbage bytes",
        "dev",
        f"{C}.Discover",
        GARBAGE,
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    ),
    Case(
        "garbage admin",
        "dev",
        f"{A}.ImportUsers",
        GARBAGE,
        nobody,
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    ),
    Case(
        "garbage stream",
        "dev",
        f"{J}.SubscribeJoins",
        GARBAGE,
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    ),
    Case(
        "garbage health",
        "dev",
        "grpc.health.v1.Health.Check",
        GARBAGE,
        nobody,
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    ),
    Case(
        "garbage watch",
        "dev",
        "grpc.health.v1.Health.Watch",
        GARBAGE,
        nobody,
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    ),
    Case(
        "garbage reflection",
        "dev",
        "grpc.reflection.v1alpha.ServerReflection.ServerReflectionInfo",
        GARBAGE,
        nobody,
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    ),
    Case(
        "hashes not n x 32",
        "dev",
        f"{C}.Discover",
        pb.DiscoverRequest(contact_hashes=b"x" * 33),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_CONTACT_HASHES",
    ),
    Case(
        "too many hashes",
        "dev",
        f"{C}.Discover",
        pb.DiscoverRequest(contact_hashes=b"".join(OTHER[:4])),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOO_MANY_CONTACT_HASHES",
    ),
    Case(
        "duplicate hashes",
        "dev",
        f"{C}.Discover",
        pb.DiscoverRequest(contact_hashes=OTHER[0] * 2),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "DUPLICATE_CONTACT_HASHES",
    ),
    Case(
        "previous set without token",
        "dev",
        f"{C}.Discover",
        pb.DiscoverRequest(contact_hashes=OTHER[0], previous_contact_hashes=OTHER[1]),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PREVIOUS_SET_REFUSED",
    ),
    Case(
        "forged token",
        "dev",
        f"{C}.Discover",
        pb.DiscoverRequest(
            contact_hashes=OTHER[0], previous_contact_hashes=OTHER[1], previous_token=b"\x01" * 41
        ),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PREVIOUS_SET_REFUSED",
    ),
    Case(
        "malformed previous set",
        "dev",
        f"{C}.Discover",
        pb.DiscoverRequest(contact_hashes=OTHER[0], previous_contact_hashes=b"x", previous_token=b"t"),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PREVIOUS_SET_REFUSED",
    ),
    Case(
        "empty user id",
        "dev",
        f"{A}.RegisterUser",
        pb.RegisterUserRequest(user_id="", contact_hash=OTHER[0]),
        nobody,
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_USER_ID",
    ),
    Case(
        "short contact hash",
        "dev",
        f"{A}.ChangeNumber",
        pb.ChangeNumberRequest(user_id="alice", contact_hash=b"x"),
        nobody,
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_CONTACT_HASH",
    ),
    Case(
        "unknown setting",
        "dev",
        f"{C}.UpdateSettings",
        pb.UpdateSettingsRequest(update_mask=["nope"]),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UPDATE_MASK",
    ),
    Case(
        "bad device id",
        "dev",
        f"{J}.SubscribeJoins",
        joins_pb2.SubscribeJoinsRequest(device_id="a b"),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_DEVICE_ID",
    ),
    Case(
        "cursor past 2^63",
        "dev",
        f"{J}.AckJoins",
        joins_pb2.AckJoinsRequest(cursor=2**64 - 1),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CURSOR_OUT_OF_RANGE",
    ),
    Case(
        "cursor ahead",
        "dev",
        f"{J}.SubscribeJoins",
        joins_pb2.SubscribeJoinsRequest(after_cursor=10**9),
        dev("bob"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "CURSOR_OUT_OF_RANGE",
    ),
    Case(
        "import message too large",
        "dev",
        f"{A}.ImportUsers",
        pb.ImportUsersRequest(
            users=[pb.ImportUser(user_id=f"i{i}", contact_hash=OTHER[i]) for i in range(3)]
        ),
        nobody,
        grpc.StatusCode.INVALID_ARGUMENT,
        "IMPORT_BATCH_TOO_LARGE",
    ),
    Case(
        "garbage private",
        "dev",
        f"{P}.EvaluateBlinded",
        GARBAGE,
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_REQUEST",
    ),
    Case(
        "blinded elements not a multiple of 32 bytes",
        "dev",
        f"{P}.EvaluateBlinded",
        private_pb2.EvaluateBlindedRequest(blinded_elements=b"\x01" * 33),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_BLINDED_ELEMENTS",
    ),
    Case(
        "blinded identity",
        "dev",
        f"{P}.EvaluateBlinded",
        private_pb2.EvaluateBlindedRequest(blinded_elements=bytes(32)),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MALFORMED_BLINDED_ELEMENTS",
    ),
    Case(
        "blinded elements over the cap",
        "dev",
        f"{P}.EvaluateBlinded",
        private_pb2.EvaluateBlindedRequest(blinded_elements=bytes(32 * (MAX_BLINDED_PER_REQUEST + 1))),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOO_MANY_BLINDED_ELEMENTS",
    ),
    Case(
        "bucket range of the wrong length",
        "dev",
        f"{P}.GetPrivateBuckets",
        private_pb2.GetPrivateBucketsRequest(ranges=[b"\x00\x00\x00"]),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BUCKET_RANGE_REFUSED",
    ),
    Case(
        "bucket ranges over the cap",
        "dev",
        f"{P}.GetPrivateBuckets",
        private_pb2.GetPrivateBucketsRequest(ranges=[b""] * (MAX_BUCKETS_PER_REQUEST + 1)),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOO_MANY_BUCKET_RANGES",
    ),
    Case(
        "private cursor ahead",
        "dev",
        f"{P}.GetPrivateDelta",
        private_pb2.GetPrivateDeltaRequest(epoch=PRIVATE_EPOCH, cursor=10**9),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PRIVATE_CURSOR_REFUSED",
    ),
    Case(
        "private stream cursor ahead",
        "dev",
        f"{P}.SubscribePrivateDeltas",
        private_pb2.SubscribePrivateDeltasRequest(epoch=PRIVATE_EPOCH, cursor=10**9),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PRIVATE_CURSOR_REFUSED",
    ),
    Case(
        "private delta of another epoch",
        "dev",
        f"{P}.GetPrivateDelta",
        private_pb2.GetPrivateDeltaRequest(epoch=PRIVATE_EPOCH + 1, cursor=0),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PRIVATE_EPOCH_REFUSED",
    ),
    Case(
        "evaluation under another epoch's key",
        "dev",
        f"{P}.EvaluateBlinded",
        private_pb2.EvaluateBlindedRequest(blinded_elements=b"", epoch=PRIVATE_EPOCH + 1),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PRIVATE_EPOCH_REFUSED",
    ),
    Case(
        "private stream of another epoch",
        "dev",
        f"{P}.SubscribePrivateDeltas",
        private_pb2.SubscribePrivateDeltasRequest(epoch=PRIVATE_EPOCH + 1),
        dev("alice"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "PRIVATE_EPOCH_REFUSED",
    ),
    Case(
        "no dev header",
        "dev",
        f"{C}.GetSettings",
        pb.GetSettingsRequest(),
        nobody,
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MISSING",
    ),
    Case(
        "malformed dev header",
        "dev",
        f"{C}.GetSettings",
        pb.GetSettingsRequest(),
        dev("a" * 200),
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MALFORMED",
    ),
    Case(
        "two dev headers",
        "dev",
        f"{J}.AckJoins",
        joins_pb2.AckJoinsRequest(),
        lambda _: (*user_metadata("alice"), *user_metadata("bob")),
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_DUPLICATED",
    ),
    Case(
        "user id taken",
        "dev",
        f"{A}.RegisterUser",
        pb.RegisterUserRequest(user_id="alice", contact_hash=OTHER[5]),
        nobody,
        grpc.StatusCode.ALREADY_EXISTS,
        "USER_ID_TAKEN",
    ),
    Case(
        "hash taken",
        "dev",
        f"{A}.ChangeNumber",
        pb.ChangeNumberRequest(user_id="bob", contact_hash=ALICE),
        nobody,
        grpc.StatusCode.ALREADY_EXISTS,
        "HASH_TAKEN",
    ),
    Case(
        "unregister nobody",
        "dev",
        f"{A}.UnregisterUser",
        pb.UnregisterUserRequest(user_id="nobody"),
        nobody,
        grpc.StatusCode.NOT_FOUND,
        "NOT_REGISTERED",
    ),
    Case(
        "caller not registered",
        "dev",
        f"{C}.GetSettings",
        pb.GetSettingsRequest(),
        dev("nobody"),
        grpc.StatusCode.NOT_FOUND,
        "NOT_REGISTERED",
    ),
    Case(
        "stream of nobody",
        "dev",
        f"{J}.SubscribeJoins",
        joins_pb2.SubscribeJoinsRequest(),
        dev("nobody"),
        grpc.StatusCode.NOT_FOUND,
        "NOT_REGISTERED",
    ),
    Case(
        "unknown health service",
        "dev",
        "grpc.health.v1.Health.Check",
        health_pb2.HealthCheckRequest(service="nope"),
        nobody,
        grpc.StatusCode.NOT_FOUND,
        "SERVICE_UNKNOWN",
    ),
    Case(
        "second stream of alice",
        "dev",
        f"{J}.SubscribeJoins",
        joins_pb2.SubscribeJoinsRequest(),
        dev("alice"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_STREAMS",
    ),
    Case(
        "no token",
        "jwt",
        f"{C}.Discover",
        pb.DiscoverRequest(),
        nobody,
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MISSING",
    ),
    Case(
        "no backend token",
        "jwt",
        f"{A}.UnregisterUser",
        pb.UnregisterUserRequest(user_id="alice"),
        nobody,
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MISSING",
    ),
    Case(
        "private params without a token",
        "jwt",
        f"{P}.GetPrivateParams",
        private_pb2.GetPrivateParamsRequest(),
        nobody,
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MISSING",
    ),
    Case(
        "private snapshot with an expired token",
        "jwt",
        f"{P}.GetPrivateSnapshot",
        private_pb2.GetPrivateSnapshotRequest(),
        jwt_token("alice", ttl=-60),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_EXPIRED",
    ),
    Case(
        "basic auth",
        "jwt",
        f"{C}.Discover",
        pb.DiscoverRequest(),
        lambda _: (("authorization", "Basic YTpi"),),
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_MALFORMED",
    ),
    Case(
        "forged jwt",
        "jwt",
        f"{J}.AckJoins",
        joins_pb2.AckJoinsRequest(),
        lambda _: (("authorization", "Bearer a.b.c"),),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_INVALID",
    ),
    Case(
        "expired jwt",
        "jwt",
        f"{C}.GetSettings",
        pb.GetSettingsRequest(),
        jwt_token("alice", ttl=-60),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_EXPIRED",
    ),
    Case(
        "empty sub",
        "jwt",
        f"{A}.RegisterUser",
        pb.RegisterUserRequest(),
        jwt_token("", scope="directory:write"),
        grpc.StatusCode.UNAUTHENTICATED,
        "SUBJECT_INVALID",
    ),
    Case(
        "two bearer tokens",
        "jwt",
        f"{C}.GetSettings",
        pb.GetSettingsRequest(),
        lambda w: (*as_user(w.jwt, "alice"), *as_user(w.jwt, "bob")),
        grpc.StatusCode.UNAUTHENTICATED,
        "CREDENTIALS_DUPLICATED",
    ),
    Case(
        "client token on admin",
        "jwt",
        f"{A}.UnregisterUser",
        pb.UnregisterUserRequest(user_id="alice"),
        lambda w: as_user(w.jwt, "alice"),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    ),
    Case(
        "over the contact quota",
        "tight",
        f"{C}.Discover",
        pb.DiscoverRequest(contact_hashes=OTHER[0] + OTHER[1]),
        dev("alice"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "QUOTA_EXCEEDED",
    ),
    Case(
        "over the request rate",
        "tight",
        f"{C}.Discover",
        pb.DiscoverRequest(contact_hashes=OTHER[2]),
        dev("alice"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "RATE_LIMITED",
    ),
    Case(
        "instance full of streams",
        "tight",
        f"{J}.SubscribeJoins",
        joins_pb2.SubscribeJoinsRequest(),
        dev("bob"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SERVER_STREAMS_FULL",
    ),
]


async def _register(server: DiscoveryServer, channel: aio.Channel, metadata: Metadata) -> None:
    for user, hashed in (("alice", ALICE), ("bob", BOB)):  # in this order: "tight" allows 1 stream
        payload = pb.RegisterUserRequest(user_id=user, contact_hash=hashed).SerializeToString()
        assert await invoke(channel, method(f"{A}.RegisterUser"), payload, metadata) is None


@pytest.fixture
async def error_world(start_server: StartServer, tmp_path: Path) -> AsyncIterator[World]:
    servers = {
        "dev": await start_server(
            data_dir=tmp_path / "dev",
            max_hashes_per_request=3,
            max_import_batch=2,
            join_max_streams_per_user=1,
            rate_limit_burst=0,
            **PRIVATE,
        ),
        "jwt": await start_server(data_dir=tmp_path / "jwt", auth="jwt", **PRIVATE),
        "tight": await start_server(
            data_dir=tmp_path / "tight", quota_capacity=1, rate_limit_burst=1, join_max_streams=1
        ),
    }
    channels = {name: aio.insecure_channel(f"127.0.0.1:{s.port}") for name, s in servers.items()}
    world = World(servers["dev"], servers["jwt"], servers["tight"], channels)
    await _register(world.dev, channels["dev"], ())
    await _register(world.jwt, channels["jwt"], as_backend(world.jwt))
    await _register(world.tight, channels["tight"], ())
    # The one stream each limit allows: alice's on dev, alice's on tight.
    held = [
        channels[name].unary_stream(f"/{J}/SubscribeJoins")(
            joins_pb2.SubscribeJoinsRequest().SerializeToString(), metadata=user_metadata("alice")
        )
        for name in ("dev", "tight")
    ]
    for stream in held:
        await stream.read()
    yield world
    for stream in held:
        stream.cancel()
    for channel in channels.values():
        await channel.close()


async def run_case(world: World, case: Case) -> aio.AioRpcError:
    """Run ``case`` with a client request id; check the code, the reason, the detail of the code
    and that the request id came back."""
    mine = str(uuid.uuid4())
    payload = case.request if isinstance(case.request, bytes) else case.request.SerializeToString()
    metadata = (*case.metadata(world), ("x-request-id", mine))
    error = await invoke(world.channels[case.server], method(case.method), payload, metadata)
    assert error is not None, f"{case.name}: the call succeeded"
    assert error.code() == case.code, f"{case.name}: {error.code()} {error.details()}"
    assert error_info(error).reason == case.reason, case.name
    assert request_id(error) == mine, case.name
    expected = DETAIL_OF.get(case.code)
    if expected is not None:
        assert any(isinstance(d, expected) for d in status_details(error)), case.name
    return error
