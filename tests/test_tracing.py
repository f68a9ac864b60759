"""Tracing: a span per RPC and per store call, the caller's trace context, and nothing private.

The spans of a realistic workload go to an in-memory exporter and are scanned for every
encoding of every number, contact hash, directory key and token, as the log scan does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from discovery.app.credentials import load_or_create_secret
from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient
from discovery.client.errors import DiscoveryError
from discovery.config import ServerConfig, TracingOptions, add_server_options, config_from_args
from discovery.core.hashing import KeyRing, contact_hash
from discovery.tracing import (
    ALLOWED_ATTRIBUTES,
    Tracing,
    sanitized,
)
from discovery.v1 import discovery_pb2, discovery_pb2_grpc, joins_pb2, joins_pb2_grpc
from tests.support.auth_helpers import backend_token, bearer, client_token
from tests.support.helpers import e164_numbers, local_formats
from tests.support.privacy_scan import Needles, find_leaks
from tests.support.server import JOIN_TEST_OPTIONS

DISCOVER = "/discovery.v1.DiscoveryService/Discover"
RPC_STATUS = "rpc.grpc.status_code"


class Traced:
    def __init__(self, server: DiscoveryServer, exporter: InMemorySpanExporter) -> None:
        self.server = server
        self.exporter = exporter
        self.target = f"127.0.0.1:{server.port}"

    def spans(self) -> tuple[ReadableSpan, ...]:
        self.server.tracing.flush()
        return self.exporter.get_finished_spans()


StartTraced = Callable[..., Awaitable[Traced]]


@pytest.fixture
async def start_traced(tmp_path: Path) -> AsyncIterator[StartTraced]:
    running: list[DiscoveryServer] = []

    async def start(ratio: float = 1.0, **overrides: object) -> Traced:
        exporter = InMemorySpanExporter()
        options: dict[str, object] = {
            "listen": "127.0.0.1:0",
            "data_dir": tmp_path / f"data{len(running)}",
            "grace_seconds": 1.0,
            "auth": "jwt",
            **JOIN_TEST_OPTIONS,
        }
        options.update(overrides)
        tracing = Tracing.start(TracingOptions(trace_sample_ratio=ratio), exporter=exporter)
        server = DiscoveryServer(ServerConfig.from_options(**options), tracing=tracing)
        await server.start()
        running.append(server)
        return Traced(server, exporter)

    yield start
    for server in running:
        await server.stop(grace=0.5)
        server.tracing.shutdown()


def _rpc_spans(spans: tuple[ReadableSpan, ...], method: str) -> list[ReadableSpan]:
    return [s for s in spans if s.kind is SpanKind.SERVER and s.name == method]


async def test_a_span_per_rpc_with_its_status_and_store_calls_as_children(start_traced: StartTraced) -> None:
    traced = await start_traced()
    number = "+4915199990001"
    async with AsyncAdminClient(traced.target, token=backend_token(traced.server)) as admin:
        await admin.register_user("alice", number)
    async with aio.insecure_channel(traced.target) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        as_bob = bearer(client_token(traced.server, "bob"))
        await stub.Discover(
            discovery_pb2.DiscoverRequest(contact_hashes=contact_hash(number)), metadata=as_bob
        )
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Discover(discovery_pb2.DiscoverRequest(contact_hashes=b"\x01" * 33), metadata=as_bob)
        assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.Discover(discovery_pb2.DiscoverRequest(contact_hashes=contact_hash(number)))
        assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
    spans = traced.spans()
    discovers = _rpc_spans(spans, DISCOVER)
    assert len(discovers) == 3
    assert [s.attributes[RPC_STATUS] for s in discovers] == [0, 3, 16]  # type: ignore[index]
    for span in discovers:
        assert span.attributes is not None
        assert span.attributes["rpc.service"] == "discovery.v1.DiscoveryService"
        assert span.attributes["rpc.method"] == "Discover"
        assert set(span.attributes) <= ALLOWED_ATTRIBUTES
    assert len(_rpc_spans(spans, "/discovery.v1.DirectoryAdminService/RegisterUser")) == 1
    # The successful Discover's store calls are its children, named by store method only.
    ok = discovers[0]
    assert ok.context is not None
    children = [s for s in spans if s.parent is not None and s.parent.span_id == ok.context.span_id]
    assert children, "the Discover call made no traced store call"
    for child in children:
        assert child.context is not None and child.context.trace_id == ok.context.trace_id
        assert child.name.startswith("store.") and child.name[len("store.") :].isidentifier()
        assert not child.attributes
    # Calls refused before any work reach no store.
    assert ok.context.span_id not in {d.context.span_id for d in discovers[1:] if d.context}
    refused = {d.context.span_id for d in discovers[2:] if d.context}
    assert not [s for s in spans if s.parent is not None and s.parent.span_id in refused]
    # Health probes are not traced.
    assert not [s for s in spans if "grpc.health" in s.name]


def _traceparent(trace_id: int, span_id: int, sampled: bool = True) -> tuple[str, str]:
    return ("traceparent", f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}")


async def test_the_callers_traceparent_is_the_parent_of_the_server_span(start_traced: StartTraced) -> None:
    traced = await start_traced(ratio=0.0)  # nothing starts a trace here; the caller's sampled flag wins
    trace_id, span_id = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
    async with aio.insecure_channel(traced.target) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        as_bob = bearer(client_token(traced.server, "bob"))
        request = discovery_pb2.DiscoverRequest(contact_hashes=contact_hash("+4915199990002"))
        await stub.Discover(request, metadata=as_bob)  # not sampled
        await stub.Discover(request, metadata=(*as_bob, _traceparent(trace_id, span_id)))
        # A caller that does not sample is followed too.
        await stub.Discover(request, metadata=(*as_bob, _traceparent(trace_id + 1, span_id, sampled=False)))
    rpcs = _rpc_spans(traced.spans(), DISCOVER)
    assert len(rpcs) == 1
    span = rpcs[0]
    assert span.context is not None and span.context.trace_id == trace_id
    assert span.parent is not None and span.parent.span_id == span_id and span.parent.is_remote


async def _spans_workload(traced: Traced, needles: Needles) -> list[str]:
    """Registers, imports, discovers (matches and misses), settings, a join stream with an ack,
    bad input and refused credentials; adds every token it used to ``needles``."""
    server, target = traced.server, traced.target
    rng = random.Random(7)
    population = e164_numbers(600, seed=7)
    registered, joiners = population[:200], population[500:520]
    admin_token = backend_token(server)
    needles.add_token(admin_token)
    async with AsyncAdminClient(target, token=admin_token) as admin:
        await admin.import_users([(f"user-{i}", n) for i, n in enumerate(registered[:150])])
        for i, number in enumerate(registered[150:], start=150):
            await admin.register_user(f"user-{i}", number)
        await admin.change_number("user-0", population[300])
        await admin.unregister_user("user-1")
        with pytest.raises(DiscoveryError):  # the number is taken
            await admin.register_user("intruder", registered[5])
    for u in range(150, 156):
        token = client_token(server, f"user-{u}")
        needles.add_token(token)
        book = [local_formats(n, rng) for n in rng.sample(population[:500], 80)]
        async with AsyncDiscoveryClient(target, token=token, default_region="DE") as client:
            await client.update_settings(notify_on_join=True)
            await client.get_settings()
            await client.discover(book)
            await client.discover([*book[:40], "garbage"])
    watcher = client_token(server, "user-160")
    needles.add_token(watcher)
    async with AsyncDiscoveryClient(target, token=watcher, default_region="DE") as client:
        await client.update_settings(notify_on_join=True)
        await client.discover(joiners)
        subscription = client.subscribe_joins(joiners, device_id="phone")
        async with AsyncAdminClient(target, token=admin_token) as admin:
            await admin.import_users([(f"joiner-{i}", n) for i, n in enumerate(joiners)])
        first = await asyncio.wait_for(anext(subscription), timeout=20)
        await subscription.ack(first.cursor)
        await subscription.aclose()
    # Raw calls: a Discover token reused, bad input, refused credentials, and a user agent
    # that holds a number (the instrumentation records user agents; the filter must not).
    as_user = bearer(client_token(server, "user-170"))
    needles.add_token(as_user[0][1].removeprefix("Bearer "))
    user_agent = ("grpc.primary_user_agent", f"contacts-app {population[0]}")
    async with aio.insecure_channel(target, options=[user_agent]) as channel:
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        admin_stub = discovery_pb2_grpc.DirectoryAdminServiceStub(channel)
        joins = joins_pb2_grpc.JoinNotificationServiceStub(channel)
        packed = b"".join(contact_hash(n) for n in population[:50])
        first_response = await stub.Discover(
            discovery_pb2.DiscoverRequest(contact_hashes=packed), metadata=as_user
        )
        needles.add_token(first_response.token)
        await stub.Discover(
            discovery_pb2.DiscoverRequest(
                contact_hashes=b"".join(contact_hash(n) for n in population[:60]),
                previous_token=first_response.token,
                previous_contact_hashes=packed,
            ),
            metadata=as_user,
        )
        forged = client_token(server, "user-170").rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
        needles.add_token(forged)
        refused: list[Awaitable[object]] = [
            stub.Discover(discovery_pb2.DiscoverRequest(contact_hashes=packed[:-1]), metadata=as_user),
            stub.Discover(
                discovery_pb2.DiscoverRequest(contact_hashes=packed + packed[:32]), metadata=as_user
            ),
            stub.Discover(discovery_pb2.DiscoverRequest(previous_token=b"\x07" * 40), metadata=as_user),
            stub.Discover(discovery_pb2.DiscoverRequest(contact_hashes=packed)),
            stub.Discover(discovery_pb2.DiscoverRequest(contact_hashes=packed), metadata=bearer(forged)),
            admin_stub.RegisterUser(
                discovery_pb2.RegisterUserRequest(user_id="x", contact_hash=contact_hash(population[1])),
                metadata=as_user,
            ),
            joins.AckJoins(joins_pb2.AckJoinsRequest(cursor=1), metadata=bearer(forged)),
        ]
        for call in refused:
            with pytest.raises(grpc.aio.AioRpcError):
                await call
    return population


def _extra_encodings(population: list[str], keys: KeyRing) -> set[bytes]:
    """Encodings the shared scanner does not look for: base64 of numbers, hashes and directory
    keys, and directory keys in hex."""
    found: set[bytes] = set()
    for number in population:
        h = contact_hash(number)
        key = keys.directory_key_of(h)
        found.add(key.hex().encode())
        for blob in (number.encode(), h, h[:16], key):
            found.add(base64.b64encode(blob).rstrip(b"="))
            found.add(base64.urlsafe_b64encode(blob).rstrip(b"="))
    return found


async def test_spans_of_a_realistic_workload_hold_no_number_hash_key_or_token(
    start_traced: StartTraced,
) -> None:
    traced = await start_traced()
    raw = InMemorySpanExporter()  # what the instrumentation records before the privacy filter
    assert traced.server.tracing.provider is not None
    traced.server.tracing.provider.add_span_processor(SimpleSpanProcessor(raw))
    needles = Needles()
    population = await _spans_workload(traced, needles)
    spans = traced.spans()
    full = Needles.of(population)
    full.tokens = needles.tokens
    keys = KeyRing.from_secret(load_or_create_secret(traced.server.config.secret_path))
    exported = "\n".join(span.to_json() for span in spans).encode()

    assert find_leaks(exported, full) == []
    assert [e for e in _extra_encodings(population, keys) if e in exported] == []
    for span in spans:
        assert set(span.attributes or {}) <= ALLOWED_ATTRIBUTES, span.name
        assert span.status.description is None, span.name
        for event in span.events:
            assert event.name == "exception" and set(event.attributes or {}) <= {"exception.type"}
    assert "authorization" not in exported.decode().lower()

    # The scan is not vacuous: every kind of call is there, with store calls under them ...
    names = {span.name for span in spans}
    for method in ("ImportUsers", "RegisterUser", "ChangeNumber", "UnregisterUser"):
        assert f"/discovery.v1.DirectoryAdminService/{method}" in names
    for method in ("Discover", "GetSettings", "UpdateSettings"):
        assert f"/discovery.v1.DiscoveryService/{method}" in names
    for method in ("SubscribeJoins", "AckJoins"):
        assert f"/discovery.v1.JoinNotificationService/{method}" in names
    assert sum(name.startswith("store.") for name in names) >= 5
    codes = {span.attributes.get(RPC_STATUS) for span in spans if span.attributes}
    assert {0, 3, 6, 7, 16} <= codes
    # ... and what the instrumentation records by itself would have leaked a number.
    recorded = "\n".join(span.to_json() for span in raw.get_finished_spans()).encode()
    assert find_leaks(recorded, full), "the positive control found nothing: is the scan blind?"


def test_the_filter_keeps_only_allow_listed_names_types_and_codes() -> None:
    context = SpanContext(trace_id=1, span_id=2, is_remote=False, trace_flags=TraceFlags(1))
    span = ReadableSpan(
        name="/discovery.v1.DiscoveryService/Discover",
        context=context,
        attributes={
            "rpc.method": "Discover",
            "rpc.grpc.status_code": 2,
            "rpc.user_agent": "app +4915123456789",
            "net.peer.ip": "127.0.0.1",
            "error.type": "4915123456789",  # an allowed key with a value that is not a code name
            "rpc.service": "a1b2c3d4e5f6a7b8c9d0",  # nor a hex run
        },
        events=[
            Event(
                "exception",
                {
                    "exception.type": "ValueError",
                    "exception.message": "bad +4915123456789",
                    "exception.stacktrace": "Traceback ... ValueError: bad +4915123456789",
                },
            ),
            Event("message", {"body": "+4915123456789"}),
        ],
        status=Status(StatusCode.ERROR, "StatusCode.UNKNOWN:number +4915123456789"),
    )
    clean = sanitized(span)
    assert clean.attributes == {"rpc.method": "Discover", "rpc.grpc.status_code": 2}
    assert [(e.name, dict(e.attributes or {})) for e in clean.events] == [
        ("exception", {"exception.type": "ValueError"})
    ]
    assert clean.status.status_code is StatusCode.ERROR and clean.status.description is None
    assert "4915123456789" not in clean.to_json()
    assert sanitized(ReadableSpan(name="store.+4915123456789", context=context)).name == "redacted"


def test_tracing_is_off_by_default_and_the_flags_read_the_environment() -> None:
    off = Tracing.start(TracingOptions())
    assert off.provider is None and off.server_interceptors() == [] and off.store_tracer() is None
    parser = argparse.ArgumentParser()
    add_server_options(parser, env={"DISCOVERY_TRACE_SAMPLE_RATIO": "0.25"})
    options = config_from_args(parser.parse_args(["--otlp-endpoint", "http://127.0.0.1:4317"])).tracing
    assert options == TracingOptions(otlp_endpoint="http://127.0.0.1:4317", trace_sample_ratio=0.25)
    on = Tracing.start(options)  # the exporter connects when it first exports
    assert on.provider is not None and len(on.server_interceptors()) == 1
    on.shutdown()
    with pytest.raises(ValueError):
        TracingOptions(trace_sample_ratio=1.5)
