"""The standard gRPC health service (``grpc.health.v1.Health``), with Watch streams that end
at shutdown.

grpc's reference servicer keeps every ``Watch`` stream open until the server cancels it,
so one client doing client-side health checking would hold each graceful shutdown for
the whole grace period. Here a Watch stream first sends ``NOT_SERVING`` and then ends
cleanly (status OK) once :meth:`HealthServicer.end_watches` is called, when the server
stops accepting calls. ``Check`` and the statuses behave as in the reference servicer.
"""

from __future__ import annotations

import asyncio

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discovery.core.errors import NotFound, Reason

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {"": SERVING}
        self._changed = asyncio.Event()
        self._shutting_down = False
        self._ended = False

    def status(self, service: str = "") -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
        return self._status.get(service, SERVICE_UNKNOWN)

    async def set(self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        """Set a service's status; ignored once the graceful shutdown began."""
        if self._shutting_down:
            return
        self._status[service] = status
        self._notify()

    async def enter_graceful_shutdown(self) -> None:
        """Every service is NOT_SERVING from now on, whatever is set later."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for service in self._status:
            self._status[service] = NOT_SERVING
        self._notify()

    def end_watches(self) -> None:
        """End every Watch stream (after it sent the current status), and the later ones at once."""
        self._ended = True
        self._notify()

    def _notify(self) -> None:
        """Wake every watcher: each waits on the event that was current when it last looked."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            raise NotFound("unknown service", "service", reason=Reason.SERVICE_UNKNOWN)
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext) -> None:
        sent: health_pb2.HealthCheckResponse.ServingStatus.ValueType | None = None
        while True:
            changed = self._changed
            status = self.status(request.service)
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
                continue  # it may have changed again while the write waited
            if self._ended:
                return
            await changed.wait()
