"""One server interceptor around every call: authentication, error mapping, call logging.

It wraps each handler's behaviour instead of short-circuiting with a separate
handler, so the principal it sets in a context variable is visible to the
servicer, and domain errors raised anywhere below become one clear status.

Every call, the public health and reflection services included, gets the same
treatment: undecodable request bytes are INVALID_ARGUMENT (reason MALFORMED_REQUEST),
every error carries one ErrorInfo (api/errors.py), and ``x-request-id`` is in the
trailing metadata of every answer, success or error. Rejections of callers who did not
authenticate are logged through a throttle (one line a minute per method and code,
counting the rest), so an unauthenticated socket cannot fill the disk.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import grpc
from grpc import aio

from discovery.api.auth import Audience, Authenticator, audience_of, check_single_credentials, set_principal
from discovery.api.errors import internal_status, status_for
from discovery.core.errors import DeadlineExceeded, DomainError, InvalidArgument, Reason
from discovery.logs import LogThrottle

log = logging.getLogger("discovery.api")

Behaviour = Callable[..., Any]


class CallOutcome:
    """What the interceptor learned of one call; observers (metrics) read it."""

    __slots__ = ("authenticated", "code", "keys", "metadata", "method", "request_id", "started")

    def __init__(self, method: str, pairs: tuple[tuple[str, str | bytes], ...]) -> None:
        self.method = method
        self.keys = tuple(key for key, _ in pairs)
        self.metadata: dict[str, str | bytes] = dict(pairs)
        self.request_id = _request_id(self.metadata.get(REQUEST_ID_HEADER))
        self.code = grpc.StatusCode.OK
        self.started = time.perf_counter()
        self.authenticated = False


#: Told of every finished call: its full method name, its status code's name, its duration.
CallObserver = Callable[[str, str, float], None]

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


def _request_id(supplied: str | bytes | None) -> str:
    """The caller's ``x-request-id`` when it is a UUID, else a new one. Request ids are logged,
    so free text from a client (which could hold a number or a token) is never taken."""
    if isinstance(supplied, str) and _REQUEST_ID.fullmatch(supplied):
        return supplied
    # 128 random bits in the dash-less form of a UUID (uuid4() builds an object per call for the same).
    return os.urandom(16).hex()


class CallInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        authenticator: Authenticator,
        observers: list[CallObserver] | None = None,
        throttle: LogThrottle | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._observers = observers or []
        self._throttle = throttle or LogThrottle()
        #: method -> (the service's handler, its wrapped form): each handler is wrapped once,
        #: not per call. Only served methods get here, so the table stays small.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

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
                self._stream_behaviour(
                    handler.unary_stream, _checked_unary_streaming, _checked_unary, method
                ),
                request_deserializer=decode,
                response_serializer=encode,
            )
        return grpc.stream_stream_rpc_method_handler(
            self._stream_behaviour(handler.stream_stream, _checked_stream_streaming, _checked_stream, method),
            request_deserializer=decode,
            response_serializer=encode,
        )

    def _stream_behaviour(
        self,
        behaviour: Behaviour,
        as_generator: Callable[[Behaviour], Behaviour],
        as_coroutine: Callable[[Behaviour], Behaviour],
        method: str,
    ) -> Behaviour:
        """A streaming handler is an async generator, or a coroutine that writes with
        ``context.write`` (the health service's Watch); each keeps its form."""
        if inspect.isasyncgenfunction(behaviour):
            return self._streaming(as_generator(behaviour), method)
        return self._unary(as_coroutine(behaviour), method)

    def _unary(self, behaviour: Behaviour, method: str) -> Behaviour:
        async def call(request: Any, context: aio.ServicerContext) -> Any:
            async with self._guarded(method, context):
                # The work stops at the caller's deadline without a timer of ours: grpc.aio
                # cancels the handler's task when the deadline passes (tests/test_deadlines.py),
                # and the cancellation reaches the store, which drops or interrupts what it
                # was doing for this call.
                return await behaviour(request, context)

        return call

    def _streaming(self, behaviour: Behaviour, method: str) -> Behaviour:
        async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._guarded(method, context):
                async for item in behaviour(request, context):
                    yield item

        return call

    def _guarded(self, method: str, context: aio.ServicerContext) -> _Guard:
        """One call's bookkeeping, for both shapes of handler (see :class:`_Guard`)."""
        return _Guard(self, method, context)

    def _begin(self, method: str, context: aio.ServicerContext) -> CallOutcome:
        outcome = CallOutcome(method, tuple(context.invocation_metadata() or ()))
        context.set_trailing_metadata(((REQUEST_ID_HEADER, outcome.request_id),))
        return outcome

    def _authenticate(self, outcome: CallOutcome, context: aio.ServicerContext) -> None:
        """Set the call's principal, visible to the servicer through a context variable.
        Health and reflection need no credentials (and read none). The peer's auth context
        is read only when the authenticator looks at it (a backend's client certificate)."""
        if audience_of(outcome.method) is Audience.PUBLIC:
            return
        check_single_credentials(outcome.keys)
        set_principal(self._authenticator.authenticate(outcome.method, outcome.metadata, _PeerAuth(context)))
        outcome.authenticated = True

    async def _fail(self, outcome: CallOutcome, context: aio.ServicerContext, error: Exception) -> None:
        """Abort the call with the status for ``error``; an abort already under way passes through."""
        if isinstance(error, aio.AbortError):
            raise error
        if isinstance(error, TimeoutError):
            error = DeadlineExceeded("the call's deadline passed before it completed")
        if isinstance(error, DomainError):
            status = status_for(error)
            self._log_rejection(outcome, status.code, error)
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
        trailing = (*status.trailing_metadata, (REQUEST_ID_HEADER, outcome.request_id))
        await context.abort(status.code, status.details, trailing)

    def _log_rejection(self, outcome: CallOutcome, code: grpc.StatusCode, error: DomainError) -> None:
        """One line per rejected call of an authenticated caller (it names the request id);
        rejections of anyone else go through the throttle."""
        extra: dict[str, object] = {
            "event": "call_rejected",
            "method": outcome.method,
            "request_id": outcome.request_id,
            "code": code.name,
            "reason": error.reason.value,
            "error": type(error).__name__,
        }
        if not outcome.authenticated:
            suppressed = self._throttle.allow(f"{outcome.method} {code.name}")
            if suppressed is None:
                return
            extra["suppressed"] = suppressed
        log.info("call rejected", extra=extra)

    def _observe(self, outcome: CallOutcome) -> None:
        seconds = time.perf_counter() - outcome.started
        for observer in self._observers:
            observer(outcome.method, outcome.code.name, seconds)


class _Guard:
    """One call's bookkeeping as an async context manager: its outcome and request id,
    authentication, the status of any error (``_fail`` aborts the call) and, at the end, the
    observers. A class rather than a generator-based manager: it is entered on every call."""

    __slots__ = ("_context", "_interceptor", "_method", "_outcome")

    def __init__(self, interceptor: CallInterceptor, method: str, context: aio.ServicerContext) -> None:
        self._interceptor = interceptor
        self._method = method
        self._context = context
        self._outcome: CallOutcome | None = None

    async def __aenter__(self) -> None:
        outcome = self._outcome = self._interceptor._begin(self._method, self._context)
        try:
            self._interceptor._authenticate(outcome, self._context)
        except BaseException as error:
            # Handled as an error of the call itself; ``_fail`` aborts it.
            await self.__aexit__(type(error), error, error.__traceback__)
            raise

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        outcome = self._outcome
        assert outcome is not None
        try:
            if isinstance(error, asyncio.CancelledError):
                # grpc.aio cancels the task when the client goes away, or at the deadline.
                remaining = self._context.time_remaining()
                late = remaining is not None and remaining <= 0
                outcome.code = grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED
            elif isinstance(error, Exception):
                await self._interceptor._fail(outcome, self._context, error)
                return True
            return False
        finally:
            self._interceptor._observe(outcome)


class _PeerAuth(Mapping[str, Sequence[bytes]]):
    """The call's auth context, read from the transport on first use."""

    __slots__ = ("_context", "_read")

    def __init__(self, context: aio.ServicerContext) -> None:
        self._context = context
        self._read: Mapping[str, Sequence[bytes]] | None = None

    def _values(self) -> Mapping[str, Sequence[bytes]]:
        if self._read is None:
            self._read = self._context.auth_context() or {}
        return self._read

    def __getitem__(self, key: str) -> Sequence[bytes]:
        return self._values()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values())

    def __len__(self) -> int:
        return len(self._values())


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
        raise InvalidArgument.field(
            "request", "the request bytes are not a valid message of this method", Reason.MALFORMED_REQUEST
        )
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
