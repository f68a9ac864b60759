"""Quotas: only new contacts are charged, proven by the previous request's token; a request
rate per user; both atomic in the store and shared by every instance."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import blake3
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio

from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, DiscoverState, DiscoveryError
from discovery.core.errors import InvalidArgument
from discovery.core.hashing import KeyRing
from discovery.core.keyset import sort_keys
from discovery.core.quota import TOKEN_SIZE, SetTokens, count_new
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.helpers import e164_numbers, hashes
from tests.support.server import StartServer, bucket_level, status_details, user_metadata

NUMBERS = e164_numbers(400, seed=11)
H = hashes(NUMBERS)


def packed(items: list[bytes]) -> bytes:
    return b"".join(items)


async def expect(call: object, code: grpc.StatusCode) -> list[object]:
    with pytest.raises(aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return status_details(info.value)


def violations(details: list[object]) -> list[str]:
    return [
        v.field for d in details if isinstance(d, error_details_pb2.BadRequest) for v in d.field_violations
    ]


@pytest.fixture
async def quota_server(start_server: StartServer) -> DiscoveryServer:
    return await start_server(quota_capacity=100, quota_refill_per_hour=0.0, rate_limit_burst=0)


@pytest.fixture
async def client(quota_server: DiscoveryServer) -> AsyncIterator[pb_grpc.DiscoveryServiceStub]:
    async with aio.insecure_channel(f"127.0.0.1:{quota_server.port}") as channel:
        yield pb_grpc.DiscoveryServiceStub(channel)


async def test_only_new_contacts_are_charged(
    quota_server: DiscoveryServer, client: pb_grpc.DiscoveryServiceStub
) -> None:
    me = user_metadata("u")
    first = await client.Discover(pb.DiscoverRequest(contact_hashes=packed(H[:60])), metadata=me)
    assert len(first.token) == TOKEN_SIZE and await bucket_level(quota_server, "u") == 60
    # The same set again, proven by the token: free. In another order too.
    again = await client.Discover(
        pb.DiscoverRequest(
            contact_hashes=packed(H[:60][::-1]),
            previous_token=first.token,
            previous_contact_hashes=packed(H[:60]),
        ),
        metadata=me,
    )
    assert await bucket_level(quota_server, "u") == 60
    # 20 removed, 40 added: only the 40 are charged.
    grown = await client.Discover(
        pb.DiscoverRequest(
            contact_hashes=packed(H[20:100]),
            previous_token=again.token,
            previous_contact_hashes=packed(H[:60]),
        ),
        metadata=me,
    )
    assert await bucket_level(quota_server, "u") == 100
    # Without the token the same request pays in full, and the bucket is full.
    details = await expect(
        client.Discover(pb.DiscoverRequest(contact_hashes=packed(H[20:100])), metadata=me),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    assert {type(d) for d in details} == {
        error_details_pb2.ErrorInfo,
        error_details_pb2.QuotaFailure,
        error_details_pb2.RetryInfo,
    }
    # With it, still free.
    await client.Discover(
        pb.DiscoverRequest(
            contact_hashes=packed(H[20:100]),
            previous_token=grown.token,
            previous_contact_hashes=packed(H[20:100]),
        ),
        metadata=me,
    )
    assert await bucket_level(quota_server, "u") == 100
    assert await bucket_level(quota_server, "someone else") == 0


async def test_a_wrong_token_is_invalid_and_charges_nothing(
    quota_server: DiscoveryServer, client: pb_grpc.DiscoveryServiceStub
) -> None:
    first = await client.Discover(
        pb.DiscoverRequest(contact_hashes=packed(H[:10])), metadata=user_metadata("u")
    )
    others = await client.Discover(
        pb.DiscoverRequest(contact_hashes=packed(H[:10])), metadata=user_metadata("v")
    )
    flipped = bytes([first.token[0]]) + bytes([first.token[1] ^ 1]) + first.token[2:]
    cases: list[tuple[bytes, bytes, str]] = [
        (flipped, packed(H[:10]), "previous_token"),
        (first.token[:-1], packed(H[:10]), "previous_token"),
        (b"\x03" + first.token[1:], packed(H[:10]), "previous_token"),
        (others.token, packed(H[:10]), "previous_token"),  # another user's token
        (first.token, packed(H[:9]), "previous_token"),  # not the whole previous set
        (first.token, packed(H[:11]), "previous_token"),  # more than the previous set
        (first.token, packed(H[:10])[:-1], "previous_contact_hashes"),
        (first.token, packed(H[:10] + H[:1]), "previous_contact_hashes[10]"),
        (b"", packed(H[:10]), "previous_token"),
    ]
    for token, previous, field in cases:
        details = await expect(
            client.Discover(
                pb.DiscoverRequest(
                    contact_hashes=packed(H[:10] + H[50:60]),
                    previous_token=token,
                    previous_contact_hashes=previous,
                ),
                metadata=user_metadata("u"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violations(details) == [field]
    # An unchanged re-sync (previous set byte-equal to the request) takes the short path:
    # its token is checked all the same.
    for token in (flipped, others.token, first.token[:-1], b""):
        details = await expect(
            client.Discover(
                pb.DiscoverRequest(
                    contact_hashes=packed(H[:10]),
                    previous_token=token,
                    previous_contact_hashes=packed(H[:10]),
                ),
                metadata=user_metadata("u"),
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert violations(details) == ["previous_token"]
    assert await bucket_level(quota_server, "u") == 10


def test_tokens_expire_and_bind_the_caller() -> None:
    keys = KeyRing.from_secret(b"s" * 32)
    tokens = SetTokens(keys.token_key, ttl=100.0, max_clock_skew=10.0)
    words = sort_keys(keys.directory_keys(packed(H[:5])))
    token = tokens.issue("u", words, now=1000.0)
    tokens.verify("u", words, token, now=1100.0)
    tokens.verify("u", words, token, now=995.0)  # a peer instance's clock is a little behind
    for caller, now, reason in (("u", 1101.0, "expired"), ("u", 980.0, "expired"), ("v", 1000.0, "match")):
        with pytest.raises(InvalidArgument, match=reason):
            tokens.verify(caller, words, token, now=now)
    # Another server secret makes other tokens.
    other = SetTokens(KeyRing.from_secret(b"t" * 32).token_key, ttl=100.0, max_clock_skew=10.0)
    with pytest.raises(InvalidArgument):
        other.verify("u", words, token, now=1000.0)


def test_tokens_are_order_independent_and_sorted_key_tokens_still_verify() -> None:
    """Version 2 proves a set whatever its order; a version 1 token (the MAC over the keys
    sorted as byte strings, issued before) is accepted until it expires."""
    keys = KeyRing.from_secret(b"s" * 32)
    tokens = SetTokens(keys.token_key, ttl=100.0, max_clock_skew=10.0)
    raw = keys.directory_keys(packed(H[:5]))
    shuffled = b"".join(raw[i * 16 : (i + 1) * 16] for i in (3, 0, 4, 1, 2))
    token = tokens.issue("u", sort_keys(raw), now=1000.0)
    assert token[0] == 2 and len(token) == TOKEN_SIZE
    tokens.verify("u", sort_keys(shuffled), token, now=1000.0)
    issued = (1000).to_bytes(8, "big")
    mac = blake3.blake3(key=keys.token_key)
    mac.update(b"\x01" + issued + (1).to_bytes(2, "big") + b"u" + sort_keys(raw).packed())
    legacy = b"\x01" + issued + mac.digest()
    tokens.verify("u", sort_keys(shuffled), legacy, now=1050.0)
    for other, caller in ((packed(H[:4]), "u"), (packed(H[:5]), "v")):
        with pytest.raises(InvalidArgument, match="match"):
            tokens.verify(caller, sort_keys(keys.directory_keys(other)), legacy, now=1050.0)
    with pytest.raises(InvalidArgument, match="expired"):
        tokens.verify("u", sort_keys(raw), legacy, now=1101.0)


def test_token_digest_is_the_documented_word_sum() -> None:
    """``n || S`` of a version 2 token, recomputed from the module docstring with Python
    integers: S is the word-wise sum modulo 2^64 of the elements AES-128(k_e, key), each read
    as two little-endian 64-bit words; the sum wraps (4,000 random elements always do)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from discovery.core.quota import ELEMENT_KEY_CONTEXT

    keys = KeyRing.from_secret(b"d" * 32)
    tokens = SetTokens(keys.token_key, ttl=100.0, max_clock_skew=10.0)
    element_key = blake3.blake3(ELEMENT_KEY_CONTEXT, key=keys.token_key).digest(length=16)
    for n in (1, 2, 999, 4000):
        raw = keys.directory_keys(b"".join(blake3.blake3(i.to_bytes(4, "big")).digest() for i in range(n)))
        out = Cipher(algorithms.AES(element_key), modes.ECB()).encryptor().update(raw)
        low = sum(int.from_bytes(out[i : i + 8], "little") for i in range(0, len(out), 16)) % 2**64
        high = sum(int.from_bytes(out[i + 8 : i + 16], "little") for i in range(0, len(out), 16)) % 2**64
        expected = n.to_bytes(4, "big") + low.to_bytes(8, "little") + high.to_bytes(8, "little")
        assert tokens.digest(sort_keys(raw)) == expected


