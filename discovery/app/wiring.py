"""The one place that builds the service from its configuration.

``build`` opens the store and assembles keys, index sync, joins, directory, quota gate,
interceptor and servicers into a frozen ``Service`` with no optional parts. Starting and
stopping it is ``app/server.py``'s job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from discovery.api.admin_service import DirectoryAdminService
from discovery.api.auth import API_SERVICES, Authenticator
from discovery.api.discovery_service import DiscoveryService
from discovery.api.health import HealthServicer
from discovery.api.interceptor import CallInterceptor
from discovery.api.joins_service import JoinNotificationService
from discovery.app.credentials import build_authenticator, server_credentials, server_secret
from discovery.config import ServerConfig
from discovery.core.directory import Directory, DirectoryLimits
from discovery.core.hashing import KeyRing
from discovery.core.index_sync import IndexSync
from discovery.core.joins import JoinPolicy, Joins
from discovery.core.model import AnnounceMode, PrivacySettings
from discovery.core.quota import DiscoverGate, Gate, QuotaPolicy
from discovery.metrics import Metrics
from discovery.store import Store, open_store
from discovery.store.timed import timed_store
from discovery.v1 import discovery_pb2_grpc, joins_pb2_grpc


@dataclass(frozen=True, slots=True)
class Service:
    """One assembled instance: every part exists; nothing is serving yet."""

    config: ServerConfig
    store: Store
    sync: IndexSync
    joins: Joins
    directory: Directory
    gate: Gate
    metrics: Metrics
    health: HealthServicer
    grpc_server: aio.Server
    tls: bool
    #: Adds the configured port (TLS or plaintext) to ``grpc_server``; returns it (0: failed).
    bind: Callable[[], int]


async def build(config: ServerConfig, authenticator: Authenticator | None = None) -> Service:
    """Build the service of ``config``; ``authenticator`` overrides the configured one (tests)."""
    keys = KeyRing.from_secret(server_secret(config))
    authenticator = authenticator or build_authenticator(config)
    credentials = server_credentials(config)
    metrics = Metrics()
    store = timed_store(
        await open_store(
            config.store_url,
            sqlite_synchronous=config.sqlite_synchronous,
            feed_retention=config.feed_retention_seconds,
        ),
        metrics.store_seconds,
        metrics.store_errors,
    )
    sync = IndexSync(store)
    joins = Joins(store, keys, join_policy(config))
    gate = DiscoverGate(store, keys, quota_policy(config), config.max_hashes_per_request)
    directory = Directory(
        store,
        sync,
        keys,
        limits=directory_limits(config),
        default_settings=default_settings(config),
        gate=gate,
        joins=joins,
    )
    health = HealthServicer()
    server = aio.server(
        interceptors=[CallInterceptor(authenticator, observers=[metrics.observe_call])],
        options=grpc_options(config),
    )
    add_servicers(server, directory, joins, metrics, health)

    def bind() -> int:
        if credentials is not None:
            return int(server.add_secure_port(config.listen, credentials))
        return int(server.add_insecure_port(config.listen))

    return Service(
        config, store, sync, joins, directory, gate, metrics, health, server, credentials is not None, bind
    )


def add_servicers(
    server: aio.Server, directory: Directory, joins: Joins, metrics: Metrics, health: HealthServicer
) -> None:
    discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(DiscoveryService(directory, metrics), server)
    discovery_pb2_grpc.add_DirectoryAdminServiceServicer_to_server(DirectoryAdminService(directory), server)
    joins_pb2_grpc.add_JoinNotificationServiceServicer_to_server(
        JoinNotificationService(joins, metrics), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [*API_SERVICES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )


def join_policy(config: ServerConfig) -> JoinPolicy:
    return JoinPolicy(
        watch_ttl=config.join_watch_ttl_seconds,
        watch_cap=config.join_watch_cap,
        inbox_ttl=config.join_inbox_ttl_seconds,
        sweep_interval=config.join_sweep_interval_seconds,
        page_size=config.join_page_size,
        max_subscribers=config.join_max_streams,
        max_streams_per_user=config.join_max_streams_per_user,
        release_jitter=config.join_release_jitter_seconds,
    )


def quota_policy(config: ServerConfig) -> QuotaPolicy:
    return QuotaPolicy(
        capacity=config.quota_capacity,
        refill_per_hour=config.quota_refill_per_hour,
        rate_burst=config.rate_limit_burst,
        rate_per_minute=config.rate_limit_per_minute,
        token_ttl=config.previous_token_ttl_seconds,
    )


def directory_limits(config: ServerConfig) -> DirectoryLimits:
    return DirectoryLimits(
        max_hashes_per_request=config.max_hashes_per_request, max_import_batch=config.max_import_batch
    )


def default_settings(config: ServerConfig) -> PrivacySettings:
    return PrivacySettings(
        discoverable=config.default_discoverable,
        announce_mode=AnnounceMode[config.default_announce_mode.upper()],
        notify_on_join=config.default_notify_on_join,
        announce_number_change=config.default_announce_number_change,
    )


def grpc_options(config: ServerConfig) -> list[tuple[str, int]]:
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
