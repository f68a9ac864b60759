"""One server interceptor around every call: authentication, error mapping, call logging.

It wraps each handler's behaviour instead of short-circuiting with a separate
handler, so the principal it sets in a context variable is visible to the
servicer, and domain errors raised anywhere below become one clear status.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from discovery.api.auth import Audience, Authenticator, audience_of, set_principal
from discovery.api.errors import internal_status, status_for
from discovery.core.errors import DeadlineExceeded, DomainError, InvalidArgument

log = logging.getLogger("discovery.api")

Behaviour = Callable[..., Any]


class CallOutcome:
    """What the interceptor learned of one call; observers (metrics) read it."""

    __slots__ = ("code", "metadata", "method", "request_id", "started")

    def __init__(self, method: str, metadata: dict[str, str | bytes]) -> None:
        self.method = method
        self.metadata = metadata
        self.request_id = _request_id(metadata.get("x-request-id"))
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()


#: Told of every finished call: its full method name, its status code's name, its duration.
CallObserver = Callable[[str, str, float], None]

_REQUEST_ID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


def _request_id(supplied: str | bytes | None) -> str:
    """The caller's ``x-request-id`` when it is a UUID, else a new one. Request ids are logged,
    so free text from a client (which could hold a number or a token) is never taken."""
    if isinstance(supplied, str) and _REQUEST_ID.fullmatch(supplied):
        return supplied
    return uuid.uuid4().hex


class CallInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, authenticator: Authenticator, observers: list[CallObserver] | None = None) -> None:
        self._authenticator = authenticator
        self._observers = observers or []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or audience_of(details.method) is Audience.PUBLIC:
            return handler
        return self._wrap(handler, details.method)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        decode = _tolerant(handler.request_deserializer)
        encode = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(_checked_unary(handler.unary_unary), method),
                request_deserializer=decode,
                response_serializer=encode,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(_checked_stream(handler.stream_unary), method),
                request_deserializer=decode,
                response_serializer=encode,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(_checked_unary_streaming(handler.unary_stream), method),
                request_deserializer=decode,
                response_serializer=encode,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._streaming(_checked_stream_streaming(handler.stream_stream), method),
            request_deserializer=decode,
            response_serializer=encode,
        )

    def _unary(self, behaviour: Behaviour, method: str) -> Behaviour:
        async def call(request: Any, context: aio.ServicerContext) -> Any:
            outcome = self._begin(method, context)
            try:
                self._authenticate(outcome, context)
                # The work stops at the caller's deadline: cancellation reaches the store,
                # which drops or interrupts what it was doing for this call.
                async with asyncio.timeout(context.time_remaining()):
                    return await behaviour(request, context)
            except asyncio.CancelledError:
                outcome.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                await self._fail(outcome, context, error)
            finally:
                self._observe(outcome)

        return call

    def _streaming(self, behaviour: Behaviour, method: str) -> Behaviour:
        async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            outcome = self._begin(method, context)
            try:
                self._authenticate(outcome, context)
                async for item in behaviour(request, context):
                    yield item
            except asyncio.CancelledError:
                outcome.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as error:
                await self._fail(outcome, context, error)
            finally:
                self._observe(outcome)

        return call

    def _begin(self, method: str, context: aio.ServicerContext) -> CallOutcome:
        outcome = CallOutcome(method, {key: value for key, value in context.invocation_metadata() or ()})
        context.set_trailing_metadata((("x-request-id", outcome.request_id),))
        return outcome

    def _authenticate(self, outcome: CallOutcome, context: aio.ServicerContext) -> None:
        """Set the call's principal, visible to the servicer through a context variable."""
        set_principal(
            self._authenticator.authenticate(outcome.method, outcome.metadata, context.auth_context())
        )

    async def _fail(self, outcome: CallOutcome, context: aio.ServicerContext, error: Exception) -> None:
        """Abort the call with the status for ``error``; an abort already under way passes through."""
        if isinstance(error, aio.AbortError):
            raise error
        if isinstance(error, TimeoutError):
            error = DeadlineExceeded("the call's deadline passed before it completed")
        if isinstance(error, DomainError):
            status = status_for(error)
            log.info(
                "call rejected",
                extra={
                    "event": "call_rejected",
                    "method": outcome.method,
                    "request_id": outcome.request_id,
                    "code": status.code.name,
                    "error": type(error).__name__,
                },
            )
        else:
            status = internal_status()
            log.error(
                "call failed",
                extra={
                    "event": "call_failed",
                    "method": outcome.method,
                    "request_id": outcome.request_id,
                    "error": type(error).__name__,
                },
                exc_info=True,
            )
        outcome.code = status.code
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _observe(self, outcome: CallOutcome) -> None:
        seconds = time.perf_counter() - outcome.started
        for observer in self._observers:
            observer(outcome.method, outcome.code.name, seconds)


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message, so the call can
    answer INVALID_ARGUMENT with details instead of the transport's bare INTERNAL."""


UNDECODABLE = _Undecodable()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    decode = deserializer

    def tolerant(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception:
            return UNDECODABLE

    return tolerant


def _check(request: Any) -> Any:
    if request is UNDECODABLE:
        raise InvalidArgument.field("request", "the request bytes are not a valid message of this method")
    return request


async def _checked_iterator(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _check(request)


def _checked_unary(behaviour: Behaviour) -> Behaviour:
    async def call(request: Any, context: aio.ServicerContext) -> Any:
        return await behaviour(_check(request), context)

    return call


def _checked_stream(behaviour: Behaviour) -> Behaviour:
    async def call(requests: AsyncIterator[Any], context: aio.ServicerContext) -> Any:
        return await behaviour(_checked_iterator(requests), context)

    return call


def _checked_unary_streaming(behaviour: Behaviour) -> Behaviour:
    async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in behaviour(_check(request), context):
            yield item

    return call


def _checked_stream_streaming(behaviour: Behaviour) -> Behaviour:
    async def call(requests: AsyncIterator[Any], context: aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in behaviour(_checked_iterator(requests), context):
            yield item

    return call
