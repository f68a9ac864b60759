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
from discovery.config import NetworkOptions, ServerConfig
from discovery.core.directory import Directory
from discovery.core.hashing import KeyRing
from discovery.core.index_sync import IndexSync
from discovery.core.joins import Joins
from discovery.core.quota import DiscoverGate, Gate
from discovery.metrics import Metrics
from discovery.store import Store, open_store
from discovery.store.timed import timed_store
from discovery.tracing import Tracing
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


async def build(
    config: ServerConfig, authenticator: Authenticator | None = None, tracing: Tracing | None = None
) -> Service:
    """Build the service of ``config``; ``authenticator`` overrides the configured one (tests),
    ``tracing`` traces RPCs and store calls (off when None)."""
    tracing = tracing or Tracing()
    keys = KeyRing.from_secret(server_secret(config))
    authenticator = authenticator or build_authenticator(config)
    credentials = server_credentials(config.tls)
    metrics = Metrics()
    store = timed_store(
        await open_store(
            config.store_url,
            sqlite_synchronous=config.store.sqlite_synchronous,
            feed_retention=config.store.feed_retention_seconds,
            min_replicas=config.store.redis_min_replicas,
            replica_timeout=config.store.redis_replica_timeout_seconds,
        ),
        metrics.store_seconds,
        metrics.store_errors,
        tracing.store_tracer(),
    )
    sync = IndexSync(store)
    joins = Joins(store, keys, config.joins)
    gate = DiscoverGate(store, keys, config.quota, config.limits.max_hashes_per_request)
    directory = Directory(
        store, sync, keys, limits=config.limits, default_settings=config.defaults, gate=gate, joins=joins
    )
    health = HealthServicer()
    server = aio.server(
        # The tracing interceptor is outermost, so it sees the status CallInterceptor sets.
        interceptors=[
            *tracing.server_interceptors(),
            CallInterceptor(authenticator, observers=[metrics.observe_call]),
        ],
        options=grpc_options(config.network),
    )
    add_servicers(server, directory, joins, metrics, health)

    def bind() -> int:
        if credentials is not None:
            return int(server.add_secure_port(config.network.listen, credentials))
        return int(server.add_insecure_port(config.network.listen))

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


def grpc_options(config: NetworkOptions) -> list[tuple[str, int]]:
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