def test_the_duplicate_check_is_exact_when_key_heads_tie() -> None:
    """Keys that share their first bytes (or high half) but differ are no duplicate; an equal
    pair is found at its request positions whatever the tie around it."""
    a, b, c = b"\x01" * 8 + b"\x00" * 8, b"\x01" * 8 + b"\x00" * 7 + b"\x01", b"\x02" * 16
    assert sort_keys(a + b + c).first_duplicate() is None
    assert sort_keys(c + a + b + a).first_duplicate() == (1, 3)
    assert sort_keys(b"").first_duplicate() is None and sort_keys(c).first_duplicate() is None
    assert sort_keys(c + a + b).packed() == a + b + c


def test_count_new_is_exact_on_sets() -> None:
    keys = KeyRing.from_secret(b"s" * 32)
    raw = keys.directory_keys(packed(H[:300]))
    current = sort_keys(raw)
    previous = sort_keys(keys.directory_keys(packed(H[100:350])))
    assert count_new(current, previous) == 100
    assert count_new(current, sort_keys(b"")) == 300
    assert count_new(sort_keys(b""), previous) == 0
    as_bytes = current.packed()
    chunks = [as_bytes[i : i + 16] for i in range(0, len(as_bytes), 16)]
    assert chunks == sorted(raw[i : i + 16] for i in range(0, len(raw), 16))
    assert [raw[16 * i : 16 * i + 16] for i in current.order] == chunks
    assert current.first_duplicate() is None
    # Keys sharing their high half, and a duplicate, sort on both halves.
    twins = bytes(8) + b"\x02" * 8 + bytes(8) + b"\x01" * 8 + bytes(8) + b"\x02" * 8
    tied = sort_keys(twins)
    assert tied.packed() == bytes(8) + b"\x01" * 8 + (bytes(8) + b"\x02" * 8) * 2
    assert tied.first_duplicate() == (0, 2)


