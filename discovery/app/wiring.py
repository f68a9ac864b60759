"""The one place that builds the service from its configuration.

``build`` opens the store and assembles keys, index sync, joins, directory, quota gate,
interceptor and servicers into a frozen ``Service`` with no optional parts. Starting and
stopping it is ``app/server.py``'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from discovery.api.admin_service import DirectoryAdminService
from discovery.api.auth import API_SERVICES, PRIVATE_SERVICE, Authenticator
from discovery.api.discovery_service import DiscoveryService
from discovery.api.discovery_service import add_to_server as add_discovery_service
from discovery.api.health import HealthServicer
from discovery.api.interceptor import CallInterceptor
from discovery.api.joins_service import JoinNotificationService
from discovery.api.private_service import PrivateDiscoveryService
from discovery.app.credentials import build_authenticator, server_credentials, server_secret
from discovery.config import NetworkOptions, PrivateOptions, ServerConfig
from discovery.core.directory import Directory
from discovery.core.hashing import KeyRing
from discovery.core.index_sync import IndexSync
from discovery.core.joins import Joins
from discovery.core.private import OffLoopEvaluator, OprfKey
from discovery.core.private_index import PrivateDiscovery, PrivateIndex
from discovery.core.quota import DiscoverGate, Gate
from discovery.metrics import Metrics
from discovery.store import Store, open_store
from discovery.store.timed import timed_store
from discovery.tracing import Tracing
from discovery.v1 import discovery_pb2_grpc, joins_pb2_grpc, private_pb2_grpc


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
    #: Private discovery mode, when the config turns it on.
    private: PrivateDiscovery | None
    #: The API services served (health reports each of them).
    services: tuple[str, ...]
    #: Adds the configured port (TLS or plaintext) to ``grpc_server``; returns it (0: failed).
    bind: Callable[[], int]


async def build(
    config: ServerConfig, authenticator: Authenticator | None = None, tracing: Tracing | None = None
) -> Service:
    """Build the service of ``config``; ``authenticator`` overrides the configured one (tests),
    ``tracing`` traces RPCs and store calls (off when None)."""
    tracing = tracing or Tracing()
    secret = server_secret(config)
    keys = KeyRing.from_secret(secret)
    authenticator = authenticator or build_authenticator(config)
    credentials = server_credentials(config.tls)
    metrics = Metrics()
    store = await build_store(config, metrics, tracing)
    sync = IndexSync(store)
    joins = Joins(store, keys, config.joins)
    gate = DiscoverGate(store, keys, config.quota, config.limits.max_hashes_per_request)
    private = build_private(config.private, store, secret, gate)
    directory = Directory(
        store,
        sync,
        keys,
        limits=config.limits,
        default_settings=config.defaults,
        gate=gate,
        joins=joins,
        private=None if private is None else private.registrar(),
    )
    health = HealthServicer()
    server = aio.server(
        # The tracing interceptor is outermost, so it sees the status CallInterceptor sets.
        interceptors=[
            *tracing.server_interceptors(),
            CallInterceptor(authenticator, observers=[metrics.observe_call]),
        ],
        options=grpc_options(config.network, config.joins.max_subscribers),
    )
    add_servicers(server, directory, joins, metrics, health, private)

    def bind() -> int:
        if credentials is not None:
            return int(server.add_secure_port(config.network.listen, credentials))
        return int(server.add_insecure_port(config.network.listen))

    services = API_SERVICES if private is None else (*API_SERVICES, PRIVATE_SERVICE)
    return Service(
        config,
        store,
        sync,
        joins,
        directory,
        gate,
        metrics,
        health,
        server,
        credentials is not None,
        private,
        services,
        bind,
    )


async def build_store(config: ServerConfig, metrics: Metrics, tracing: Tracing) -> Store:
    """The configured store, timed for the metrics and traced."""
    opened = await open_store(
        config.store_url,
        sqlite_synchronous=config.store.sqlite_synchronous,
        feed_retention=config.store.feed_retention_seconds,
        min_replicas=config.store.redis_min_replicas,
        replica_timeout=config.store.redis_replica_timeout_seconds,
    )
    return timed_store(opened, metrics.store_seconds, metrics.store_errors, tracing.store_tracer())


def build_private(
    options: PrivateOptions, store: Store, secret: bytes, gate: Gate
) -> PrivateDiscovery | None:
    if not options.enabled:
        return None
    # A new epoch is a new key: every entry needs a record of it, computed from the contact hashes that
    # only registration and ImportUsers carry (docs/private-mode.md, "Key epochs").
    key = OprfKey.from_secret(secret, options.key_epoch)
    next_key = OprfKey.from_secret(secret, options.next_key_epoch) if options.next_key_epoch else None
    index = PrivateIndex(
        store,
        key.epoch,
        next_epoch=options.next_key_epoch,
        id_pad=options.id_pad,
        jitter=options.jitter_seconds,
        small_directory_max=options.snapshot_ids_max,
        bucket_min_users=options.bucket_min_users,
    )
    return PrivateDiscovery(index, key, OffLoopEvaluator(), gate, next_key=next_key)


class GenericHandlersOnly:
    """The server as the generated ``add_*Servicer_to_server`` functions see it: their generic
    handlers are added, their registered methods are not.

    grpc.aio's accept loop (1.85) keeps one pending request per registered method and waits on
    all of them, with ``asyncio.wait``, for every incoming call: with the ~17 methods of these
    services that wait was about 100,000 instructions of a Discover call's 2.1 million (bench
    server_callgrind). Generic handlers find the method by name instead (one dict lookup per
    service), and the loop then waits on one request, as the echo ceiling of the benchmarks does."""

    def __init__(self, server: aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        """Not registered: see the class docstring."""


def add_servicers(
    server: aio.Server,
    directory: Directory,
    joins: Joins,
    metrics: Metrics,
    health: HealthServicer,
    private: PrivateDiscovery | None = None,
) -> None:
    # The hot service first: generic handlers are asked in the order they were added.
    generic = cast(aio.Server, GenericHandlersOnly(server))
    add_discovery_service(DiscoveryService(directory, metrics), generic)
    discovery_pb2_grpc.add_DirectoryAdminServiceServicer_to_server(DirectoryAdminService(directory), generic)
    joins_pb2_grpc.add_JoinNotificationServiceServicer_to_server(
        JoinNotificationService(joins, metrics), generic
    )
    services = list(API_SERVICES)
    if private is not None:
        private_pb2_grpc.add_PrivateDiscoveryServiceServicer_to_server(
            PrivateDiscoveryService(private), generic
        )
        services.append(PRIVATE_SERVICE)
    health_pb2_grpc.add_HealthServicer_to_server(health, generic)
    names = [*services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    # What ``reflection.enable_server_reflection`` does for an aio server (it tells one by type).
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, generic)


#: gRPC's own defaults for calls that arrived but that the application has not taken yet.
GRPC_DEFAULT_MAX_PENDING = 1000


def max_pending_requests(max_streams: int) -> tuple[int, int]:
    """The soft and hard limits of gRPC's queue of calls not yet taken by the application.

    Beyond the soft limit gRPC drops new calls at random (more of them nearer the hard
    limit), and the client sees CANCELLED with no log line or metric on the server. The
    asyncio server takes calls one loop turn at a time, so a burst of streams (every client
    resubscribing after a restart) fills the queue: with gRPC's defaults (1,000 and 3,000)
    about 10% of 2,000 SubscribeJoins streams opened at once were lost. The soft limit is
    therefore the number of streams the instance accepts, so such a burst is never dropped,
    and the hard limit twice that; a pending call costs a few hundred bytes.
    """
    soft = max(max_streams, GRPC_DEFAULT_MAX_PENDING)
    return soft, 2 * soft


def grpc_options(config: NetworkOptions, max_streams: int) -> list[tuple[str, int]]:
    pending, pending_hard_limit = max_pending_requests(max_streams)
    options = [
        ("grpc.max_receive_message_length", config.max_receive_message_bytes),
        # The soft limit alone refuses only some requests between it and gRPC's hard limit
        # (at random); both make --max-metadata-bytes the cap it says it is.
        ("grpc.max_metadata_size", config.max_metadata_bytes),
        ("grpc.absolute_max_metadata_size", config.max_metadata_bytes),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending_hard_limit),
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
