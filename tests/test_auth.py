"""Authentication: bearer JWTs for clients, a scope or an mTLS certificate for backends."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from google.rpc import error_details_pb2
from grpc import aio

from discovery.app.credentials import build_authenticator, is_loopback, jwt_secret, mint_token
from discovery.app.server import DiscoveryServer
from discovery.cli import main as cli_main
from discovery.config import ServerConfig
from discovery.core.hashing import contact_hash
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.auth_helpers import as_backend, as_user, bearer, client_token
from tests.support.certs import CertificateAuthority
from tests.support.server import StartServer, status_details

ALICE = contact_hash("+4915111111111")
BOB = contact_hash("+4915122222222")


async def expect(call: object, code: grpc.StatusCode) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub: str = "alice", ttl: int = 600, **extra: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + ttl, **extra}


@pytest.fixture
async def server(start_server: StartServer) -> DiscoveryServer:
    return await start_server(auth="jwt")


Stubs = tuple[pb_grpc.DiscoveryServiceStub, pb_grpc.DirectoryAdminServiceStub]


@pytest.fixture
async def stubs(server: DiscoveryServer) -> AsyncIterator[Stubs]:
    channel = aio.insecure_channel(f"127.0.0.1:{server.port}")
    client, admin = pb_grpc.DiscoveryServiceStub(channel), pb_grpc.DirectoryAdminServiceStub(channel)
    await admin.RegisterUser(
        pb.RegisterUserRequest(user_id="alice", contact_hash=ALICE), metadata=as_backend(server)
    )
    await admin.RegisterUser(
        pb.RegisterUserRequest(user_id="bob", contact_hash=BOB), metadata=as_backend(server)
    )
    yield client, admin
    await channel.close()


async def test_hs256_client_token_names_the_caller(server: DiscoveryServer, stubs: Stubs) -> None:
    client, _ = stubs
    response = await client.Discover(
        pb.DiscoverRequest(contact_hashes=BOB), metadata=as_user(server, "alice")
    )
    assert list(response.match_user_ids) == ["bob"]
    settings = await client.GetSettings(pb.GetSettingsRequest(), metadata=as_user(server, "alice"))
    assert settings.settings.discoverable


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("x-discovery-user-id", "alice"),),  # the development header means nothing here
        (("authorization", "Basic YWxpY2U6c2VjcmV0"),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer "),),
        (("authorization", "bearer not-a-jwt"),),
        (("authorization", "Bearer a.b"),),
        (("authorization", "Bearer a.b.c.d"),),
        (("authorization", "Bearer " + "x" * 9000),),
    ],
)
async def test_missing_or_malformed_credentials(stubs: Stubs, metadata: tuple[tuple[str, str], ...]) -> None:
    client, _ = stubs
    error = await expect(
        client.Discover(pb.DiscoverRequest(), metadata=metadata), grpc.StatusCode.UNAUTHENTICATED
    )
    [info] = status_details(error)
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "UNAUTHENTICATED"


async def test_truncated_and_tampered_tokens(server: DiscoveryServer, stubs: Stubs) -> None:
    client, _ = stubs
    token = client_token(server, "alice")
    header, payload, signature = token.split(".")
    forged_payload = b64url(json.dumps(claims(sub="bob")).encode())
    for bad in (
        token[:-1],
        token[: len(token) // 2],
        f"{header}.{payload}",
        f"{header}.{forged_payload}.{signature}",  # another subject under alice's signature
        f"{header}.{payload}.{signature[::-1]}",
        token + "A",
    ):
        error = await expect(
            client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(bad)), grpc.StatusCode.UNAUTHENTICATED
        )
        assert token not in (error.details() or "") and signature not in (error.details() or "")


async def test_expired_token(server: DiscoveryServer, stubs: Stubs) -> None:
    client, _ = stubs
    secret = jwt_secret(server.config)
    expired = jwt.encode(claims(ttl=-60), secret, algorithm="HS256")
    error = await expect(
        client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(expired)), grpc.StatusCode.UNAUTHENTICATED
    )
    assert "expired" in (error.details() or "")
    # Within the leeway of a few seconds a token still counts (clock skew).
    fresh_enough = jwt.encode(claims(ttl=-2), secret, algorithm="HS256")
    await client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(fresh_enough))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_alg_none_and_unconfigured_algorithms(server: DiscoveryServer, stubs: Stubs) -> None:
    client, _ = stubs
    secret = jwt_secret(server.config)
    unsigned = b64url(b'{"alg":"none","typ":"JWT"}') + "." + b64url(json.dumps(claims()).encode()) + "."
    hs512 = jwt.encode(claims(), secret, algorithm="HS512")
    es256 = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")
    for token in (unsigned, unsigned + "AAAA", hs512, es256):
        await expect(
            client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(token)),
            grpc.StatusCode.UNAUTHENTICATED,
        )


async def test_wrong_key_and_missing_claims(server: DiscoveryServer, stubs: Stubs) -> None:
    client, _ = stubs
    secret = jwt_secret(server.config)
    now = int(time.time())
    for token in (
        jwt.encode(claims(), b"another secret of thirty-two bytes!", algorithm="HS256"),
        jwt.encode({"sub": "alice", "iat": now}, secret, algorithm="HS256"),  # no exp
        jwt.encode({"iat": now, "exp": now + 60}, secret, algorithm="HS256"),  # no sub
        jwt.encode(claims(sub=""), secret, algorithm="HS256"),
        jwt.encode(claims(sub="a\nb"), secret, algorithm="HS256"),
        jwt.encode(claims(sub="x" * 200), secret, algorithm="HS256"),
        jwt.encode(claims(nbf=now + 3600), secret, algorithm="HS256"),  # not yet valid
    ):
        await expect(
            client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(token)),
            grpc.StatusCode.UNAUTHENTICATED,
        )


async def test_backend_needs_the_write_scope(server: DiscoveryServer, stubs: Stubs) -> None:
    _, admin = stubs
    request = pb.RegisterUserRequest(user_id="carol", contact_hash=contact_hash("+4915133333333"))
    await expect(admin.RegisterUser(request), grpc.StatusCode.UNAUTHENTICATED)
    await expect(admin.RegisterUser(request, metadata=bearer("garbage")), grpc.StatusCode.UNAUTHENTICATED)
    # A valid client token is a credential, but not for backend calls.
    error = await expect(
        admin.RegisterUser(request, metadata=as_user(server, "alice")), grpc.StatusCode.PERMISSION_DENIED
    )
    [info] = status_details(error)
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "PERMISSION_DENIED"
    wrong_scope = mint_token("HS256", jwt_secret(server.config), "svc", 60, scope="directory:read profile")
    await expect(admin.RegisterUser(request, metadata=bearer(wrong_scope)), grpc.StatusCode.PERMISSION_DENIED)
    bad_claim = jwt.encode(claims(scope=["directory:write"]), jwt_secret(server.config), algorithm="HS256")
    await expect(admin.RegisterUser(request, metadata=bearer(bad_claim)), grpc.StatusCode.UNAUTHENTICATED)
    await admin.RegisterUser(request, metadata=as_backend(server))
    assert server.store is not None and await server.store.get_user("carol") is not None


async def test_a_client_never_acts_for_another_user(server: DiscoveryServer, stubs: Stubs) -> None:
    client, _ = stubs
    # Alice's token with Bob's development header: the call is Alice's.
    mixed = (*as_user(server, "alice"), ("x-discovery-user-id", "bob"))
    updated = await client.UpdateSettings(
        pb.UpdateSettingsRequest(settings=pb.Settings(discoverable=False), update_mask=["discoverable"]),
        metadata=mixed,
    )
    assert not updated.settings.discoverable
    bob = await client.GetSettings(pb.GetSettingsRequest(), metadata=as_user(server, "bob"))
    assert bob.settings.discoverable
    alice = await client.GetSettings(pb.GetSettingsRequest(), metadata=as_user(server, "alice"))
    assert not alice.settings.discoverable
    # Bob is still found, Alice is not.
    found = await client.Discover(
        pb.DiscoverRequest(contact_hashes=ALICE + BOB), metadata=as_user(server, "carol")
    )
    assert list(found.match_user_ids) == ["bob"]
    await client.DeleteMyData(pb.DeleteMyDataRequest(), metadata=mixed)
    assert server.store is not None and await server.store.get_user("bob") is not None


def keypair(kind: str) -> tuple[object, bytes]:
    private = (
        ed25519.Ed25519PrivateKey.generate() if kind == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public_pem


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
async def test_public_key_algorithms(start_server: StartServer, tmp_path: Path, algorithm: str) -> None:
    private, public_pem = keypair(algorithm)
    other_private, _ = keypair(algorithm)
    key_file = tmp_path / "account-service.pub"
    key_file.write_bytes(public_pem)
    server = await start_server(
        auth="jwt",
        jwt_algorithm=algorithm,
        jwt_public_key=str(key_file),
        jwt_issuer="accounts",
        jwt_audience="discovery",
    )
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = pb_grpc.DiscoveryServiceStub(channel)

        def token(key: object, **overrides: object) -> tuple[tuple[str, str], ...]:
            body = {**claims(iss="accounts", aud="discovery"), **overrides}
            return bearer(jwt.encode(body, key, algorithm=algorithm))  # type: ignore[arg-type]

        await client.Discover(pb.DiscoverRequest(), metadata=token(private))
        for metadata in (
            token(other_private),
            token(private, iss="someone else"),
            token(private, aud="another service"),
            bearer(jwt.encode(claims(), private, algorithm=algorithm)),  # no iss, no aud  # type: ignore[arg-type]
        ):
            await expect(
                client.Discover(pb.DiscoverRequest(), metadata=metadata), grpc.StatusCode.UNAUTHENTICATED
            )
        # Algorithm confusion: an HS256 token whose HMAC key is the public key PEM.
        header = b64url(b'{"alg":"HS256","typ":"JWT"}')
        body = b64url(json.dumps(claims(iss="accounts", aud="discovery")).encode())
        mac = hmac.new(public_pem, f"{header}.{body}".encode(), hashlib.sha256).digest()
        await expect(
            client.Discover(pb.DiscoverRequest(), metadata=bearer(f"{header}.{body}.{b64url(mac)}")),
            grpc.StatusCode.UNAUTHENTICATED,
        )


async def test_mtls_certificate_is_a_backend_credential(start_server: StartServer, tmp_path: Path) -> None:
    ca = CertificateAuthority()
    cert, key = ca.issue("server", server=True).write(tmp_path, "server")
    (tmp_path / "ca.crt").write_bytes(ca.pem)
    server = await start_server(
        auth="jwt",
        tls_cert=str(cert),
        tls_key=str(key),
        tls_client_ca=str(tmp_path / "ca.crt"),
        tls_backend_names="accounts.internal",
    )
    backend = ca.issue("accounts.internal", server=False)
    gateway = ca.issue("gateway.internal", server=False)

    def channel(leaf: object) -> aio.Channel:
        credentials = grpc.ssl_channel_credentials(ca.pem, leaf.key, leaf.cert)  # type: ignore[attr-defined]
        return aio.secure_channel(f"127.0.0.1:{server.port}", credentials)

    request = pb.RegisterUserRequest(user_id="dave", contact_hash=contact_hash("+4915144444444"))
    async with channel(backend) as ch:
        await pb_grpc.DirectoryAdminServiceStub(ch).RegisterUser(request)
        # The certificate is no user: client calls still need a bearer token.
        client = pb_grpc.DiscoveryServiceStub(ch)
        await expect(client.GetSettings(pb.GetSettingsRequest()), grpc.StatusCode.UNAUTHENTICATED)
        settings = await client.GetSettings(pb.GetSettingsRequest(), metadata=as_user(server, "dave"))
        assert settings.settings.discoverable
    async with channel(gateway) as ch:
        admin = pb_grpc.DirectoryAdminServiceStub(ch)
        await expect(
            admin.UnregisterUser(pb.UnregisterUserRequest(user_id="dave")), grpc.StatusCode.UNAUTHENTICATED
        )
        # ...but a backend token still works over that connection.
        await admin.UnregisterUser(pb.UnregisterUserRequest(user_id="dave"), metadata=as_backend(server))
    # Without a client certificate the handshake itself fails.
    async with aio.secure_channel(f"127.0.0.1:{server.port}", grpc.ssl_channel_credentials(ca.pem)) as ch:
        await expect(
            pb_grpc.DiscoveryServiceStub(ch).GetSettings(pb.GetSettingsRequest(), timeout=5),
            grpc.StatusCode.UNAVAILABLE,
        )


def test_dev_auth_only_on_loopback(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1:50051") and is_loopback("[::1]:0") and is_loopback("localhost:1")
    assert not is_loopback("0.0.0.0:50051") and not is_loopback("[::]:1") and not is_loopback("example.org:1")
    for listen in ("0.0.0.0:0", "[::]:0", "10.0.0.1:0"):
        with pytest.raises(ValueError, match="loopback"):
            build_authenticator(ServerConfig.from_options(listen=listen, data_dir=tmp_path, auth="dev"))
    with pytest.raises(ValueError, match="unknown --auth"):
        build_authenticator(ServerConfig.from_options(data_dir=tmp_path, auth="none"))
    with pytest.raises(ValueError, match="jwt-public-key"):
        build_authenticator(ServerConfig.from_options(data_dir=tmp_path, jwt_algorithm="ES256"))
    with pytest.raises(ValueError, match="unsupported JWT algorithm"):
        build_authenticator(ServerConfig.from_options(data_dir=tmp_path, jwt_algorithm="none"))


async def test_token_command_and_serve_hint(
    start_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], log_capture: io.StringIO
) -> None:
    """A new user on 127.0.0.1: serve says how to get a token, and `discovery token` mints one."""
    data_dir = tmp_path / "data"
    server = await start_server(auth="jwt", data_dir=data_dir)
    hints = [json.loads(line) for line in log_capture.getvalue().splitlines() if '"event": "auth"' in line]
    assert hints and "discovery token --sub" in hints[0]["hint"]
    assert (data_dir / "jwt.secret").stat().st_mode & 0o777 == 0o600
    assert cli_main(["token", "--sub", "erin", "--data-dir", str(data_dir), "--ttl", "60"]) == 0
    user_token = capsys.readouterr().out.strip()
    scope = "directory:write"
    assert cli_main(["token", "--sub", "accounts", "--scope", scope, "--data-dir", str(data_dir)]) == 0
    admin_token = capsys.readouterr().out.strip()
    assert cli_main(["token", "--sub", "", "--data-dir", str(data_dir)]) == 2
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        await pb_grpc.DirectoryAdminServiceStub(channel).RegisterUser(
            pb.RegisterUserRequest(user_id="erin", contact_hash=ALICE), metadata=bearer(admin_token)
        )
        client = pb_grpc.DiscoveryServiceStub(channel)
        await client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(user_token))
        await expect(
            client.GetSettings(pb.GetSettingsRequest(), metadata=bearer(admin_token)),
            grpc.StatusCode.NOT_FOUND,
        )
    assert user_token not in log_capture.getvalue() and admin_token not in log_capture.getvalue()
