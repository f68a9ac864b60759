"""DiscoveryService: the client-facing servicer. The caller is always the call's principal."""

from __future__ import annotations

import grpc
from google.protobuf.message_factory import GetMessageClass
from grpc import aio

from discovery.api.auth import current_user_id
from discovery.api.convert import export_to_pb, settings_to_pb, settings_update_from_pb
from discovery.api.discover_wire import USER_ID_PREFIX, DiscoverCall, decode_request, encode_response
from discovery.core.directory import Directory
from discovery.metrics import Metrics
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc


class DiscoveryService(pb_grpc.DiscoveryServiceServicer):
    def __init__(self, directory: Directory, metrics: Metrics) -> None:
        self._directory = directory
        self._metrics = metrics

    async def Discover(  # type: ignore[override]  # answers bytes: see method_handlers
        self, request: DiscoverCall, context: aio.ServicerContext
    ) -> bytes:
        """The request comes decoded by api/discover_wire.py and the answer goes out as the
        serialised DiscoverResponse: see :func:`method_handlers`."""
        result = await self._directory.discover(
            current_user_id(),
            request.contact_hashes,
            request.previous_contact_hashes,
            request.previous_token,
            id_prefix=USER_ID_PREFIX,
        )
        self._metrics.observe_discover(result.checked, len(result.positions))
        return encode_response(result)

    async def GetSettings(
        self, request: pb.GetSettingsRequest, context: aio.ServicerContext
    ) -> pb.GetSettingsResponse:
        settings = await self._directory.get_settings(current_user_id())
        return pb.GetSettingsResponse(settings=settings_to_pb(settings))

    async def UpdateSettings(
        self, request: pb.UpdateSettingsRequest, context: aio.ServicerContext
    ) -> pb.UpdateSettingsResponse:
        wanted, mask = settings_update_from_pb(request.settings, list(request.update_mask))
        settings = await self._directory.update_settings(current_user_id(), wanted, mask)
        return pb.UpdateSettingsResponse(settings=settings_to_pb(settings))

    async def DeleteMyData(
        self, request: pb.DeleteMyDataRequest, context: aio.ServicerContext
    ) -> pb.DeleteMyDataResponse:
        removed, settings = await self._directory.delete_my_data(
            current_user_id(), request.disable_notify_on_join
        )
        response = pb.DeleteMyDataResponse(records_deleted=removed)
        if settings is not None:
            response.settings.CopyFrom(settings_to_pb(settings))
        return response

    async def ExportMyData(
        self, request: pb.ExportMyDataRequest, context: aio.ServicerContext
    ) -> pb.ExportMyDataResponse:
        return export_to_pb(await self._directory.export_my_data(current_user_id()))


#: Methods decoded and encoded by api/discover_wire.py: the servicer takes the decoded fields and
#: answers with the serialised response (bytes) rather than a message.
HAND_ENCODED = frozenset({"Discover"})
SERVICE = pb.DESCRIPTOR.services_by_name["DiscoveryService"]


def method_handlers(servicer: DiscoveryService) -> dict[str, grpc.RpcMethodHandler]:
    """The service's handlers, as the generated ``add_DiscoveryServiceServicer_to_server`` makes
    them, except that a HAND_ENCODED method's request is decoded by api/discover_wire.py and its
    answer goes out as it is."""
    handlers = {}
    for name, method in SERVICE.methods_by_name.items():
        if method.client_streaming or method.server_streaming:
            raise TypeError(f"{name}: only unary methods are registered here")
        decode, encode = (
            (decode_request, None)
            if name in HAND_ENCODED
            else (
                GetMessageClass(method.input_type).FromString,
                GetMessageClass(method.output_type).SerializeToString,
            )
        )
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=decode, response_serializer=encode
        )
    return handlers


def add_to_server(servicer: DiscoveryService, server: aio.Server) -> None:
    handlers = method_handlers(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
