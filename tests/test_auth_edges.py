"""Authentication edges, for every RPC of every API service (private mode on, so that
PrivateDiscoveryService runs too): a signed token whose sub is empty or blank is refused (the
backend scope too), and so is any request with more than one authorization (or development
x-discovery-user-id) header."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc import aio

from discovery.api.auth import DIRECTORY_WRITE_SCOPE
from discovery.app.credentials import jwt_secret, mint_token
from discovery.core.hashing import contact_hash
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.auth_helpers import as_backend, as_user
from tests.support.error_cases import PRIVATE
from tests.support.rpc import METHODS, invoke, reason
from tests.support.server import StartServer, user_metadata

BLANK_SUBJECTS = ["", " ", "\t", "   \n"]


def test_every_api_service_is_covered() -> None:
    services = {m.containing_service.full_name for m in METHODS}
    assert {
        "discovery.v1.DiscoveryService",
        "discovery.v1.DirectoryAdminService",
        "discovery.v1.JoinNotificationService",
        "discovery.v1.PrivateDiscoveryService",
    } <= services


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
async def test_blank_subjects_and_duplicate_headers_are_refused(
    start_server: StartServer, method: MethodDescriptor
) -> None:
    server = await start_server(auth="jwt", **PRIVATE)
    key = jwt_secret(server.config)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        backend = as_backend(server)
        # A real user, so a call that got through would succeed rather than fail for another reason.
        await pb_grpc.DirectoryAdminServiceStub(channel).RegisterUser(
            pb.RegisterUserRequest(user_id="alice", contact_hash=contact_hash("+4915100000801")),
            metadata=backend,
        )
        for subject in BLANK_SUBJECTS:
            for scope in ("", DIRECTORY_WRITE_SCOPE):
                token = mint_token("HS256", key, subject, 600, scope=scope)
                error = await invoke(channel, method, b"", (("authorization", f"Bearer {token}"),))
                assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED, (subject, scope)
                assert reason(error) == "SUBJECT_INVALID"
        for metadata in (
            (*as_user(server, "alice"), *as_user(server, "alice")),
            (*as_user(server, "alice"), *backend),
            (*backend, *as_user(server, "alice")),
            (*backend, *backend),
        ):
            error = await invoke(channel, method, b"", metadata)
            assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason(error) == "CREDENTIALS_DUPLICATED"
        # The same calls with one header each are not refused for their credentials.
        single = backend if "Admin" in method.containing_service.name else as_user(server, "alice")
        error = await invoke(channel, method, b"", single)
        assert error is None or error.code() != grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.full_name)
async def test_duplicate_development_headers_are_refused(
    start_server: StartServer, method: MethodDescriptor
) -> None:
    server = await start_server(**PRIVATE)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for metadata in (
            (*user_metadata("alice"), *user_metadata("mallory")),
            (*user_metadata("alice"), *user_metadata("alice")),
        ):
            error = await invoke(channel, method, b"", metadata)
            assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason(error) == "CREDENTIALS_DUPLICATED"