async def test_over_quota_details_and_nothing_revealed(start_server: StartServer) -> None:
    server = await start_server(quota_capacity=50, quota_refill_per_hour=3600.0, rate_limit_burst=0)
    async with AsyncAdminClient(f"127.0.0.1:{server.port}") as admin:
        await admin.register_user("target", NUMBERS[45])
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = pb_grpc.DiscoveryServiceStub(channel)
        await client.Discover(pb.DiscoverRequest(contact_hashes=packed(H[:40])), metadata=user_metadata("u"))
        with pytest.raises(aio.AioRpcError) as info:
            await client.Discover(
                pb.DiscoverRequest(contact_hashes=packed(H[40:60])), metadata=user_metadata("u")
            )
        error = info.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = status_details(error)
        [failure] = [d for d in details if isinstance(d, error_details_pb2.QuotaFailure)]
        [retry] = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
        assert failure.violations[0].subject == "user:u"
        assert "20 new contacts" in failure.violations[0].description
        # 40 + 20 - 50 = 10 contacts over, at one per second.
        assert 5 < retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9 <= 10
        # The rejected request was not charged, and its match was not revealed anywhere.
        assert 39 < await bucket_level(server, "u") <= 40
        assert "target" not in (error.details() or "") and "target" not in str(error.trailing_metadata())
    async with AsyncDiscoveryClient(f"127.0.0.1:{server.port}", user_id="u") as sdk:
        with pytest.raises(DiscoveryError) as sdk_info:
            await sdk.discover_hashes(H[100:160])
        assert sdk_info.value.quota_violations and sdk_info.value.retry_after
        assert sdk_info.value.quota_violations[0][0] == "user:u"


