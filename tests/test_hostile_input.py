"""Hostile input: fuzzed fields and garbage bytes on every RPC, oversize messages, huge
metadata, and malformed, truncated, expired or foreign tokens. Each gets its proper status;
nothing crashes or wedges the server, and nothing internal leaks into logs."""

from __future__ import annotations

import io
import json
import string
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery.api.auth import ADMIN_SERVICE
from discovery.app.credentials import jwt_secret
from discovery.app.server import DiscoveryServer
from discovery.core.hashing import contact_hash
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.auth_helpers import Metadata, as_backend, as_user, bearer, client_token
from tests.support.rpc import METHODS, error_info, invoke
from tests.support.server import StartServer, status_details

MAX_RECEIVE = 64 * 1024
SENTINEL = contact_hash("+4915100000002")
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# What a well-formed call may legitimately get; never UNKNOWN, INTERNAL or a deadline (a wedge).
ANSWERS = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclass
class Target:
    server: DiscoveryServer
    channel: aio.Channel
    client: Metadata
    backend: Metadata


@pytest.fixture
async def target(start_server: StartServer) -> AsyncIterator[Target]:
    server = await start_server(
        auth="jwt",
        max_receive_message_bytes=MAX_RECEIVE,
        max_hashes_per_request=100,
        rate_limit_burst=0,
        private_mode=True,
        private_jitter_seconds=0.0,
    )
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        target = Target(server, channel, as_user(server, "fuzzer"), as_backend(server))
        admin = pb_grpc.DirectoryAdminServiceStub(channel)
        await admin.RegisterUser(
            pb.RegisterUserRequest(user_id="fuzzer", contact_hash=contact_hash("+4915100000001")),
            metadata=target.backend,
        )
        # Found by still_serving(); the fuzzed calls act as "fuzzer" and cannot touch it.
        await admin.RegisterUser(
            pb.RegisterUserRequest(user_id="sentinel", contact_hash=SENTINEL), metadata=target.backend
        )
        yield target
        await still_serving(target)


