"""Security settings from the configuration: authenticator, TLS credentials, quota policy,
and the keys to mint development tokens with (``discovery token``).

Defaults are chosen so that ``discovery serve`` works out of the box on 127.0.0.1 and
never runs unauthenticated elsewhere: JWT authentication is the default, its HS256
secret is generated into the data directory on first start (mode 0600, like the server
secret) and ``discovery token`` mints tokens from it. ``--auth dev`` (the trusted
``x-discovery-user-id`` header) is refused on any address that is not loopback.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization

from discovery.api.auth import Authenticator, DevAuthenticator
from discovery.api.jwt_auth import ALGORITHMS, JwtAuthenticator, JwtVerifier
from discovery.config import ServerConfig
from discovery.core.quota import QuotaPolicy
from discovery.server_secret import load_or_create_secret, secret_from_env

AUTH_MODES = ("jwt", "dev")


def listen_host(listen: str) -> str:
    """The host part of ``host:port`` or ``[v6]:port``."""
    host = listen.rsplit(":", 1)[0] if ":" in listen else listen
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(listen: str) -> bool:
    host = listen_host(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def jwt_secret(config: ServerConfig) -> bytes:
    """The HS256 shared secret: from the environment variable if named, else the file
    (generated on first start)."""
    if config.jwt_secret_env:
        return secret_from_env(config.jwt_secret_env)
    return load_or_create_secret(config.jwt_secret_path)


def jwt_verification_key(config: ServerConfig) -> Any:
    if config.jwt_algorithm not in ALGORITHMS:
        raise ValueError(
            f"unsupported JWT algorithm {config.jwt_algorithm!r}; use one of {', '.join(ALGORITHMS)}"
        )
    if config.jwt_algorithm == "HS256":
        return jwt_secret(config)
    if not config.jwt_public_key:
        raise ValueError(f"--jwt-algorithm {config.jwt_algorithm} needs --jwt-public-key")
    return serialization.load_pem_public_key(Path(config.jwt_public_key).read_bytes())


def build_authenticator(config: ServerConfig) -> Authenticator:
    if config.auth == "dev":
        if not is_loopback(config.listen):
            raise ValueError(
                "--auth dev trusts a header anyone can set; it is allowed only on a loopback address"
            )
        return DevAuthenticator()
    if config.auth != "jwt":
        raise ValueError(f"unknown --auth {config.auth!r}; use one of {', '.join(AUTH_MODES)}")
    verifier = JwtVerifier(
        algorithm=config.jwt_algorithm,
        key=jwt_verification_key(config),
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        leeway=config.jwt_leeway_seconds,
    )
    names = frozenset(n.strip() for n in config.tls_backend_names.split(",") if n.strip())
    return JwtAuthenticator(verifier, client_certificates=bool(config.tls_client_ca), backend_names=names)


def server_credentials(config: ServerConfig) -> Any:
    """``grpc.ssl_server_credentials`` for the TLS flags, or None for plaintext.

    With a client CA every connection must present a certificate it verifies: gRPC can
    either require and verify client certificates or not ask for them at all.
    """
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    chain = Path(config.tls_cert).read_bytes()
    key = Path(config.tls_key).read_bytes()
    client_ca = Path(config.tls_client_ca).read_bytes() if config.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def quota_policy(config: ServerConfig) -> QuotaPolicy:
    return QuotaPolicy(
        capacity=config.quota_capacity,
        refill_per_hour=config.quota_refill_per_hour,
        rate_burst=config.rate_limit_burst,
        rate_per_minute=config.rate_limit_per_minute,
        token_ttl=config.previous_token_ttl_seconds,
    )


def mint_token(
    algorithm: str,
    key: Any,
    subject: str,
    ttl: float,
    *,
    scope: str = "",
    issuer: str = "",
    audience: str = "",
    now: float | None = None,
) -> str:
    """A signed JWT as the account service would issue it (for development and tests)."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"sub": subject, "iat": issued, "exp": issued + int(ttl)}
    if scope:
        claims["scope"] = scope
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, key, algorithm=algorithm)


def signing_key(config: ServerConfig, private_key: str = "") -> Any:
    """The key to mint tokens with: the HS256 secret, or a PEM private key file."""
    if config.jwt_algorithm == "HS256":
        return jwt_secret(config)
    if not private_key:
        raise ValueError(f"minting {config.jwt_algorithm} tokens needs the account service's private key")
    return serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