async def test_concurrent_requests_never_exceed_the_bucket(start_server: StartServer, tmp_path: Path) -> None:
    """Two instances on one store, 30 concurrent requests of 50 new contacts, room for 10."""
    shared = {"data_dir": tmp_path / "shared", "quota_capacity": 500, "quota_refill_per_hour": 0.0}
    first = await start_server(rate_limit_burst=0, **shared)
    second = await start_server(rate_limit_burst=0, **shared)
    population = hashes(e164_numbers(1500, seed=12))
    channels = [aio.insecure_channel(f"127.0.0.1:{s.port}") for s in (first, second)]
    try:
        stubs = [pb_grpc.DiscoveryServiceStub(ch) for ch in channels]

        async def one(i: int) -> bool:
            request = pb.DiscoverRequest(contact_hashes=packed(population[i * 50 : (i + 1) * 50]))
            try:
                await stubs[i % 2].Discover(request, metadata=user_metadata("racer"))
            except aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False
            return True

        outcomes = await asyncio.gather(*(one(i) for i in range(30)))
    finally:
        for ch in channels:
            await ch.close()
    assert sum(outcomes) == 10
    assert await bucket_level(first, "racer") == 500


async def test_request_rate_limit(start_server: StartServer) -> None:
    server = await start_server(rate_limit_burst=3, rate_limit_per_minute=6.0)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        client = pb_grpc.DiscoveryServiceStub(channel)
        for _ in range(3):
            await client.Discover(pb.DiscoverRequest(), metadata=user_metadata("busy"))
        details = await expect(
            client.Discover(pb.DiscoverRequest(), metadata=user_metadata("busy")),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        [retry] = [d for d in details if isinstance(d, error_details_pb2.RetryInfo)]
        assert 0 < retry.retry_delay.seconds <= 10
        # Invalid requests count too: they are what a flood is made of.
        await expect(
            client.Discover(pb.DiscoverRequest(contact_hashes=b"x"), metadata=user_metadata("flood")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert await bucket_level(server, "flood", "requests") == pytest.approx(1, abs=0.01)
        await client.Discover(pb.DiscoverRequest(), metadata=user_metadata("calm"))


async def test_sdk_resync_of_an_unchanged_book_costs_nothing(
    quota_server: DiscoveryServer, tmp_path: Path
) -> None:
    target = f"127.0.0.1:{quota_server.port}"
    book = NUMBERS[:90]
    async with AsyncAdminClient(target) as admin:
        await admin.register_user("friend", book[17])
    async with AsyncDiscoveryClient(target, user_id="u", max_per_request=40) as client:
        first = await client.discover(book)
        assert [m.user_id for m in first.matches] == ["friend"]
        assert await bucket_level(quota_server, "u") == 90
        assert len(client.discover_state) == 3
        # Daily re-sync, unchanged book in another order: free, same answer.
        again = await client.discover(book[::-1])
        assert [m.e164 for m in again.matches] == [book[17]]
        assert await bucket_level(quota_server, "u") == 90
        # Two contacts removed, four added: the four are charged.
        changed = [n for n in book if n not in (book[3], book[50])] + NUMBERS[200:204]
        await client.discover(changed)
        assert await bucket_level(quota_server, "u") == 94
        saved = client.discover_state.to_bytes()
    # The state survives a restart of the app.
    (tmp_path / "state").write_bytes(saved)
    async with AsyncDiscoveryClient(target, user_id="u", max_per_request=40) as client:
        client.discover_state = DiscoverState.from_bytes((tmp_path / "state").read_bytes())
        result = await client.discover(changed)
        assert [m.user_id for m in result.matches] == ["friend"]
        assert await bucket_level(quota_server, "u") == 94


async def test_sdk_recovers_from_a_refused_token(start_server: StartServer) -> None:
    server = await start_server(quota_capacity=1000, quota_refill_per_hour=0.0, rate_limit_burst=0)
    async with AsyncDiscoveryClient(f"127.0.0.1:{server.port}", user_id="u", max_per_request=30) as client:
        await client.discover_hashes(H[:50])
        state = client.discover_state.to_bytes()
        tampered = bytearray(state)
        tampered[-20 * 32 - 1] ^= 1  # the last byte of the second chunk's token
        client.discover_state = DiscoverState.from_bytes(bytes(tampered))
        await client.discover_hashes(H[:50])
        # The first chunk was free; the second paid once more for its 20 contacts.
        assert await bucket_level(server, "u") == 70
        await client.discover_hashes(H[:50])
        assert await bucket_level(server, "u") == 70


def test_saved_state_round_trip_and_rejects_garbage() -> None:
    state = DiscoverState()
    assert DiscoverState.from_bytes(state.to_bytes()).to_bytes() == state.to_bytes()
    for garbage in (
        b"",
        b"DSS1",
        b"DSS1\x00\x00\x00\x01\x00",
        b"XXXX\x00\x00\x00\x00",
        b"DSS1\x00\x00\x00\x00!",
    ):
        with pytest.raises(ValueError):
            DiscoverState.from_bytes(garbage)
