"""Private discovery mode end to end: a real gRPC server on 127.0.0.1, real SQLite, redis-server and Redis
Cluster, driven through the SDK (and raw stubs for bad input)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio

from discovery.api.auth import PRIVATE_SERVICE
from discovery.app.server import DiscoveryServer
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, DiscoveryClient
from discovery.client.private import PrivateKeyMismatch, PrivateState
from discovery.contact_hash import contact_hash
from discovery.core.hashing import KEY_SIZE
from discovery.private_scheme import Bucket, ProofError, Snapshot, bucket_capacity, bucket_size, tag_of
from discovery.v1 import private_pb2, private_pb2_grpc
from tests.support.helpers import e164_numbers
from tests.support.privacy_scan import Needles, find_leaks, scan_tree
from tests.support.rpc import reason
from tests.support.server import (
    RequestRecorder,
    StartServer,
    bucket_level,
    recorded_port,
    status_details,
    user_metadata,
)

BACKENDS = ["sqlite", "redis", "redis_cluster"]


def target(server: DiscoveryServer) -> str:
    return f"127.0.0.1:{server.port}"


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def start_private(
    start_server: StartServer, request: pytest.FixtureRequest
) -> Callable[..., Awaitable[DiscoveryServer]]:
    async def start(**overrides: object) -> DiscoveryServer:
        options: dict[str, object] = {"private_mode": True, "private_jitter_seconds": 0.0}
        options.update(overrides)
        return await start_server(**options)

    return start


def store_url(request: pytest.FixtureRequest, backend: str) -> str:
    if backend == "sqlite":
        return ""
    value = request.getfixturevalue("redis_url" if backend == "redis" else "redis_cluster_url")
    return str(value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ids_in_snapshot", [True, False])
async def test_private_discover_matches_like_standard_mode(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
    request: pytest.FixtureRequest,
    backend: str,
    ids_in_snapshot: bool,
) -> None:
    server = await start_private(
        store=store_url(request, backend), private_snapshot_ids_max=16_384 if ids_in_snapshot else 0
    )
    numbers = e164_numbers(8, seed=41)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", numbers[0])
        await admin.register_user("bob", numbers[1])
        await admin.import_users([(f"imp{i}", numbers[2 + i]) for i in range(3)])
    book = [numbers[0], numbers[1], numbers[3], numbers[6], numbers[7], "not a number"]
    async with AsyncDiscoveryClient(target(server), user_id="carol") as client:
        await until(lambda: _count(server, 5))
        private = await client.discover_private(book)
        standard = await client.discover(book)
        assert sorted((m.entry, m.user_id) for m in private.matches) == sorted(
            (m.entry, m.user_id) for m in standard.matches
        )
        assert {m.user_id for m in private.matches} == {"alice", "bob", "imp1"}
        assert [i.entry for i in private.invalid] == ["not a number"]
        evaluated = client.private_state.evaluations
        assert evaluated == 5
        again = await client.discover_private(book)  # warm: nothing evaluated, nothing sent
        assert client.private_state.evaluations == evaluated
        assert again.to_dict() == private.to_dict()


async def _count(server: DiscoveryServer, n: int) -> bool:
    private = server.service.private
    assert private is not None
    return private.index.count == n


async def test_sync_client_and_persisted_state(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
) -> None:
    server = await start_private()
    alice, bob = e164_numbers(2, seed=43)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", alice)
    await until(lambda: _count(server, 1))

    def run() -> tuple[int, bytes, list[str]]:
        with DiscoveryClient(target(server), user_id="carol") as client:
            result = client.discover_private([alice, bob])
            return (
                client.private_state.evaluations,
                client.private_state.to_bytes(),
                [m.user_id for m in result.matches],
            )

    evaluations, saved, users = await asyncio.to_thread(run)
    assert (evaluations, users) == (2, ["alice"])

    def warm() -> tuple[int, list[str]]:
        with DiscoveryClient(target(server), user_id="carol") as client:
            client.private_state = PrivateState.from_bytes(saved)
            result = client.discover_private([alice, bob])
            return client.private_state.evaluations, [m.user_id for m in result.matches]

    assert await asyncio.to_thread(warm) == (2, ["alice"])


async def test_wrong_pinned_key_is_refused(start_private: Callable[..., Awaitable[DiscoveryServer]]) -> None:
    server = await start_private()
    (alice,) = e164_numbers(1, seed=44)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", alice)
    async with AsyncDiscoveryClient(target(server), user_id="carol") as client:
        client.private_state = PrivateState(pinned_key=bytes(range(32)))
        with pytest.raises(PrivateKeyMismatch):
            await client.discover_private([alice])
        assert client.private_state.outputs == {}


async def test_forged_proof_is_an_error_never_a_match(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
) -> None:
    server = await start_private()
    (alice,) = e164_numbers(1, seed=45)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", alice)
    async with AsyncDiscoveryClient(target(server), user_id="carol") as client:
        stub = private_pb2_grpc.PrivateDiscoveryServiceStub(client._channel)
        real = stub.EvaluateBlinded

        async def forged(request: private_pb2.EvaluateBlindedRequest, **kwargs: object) -> object:
            response = await real(request, **kwargs)
            proof = bytearray(response.proof)
            proof[5] ^= 1
            return private_pb2.EvaluateBlindedResponse(
                evaluated_elements=response.evaluated_elements, proof=bytes(proof), epoch=response.epoch
            )

        stub.EvaluateBlinded = forged  # type: ignore[method-assign]
        client._private_stub = lambda: stub  # type: ignore[method-assign]
        with pytest.raises(ProofError):
            await client.discover_private([alice])
        assert client.private_state.outputs == {}


BAD = [
    ("length", b"\x01" * 33, "blinded_elements"),
    ("identity", bytes(32), "blinded_elements[0]"),
    ("not canonical", b"\xff" * 32, "blinded_elements[0]"),
    ("over the cap", b"", "blinded_elements"),
]


@pytest.mark.parametrize(("name", "payload", "field"), BAD, ids=[b[0] for b in BAD])
async def test_bad_blinded_elements_are_refused_and_cost_nothing(
    start_private: Callable[..., Awaitable[DiscoveryServer]], name: str, payload: bytes, field: str
) -> None:
    server = await start_private(quota_capacity=5000)
    if name == "over the cap":
        from discovery.private_scheme import blind_batch

        payload = blind_batch([bytes([i % 256, i // 256]) * 16 for i in range(1001)]).blinded
    async with aio.insecure_channel(target(server)) as channel:
        stub = private_pb2_grpc.PrivateDiscoveryServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.EvaluateBlinded(
                private_pb2.EvaluateBlindedRequest(blinded_elements=payload),
                metadata=user_metadata("mallory"),
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = status_details(caught.value)
    fields = [v.field for d in details for v in getattr(d, "field_violations", [])]
    assert field in fields
    expected = "TOO_MANY_BLINDED_ELEMENTS" if name == "over the cap" else "MALFORMED_BLINDED_ELEMENTS"
    assert reason(caught.value) == expected
    assert await bucket_level(server, "mallory") == 0


async def _snapshot(stub: private_pb2_grpc.PrivateDiscoveryServiceStub, md: object) -> Snapshot:
    chunks = [
        c.chunk async for c in stub.GetPrivateSnapshot(private_pb2.GetPrivateSnapshotRequest(), metadata=md)
    ]
    return Snapshot.deserialize(b"".join(chunks))


async def test_bad_ranges_and_cursors_are_refused(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
) -> None:
    server = await start_private(private_snapshot_ids_max=0)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.import_users([(f"u{i}", n) for i, n in enumerate(e164_numbers(100, seed=46))])
    await until(lambda: _count(server, 100))
    async with aio.insecure_channel(target(server)) as channel:
        stub = private_pb2_grpc.PrivateDiscoveryServiceStub(channel)
        md = user_metadata("mallory")
        params = await stub.GetPrivateParams(private_pb2.GetPrivateParamsRequest(), metadata=md)
        assert (params.bucket_users, params.bucket_capacity) == (32, bucket_capacity(100, 32))
        snapshot = await _snapshot(stub, md)
        tags = [int(t).to_bytes(5, "big") for t in snapshot.tags]
        refused_ranges = [
            b"\x00" * 9,  # not 10 bytes
            tags[5] + tags[0],  # first above last
            tags[0] + tags[3],  # 4 registered users: fewer than k - 3
            tags[0] + tags[-1],  # all 100: more than the capacity
        ]
        cases = [
            (
                stub.GetPrivateBuckets(
                    private_pb2.GetPrivateBucketsRequest(ranges=[tags[0] + tags[32], bad]), metadata=md
                ),
                "BUCKET_RANGE_REFUSED",
                "ranges[1]",
            )
            for bad in refused_ranges
        ]
        cases += [
            (
                stub.GetPrivateDelta(
                    private_pb2.GetPrivateDeltaRequest(epoch=params.epoch, cursor=params.cursor + 1000),
                    metadata=md,
                ),
                "PRIVATE_CURSOR_REFUSED",
                "cursor",
            ),
            (
                stub.GetPrivateDelta(
                    private_pb2.GetPrivateDeltaRequest(epoch=params.epoch + 1, cursor=0), metadata=md
                ),
                "PRIVATE_EPOCH_REFUSED",
                "epoch",
            ),
        ]
        for call, expected, field in cases:
            with pytest.raises(aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason(caught.value) == expected
            fields = [
                v.field for d in status_details(caught.value) for v in getattr(d, "field_violations", [])
            ]
            assert fields == [field]
        # The grid's buckets (3 of 33 or 34 users) are all one size, whatever they hold.
        ranges = list(dict.fromkeys(snapshot.bucket_range(t, params.bucket_users) for t in tags))
        response = await stub.GetPrivateBuckets(
            private_pb2.GetPrivateBucketsRequest(ranges=ranges), metadata=md
        )
        assert len(ranges) == 3
        assert {len(b) for b in response.buckets} == {bucket_size(params.bucket_capacity, params.id_pad)}
        registered = _sealed(server)
        real = [sum(1 for s in Bucket.deserialize(b).sealed if s in registered) for b in response.buckets]
        assert sorted(real) == [33, 33, 34]
    assert await bucket_level(server, "mallory") == 0


def _sealed(server: DiscoveryServer) -> set[bytes]:
    private = server.service.private
    assert private is not None
    return {s for found in private.index._entries.values() for s in found}


async def test_a_refused_range_brings_the_snapshot_up_to_date_and_is_asked_again(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
) -> None:
    """A client whose snapshot is older than the server's set by more than a bucket's slack is refused its
    ranges (BUCKET_RANGE_REFUSED); the SDK fetches a delta and asks again, once."""
    server = await start_private(private_snapshot_ids_max=0, private_bucket_min_users=4)
    numbers = e164_numbers(61, seed=53)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.import_users([(f"u{i}", n) for i, n in enumerate(numbers[:20])])
        await until(lambda: _count(server, 20))
        async with AsyncDiscoveryClient(target(server), user_id="carol") as client:
            assert (await client.discover_private(numbers[60:])).matches == []  # a snapshot of 20 users
            await admin.import_users([(f"u{i}", numbers[i]) for i in range(20, 60)])
            await until(lambda: _count(server, 60))
            stub = private_pb2_grpc.PrivateDiscoveryServiceStub(client._channel)
            calls: list[str] = []
            real_params, real_buckets = stub.GetPrivateParams, stub.GetPrivateBuckets

            async def stale_params(request: object, **kwargs: object) -> private_pb2.GetPrivateParamsResponse:
                response = await real_params(request, **kwargs)
                if not calls:  # the first answer tells of no change: the client keeps its old snapshot
                    response.cursor = 0
                calls.append("params")
                return response

            async def buckets(request: private_pb2.GetPrivateBucketsRequest, **kwargs: object) -> object:
                calls.append("buckets")
                return await real_buckets(request, **kwargs)

            stub.GetPrivateParams = stale_params  # type: ignore[method-assign]
            stub.GetPrivateBuckets = buckets  # type: ignore[method-assign]
            client._private_stub = lambda: stub  # type: ignore[method-assign]
            # The 20 contacts of the old snapshot are hits in its grid (5 buckets of 4): each range now
            # holds about 12 users, more than the capacity of 7.
            result = await client.discover_private(numbers[:20] + numbers[30:40])
    expected = [f"u{i}" for i in (*range(20), *range(30, 40))]
    assert sorted(m.user_id for m in result.matches) == sorted(expected)
    assert calls == ["params", "buckets", "params", "buckets"]


async def test_enumeration_through_private_mode_is_cut_off_at_the_quota(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
) -> None:
    server = await start_private(quota_capacity=2500, quota_refill_per_hour=0.0001, rate_limit_burst=0)
    from discovery.private_scheme import blind_batch

    evaluated = 0
    async with aio.insecure_channel(target(server)) as channel:
        stub = private_pb2_grpc.PrivateDiscoveryServiceStub(channel)
        for round_ in range(10):
            batch = blind_batch([bytes([round_, i % 256, i // 256]) * 10 + b"xx" for i in range(1000)])
            try:
                await stub.EvaluateBlinded(
                    private_pb2.EvaluateBlindedRequest(blinded_elements=batch.blinded),
                    metadata=user_metadata("mallory"),
                )
            except aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                break
            evaluated += 1000
    assert evaluated == 2000


async def test_changes_reach_snapshot_buckets_and_deltas_on_every_instance(
    start_private: Callable[..., Awaitable[DiscoveryServer]], redis_cluster_url: str, tmp_path: Path
) -> None:
    secret = tmp_path / "shared.secret"
    secret.write_text(bytes(range(32)).hex())
    secret.chmod(0o600)
    common = {"store": redis_cluster_url, "secret_file": str(secret), "private_snapshot_ids_max": 0}
    a = await start_private(**common)
    b = await start_private(**common, data_dir=tmp_path / "b")
    alice, bob, bob2 = e164_numbers(3, seed=47)
    async with AsyncDiscoveryClient(target(b), user_id="carol") as client:
        assert (await client.discover_private([alice, bob, bob2])).matches == []
        start = client.private_state.snapshot
        assert start is not None
        async with AsyncAdminClient(target(a)) as admin:
            await admin.register_user("alice", alice)
            await admin.register_user("bob", bob)
        await until(lambda: _count(b, 2))
        assert {m.user_id for m in (await client.discover_private([alice, bob, bob2])).matches} == {
            "alice",
            "bob",
        }
        async with AsyncAdminClient(target(a)) as admin:
            await admin.change_number("bob", bob2)
            await admin.unregister_user("alice")
        async with AsyncDiscoveryClient(target(a), user_id="bob") as bob_client:
            await bob_client.update_settings(discoverable=False)
        await until(lambda: _count(b, 0))
        assert (await client.discover_private([alice, bob, bob2])).matches == []
        async with AsyncDiscoveryClient(target(a), user_id="bob") as bob_client:
            await bob_client.update_settings(discoverable=True)
        await until(lambda: _count(b, 1))
        result = await client.discover_private([alice, bob, bob2])
        assert [(m.entry, m.user_id) for m in result.matches] == [(bob2, "bob")]
        assert client.private_state.evaluations == 3
    # The delta stream on instance b: from the first snapshot, every change, ending with bob2 present.
    async with aio.insecure_channel(target(b)) as channel:
        stub = private_pb2_grpc.PrivateDiscoveryServiceStub(channel)
        stream = stub.SubscribePrivateDeltas(
            private_pb2.SubscribePrivateDeltasRequest(epoch=start.epoch, cursor=start.cursor),
            metadata=user_metadata("carol"),
        )
        message = await stream.read()
        stream.cancel()
    from discovery.private_scheme import Delta

    delta = Delta.deserialize(message.delta)
    assert delta.from_cursor == start.cursor
    y_tags = {r.tag: r.present for r in delta.records}
    assert len(y_tags) == 3 and sum(y_tags.values()) == 1


@pytest.mark.parametrize("ids_in_snapshot", [True, False])
async def test_private_join_events_come_from_the_stream_alone_and_resume_from_their_cursor(
    start_private: Callable[..., Awaitable[DiscoveryServer]], ids_in_snapshot: bool
) -> None:
    """Join events are opened from the sealed ids the delta stream carries: no bucket is ever fetched, so
    the server cannot tie a fetch to a join it released. A watcher that stops after an event and resumes
    from its cursor gets exactly the join it missed, and no event for a contact that was already there."""
    server = await start_private(private_snapshot_ids_max=16_384 if ids_in_snapshot else 0)
    alice, bob, dave = e164_numbers(3, seed=48)
    book = [alice, bob, dave]
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", alice)
    await until(lambda: _count(server, 1))
    recorder = RequestRecorder(PRIVATE_SERVICE)
    events: list[tuple[str, str, int]] = []
    async with (
        recorded_port(server, recorder) as recorded,
        AsyncDiscoveryClient(recorded, user_id="carol") as client,
        AsyncAdminClient(target(server)) as admin,
    ):

        async def watch(until_events: int, cursor: int | None = None) -> None:
            async for event in client.private_joins(book, cursor=cursor):
                events.append(event)
                if len(events) >= until_events:
                    return

        task = asyncio.create_task(watch(1))
        await until(lambda: _evaluated(client, 3))
        await admin.register_user("bob", bob)
        await asyncio.wait_for(task, 10)
        assert [(e, u) for e, u, _ in events] == [(bob, "bob")]
        # Stopped. Meanwhile alice changes a setting (her entry rides in the feed again) and dave joins.
        async with AsyncDiscoveryClient(target(server), user_id="alice") as alice_client:
            await alice_client.update_settings(notify_on_join=False)
        await admin.register_user("dave", dave)
        await until(lambda: _count(server, 3))
        await asyncio.wait_for(watch(2, cursor=events[-1][2]), 10)
        assert [(e, u) for e, u, _ in events] == [(bob, "bob"), (dave, "dave")]
        assert events[1][2] > events[0][2]
        # Without a cursor, the state's snapshot (advanced by each delta) is where it resumes.
        assert client.private_state.snapshot is not None
        assert client.private_state.snapshot.cursor == events[1][2]
    assert "GetPrivateBuckets" not in recorder.methods
    assert recorder.methods.count("SubscribePrivateDeltas") == 2


async def _evaluated(client: AsyncDiscoveryClient, n: int) -> bool:
    return client.private_state.evaluations == n and client.private_state.snapshot is not None


async def test_servicers_and_store_see_no_hash_no_key_no_output(
    start_private: Callable[..., Awaitable[DiscoveryServer]], tmp_path: Path
) -> None:
    """Every byte the private-mode servicers receive (request messages as they arrive, before parsing, and
    metadata), and every stored byte, holds no h, no 8-byte window of h (so no 16-byte prefix), no directory
    key and no OPRF output of any contact, matched or not, in any encoding the privacy scanner knows."""
    server = await start_private()
    numbers = e164_numbers(6, seed=49)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", numbers[0])
    await until(lambda: _count(server, 1))
    recorder = RequestRecorder(PRIVATE_SERVICE)
    async with (
        recorded_port(server, recorder) as recorded,
        AsyncDiscoveryClient(recorded, user_id="carol") as client,
    ):
        result = await client.discover_private(numbers)
        await client.discover_private(numbers)  # a warm re-sync: a delta, nothing evaluated
        outputs = list(client.private_state.outputs.values())
    assert [m.user_id for m in result.matches] == ["alice"]
    assert len(outputs) == len(numbers) and len(recorder.received) > 3
    keys = server.service.directory.keys
    received = Needles.of(numbers, keys)
    received.add_secrets(b"".join(outputs), len(outputs[0]))
    assert find_leaks(b"\0".join(recorder.received), received) == []
    # At rest: the registry keeps alice's own directory key (the standard mode needs it), nothing else.
    stored = Needles.of(numbers)
    stored.add_secrets(keys.directory_keys(b"".join(contact_hash(n) for n in numbers[1:])), KEY_SIZE)
    stored.add_secrets(b"".join(outputs), len(outputs[0]))
    assert scan_tree(tmp_path / "data", stored) == {}
    alice_y = client.private_state.outputs[contact_hash(numbers[0])]
    assert tag_of(alice_y) in (tmp_path / "data" / "discovery.db").read_bytes() + b"".join(
        p.read_bytes() for p in (tmp_path / "data").glob("discovery.db-wal")
    )  # what private mode keeps: the tag and the sealed id


def cli_args(server: DiscoveryServer, book: Path, numbers: list[str]) -> list[str]:
    """Carol's CLI arguments in private mode (the server's key pinned), with ``numbers`` in ``book``."""
    book.write_text("".join(f"{n}\n" for n in numbers))
    private = server.service.private
    assert private is not None
    pinned = ["--private", "--private-key", private.key.public_key.hex()]
    return ["--target", target(server), "--user-id", "carol", "--json", "--contacts", str(book), *pinned]


async def test_cli_discover_private(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from discovery.cli import main

    server = await start_private()
    alice, bob = e164_numbers(2, seed=50)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", alice)
    await until(lambda: _count(server, 1))
    args = cli_args(server, tmp_path / "book.txt", [alice, bob])
    assert await asyncio.to_thread(main, ["discover", *args]) == 0
    assert '"user_id": "alice"' in capsys.readouterr().out
    wrong = await asyncio.to_thread(main, ["discover", *args, "--private-key", "00" * 32])
    assert wrong != 0


async def test_cli_watch_joins_private(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`watch-joins --private` prints a contact that registers after the watch began, as it was entered."""
    from discovery.cli import main

    server = await start_private()
    alice, bob = e164_numbers(2, seed=52)
    argv = ["watch-joins", *cli_args(server, tmp_path / "book.txt", [alice, bob]), "--max-events", "1"]
    watcher = asyncio.create_task(asyncio.to_thread(main, argv))

    async def evaluated() -> bool:
        return watcher.done() or await bucket_level(server, "carol") == 2

    # Once both contacts are evaluated the client holds a snapshot as of its first params call (a young
    # snapshot is served as built), so bob's registration reaches it as a delta.
    await until(evaluated, timeout=30.0)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("bob", bob)
    assert await asyncio.wait_for(watcher, 30.0) == 0
    (line,) = capsys.readouterr().out.splitlines()
    event = json.loads(line)
    assert (event["entry"], event["user_id"]) == (bob, "bob") and event["cursor"] > 0


