"""A scripted attacker with a valid token tries to enumerate 100,000 numbers.

The quota is set small (2,000 new contacts) so the test runs fast; the production default
is 50,000 refilling 6 per hour. The attacker is cut off at the quota, learns no more
matches than the contacts the quota let through, gains nothing from the previous-set
token, and neither the logs nor the error messages hold a number, a hash or a token.
"""

from __future__ import annotations

import io

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio

from discovery.client import AsyncAdminClient
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc
from tests.support.auth_helpers import backend_token, bearer, client_token
from tests.support.helpers import hashes
from tests.support.privacy_scan import Needles, find_leaks
from tests.support.server import StartServer, status_details

RANGE = 100_000
CAPACITY = 2_000
PER_REQUEST = 1_000
SPACING = 250  # one registered user every 250 numbers of the range


async def test_enumerating_a_range_is_cut_off_at_the_quota(
    start_server: StartServer, log_capture: io.StringIO
) -> None:
    server = await start_server(
        auth="jwt",
        quota_capacity=CAPACITY,
        quota_refill_per_hour=6.0,
        rate_limit_burst=500,
        rate_limit_per_minute=60.0,
        max_hashes_per_request=PER_REQUEST,
    )
    target = f"127.0.0.1:{server.port}"
    numbers = [f"+4915200{i:06d}" for i in range(RANGE)]
    victims = {f"victim-{i}": numbers[i] for i in range(0, RANGE, SPACING)}
    async with AsyncAdminClient(target, token=backend_token(server)) as admin:
        summary = await admin.import_users(victims.items())
        assert summary.imported == len(victims)
    range_hashes = hashes(numbers)
    chunks = [b"".join(range_hashes[i : i + PER_REQUEST]) for i in range(0, RANGE, PER_REQUEST)]

    token = client_token(server, "mallory")
    needles = Needles.of(numbers)
    needles.add_token(token)
    errors: list[aio.AioRpcError] = []
    learned: set[str] = set()
    answered_hashes = 0
    tokens: dict[int, bytes] = {}
    async with aio.insecure_channel(target) as channel:
        client = pb_grpc.DiscoveryServiceStub(channel)

        async def attempt(request: pb.DiscoverRequest) -> pb.DiscoverResponse | None:
            try:
                return await client.Discover(request, metadata=bearer(token), timeout=10)
            except aio.AioRpcError as error:
                errors.append(error)
                return None

        # 1. Straight enumeration, chunk after chunk, through the whole range.
        for k, chunk in enumerate(chunks):
            response = await attempt(pb.DiscoverRequest(contact_hashes=chunk))
            if response is not None:
                answered_hashes += len(chunk) // 32
                learned.update(response.match_user_ids)
                tokens[k] = response.token
                needles.add_token(response.token)
        assert sorted(tokens) == list(range(CAPACITY // PER_REQUEST)), "cut off exactly at the quota"
        cut_off = errors[:]
        assert cut_off and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in cut_off)
        for error in cut_off:
            kinds = {type(d) for d in status_details(error)}
            assert kinds == {
                error_details_pb2.ErrorInfo,
                error_details_pb2.QuotaFailure,
                error_details_pb2.RetryInfo,
            }

        # 2. Token tricks: a paid-for set with fresh contacts swapped in still pays for them;
        #    a paid-for token cannot vouch for another set; single numbers are refused too.
        paid = chunks[0]
        half_new = paid[: len(paid) // 2] + chunks[50][: len(paid) // 2]
        tricks = [
            pb.DiscoverRequest(
                contact_hashes=half_new, previous_token=tokens[0], previous_contact_hashes=paid
            ),
            pb.DiscoverRequest(
                contact_hashes=chunks[50], previous_token=tokens[0], previous_contact_hashes=chunks[50]
            ),
            pb.DiscoverRequest(
                contact_hashes=chunks[50],
                previous_token=tokens[0],
                previous_contact_hashes=paid + chunks[50][:32],
            ),
            pb.DiscoverRequest(contact_hashes=range_hashes[70_000]),
        ]
        before = len(errors)
        for request in tricks:
            assert await attempt(request) is None
        codes = [e.code() for e in errors[before:]]
        assert codes == [
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ]
        # Re-asking about what was paid for stays possible (that is the daily re-sync).
        again = await attempt(
            pb.DiscoverRequest(contact_hashes=paid, previous_token=tokens[0], previous_contact_hashes=paid)
        )
        assert again is not None and set(again.match_user_ids) <= learned

    assert answered_hashes <= CAPACITY
    reachable = {f"victim-{i}" for i in range(0, answered_hashes, SPACING)}
    assert learned == reachable
    assert len(learned) <= CAPACITY // SPACING < len(victims)

    # Nothing the attacker sent or got back reaches the logs or the error messages.
    assert find_leaks(log_capture.getvalue().encode(), needles) == []
    texts = [error.details() or "" for error in errors]
    texts += [repr(value) for error in errors for _, value in error.trailing_metadata() or ()]
    assert find_leaks("\n".join(texts).encode(), needles) == []


def test_the_token_scanner_finds_tokens() -> None:
    needles = Needles()
    needles.add_token("aaa.bbb.signaturepart")
    needles.add_token(b"\x01" * 41)
    assert find_leaks(b"x signaturepart y", needles)
    assert find_leaks(b"k=" + (b"\x01" * 41).hex().encode(), needles)
    assert find_leaks(b"nothing here", needles) == []


pytestmark = pytest.mark.timeout(120)