async def still_serving(target: Target) -> None:
    """The server still answers health checks and real work after the abuse."""
    health = await health_pb2_grpc.HealthStub(target.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    response = await pb_grpc.DiscoveryServiceStub(target.channel).Discover(
        pb.DiscoverRequest(contact_hashes=SENTINEL), metadata=target.client, timeout=5
    )
    assert list(response.match_user_ids) == ["sentinel"]


def violations(error: aio.AioRpcError) -> list[str]:
    return [
        v.field
        for d in status_details(error)
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    ]


async def raw_call(target: Target, method: MethodDescriptor, payload: bytes) -> grpc.StatusCode:
    """Send raw bytes as the request of ``method``; the status code it ends with."""
    metadata = target.backend if method.containing_service.full_name == ADMIN_SERVICE else target.client
    timeout = 0.3 if method.server_streaming else 5.0
    error = await invoke(target.channel, method, payload, metadata, timeout, whole_stream=True)
    if error is None:
        return grpc.StatusCode.OK
    if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
        # Every error of the server keeps the contract (one ErrorInfo, a request id); a
        # deadline the client set may end the call before the server answers.
        info = error_info(error)
        if not parses(method, payload):
            assert (info.reason, violations(error)) == ("MALFORMED_REQUEST", ["request"])
    return error.code()  # type: ignore[no-any-return]


def parses(method: MethodDescriptor, payload: bytes) -> bool:
    try:
        message_factory.GetMessageClass(method.input_type).FromString(payload)
    except Exception:
        return False
    return True


def test_every_rpc_is_fuzzed() -> None:
    names = {m.full_name for m in METHODS}
    assert {
        "discovery.v1.DiscoveryService.Discover",
        "discovery.v1.DirectoryAdminService.ImportUsers",
    } <= names


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
@FUZZ
@given(payload=st.one_of(st.binary(max_size=600), st.binary(min_size=1, max_size=8).map(lambda b: b * 40)))
async def test_garbage_bytes_on_every_rpc(target: Target, method: MethodDescriptor, payload: bytes) -> None:
    code = await raw_call(target, method, payload)
    if method.server_streaming:
        # A stream that parsed is a subscription: it stays open until the deadline.
        assert code in ANSWERS | {grpc.StatusCode.DEADLINE_EXCEEDED}, code
    else:
        assert code in ANSWERS, code
    if not parses(method, payload):
        assert code == grpc.StatusCode.INVALID_ARGUMENT


hash_lists = st.lists(st.sampled_from([contact_hash(f"+49151000000{i:02d}") for i in range(30)]), max_size=40)


@FUZZ
@given(
    contacts=st.one_of(st.binary(max_size=4000), hash_lists.map(b"".join)),
    previous=st.one_of(st.binary(max_size=400), hash_lists.map(b"".join)),
    token=st.one_of(st.binary(max_size=60), st.just(b"")),
)
async def test_fuzz_discover_fields(target: Target, contacts: bytes, previous: bytes, token: bytes) -> None:
    client = pb_grpc.DiscoveryServiceStub(target.channel)
    request = pb.DiscoverRequest(
        contact_hashes=contacts, previous_contact_hashes=previous, previous_token=token
    )
    try:
        response = await client.Discover(request, metadata=target.client, timeout=5)
    except aio.AioRpcError as error:
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            [field] = violations(error)
            assert field.split("[")[0] in ("contact_hashes", "previous_contact_hashes", "previous_token")
        return
    assert len(contacts) % 32 == 0 and not previous and not token
    assert len(response.match_indices) <= len(contacts) // 32


@FUZZ
@given(
    user_id=st.text(max_size=140),
    blob=st.binary(max_size=40),
    mask=st.lists(st.text(max_size=20), max_size=4),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
async def test_fuzz_typed_fields(
    target: Target, user_id: str, blob: bytes, mask: list[str], flags: tuple[bool, bool, bool]
) -> None:
    admin = pb_grpc.DirectoryAdminServiceStub(target.channel)
    client = pb_grpc.DiscoveryServiceStub(target.channel)
    settings_pb = pb.Settings(discoverable=flags[0], announce_join=flags[1], notify_on_join=flags[2])

    async def ends(call: Any) -> grpc.StatusCode:
        try:
            await call
        except aio.AioRpcError as error:
            assert status_details(error), "every error carries google.rpc details"
            return error.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    async def one_batch() -> AsyncIterator[pb.ImportUsersRequest]:
        yield pb.ImportUsersRequest(
            users=[pb.ImportUser(user_id=user_id, contact_hash=blob, settings=settings_pb)]
        )

    codes = [
        await ends(
            admin.RegisterUser(
                pb.RegisterUserRequest(user_id=user_id, contact_hash=blob), metadata=target.backend
            )
        ),
        await ends(
            admin.ChangeNumber(
                pb.ChangeNumberRequest(user_id=user_id, contact_hash=blob), metadata=target.backend
            )
        ),
        await ends(admin.ImportUsers(one_batch(), metadata=target.backend)),
        await ends(
            client.UpdateSettings(
                pb.UpdateSettingsRequest(settings=settings_pb, update_mask=mask), metadata=target.client
            )
        ),
        await ends(admin.UnregisterUser(pb.UnregisterUserRequest(user_id=user_id), metadata=target.backend)),
    ]
    assert set(codes) <= ANSWERS, codes


printable = st.text(alphabet=string.ascii_letters + string.digits + "-_.=+/ ", max_size=300)


@FUZZ
@given(
    header=st.one_of(
        printable,
        printable.map(lambda t: "Bearer " + t),
        st.tuples(printable, printable, printable).map(lambda p: "Bearer " + ".".join(p)),
    )
)
async def test_fuzz_authorization_header(target: Target, header: str) -> None:
    client = pb_grpc.DiscoveryServiceStub(target.channel)
    with pytest.raises(aio.AioRpcError) as info:
        await client.GetSettings(pb.GetSettingsRequest(), metadata=(("authorization", header),), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert header.strip() not in (info.value.details() or "") or len(header.strip()) < 8


@FUZZ
@given(cut=st.integers(min_value=0, max_value=400), flip=st.integers(min_value=0, max_value=400))
async def test_fuzz_truncated_and_mutated_tokens(target: Target, cut: int, flip: int) -> None:
    token = client_token(target.server, "fuzzer")
    client = pb_grpc.DiscoveryServiceStub(target.channel)
    truncated = token[: cut % len(token)]
    position = flip % len(token)
    replacement = "A" if token[position] != "A" else "B"
    mutated = token[:position] + replacement + token[position + 1 :]
    for bad in (truncated, mutated):
        if not bad.strip():
            continue
        try:
            await client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(bad), timeout=5)
        except aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            continue
        # Base64url has slack in its last character: such a change may decode to the same token.
        assert bad == mutated and position == len(token) - 1


@FUZZ
@given(age=st.integers(min_value=10, max_value=10**8), wrong_key=st.binary(min_size=32, max_size=64))
async def test_fuzz_expired_and_foreign_tokens(target: Target, age: int, wrong_key: bytes) -> None:
    now = int(time.time())
    secret = jwt_secret(target.server.config)
    client = pb_grpc.DiscoveryServiceStub(target.channel)
    expired = jwt.encode(
        {"sub": "fuzzer", "iat": now - age - 60, "exp": now - age}, secret, algorithm="HS256"
    )
    foreign = jwt.encode({"sub": "fuzzer", "iat": now, "exp": now + 60}, wrong_key, algorithm="HS256")
    for token in (expired, foreign):
        with pytest.raises(aio.AioRpcError) as info:
            await client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(token), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_oversize_messages(target: Target) -> None:
    client = pb_grpc.DiscoveryServiceStub(target.channel)
    admin = pb_grpc.DirectoryAdminServiceStub(target.channel)
    with pytest.raises(aio.AioRpcError) as info:
        await client.Discover(
            pb.DiscoverRequest(contact_hashes=b"\x01" * (MAX_RECEIVE + 32)), metadata=target.client, timeout=5
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    async def batches() -> AsyncIterator[pb.ImportUsersRequest]:
        yield pb.ImportUsersRequest(
            users=[pb.ImportUser(user_id="x" * 100, contact_hash=b"\x02" * 32)] * 1000
        )

    with pytest.raises(aio.AioRpcError) as info:
        await admin.ImportUsers(batches(), metadata=target.backend, timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Under the receive limit but over the per-request cap: a clear INVALID_ARGUMENT.
    with pytest.raises(aio.AioRpcError) as info:
        await client.Discover(
            pb.DiscoverRequest(contact_hashes=b"\x01" * 32 * 101), metadata=target.client, timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_huge_metadata(target: Target) -> None:
    client = pb_grpc.DiscoveryServiceStub(target.channel)
    for metadata in (
        (*target.client, ("x-padding", "a" * 100_000)),
        (*target.client, *((f"x-h{i}", "v" * 40) for i in range(2000))),
        (("authorization", "Bearer " + "a" * 60_000),),
    ):
        with pytest.raises(aio.AioRpcError) as info:
            await client.GetSettings(pb.GetSettingsRequest(), metadata=metadata, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Long, but within the metadata limit: refused by the authenticator, not by the transport.
    with pytest.raises(aio.AioRpcError) as info:
        await client.GetSettings(pb.GetSettingsRequest(), metadata=bearer("a" * 9000), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_internal_errors_and_no_tokens_in_logs(target: Target, log_capture: io.StringIO) -> None:
    token = client_token(target.server, "fuzzer")
    client = pb_grpc.DiscoveryServiceStub(target.channel)
    for method in METHODS:
        await raw_call(target, method, b"\x0a\xff\xff\xff\xff\x0f")
    for bad in (token[:-3], token + "x", "Bearer " + token):
        with pytest.raises(aio.AioRpcError):
            await client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(bad), timeout=5)
    await still_serving(target)
    events = [json.loads(line) for line in log_capture.getvalue().splitlines()]
    assert not [e for e in events if e.get("event") == "call_failed"]
    assert [e for e in events if e.get("event") == "call_rejected"]
    text = log_capture.getvalue()
    assert token not in text and token.split(".")[2] not in text
