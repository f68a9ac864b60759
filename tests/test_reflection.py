"""Server reflection: list the services, then call Discover with a client built only from the
reflected descriptors, as grpcurl would (no generated code on the client side)."""

from __future__ import annotations

import asyncio

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from discovery.app.server import DiscoveryServer
from discovery.core.hashing import contact_hash
from tests.support.auth_helpers import as_backend, as_user
from tests.support.server import StartServer


def reflected_calls(
    port: int, metadata_user: tuple[tuple[str, str], ...], metadata_admin: tuple[tuple[str, str], ...]
) -> tuple[list[str], list[int], list[str]]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)

        def call(
            service: str, method: str, fields: dict[str, object], metadata: tuple[tuple[str, str], ...]
        ) -> object:
            descriptor = pool.FindServiceByName(service).FindMethodByName(method)
            request_class = message_factory.GetMessageClass(descriptor.input_type)
            response_class = message_factory.GetMessageClass(descriptor.output_type)
            stub = channel.unary_unary(
                f"/{service}/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )
            return stub(request_class(**fields), metadata=metadata, timeout=5)

        number = contact_hash("+4915177777777")
        call(
            "discovery.v1.DirectoryAdminService",
            "RegisterUser",
            {"user_id": "refl", "contact_hash": number},
            metadata_admin,
        )
        response = call(
            "discovery.v1.DiscoveryService",
            "Discover",
            {"contact_hashes": contact_hash("+4915166666666") + number},
            metadata_user,
        )
        return services, list(response.match_indices), list(response.match_user_ids)  # type: ignore[attr-defined]


async def test_reflection_lists_services_and_drives_a_generic_client(start_server: StartServer) -> None:
    server: DiscoveryServer = await start_server(auth="jwt")
    services, indices, user_ids = await asyncio.to_thread(
        reflected_calls, server.port, as_user(server, "reflector"), as_backend(server)
    )
    assert {
        "discovery.v1.DiscoveryService",
        "discovery.v1.DirectoryAdminService",
        "discovery.v1.JoinNotificationService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= set(services)
    assert indices == [1] and user_ids == ["refl"]
