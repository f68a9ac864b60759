"""End to end over TLS and mTLS, through the SDK, with certificates made at test time."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, DiscoveryError
from tests.support.auth_helpers import backend_token, client_token
from tests.support.certs import CertificateAuthority
from tests.support.helpers import e164_numbers
from tests.support.server import StartServer


async def tls_server(
    start_server: StartServer, tmp_path: Path, ca: CertificateAuthority, *, mutual: bool
) -> DiscoveryServer:
    cert, key = ca.issue("discovery", server=True).write(tmp_path / "tls", "server")
    options: dict[str, object] = {"auth": "jwt", "tls_cert": str(cert), "tls_key": str(key)}
    if mutual:
        client_ca = tmp_path / "tls" / "client-ca.crt"
        client_ca.write_bytes(ca.pem)
        options["tls_client_ca"] = str(client_ca)
    return await start_server(**options)


async def test_end_to_end_over_tls(start_server: StartServer, tmp_path: Path) -> None:
    ca = CertificateAuthority()
    server = await tls_server(start_server, tmp_path, ca, mutual=False)
    target = f"127.0.0.1:{server.port}"
    alice, bob = e164_numbers(2, seed=7)
    async with AsyncAdminClient(target, token=backend_token(server), root_certificates=ca.pem) as admin:
        await admin.register_user("alice", alice)
        await admin.register_user("bob", bob)
    async with AsyncDiscoveryClient(
        target, token=client_token(server, "bob"), root_certificates=ca.pem, default_region="DE"
    ) as client:
        result = await client.discover(["0" + alice[3:], "+4915100000000", "nonsense"])
        assert [(m.e164, m.user_id) for m in result.matches] == [(alice, "alice")]
        assert [i.entry for i in result.invalid] == ["nonsense"]
        assert (await client.update_settings(notify_on_join=True)).notify_on_join
    # Plaintext to a TLS port, or a server certificate from another CA, never connects.
    async with AsyncDiscoveryClient(target, token=client_token(server, "bob"), timeout=5) as plain:
        with pytest.raises(DiscoveryError) as info:
            await plain.get_settings()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    stranger = CertificateAuthority("another CA")
    async with AsyncDiscoveryClient(
        target, token=client_token(server, "bob"), root_certificates=stranger.pem, timeout=5
    ) as untrusting:
        with pytest.raises(DiscoveryError) as info:
            await untrusting.get_settings()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE


async def test_end_to_end_over_mtls(start_server: StartServer, tmp_path: Path) -> None:
    ca = CertificateAuthority()
    server = await tls_server(start_server, tmp_path, ca, mutual=True)
    target = f"127.0.0.1:{server.port}"
    backend = ca.issue("accounts.internal", server=False)
    app = ca.issue("app-gateway.internal", server=False)
    (carol,) = e164_numbers(1, seed=8)
    # The backend authenticates with its certificate alone.
    async with AsyncAdminClient(
        target, root_certificates=ca.pem, private_key=backend.key, certificate_chain=backend.cert
    ) as admin:
        await admin.register_user("carol", carol)
    async with AsyncDiscoveryClient(
        target,
        token=client_token(server, "dan"),
        root_certificates=ca.pem,
        private_key=app.key,
        certificate_chain=app.cert,
    ) as client:
        assert [m.user_id for m in (await client.discover([carol])).matches] == ["carol"]
