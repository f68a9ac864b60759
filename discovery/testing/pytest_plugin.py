"""pytest fixtures of :mod:`discovery.testing`: ``pytest_plugins = ["discovery.testing.pytest_plugin"]``.

``discovery_server``: a started :class:`~discovery.testing.DiscoveryTestServer` (asyncio
tests; needs pytest-asyncio). ``discovery_server_sync``: a started
:class:`~discovery.testing.ThreadedDiscoveryTestServer` for synchronous tests. Each test gets
its own server and store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from discovery.testing import DiscoveryTestServer, ThreadedDiscoveryTestServer

try:
    import pytest_asyncio

    _async_fixture = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - without pytest-asyncio only the sync fixture works
    _async_fixture = pytest.fixture  # type: ignore[assignment]


@_async_fixture
async def discovery_server() -> AsyncIterator[DiscoveryTestServer]:
    async with DiscoveryTestServer() as server:
        yield server


@pytest.fixture
def discovery_server_sync() -> Iterator[ThreadedDiscoveryTestServer]:
    with ThreadedDiscoveryTestServer() as server:
        yield server
