"""Prometheus metrics. Labels are method names, status codes and operation names only:
never a user id, a number, a hash or a token.

Each server instance owns a CollectorRegistry, so several instances in one process
(tests) do not share counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _method_label(method: str) -> str:
    """``/discovery.v1.DiscoveryService/Discover`` -> ``DiscoveryService/Discover``."""
    service, _, name = method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


class Metrics:
    def __init__(self) -> None:
        self._call_series: dict[tuple[str, str], tuple[Counter, Histogram, Counter | None]] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.rpcs = Counter(
            "discovery_rpc_total", "RPCs handled, by method and status code", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            "discovery_rpc_duration_seconds",
            "RPC latency by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.contacts_checked = Counter(
            "discovery_contacts_checked_total", "contact hashes checked by Discover", registry=r
        )
        self.contacts_matched = Counter(
            "discovery_contacts_matched_total", "contact hashes that matched", registry=r
        )
        self.quota_rejections = Counter(
            "discovery_quota_rejections_total",
            "calls rejected with RESOURCE_EXHAUSTED, by method",
            ["method"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "discovery_store_operation_seconds",
            "store operation latency by operation",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "discovery_store_errors_total",
            "store operations that raised, by operation",
            ["operation"],
            registry=r,
        )
        self.index_users = Gauge("discovery_index_users", "users in the in-memory index", registry=r)
        self.index_memory = Gauge(
            "discovery_index_memory_bytes", "bytes held by the in-memory index", registry=r
        )
        self.index_loaded = Gauge(
            "discovery_index_loaded", "1 once the index is loaded and following the feed", registry=r
        )
        self.index_lag = Gauge(
            "discovery_index_sync_age_seconds",
            "seconds since the index last caught up with the feed",
            registry=r,
        )
        self.store_up = Gauge("discovery_store_up", "1 while the store answers health pings", registry=r)
        self.live_subscribers = Gauge("discovery_live_subscribers", "open SubscribeJoins streams", registry=r)
        self.inbox_backlog = Histogram(
            "discovery_inbox_backlog_events",
            "undelivered events found in an inbox when a stream (re)subscribes",
            buckets=(0, 1, 2, 5, 10, 50, 100, 500, 1000, 5000),
            registry=r,
        )
        self.private_missing_epoch = Gauge(
            "discovery_private_users_missing_epoch",
            "private mode: discoverable users whose stored entry lacks a record of the key epoch (the served "
            "and the next one; 0 for the next: the re-import has covered everyone)",
            ["epoch"],
            registry=r,
        )
        self.events_delivered = Counter(
            "discovery_join_events_delivered_total", "join events sent on streams", registry=r
        )

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        """One finished call: its full method name, its status code's name and its duration.
        The labelled series of each (method, code) are looked up once (the interceptor observes
        only methods the server serves, so the table stays small)."""
        series = self._call_series.get((method, code))
        if series is None:
            label = _method_label(method)
            quota = self.quota_rejections.labels(label) if code == "RESOURCE_EXHAUSTED" else None
            series = self.rpcs.labels(label, code), self.rpc_seconds.labels(label), quota
            self._call_series[(method, code)] = series
        calls, duration, rejections = series
        calls.inc()
        duration.observe(seconds)
        if rejections is not None:
            rejections.inc()

    def observe_discover(self, checked: int, matched: int) -> None:
        """One Discover answered: how many contact hashes it held and how many matched."""
        self.contacts_checked.inc(checked)
        self.contacts_matched.inc(matched)

    def gauge_from(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Make ``gauge`` read its value at scrape time."""
        gauge.set_function(read)

    def serve_http(self, listen: str) -> tuple[Any, int]:
        """Expose /metrics on ``host:port`` (port 0 picks one); returns the HTTP server and its port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(
            int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry
        )
        return server, int(server.server_address[1])
