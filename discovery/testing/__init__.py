"""A real discovery server in-process, for the tests of applications that use the SDK.

API::

    DiscoveryTestServer(*, default_region="DE", **options)  # server options (flag names) override defaults
        async with DiscoveryTestServer() as server: ...     # or: await server.start() / await server.stop()
        .address -> "127.0.0.1:PORT"
        await .register(user_id, number_or_hash, settings=None)
        .client(user_id) -> AsyncDiscoveryClient            # close it, or use it with ``async with``
        .admin() -> AsyncAdminClient
        .server -> discovery.app.server.DiscoveryServer     # the instance, for the curious

    ThreadedDiscoveryTestServer(**same)                     # the same from synchronous code
        with ThreadedDiscoveryTestServer() as server: ...   # runs the server's event loop in a thread
        .address, .register(...), .client(user_id) -> DiscoveryClient, .admin() -> AdminClient

The server listens on 127.0.0.1 port 0 (a free port), keeps its embedded SQLite store and its
secrets in a temporary directory that is removed at the end, and trusts development auth: a
client names its user with ``user_id=`` (the ``x-discovery-user-id`` header), and admin calls
need no token. Quotas and the request rate limit are off unless you pass them
(``quota_capacity=``, ``rate_limit_burst=``), so tests are not cut off by them. Everything else
is the real thing: the same servicers, store and error details as in production.

For pytest, ``pytest_plugins = ["discovery.testing.pytest_plugin"]`` gives the fixtures
``discovery_server`` (asyncio; needs pytest-asyncio) and ``discovery_server_sync``. See
docs/testing.md.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from discovery.app.server import DiscoveryServer
from discovery.client import AdminClient, AsyncAdminClient, AsyncDiscoveryClient, DiscoveryClient, Settings
from discovery.config import ServerConfig

__all__ = ["DiscoveryTestServer", "ThreadedDiscoveryTestServer"]

T = TypeVar("T")
#: What a test server differs in from a production one unless told otherwise.
TEST_DEFAULTS: dict[str, Any] = {
    "listen": "127.0.0.1:0",
    "auth": "dev",
    "grace_seconds": 0.5,
    "quota_capacity": 0,
    "rate_limit_burst": 0,
    "sqlite_synchronous": "OFF",
    "store_check_seconds": 0.5,
}


class DiscoveryTestServer:
    """An in-process server on a temporary embedded store with development auth (asyncio)."""

    def __init__(self, *, default_region: str | None = "DE", **config: Any) -> None:
        self.default_region = default_region
        self._config = {**TEST_DEFAULTS, **config}
        self._tmp: Path | None = None
        self._server: DiscoveryServer | None = None

    @property
    def server(self) -> DiscoveryServer:
        if self._server is None:
            raise RuntimeError("the test server is not started")
        return self._server

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def start(self) -> Self:
        options = dict(self._config)
        if "data_dir" not in options:
            self._tmp = Path(tempfile.mkdtemp(prefix="discovery-test-"))
            options["data_dir"] = self._tmp
        server = DiscoveryServer(ServerConfig.from_options(**options))
        try:
            await server.start()
        except BaseException:
            self._cleanup()
            raise
        self._server = server
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.5)
            self._server = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def client(self, user_id: str, **options: Any) -> AsyncDiscoveryClient:
        """A client calling as ``user_id`` (development auth)."""
        return AsyncDiscoveryClient(
            self.address, user_id=user_id, **{"default_region": self.default_region, **options}
        )

    def admin(self, **options: Any) -> AsyncAdminClient:
        return AsyncAdminClient(self.address, **{"default_region": self.default_region, **options})

    async def register(
        self, user_id: str, number_or_hash: str | bytes, settings: Settings | None = None
    ) -> None:
        """Register ``user_id`` with a phone number (or a 32-byte contact hash), as the account
        service would."""
        async with self.admin() as admin:
            await admin.register_user(user_id, number_or_hash, settings)


class ThreadedDiscoveryTestServer:
    """:class:`DiscoveryTestServer` for synchronous code: its event loop runs in a thread."""

    def __init__(self, *, default_region: str | None = "DE", **config: Any) -> None:
        self._inner = DiscoveryTestServer(default_region=default_region, **config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return self._inner.address

    @property
    def server(self) -> DiscoveryServer:
        return self._inner.server

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None, "the test server is not started"
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def start(self) -> Self:
        loop = self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=loop.run_forever, name="discovery-test-server", daemon=True)
        self._thread.start()
        try:
            self._run(self._inner.start())
        except BaseException:
            self._halt()
            raise
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self._run(self._inner.stop())
        finally:
            self._halt()

    def _halt(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout=10)
        if loop is not None:
            loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self, user_id: str, **options: Any) -> DiscoveryClient:
        return DiscoveryClient(
            self.address, user_id=user_id, **{"default_region": self._inner.default_region, **options}
        )

    def admin(self, **options: Any) -> AdminClient:
        return AdminClient(self.address, **{"default_region": self._inner.default_region, **options})

    def register(self, user_id: str, number_or_hash: str | bytes, settings: Settings | None = None) -> None:
        with self.admin() as admin:
            admin.register_user(user_id, number_or_hash, settings)