async def test_a_server_with_another_id_pad_than_the_stored_entries_refuses_to_start(
    start_private: Callable[..., Awaitable[DiscoveryServer]], tmp_path: Path
) -> None:
    """Entries sealed with one --private-id-pad cannot be served with another: the start is refused with
    the flag to set, and the server it began is stopped."""
    from discovery.core.errors import StartupRefused

    server = await start_private()
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", e164_numbers(1, seed=55)[0])
    await server.stop(grace=0)
    with pytest.raises(StartupRefused, match="--private-id-pad 64"):
        await start_private(private_id_pad=128)
    again = await start_private()  # the same pad as the entries
    assert again.service.private is not None and again.service.private.index.count == 1
    await again.stop(grace=0)
    serve = [sys.executable, "-m", "discovery", "serve", "--listen", "127.0.0.1:0", "--auth", "dev"]
    serve += ["--data-dir", str(tmp_path / "data"), "--private-mode", "true", "--private-id-pad", "128"]
    done = await asyncio.to_thread(subprocess.run, serve, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "start it with --private-id-pad 64" in done.stderr, done.stderr[-2000:]


async def test_a_first_sync_is_as_fresh_as_the_params(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
) -> None:
    """A new client gets the snapshot the server built for an earlier one (served for up to 30 s) and
    brings it up to date with a delta: a user registered since is found on the first sync."""
    server = await start_private()
    alice, bob = e164_numbers(2, seed=54)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", alice)
        await until(lambda: _count(server, 1))
        async with AsyncDiscoveryClient(target(server), user_id="carol") as carol:
            assert [m.user_id for m in (await carol.discover_private([alice, bob])).matches] == ["alice"]
        await admin.register_user("bob", bob)
        await until(lambda: _count(server, 2))
    async with AsyncDiscoveryClient(target(server), user_id="erin") as erin:
        result = await erin.discover_private([alice, bob])
    assert sorted(m.user_id for m in result.matches) == ["alice", "bob"]


async def test_cli_private_state_file_keeps_outputs_and_resumes_joins(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--private-state FILE`: a second discover evaluates nothing, and watch-joins resumes after a stop
    with the join it missed."""
    from discovery.cli import main
    from discovery.client.private import PrivateState

    server = await start_private()
    alice, bob, dave = e164_numbers(3, seed=53)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", alice)
    await until(lambda: _count(server, 1))
    state_file = tmp_path / "private.state"
    args = [*cli_args(server, tmp_path / "book.txt", [alice, bob, dave]), "--private-state", str(state_file)]
    for _ in range(2):
        assert await asyncio.to_thread(main, ["discover", *args]) == 0
        assert '"user_id": "alice"' in capsys.readouterr().out
        assert PrivateState.from_bytes(state_file.read_bytes()).evaluations == 3  # the second: none
    assert state_file.stat().st_mode & 0o777 == 0o600

    watch = ["watch-joins", *args, "--max-events", "1"]
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("bob", bob)
        assert await asyncio.wait_for(asyncio.to_thread(main, watch), 30.0) == 0
        assert json.loads(capsys.readouterr().out)["user_id"] == "bob"
        await admin.register_user("dave", dave)  # while nobody watches
    assert await asyncio.wait_for(asyncio.to_thread(main, watch), 30.0) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["user_id"] == "dave" and "resume with --cursor" in err

    state_file.write_bytes(b"not a state")
    assert await asyncio.to_thread(main, ["discover", *args]) == 2
    assert "not a private-mode state" in capsys.readouterr().err


async def test_nothing_lost_across_sigkill(tmp_path: Path) -> None:
    """Registrations acknowledged before a SIGKILL reach the private set and the deltas after the restart."""
    from tests.support.serve_process import ServeProcess

    numbers = e164_numbers(20, seed=51)
    proc = ServeProcess(
        tmp_path / "data", ["--private-mode", "true", "--private-jitter-seconds", "0"]
    ).start()
    try:
        async with AsyncDiscoveryClient(proc.target, user_id="carol") as client:
            assert (await client.discover_private(numbers)).matches == []
            state = client.private_state
        async with AsyncAdminClient(proc.target) as admin:
            for i, number in enumerate(numbers[:10]):
                await admin.register_user(f"u{i}", number)
        proc.kill()
        proc.start()
        async with AsyncDiscoveryClient(proc.target, user_id="carol") as client:
            client.private_state = (
                state  # its snapshot is older than the restart: the delta comes from the store
            )
            after = await client.discover_private(numbers)
            assert client.private_state.evaluations == 20
    finally:
        proc.stop()
    assert sorted(m.user_id for m in after.matches) == sorted(f"u{i}" for i in range(10))
