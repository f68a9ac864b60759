"""Every admin RPC refuses a client token, and each of the two scope checks does so alone.

The backend scope is checked twice: by the authenticator (api/jwt_auth.py) and by the
servicer (api/admin_service.py). Through the whole server each hides the other's removal,
so besides the end-to-end test each check is also run alone behind a real gRPC server and
the real interceptor: the authenticator in front of a servicer that checks nothing, and
the servicer behind an authenticator that lets every caller in without a scope.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
import jwt
import pytest
from google.protobuf import message_factory
from google.rpc import error_details_pb2
from grpc import aio

from discovery.api.admin_service import DirectoryAdminService
from discovery.api.auth import Audience, AuthContext, Principal
from discovery.api.interceptor import CallInterceptor
from discovery.api.jwt_auth import JwtAuthenticator, JwtVerifier
from discovery.core.hashing import contact_hash
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.auth_helpers import as_backend, as_user
from tests.support.server import StartServer, status_details

ADMIN = pb.DESCRIPTOR.services_by_name["DirectoryAdminService"]
ADMIN_METHODS = [method.name for method in ADMIN.methods]
SECRET = b"k" * 32
ALICE = contact_hash("+4915111111111")


def request_of(method: str) -> Any:
    """A well-formed request for ``method`` (ImportUsers: one message of its stream)."""
    descriptor = ADMIN.methods_by_name[method].input_type
    request = message_factory.GetMessageClass(descriptor)()
    if method == "ImportUsers":
        request.users.add(user_id="bob", contact_hash=contact_hash("+4915122222222"))
    elif hasattr(request, "user_id"):
        request.user_id = "alice"
    if hasattr(request, "contact_hash"):
        request.contact_hash = ALICE
    return request


async def call_admin(channel: aio.Channel, method: str, metadata: tuple[tuple[str, str], ...]) -> object:
    stub = pb_grpc.DirectoryAdminServiceStub(channel)
    request = request_of(method)
    if ADMIN.methods_by_name[method].client_streaming:

        async def stream() -> AsyncIterator[Any]:
            yield request

        return await getattr(stub, method)(stream(), metadata=metadata, timeout=10)
    return await getattr(stub, method)(request, metadata=metadata, timeout=10)


async def assert_refused(channel: aio.Channel, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await call_admin(channel, method, metadata)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, (method, caught.value.details())
    infos = [d for d in status_details(caught.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert [i.reason for i in infos] == ["PERMISSION_DENIED"], method


def test_the_admin_service_is_what_this_file_covers() -> None:
    """A new admin RPC is covered here by construction; this pins the list it covers today."""
    assert ADMIN_METHODS == ["RegisterUser", "UnregisterUser", "ChangeNumber", "ImportUsers"]


@pytest.mark.parametrize("method", ADMIN_METHODS)
async def test_every_admin_rpc_refuses_a_client_token(start_server: StartServer, method: str) -> None:
    server = await start_server(auth="jwt")
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        admin = pb_grpc.DirectoryAdminServiceStub(channel)
        await admin.RegisterUser(
            pb.RegisterUserRequest(user_id="alice", contact_hash=ALICE), metadata=as_backend(server)
        )
        await assert_refused(channel, method, as_user(server, "alice"))
        # Nothing changed: alice is still registered under her number, bob was not imported.
        client = pb_grpc.DiscoveryServiceStub(channel)
        found = await client.Discover(
            pb.DiscoverRequest(contact_hashes=ALICE + contact_hash("+4915122222222")),
            metadata=as_user(server, "carol"),
        )
        assert list(found.match_user_ids) == ["alice"]


# -- each check alone, behind a real gRPC server and the real interceptor ----------------------


class LetsEveryoneIn:
    """An authenticator with its scope check gone: every caller is a backend without scopes."""

    def authenticate(self, method: str, metadata: Mapping[str, str | bytes], auth: AuthContext) -> Principal:
        return Principal(Audience.BACKEND)


def checks_nothing() -> grpc.GenericRpcHandler:
    """A DirectoryAdminService with its scope checks gone: every call succeeds, empty."""

    def answer(method: str) -> Callable[..., Any]:
        response = message_factory.GetMessageClass(ADMIN.methods_by_name[method].output_type)

        async def unary(request: Any, context: aio.ServicerContext) -> Any:
            return response()

        async def streamed(requests: AsyncIterator[Any], context: aio.ServicerContext) -> Any:
            async for _ in requests:
                pass
            return response()

        return streamed if ADMIN.methods_by_name[method].client_streaming else unary

    handlers = {}
    for method in ADMIN_METHODS:
        descriptor = ADMIN.methods_by_name[method]
        kind = (
            grpc.stream_unary_rpc_method_handler
            if descriptor.client_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method] = kind(
            answer(method),
            request_deserializer=message_factory.GetMessageClass(descriptor.input_type).FromString,
            response_serializer=lambda message: message.SerializeToString(),
        )
    return grpc.method_handlers_generic_handler(ADMIN.full_name, handlers)


async def serve(authenticator: Any, handler: grpc.GenericRpcHandler | None = None) -> tuple[aio.Server, int]:
    """A real gRPC server on 127.0.0.1 behind the real interceptor; without ``handler``, the
    real DirectoryAdminService (refusing before it ever touches its directory)."""
    server = aio.server(interceptors=[CallInterceptor(authenticator)])
    if handler is None:
        pb_grpc.add_DirectoryAdminServiceServicer_to_server(DirectoryAdminService(None), server)  # type: ignore[arg-type]
    else:
        server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def client_token(user_id: str = "alice") -> tuple[tuple[str, str], ...]:
    token = jwt.encode({"sub": user_id, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")
    return (("authorization", f"Bearer {token}"),)


async def test_the_permissive_stand_ins_let_calls_through() -> None:
    """The control: without the check under test, each stand-in lets every admin call in."""
    server, port = await serve(LetsEveryoneIn(), checks_nothing())
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ADMIN_METHODS:
                await call_admin(channel, method, client_token())
    finally:
        await server.stop(None)


async def test_the_authenticator_alone_refuses_a_client_token_on_every_admin_rpc() -> None:
    server, port = await serve(JwtAuthenticator(JwtVerifier("HS256", SECRET)), checks_nothing())
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ADMIN_METHODS:
                await assert_refused(channel, method, client_token())
    finally:
        await server.stop(None)


async def test_the_servicer_alone_refuses_a_caller_without_the_scope_on_every_admin_rpc() -> None:
    server, port = await serve(LetsEveryoneIn())
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for method in ADMIN_METHODS:
                await assert_refused(channel, method, client_token())
    finally:
        await server.stop(None)
