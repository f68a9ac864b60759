"""OpenTelemetry tracing: off by default; a span per RPC and per store call, nothing private in them.

With an OTLP endpoint (``--otlp-endpoint``) the server exports spans over OTLP/gRPC; a
client's W3C ``traceparent`` metadata makes its call the parent of the server's span.

Every span passes :class:`PrivacySpanProcessor` before any exporter sees it. It keeps only
the attributes of an allow-list (service, method, gRPC status code, error type), drops every
event except exceptions, which keep their type and lose message and stack, and drops status
descriptions. The gRPC instrumentation alone would record the caller's address and
user agent, the ``details`` text of some error statuses, and exception messages and stacks.
See docs/tracing.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from grpc import aio
from opentelemetry.context import Context
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
)
from opentelemetry.trace import Link, Status, Tracer
from opentelemetry.util.types import AttributeValue

from discovery.config import TracingOptions
from discovery.store.spans import ERROR_TYPE

# Health probes come every few seconds from every load balancer: traced, they would drown the
# calls that matter.
UNTRACED_SERVICES = ("grpc.health.v1.Health",)

ALLOWED_ATTRIBUTES = frozenset({RPC_SYSTEM, RPC_SERVICE, RPC_METHOD, RPC_GRPC_STATUS_CODE, ERROR_TYPE})
EXCEPTION_EVENT = "exception"
EXCEPTION_TYPE = "exception.type"

# Attribute values and span names are code names (services, methods, classes): a value that is
# not one, or holds a digit run or a hex run long enough to be a number or a hash, is dropped.
_CODE_NAME = re.compile(r"[A-Za-z_/][A-Za-z0-9_./]{0,199}")
_SUSPECT = re.compile(r"\d{7}|[0-9a-fA-F]{16}")
REDACTED = "redacted"


def _safe(value: object) -> bool:
    if isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and bool(_CODE_NAME.fullmatch(value)) and not _SUSPECT.search(value)


def _allowed(attributes: Mapping[str, AttributeValue] | None) -> dict[str, AttributeValue]:
    return {
        key: value for key, value in (attributes or {}).items() if key in ALLOWED_ATTRIBUTES and _safe(value)
    }


def _exception_events(events: Sequence[Event]) -> list[Event]:
    kept = []
    for event in events:
        if event.name != EXCEPTION_EVENT:
            continue
        kind = (event.attributes or {}).get(EXCEPTION_TYPE)
        attributes = {EXCEPTION_TYPE: kind} if _safe(kind) and isinstance(kind, str) else {}
        kept.append(Event(EXCEPTION_EVENT, attributes, timestamp=event.timestamp))
    return kept


def sanitized(span: ReadableSpan) -> ReadableSpan:
    """The span as it may leave the process: allow-listed attributes, exception types, bare status."""
    return ReadableSpan(
        name=span.name if _safe(span.name) else REDACTED,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=_allowed(span.attributes),
        events=_exception_events(span.events),
        links=[Link(link.context) for link in span.links],
        kind=span.kind,
        status=Status(span.status.status_code),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class PrivacySpanProcessor(SpanProcessor):
    """Hands the processor it wraps (and so its exporter) only :func:`sanitized` spans."""

    def __init__(self, downstream: SpanProcessor) -> None:
        self._downstream = downstream

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self._downstream.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        self._downstream.on_end(sanitized(span))

    def shutdown(self) -> None:
        self._downstream.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._downstream.force_flush(timeout_millis)


class Tracing:
    """The tracing of one server: a tracer provider, or nothing when tracing is off."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider

    @classmethod
    def start(cls, options: TracingOptions, exporter: SpanExporter | None = None) -> Tracing:
        """Tracing to ``exporter`` (tests), else to the OTLP endpoint, else off."""
        if exporter is None:
            if not options.otlp_endpoint:
                return cls()
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=options.otlp_endpoint)
        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: "discovery"}),
            sampler=ParentBased(TraceIdRatioBased(options.trace_sample_ratio)),
        )
        provider.add_span_processor(PrivacySpanProcessor(BatchSpanProcessor(exporter)))
        return cls(provider)

    def server_interceptors(self) -> list[aio.ServerInterceptor]:
        """Outermost interceptors of the server: the RPC span, parent of everything in the call."""
        if self.provider is None:
            return []
        untraced = filters.negate(filters.any_of(*(filters.service_name(s) for s in UNTRACED_SERVICES)))
        interceptor = aio_server_interceptor(tracer_provider=self.provider, filter_=untraced)  # type: ignore[no-untyped-call]
        return [interceptor]

    def store_tracer(self) -> Tracer | None:
        """The tracer of the store decorator's spans (:func:`discovery.store.spans.traced_call`)."""
        if self.provider is None:
            return None
        return self.provider.get_tracer("discovery.store")

    def flush(self) -> None:
        if self.provider is not None:
            self.provider.force_flush()

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
