"""A real server on 127.0.0.1 port 0 over a real SQLite file, with logs captured (pytest plugin)."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc import aio

from discovery.api.interceptor import CallInterceptor
from discovery.app.credentials import build_authenticator
from discovery.app.server import DiscoveryServer
from discovery.app.wiring import add_servicers
from discovery.config import ServerConfig
from discovery.core.model import BucketCharge
from discovery.logs import JsonFormatter

StartServer = Callable[..., Awaitable[DiscoveryServer]]


@pytest.fixture
def log_capture() -> io.StringIO:
    """Every log record of the test, as the JSON lines the service writes."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(previous)


#: Join tests see events at once, and announce to everyone unless they ask for the server's
#: default (MUTUAL: tests/test_join_modes.py).
JOIN_TEST_OPTIONS: dict[str, object] = {
    "join_release_jitter_seconds": 0.0,
    "default_announce_mode": "everyone",
}


@pytest.fixture
async def start_server(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start servers on 127.0.0.1:0 with a data dir in tmp_path; all are stopped at the end.

    They trust the development header (``auth="dev"``, which names the caller with
    ``x-discovery-user-id``); tests of authentication pass ``auth="jwt"``.
    """
    running: list[DiscoveryServer] = []

    async def start(**overrides: object) -> DiscoveryServer:
        options: dict[str, object] = {
            "listen": "127.0.0.1:0",
            "data_dir": tmp_path / "data",
            "grace_seconds": 1.0,
            "auth": "dev",
            **JOIN_TEST_OPTIONS,
        }
        options.update(overrides)
        server = DiscoveryServer(ServerConfig.from_options(**options))
        await server.start()
        running.append(server)
        return server

    yield start
    for server in running:
        await server.stop(grace=0.5)


@pytest.fixture
async def server(start_server: StartServer) -> DiscoveryServer:
    return await start_server()


@pytest.fixture
async def channel(server: DiscoveryServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


def user_metadata(user_id: str) -> tuple[tuple[str, str], ...]:
    return (("x-discovery-user-id", user_id),)


def status_details(error: grpc.aio.AioRpcError) -> list[object]:
    """The google.rpc detail messages of a failed call, unpacked."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status"
    out: list[object] = []
    for detail in status.details:
        for kind in (
            error_details_pb2.BadRequest,
            error_details_pb2.QuotaFailure,
            error_details_pb2.RetryInfo,
            error_details_pb2.ResourceInfo,
            error_details_pb2.ErrorInfo,
        ):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                out.append(message)
    return out


async def bucket_level(server: DiscoveryServer, user: str, bucket: str = "contacts") -> float:
    """The level of the user's quota bucket now; a zero-cost charge changes nothing."""
    assert server.store is not None
    (outcome,) = await server.store.charge([BucketCharge(f"{bucket}:{user}", 0, 1e12, 0.0)], time.time())
    return outcome.level


class RequestRecorder(aio.ServerInterceptor):  # type: ignore[misc]
    """Records the raw bytes of every request message (before it is parsed) and the metadata of each call
    to the services named ``service_prefix``: what those servicers receive, byte for byte; and the name of
    each method called (``methods``)."""

    def __init__(self, service_prefix: str) -> None:
        self.service_prefix = service_prefix
        self.received: list[bytes] = []
        self.methods: list[str] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or not details.method.startswith(f"/{self.service_prefix}"):
            return handler
        self.methods.append(details.method.rsplit("/", 1)[1])
        for key, value in details.invocation_metadata or ():
            raw = value if isinstance(value, bytes) else value.encode()
            self.received.append(key.encode() + b"=" + raw)
        parse = handler.request_deserializer

        def recorded(raw: bytes) -> object:
            self.received.append(bytes(raw))
            return parse(raw) if parse is not None else raw

        return handler._replace(request_deserializer=recorded)


@asynccontextmanager
async def recorded_port(server: DiscoveryServer, recorder: RequestRecorder) -> AsyncIterator[str]:
    """A second listener on 127.0.0.1 serving ``server``'s own servicers (same directory, index, store)
    behind ``recorder`` and the same authentication; yields its target."""
    service = server.service
    mirror = aio.server(interceptors=[recorder, CallInterceptor(build_authenticator(server.config))])
    add_servicers(mirror, service.directory, service.joins, service.metrics, service.health, service.private)
    port = mirror.add_insecure_port("127.0.0.1:0")
    await mirror.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await mirror.stop(0)
