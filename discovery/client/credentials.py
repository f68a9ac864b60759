"""Channels and per-call credentials for the SDK clients.

API::

    USER_ID_METADATA_KEY = "x-discovery-user-id"
    call_metadata(user_id: str | None, token: str | None) -> tuple[tuple[str, str], ...]
    channel_credentials(root_certificates: bytes | None = None, private_key: bytes | None = None,
                        certificate_chain: bytes | None = None) -> grpc.ChannelCredentials
    create_channel(target: str, *, tls: bool = False, root_certificates=None, private_key=None,
                   certificate_chain=None, options=None) -> grpc.Channel
    create_aio_channel(...same...) -> grpc.aio.Channel

``user_id`` is the development identity (metadata ``x-discovery-user-id``),
honoured only by servers in ``--auth dev`` mode; ``token`` is sent as
``authorization: Bearer <token>``. TLS is used when ``tls`` is true or any of
the certificate arguments is given; ``private_key`` + ``certificate_chain``
enable mutual TLS (backend services).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType

import grpc

__all__ = [
    "AUTHORIZATION_METADATA_KEY",
    "USER_ID_METADATA_KEY",
    "call_metadata",
    "channel_credentials",
    "create_aio_channel",
    "create_channel",
]

USER_ID_METADATA_KEY = "x-discovery-user-id"
AUTHORIZATION_METADATA_KEY = "authorization"

#: gRPC channel arguments, ``(name, value)`` with a str or int value.
ChannelOptions = Sequence[tuple[str, object]]


#: :func:`create_channel` or :func:`create_aio_channel`: ``(target, *, tls=..., root_certificates=...,
#: private_key=..., certificate_chain=..., options=...)``.
ChannelFactory = Callable[..., grpc.Channel]


def call_metadata(user_id: str | None, token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call."""
    metadata: list[tuple[str, str]] = []
    if user_id is not None:
        metadata.append((USER_ID_METADATA_KEY, user_id))
    if token is not None:
        metadata.append((AUTHORIZATION_METADATA_KEY, f"Bearer {token}"))
    return tuple(metadata)


def channel_credentials(
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
) -> grpc.ChannelCredentials:
    """``grpc.ssl_channel_credentials``; ``private_key`` and ``certificate_chain`` go together (mTLS)."""
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("private_key and certificate_chain must be given together")
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )


def _wants_tls(tls: bool, *material: bytes | None) -> bool:
    return tls or any(m is not None for m in material)


def _open(
    api: ModuleType,
    target: str,
    tls: bool,
    root_certificates: bytes | None,
    private_key: bytes | None,
    certificate_chain: bytes | None,
    options: ChannelOptions | None,
) -> grpc.Channel:
    opts = list(options or ())
    if _wants_tls(tls, root_certificates, private_key, certificate_chain):
        creds = channel_credentials(root_certificates, private_key, certificate_chain)
        return api.secure_channel(target, creds, options=opts)
    return api.insecure_channel(target, options=opts)


def create_channel(
    target: str,
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    options: ChannelOptions | None = None,
) -> grpc.Channel:
    """A sync ``grpc.Channel`` to ``target`` ("host:port")."""
    return _open(grpc, target, tls, root_certificates, private_key, certificate_chain, options)


def create_aio_channel(
    target: str,
    *,
    tls: bool = False,
    root_certificates: bytes | None = None,
    private_key: bytes | None = None,
    certificate_chain: bytes | None = None,
    options: ChannelOptions | None = None,
) -> grpc.aio.Channel:
    """A ``grpc.aio.Channel`` to ``target`` ("host:port"). Create it inside the running event loop."""
    return _open(grpc.aio, target, tls, root_certificates, private_key, certificate_chain, options)
