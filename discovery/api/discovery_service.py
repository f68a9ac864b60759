"""DiscoveryService: the client-facing servicer. The caller is always the call's principal."""

from __future__ import annotations

from grpc import aio

from discovery.api.auth import current_user_id
from discovery.api.convert import export_to_pb, settings_to_pb, settings_update_from_pb
from discovery.api.padding import pad
from discovery.core.directory import Directory
from discovery.metrics import Metrics
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc


class DiscoveryService(pb_grpc.DiscoveryServiceServicer):
    def __init__(self, directory: Directory, metrics: Metrics) -> None:
        self._directory = directory
        self._metrics = metrics

    async def Discover(
        self, request: pb.DiscoverRequest, context: aio.ServicerContext
    ) -> pb.DiscoverResponse:
        result = await self._directory.discover(
            current_user_id(), request.contact_hashes, request.previous_contact_hashes, request.previous_token
        )
        self._metrics.observe_discover(result.checked, len(result.positions))
        response = pb.DiscoverResponse(
            match_indices=result.positions, match_user_ids=result.user_ids, token=result.token
        )
        return pad(response, result.checked)

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
