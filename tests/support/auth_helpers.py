"""Tokens for tests of servers that authenticate with JWTs (``auth="jwt"``)."""

from __future__ import annotations

from discovery.api.auth import DIRECTORY_WRITE_SCOPE
from discovery.app.credentials import jwt_secret, mint_token
from discovery.app.server import DiscoveryServer

Metadata = tuple[tuple[str, str], ...]


def client_token(server: DiscoveryServer, user_id: str, ttl: float = 600.0) -> str:
    """A token of the server's HS256 key for ``user_id``, as the account service would mint it."""
    return mint_token("HS256", jwt_secret(server.config), user_id, ttl)


def backend_token(server: DiscoveryServer, ttl: float = 600.0) -> str:
    return mint_token("HS256", jwt_secret(server.config), "account-service", ttl, scope=DIRECTORY_WRITE_SCOPE)


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def as_user(server: DiscoveryServer, user_id: str) -> Metadata:
    return bearer(client_token(server, user_id))


def as_backend(server: DiscoveryServer) -> Metadata:
    return bearer(backend_token(server))
