"""A span per store call, named by the store method only.

The persistence layer needs nothing of the tracing setup: the composition root hands the
store decorator a tracer (or none). Spans carry no argument, no result and no exception
message: only the method's name and, on failure, the exception's class name.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode, Tracer

T = TypeVar("T")

ERROR_TYPE = "error.type"


def store_span_name(method: str) -> str:
    return f"store.{method}"


async def in_span(tracer: Tracer | None, method: str, call: Awaitable[T]) -> T:
    """Await ``call`` in a child span of the current call; untraced without a tracer, and
    when no recording span is current (background loops, calls the sampler dropped)."""
    if tracer is None or not trace.get_current_span().is_recording():
        return await call
    with tracer.start_as_current_span(
        store_span_name(method), record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            return await call
        except Exception as error:
            span.set_attribute(ERROR_TYPE, type(error).__name__)
            span.set_status(Status(StatusCode.ERROR))
            raise
