"""Every RPC of the API as raw bytes, and the error contract each error must keep (docs/errors.md)."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Sequence
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status

import discovery.v1
from discovery.v1 import errors_pb2

ERROR_DOMAIN = "discovery.v1"
Metadata = Sequence[tuple[str, str]]


def all_methods() -> Iterator[MethodDescriptor]:
    """Every RPC of every service in the discovery.v1 package, as generated."""
    for module in pkgutil.iter_modules(discovery.v1.__path__):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"discovery.v1.{module.name}").DESCRIPTOR
            for service in descriptor.services_by_name.values():
                yield from service.methods


METHODS = sorted(all_methods(), key=lambda m: m.full_name)


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def invoke(
    channel: aio.Channel,
    method: MethodDescriptor,
    payload: bytes,
    metadata: Metadata,
    timeout: float = 5.0,
    whole_stream: bool = False,
) -> aio.AioRpcError | None:
    """Send ``payload`` as the (only) request of ``method``; the error the call ended with, or
    None. A response stream is read to its first message (``whole_stream``: to its end)."""
    identity = (lambda b: b), (lambda b: b)
    try:
        if method.server_streaming:
            call: Any = (
                channel.stream_stream(path(method), *identity)(
                    iter([payload]), metadata=metadata, timeout=timeout
                )
                if method.client_streaming
                else channel.unary_stream(path(method), *identity)(
                    payload, metadata=metadata, timeout=timeout
                )
            )
            async for _ in call:
                if not whole_stream:
                    call.cancel()
                    break
        elif method.client_streaming:
            await channel.stream_unary(path(method), *identity)(
                iter([payload]), metadata=metadata, timeout=timeout
            )
        else:
            await channel.unary_unary(path(method), *identity)(payload, metadata=metadata, timeout=timeout)
    except aio.AioRpcError as error:
        return error
    return None


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo of a failed call; fails unless there is exactly one, of our domain,
    with a declared reason, and the call's trailing metadata holds its request id."""
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code().name} carries no google.rpc.Status"
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, f"{error.code().name}: {len(infos)} ErrorInfo details"
    info = infos[0]
    assert info.domain == ERROR_DOMAIN
    assert info.reason in set(errors_pb2.ErrorReason.keys()), info.reason
    assert info.reason != "ERROR_REASON_UNSPECIFIED"
    assert request_id(error), f"{error.code().name} without x-request-id"
    return info


def request_id(call: grpc.aio.AioRpcError) -> str | None:
    return dict(call.trailing_metadata() or ()).get("x-request-id")  # type: ignore[no-any-return]


def reason(error: grpc.aio.AioRpcError) -> str:
    return error_info(error).reason
