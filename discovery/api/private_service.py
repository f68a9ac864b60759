"""PrivateDiscoveryService: private discovery mode (docs/private-mode.md). The caller is the call's principal.

Nothing here sees a contact hash or an OPRF output: requests hold blinded elements, cursors and bucket
ranges (two registered tags each) only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from discovery.api.auth import current_user_id
from discovery.core.private_index import PrivateDiscovery, PrivateParams
from discovery.v1 import private_pb2 as pb
from discovery.v1 import private_pb2_grpc as pb_grpc


class PrivateDiscoveryService(pb_grpc.PrivateDiscoveryServiceServicer):
    def __init__(self, private: PrivateDiscovery) -> None:
        self._private = private

    async def GetPrivateParams(
        self, request: pb.GetPrivateParamsRequest, context: aio.ServicerContext
    ) -> pb.GetPrivateParamsResponse:
        current_user_id()
        return params_response(await self._private.params())

    async def EvaluateBlinded(
        self, request: pb.EvaluateBlindedRequest, context: aio.ServicerContext
    ) -> pb.EvaluateBlindedResponse:
        evaluated, proof = await self._private.evaluate(
            current_user_id(), request.blinded_elements, request.epoch
        )
        return pb.EvaluateBlindedResponse(
            evaluated_elements=evaluated, proof=proof, epoch=self._private.key.epoch
        )

    async def GetPrivateSnapshot(
        self, request: pb.GetPrivateSnapshotRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.GetPrivateSnapshotResponse]:
        current_user_id()
        total, chunks = await self._private.snapshot_chunks(request.max_chunk_bytes)
        for chunk in chunks:
            yield pb.GetPrivateSnapshotResponse(chunk=chunk, total_bytes=total)

    async def GetPrivateDelta(
        self, request: pb.GetPrivateDeltaRequest, context: aio.ServicerContext
    ) -> pb.GetPrivateDeltaResponse:
        current_user_id()
        delta = await self._private.delta(request.epoch, request.cursor, request.with_sealed_ids)
        if delta is None:
            return pb.GetPrivateDeltaResponse(reset=True)
        return pb.GetPrivateDeltaResponse(delta=delta.serialize())

    async def SubscribePrivateDeltas(
        self, request: pb.SubscribePrivateDeltasRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribePrivateDeltasResponse]:
        current_user_id()
        deltas = self._private.deltas(request.epoch, request.cursor, request.with_sealed_ids)
        async for delta in deltas:
            if delta is None:
                yield pb.SubscribePrivateDeltasResponse(reset=True)
            else:
                yield pb.SubscribePrivateDeltasResponse(delta=delta.serialize())

    async def GetPrivateBuckets(
        self, request: pb.GetPrivateBucketsRequest, context: aio.ServicerContext
    ) -> pb.GetPrivateBucketsResponse:
        current_user_id()
        return pb.GetPrivateBucketsResponse(buckets=await self._private.buckets(list(request.ranges)))


def params_response(p: PrivateParams) -> pb.GetPrivateParamsResponse:
    return pb.GetPrivateParamsResponse(
        epoch=p.epoch,
        public_key=p.public_key,
        suite=p.suite,
        bucket_users=p.bucket_users,
        bucket_capacity=p.bucket_capacity,
        id_pad=p.id_pad,
        snapshot_has_sealed_ids=p.with_sealed_ids,
        max_blinded_per_request=p.max_blinded,
        cursor=p.cursor,
    )
