"""Prometheus metrics over HTTP: the documented series exist, count real calls, and hold no
number, hash or user id."""

from __future__ import annotations

import asyncio
import contextlib
import io
import urllib.request

from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, DiscoveryError
from tests.support.helpers import e164_numbers
from tests.support.privacy_scan import Needles, find_leaks, server_keys
from tests.support.server import StartServer


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, labels: str = "") -> float:
    prefix = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {prefix}")


async def test_metrics_count_calls_and_leak_nothing(
    start_server: StartServer, log_capture: io.StringIO
) -> None:
    server = await start_server(metrics_listen="127.0.0.1:0")
    assert server.metrics_port
    numbers = e164_numbers(40, seed=11)
    target = f"127.0.0.1:{server.port}"
    async with AsyncAdminClient(target) as admin:
        for i, number in enumerate(numbers[:20]):
            await admin.register_user(f"metric-user-{i}", number)
        with contextlib.suppress(DiscoveryError):
            await admin.register_user("metric-user-0", numbers[30])
    async with AsyncDiscoveryClient(target, user_id="metric-user-1") as client:
        result = await client.discover(numbers)
    assert len(result.matches) == 20
    text = await asyncio.to_thread(scrape, server.metrics_port)

    assert sample(text, "discovery_rpc_total", 'code="OK",method="DirectoryAdminService/RegisterUser"') == 20
    rejected = 'code="ALREADY_EXISTS",method="DirectoryAdminService/RegisterUser"'
    assert sample(text, "discovery_rpc_total", rejected) == 1
    assert sample(text, "discovery_contacts_checked_total") == 40
    assert sample(text, "discovery_contacts_matched_total") == 20
    assert sample(text, "discovery_index_users") == 20
    assert sample(text, "discovery_index_loaded") == 1
    assert sample(text, "discovery_store_up") == 1
    assert sample(text, "discovery_live_subscribers") == 0
    assert sample(text, "discovery_index_memory_bytes") > 0
    for series in (
        "discovery_rpc_duration_seconds_bucket",
        "discovery_store_operation_seconds_bucket",
        "discovery_quota_rejections_total",
        "discovery_inbox_backlog_events_bucket",
    ):
        assert series in text
    assert "metric-user" not in text
    assert find_leaks(text.encode(), Needles.of(numbers, keys=server_keys(server.config.data_dir))) == []
    assert (
        find_leaks(
            log_capture.getvalue().encode(), Needles.of(numbers, keys=server_keys(server.config.data_dir))
        )
        == []
    )
