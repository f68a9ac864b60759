"""Assembly and lifecycle of one service instance.

start(): bind, report NOT_SERVING, open the store, load the index, then SERVING.
stop():  NOT_SERVING, stop accepting calls, drain within the grace period, close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from discovery.api.admin_service import DirectoryAdminService
from discovery.api.auth import ADMIN_SERVICE, CLIENT_SERVICE, Authenticator
from discovery.api.discovery_service import DiscoveryService
from discovery.api.health import HealthServicer
from discovery.api.interceptor import CallInterceptor
from discovery.api.joins_service import JoinNotificationService
from discovery.config import ServerConfig
from discovery.core.directory import Directory, DirectoryLimits
from discovery.core.hashing import KeyRing
from discovery.core.joins import JoinPolicy, Joins
from discovery.core.model import Settings
from discovery.core.quota import DiscoverGate
from discovery.index.sync import IndexSync
from discovery.metrics import Metrics
from discovery.security import build_authenticator, is_loopback, quota_policy, server_credentials
from discovery.server_secret import load_or_create_secret, secret_from_env
from discovery.store import Store, open_store
from discovery.store.timed import timed_store
from discovery.tracing import Tracing
from discovery.v1 import discovery_pb2, discovery_pb2_grpc, joins_pb2, joins_pb2_grpc

log = logging.getLogger("discovery.server")

JOIN_SERVICE = joins_pb2.DESCRIPTOR.services_by_name["JoinNotificationService"].full_name
SERVICE_NAMES = (CLIENT_SERVICE, ADMIN_SERVICE, JOIN_SERVICE)


class DiscoveryServer:
    def __init__(
        self, config: ServerConfig, authenticator: Authenticator | None = None, tracing: Tracing | None = None
    ) -> None:
        self.config = config
        self.tracing = tracing or Tracing()  # off
        self.authenticator = authenticator  # None: from the config, at start()
        self.port = 0
        self.store: Store | None = None
        self.sync: IndexSync | None = None
        self.directory: Directory | None = None
        self.joins: Joins | None = None
        self.health = HealthServicer()
        self.metrics = Metrics()
        self.metrics_port = 0
        self.store_healthy = False
        self._metrics_http: Any = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._server: aio.Server | None = None
        self._stop_follow = asyncio.Event()
        self._follow_task: asyncio.Task[None] | None = None
        self._stopped = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> int:
        config = self.config
        keys = KeyRing.from_secret(self._secret())
        if self.authenticator is None:
            self.authenticator = build_authenticator(config)
        credentials = server_credentials(config)
        self.store = timed_store(
            await open_store(
                config.store_url,
                sqlite_synchronous=config.sqlite_synchronous,
                feed_retention=config.feed_retention_seconds,
            ),
            self.metrics.store_seconds,
            self.metrics.store_errors,
            self.tracing.store_tracer(),
        )
        self.store_healthy = True
        self.sync = IndexSync(self.store)
        self.joins = Joins(
            self.store,
            keys,
            JoinPolicy(
                watch_ttl=config.join_watch_ttl_seconds,
                watch_cap=config.join_watch_cap,
                inbox_ttl=config.join_inbox_ttl_seconds,
                sweep_interval=config.join_sweep_interval_seconds,
                page_size=config.join_page_size,
                max_subscribers=config.join_max_streams,
                max_streams_per_user=config.join_max_streams_per_user,
            ),
        )
        self.directory = Directory(
            self.store,
            self.sync,
            keys,
            limits=DirectoryLimits(
                max_hashes_per_request=config.max_hashes_per_request,
                max_import_batch=config.max_import_batch,
            ),
            default_settings=Settings(
                discoverable=config.default_discoverable,
                announce_join=config.default_announce_join,
                notify_on_join=config.default_notify_on_join,
            ),
            gate=DiscoverGate(self.store, keys, quota_policy(config), config.max_hashes_per_request),
            joins=self.joins,
        )
        server = aio.server(
            interceptors=[
                *self.tracing.server_interceptors(),
                CallInterceptor(self.authenticator, observers=[self.metrics.observe_call]),
            ],
            options=self._grpc_options(),
        )
        discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(
            DiscoveryService(self.directory, self.metrics), server
        )
        discovery_pb2_grpc.add_DirectoryAdminServiceServicer_to_server(
            DirectoryAdminService(self.directory), server
        )
        joins_pb2_grpc.add_JoinNotificationServiceServicer_to_server(
            JoinNotificationService(self.joins, self.metrics), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                discovery_pb2.DESCRIPTOR.services_by_name["DiscoveryService"].full_name,
                discovery_pb2.DESCRIPTOR.services_by_name["DirectoryAdminService"].full_name,
                JOIN_SERVICE,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        await self._set_serving(False)
        if credentials is not None:
            self.port = server.add_secure_port(config.listen, credentials)
        else:
            self.port = server.add_insecure_port(config.listen)
        if self.port == 0:
            raise OSError(f"could not bind {config.listen}")
        await server.start()
        self._server = server
        log.info("listening", extra={"event": "listening", "port": self.port, "listen": config.listen})
        await self.sync.load()
        self._follow_task = asyncio.create_task(self.sync.follow(self._stop_follow), name="index-follow")
        self.joins.start()
        self._watch_gauges()
        if config.metrics_listen:
            self._metrics_http, self.metrics_port = self.metrics.serve_http(config.metrics_listen)
            log.info("metrics", extra={"event": "metrics_listening", "port": self.metrics_port})
        await self._set_serving(True)
        self._monitor_task = asyncio.create_task(self._monitor_store(), name="store-monitor")
        if config.port_file:
            Path(config.port_file).write_text(f"{self.port}\n")
        log.info("serving", extra={"event": "serving", "port": self.port, "users": len(self.sync.index)})
        self._log_security(credentials is not None)
        return self.port

    def _log_security(self, tls: bool) -> None:
        """Say how callers authenticate, and how to get a development token."""
        config = self.config
        extra: dict[str, object] = {"event": "auth", "auth": config.auth, "tls": tls}
        if config.auth == "jwt" and config.jwt_algorithm == "HS256" and not config.jwt_secret_env:
            where = (
                f" --jwt-secret-file {config.jwt_secret_file}"
                if config.jwt_secret_file
                else f" --data-dir {config.data_dir}"
            )
            extra["hint"] = (
                f"mint a development token with: discovery token --sub USER_ID{where} "
                f"(backends: --scope directory:write)"
            )
        log.info("authentication", extra=extra)
        if not tls and not is_loopback(config.listen):
            log.warning(
                "serving without TLS on a non-loopback address: bearer tokens cross the network in clear",
                extra={"event": "no_tls"},
            )

    def _grpc_options(self) -> list[tuple[str, int]]:
        config = self.config
        options = [
            ("grpc.max_receive_message_length", config.max_receive_message_bytes),
            ("grpc.max_metadata_size", config.max_metadata_bytes),
            ("grpc.so_reuseport", 0),
            # Ping idle connections so the streams of vanished clients are released.
            ("grpc.keepalive_time_ms", int(config.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.http2.max_pings_without_data", 0),
        ]
        if config.max_connection_age_seconds > 0:
            # Connections are recycled (GOAWAY) so load spreads over new instances; the SDK
            # resumes join streams from their cursor.
            options += [
                ("grpc.max_connection_age_ms", int(config.max_connection_age_seconds * 1000)),
                ("grpc.max_connection_age_grace_ms", int(config.max_connection_age_grace_seconds * 1000)),
            ]
        return options

    def _watch_gauges(self) -> None:
        """Gauges read at scrape time from the live objects."""
        sync, joins, metrics = self.sync, self.joins, self.metrics
        assert sync is not None and joins is not None
        metrics.gauge_from(metrics.index_users, lambda: len(sync.index))
        metrics.gauge_from(metrics.index_memory, lambda: sync.index.memory_bytes())
        metrics.gauge_from(metrics.index_loaded, lambda: 1.0 if sync.loaded else 0.0)
        metrics.gauge_from(
            metrics.index_lag, lambda: time.monotonic() - sync.last_sync if sync.last_sync else 0.0
        )
        metrics.gauge_from(metrics.store_up, lambda: 1.0 if self.store_healthy else 0.0)
        metrics.gauge_from(metrics.live_subscribers, lambda: len(joins.hub))

    async def _monitor_store(self) -> None:
        """Ping the store; NOT_SERVING while it cannot be reached, SERVING again once it can."""
        assert self.store is not None
        interval = self.config.store_check_seconds
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(self.store.ping(), timeout=max(interval, 1.0))
                healthy = True
            except asyncio.CancelledError:
                raise
            except Exception as error:
                healthy = False
                reason = type(error).__name__
            if healthy != self.store_healthy:
                self.store_healthy = healthy
                if healthy:
                    log.info("store reachable again", extra={"event": "store_up"})
                else:
                    log.warning("store unreachable", extra={"event": "store_down", "error": reason})
                await self._set_serving(healthy)

    def _secret(self) -> bytes:
        if self.config.secret_env:
            return secret_from_env(self.config.secret_env)
        return load_or_create_secret(self.config.secret_path)

    async def _set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: NOT_SERVING, stop accepting, drain in-flight calls, then close the store."""
        if self._server is None:
            return
        grace = self.config.grace_seconds if grace is None else grace
        log.info("stopping", extra={"event": "stopping", "grace_seconds": grace})
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor_task
        await self._set_serving(False)
        if self.config.shutdown_delay_seconds > 0:
            # Keep answering while load balancers and health polls see NOT_SERVING.
            await asyncio.sleep(self.config.shutdown_delay_seconds)
        await self.health.enter_graceful_shutdown()
        if self.joins is not None:
            self.joins.end_streams()  # join streams never end by themselves; clients resume
        self.health.end_watches()  # Watch streams got NOT_SERVING; they must not hold the drain
        await self._server.stop(grace)
        self._server = None
        self._stop_follow.set()
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
        if self.joins is not None:
            await self.joins.close()
        if self.store is not None:
            await self.store.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        self._stopped.set()
        log.info("stopped", extra={"event": "stopped"})

    async def wait(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig, tracing: Tracing | None = None) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    server = DiscoveryServer(config, tracing=tracing)
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    await server.start()
    await stop_requested.wait()
    await server.stop()
    server.tracing.shutdown()  # exports the last spans


def _age(since: float) -> float:
    return time.monotonic() - since if since else 0.0
