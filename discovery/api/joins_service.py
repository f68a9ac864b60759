"""JoinNotificationService: the client-facing servicer for join notifications.

The caller is the call's principal. ``SubscribeJoins`` is a plain async generator: each
``yield`` waits for gRPC flow control, so a slow client holds back the reads of its own
stream (one page at most) instead of growing a buffer on the server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from google.protobuf import timestamp_pb2
from grpc import aio

from discovery.api.auth import current_user_id
from discovery.core.joins import JoinBatch, Joins
from discovery.metrics import Metrics
from discovery.v1 import joins_pb2 as pb
from discovery.v1 import joins_pb2_grpc as pb_grpc


def batch_to_pb(batch: JoinBatch) -> pb.SubscribeJoinsResponse:
    events = []
    for event in batch.events:
        joined_at = timestamp_pb2.Timestamp()
        joined_at.FromNanoseconds(int(event.joined_at * 1e9))
        events.append(
            pb.JoinEvent(
                event_id=event.event_id,
                cursor=event.cursor,
                user_id=event.user_id,
                contact_hash_prefix=event.contact_prefix,
                joined_at=joined_at,
            )
        )
    return pb.SubscribeJoinsResponse(
        events=events,
        caught_up=batch.caught_up,
        epoch=batch.epoch,
        resumed_after_cursor=batch.resumed_after or 0,
    )


class JoinNotificationService(pb_grpc.JoinNotificationServiceServicer):
    def __init__(self, joins: Joins, metrics: Metrics) -> None:
        self._joins = joins
        self._metrics = metrics

    async def SubscribeJoins(
        self, request: pb.SubscribeJoinsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.SubscribeJoinsResponse]:
        backlog = 0
        replaying = True
        async for batch in self._joins.subscribe(
            current_user_id(), request.device_id, request.after_cursor, request.after_epoch
        ):
            self._metrics.events_delivered.inc(len(batch.events))
            if replaying:
                backlog += len(batch.events)
                if batch.caught_up:
                    self._metrics.inbox_backlog.observe(backlog)
                    replaying = False
            yield batch_to_pb(batch)

    async def AckJoins(
        self, request: pb.AckJoinsRequest, context: aio.ServicerContext
    ) -> pb.AckJoinsResponse:
        deleted = await self._joins.ack(current_user_id(), request.device_id, request.cursor, request.epoch)
        return pb.AckJoinsResponse(events_deleted=deleted)
