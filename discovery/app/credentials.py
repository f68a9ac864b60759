"""Credentials from the configuration: the server secret, the authenticator, TLS credentials,
and the keys to mint development tokens with (``discovery token``).

Secrets live outside the datastore. On first start each is generated into its own file
with mode 0600; a deployment can instead pass it in an environment variable (from a KMS
or a secrets manager). A dump of the datastore without the server secret reveals no number.

Defaults are chosen so that ``discovery serve`` works out of the box on 127.0.0.1 and
never runs unauthenticated elsewhere: JWT authentication is the default, its HS256
secret is generated into the data directory on first start (mode 0600, like the server
secret) and ``discovery token`` mints tokens from it. ``--auth dev`` (the trusted
``x-discovery-user-id`` header) is refused on any address that is not loopback.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization

from discovery.api.auth import Authenticator, DevAuthenticator
from discovery.api.jwt_auth import JwtAuthenticator, JwtVerifier, check_algorithm
from discovery.config import AUTH_MODES, ServerConfig, TlsOptions
from discovery.core.hashing import MIN_SECRET_SIZE

SECRET_BYTES = 32


# -- secrets --------------------------------------------------------------------------------------


def load_secret(env: str, path: Path) -> bytes:
    """The secret in environment variable ``env`` if one is named, else the one in ``path``
    (generated on first start)."""
    if env:
        return secret_from_env(env)
    return load_or_create_secret(path)


def load_or_create_secret(path: Path) -> bytes:
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(
                f"{path} must not be readable by group or others (mode {mode:o}); chmod 600 it"
            )
        return _decode(path.read_text().strip(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(SECRET_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return secret


def secret_from_env(variable: str) -> bytes:
    value = os.environ.get(variable)
    if not value:
        raise ValueError(f"environment variable {variable} holds no server secret")
    return _decode(value.strip(), variable)


def _decode(text: str, source: str) -> bytes:
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"the server secret in {source} is not hex") from None
    if len(secret) < MIN_SECRET_SIZE:
        raise ValueError(f"the server secret in {source} is shorter than {MIN_SECRET_SIZE} bytes")
    return secret


def server_secret(config: ServerConfig) -> bytes:
    return load_secret(config.secret_env, config.secret_path)


# -- authentication -------------------------------------------------------------------------------


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
    return load_secret(config.auth.jwt_secret_env, config.jwt_secret_path)


def jwt_verification_key(config: ServerConfig) -> Any:
    auth = config.auth
    if check_algorithm(auth.jwt_algorithm) == "HS256":
        return jwt_secret(config)
    if not auth.jwt_public_key:
        raise ValueError(f"--jwt-algorithm {auth.jwt_algorithm} needs --jwt-public-key")
    return serialization.load_pem_public_key(Path(auth.jwt_public_key).read_bytes())


def build_authenticator(config: ServerConfig) -> Authenticator:
    auth, tls = config.auth, config.tls
    if auth.mode == "dev":
        if not is_loopback(config.network.listen):
            raise ValueError(
                "--auth dev trusts a header anyone can set; it is allowed only on a loopback address"
            )
        return DevAuthenticator()
    if auth.mode != "jwt":
        raise ValueError(f"unknown --auth {auth.mode!r}; use one of {', '.join(AUTH_MODES)}")
    verifier = JwtVerifier(
        algorithm=auth.jwt_algorithm,
        key=jwt_verification_key(config),
        issuer=auth.jwt_issuer,
        audience=auth.jwt_audience,
        leeway=auth.jwt_leeway_seconds,
    )
    names = frozenset(n.strip() for n in tls.backend_names.split(",") if n.strip())
    return JwtAuthenticator(verifier, client_certificates=bool(tls.client_ca), backend_names=names)


def server_credentials(config: TlsOptions) -> Any:
    """``grpc.ssl_server_credentials`` for the TLS flags, or None for plaintext.

    With a client CA every connection must present a certificate it verifies: gRPC can
    either require and verify client certificates or not ask for them at all.
    """
    if not config.cert and not config.key:
        if config.client_ca:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (config.cert and config.key):
        raise ValueError("--tls-cert and --tls-key go together")
    chain = Path(config.cert).read_bytes()
    key = Path(config.key).read_bytes()
    client_ca = Path(config.client_ca).read_bytes() if config.client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
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
    if config.auth.jwt_algorithm == "HS256":
        return jwt_secret(config)
    if not private_key:
        raise ValueError(
            f"minting {config.auth.jwt_algorithm} tokens needs the account service's private key"
        )
    return serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
