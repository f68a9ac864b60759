"""A span per store call, named by the store method only.

The persistence layer needs nothing of the tracing setup: the composition root hands the
store decorator a tracer (or none). Spans carry no argument, no result and no exception
message: only the method's name and, on failure, the exception's class name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer

P = ParamSpec("P")
T = TypeVar("T")

ERROR_TYPE = "error.type"


def store_span_name(method: str) -> str:
    return f"store.{method}"


def traced_call(
    tracer: Tracer | None, method: str, operation: Callable[P, Awaitable[T]]
) -> Callable[P, Awaitable[T]]:
    """``operation`` in a child span of the current call; untraced without a tracer, and
    when no recording span is current (background loops, calls the sampler dropped)."""
    if tracer is None:
        return operation
    name = store_span_name(method)

    async def traced(*args: P.args, **kwargs: P.kwargs) -> T:
        if not trace.get_current_span().is_recording():
            return await operation(*args, **kwargs)
        with tracer.start_as_current_span(
            name, record_exception=False, set_status_on_exception=False
        ) as span:
            try:
                return await operation(*args, **kwargs)
            except Exception as error:
                span.set_attribute(ERROR_TYPE, type(error).__name__)
                span.set_status(Status(StatusCode.ERROR))
                raise

    return traced
