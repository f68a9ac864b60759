"""A real server on 127.0.0.1 port 0 over a real SQLite file, with logs captured (pytest plugin)."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio

from discovery.app.server import DiscoveryServer
from discovery.config import ServerConfig
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
