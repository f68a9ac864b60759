"""Private-mode key rotation (docs/private-mode.md, "Key epochs"): the stored blob of records per epoch, the
SDK's key policy and saved state, and the operator's procedure end to end on real servers and stores
(SQLite, redis-server, Redis Cluster): prepare the next epoch, re-import, watch the gauge, switch."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from discovery.app.server import DiscoveryServer
from discovery.cli import main as cli_main
from discovery.cli._shared import InputError, parse_private_keys
from discovery.client import AsyncAdminClient, AsyncDiscoveryClient, _calls
from discovery.client.private import PrivateKeyMismatch, PrivateState
from discovery.contact_hash import contact_hash
from discovery.core.errors import StartupRefused
from discovery.core.private import (
    ENTRIES_MAGIC,
    PrivateEntry,
    entry_layout,
    entry_of_epoch,
    merged_entries,
    pack_entries,
    unpack_entries,
)
from discovery.private_scheme import TAG_SIZE, blind_batch, sealed_size
from discovery.v1 import private_pb2, private_pb2_grpc
from tests.support.helpers import e164_numbers
from tests.support.rpc import reason
from tests.support.server import StartServer, bucket_level, status_details, user_metadata

BACKENDS = ["sqlite", "redis", "redis_cluster"]
MISSING = "discovery_private_users_missing_epoch"


def record(id_pad: int = 64) -> PrivateEntry:
    return PrivateEntry(os.urandom(TAG_SIZE), os.urandom(sealed_size(id_pad)))


# -- the stored blob ------------------------------------------------------------------------------


def test_a_legacy_entry_reads_as_one_record_of_epoch_1() -> None:
    legacy = record()
    raw = legacy.pack()  # what every store held before key epochs: tag || sealed id
    assert len(raw) == TAG_SIZE + sealed_size(64)
    assert unpack_entries(raw) == {1: legacy}
    assert entry_of_epoch(raw, 1) == legacy and entry_of_epoch(raw, 2) is None
    assert pack_entries({1: legacy}) == raw, "a lone epoch-1 record is written as before"
    # A legacy entry whose first bytes happen to be the magic is still legacy (its length does not fit).
    lookalike = PrivateEntry(ENTRIES_MAGIC + b"\x00", legacy.sealed)
    assert unpack_entries(lookalike.pack()) == {1: lookalike}


def test_one_epoch_and_two_epochs_round_trip() -> None:
    alone = {7: record()}
    raw = pack_entries(alone)
    assert raw.startswith(ENTRIES_MAGIC) and unpack_entries(raw) == alone
    both = {2: record(), 1: record()}  # the served epoch first, as the registrar writes them
    raw = pack_entries(both)
    assert len(raw) == 6 + 2 * (4 + TAG_SIZE + sealed_size(64))
    assert unpack_entries(raw) == both and list(unpack_entries(raw)) == [2, 1]
    assert entry_of_epoch(raw, 1) == both[1] and entry_of_epoch(raw, 3) is None
    assert entry_layout(raw) == (sealed_size(64), (2, 1))
    assert entry_layout(record(128).pack()) == (sealed_size(128), (1,))
    assert unpack_entries(pack_entries({1: record(128), 2: record(128)}))[2].sealed.__len__() == sealed_size(
        128
    )


def test_malformed_blobs_are_refused() -> None:
    for read in (unpack_entries, entry_layout, lambda raw: entry_of_epoch(raw, 1)):
        with pytest.raises(ValueError, match="too short"):
            read(b"\x01" * 20)
    with pytest.raises(ValueError, match="at least one"):
        pack_entries({})
    with pytest.raises(ValueError, match="one id pad"):
        pack_entries({1: record(64), 2: record(128)})
    one = record()
    twice = ENTRIES_MAGIC + bytes((64, 2)) + 2 * (struct.pack(">I", 3) + one.tag + one.sealed)
    with pytest.raises(ValueError, match="epoch 3 twice"):
        unpack_entries(twice)


def test_a_refill_keeps_the_stored_records_of_the_epochs_written() -> None:
    stored_1, fresh_1, fresh_2 = record(), record(), record()
    legacy = stored_1.pack()
    # Preparing epoch 2: the stored epoch-1 record stays (the sets hold it), epoch 2's comes in.
    merged = merged_entries(legacy, pack_entries({1: fresh_1, 2: fresh_2}))
    assert merged is not None and unpack_entries(merged) == {1: stored_1, 2: fresh_2}
    assert merged_entries(merged, pack_entries({1: record(), 2: record()})) is None, "complete: no write"
    # After the switch to 2: its record stays, epoch 1's goes.
    after = merged_entries(merged, pack_entries({2: record()}))
    assert after is not None and unpack_entries(after) == {2: fresh_2}
    assert merged_entries(None, legacy) == legacy  # registered before private mode: all of it is new


# -- the SDK's key policy and saved state --------------------------------------------------------


def test_trust_on_first_use_accepts_a_new_key_only_for_a_newer_epoch() -> None:
    k1, k2, other = os.urandom(32), os.urandom(32), os.urandom(32)
    state = PrivateState()
    state.check_key(1, k1)
    state.outputs[b"h" * 32] = b"y" * 64
    state.check_key(1, k1)
    assert state.outputs, "the same epoch keeps its outputs"
    with pytest.raises(PrivateKeyMismatch, match="not the one first seen"):
        state.check_key(1, other)
    state.check_key(2, k2)  # a rotation, announced by its epoch
    assert (state.epoch, state.outputs, state.snapshot) == (2, {}, None), "a new epoch drops its caches"
    state.check_key(1, k1)  # an instance not switched yet: the key first seen for epoch 1
    with pytest.raises(PrivateKeyMismatch, match="not the one first seen"):
        state.check_key(2, other)
    newer = PrivateState()
    newer.check_key(5, k2)
    with pytest.raises(PrivateKeyMismatch, match="older than epoch 5"):
        newer.check_key(4, k1)
    assert newer.seen_keys == {5: k2}


def test_configured_keys_refuse_every_epoch_they_do_not_pin() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    state = PrivateState(pinned_keys={1: k1, 2: k2})
    state.check_key(1, k1)
    state.check_key(2, k2)
    with pytest.raises(PrivateKeyMismatch, match="epoch 3 has no key pinned"):
        state.check_key(3, os.urandom(32))
    with pytest.raises(PrivateKeyMismatch, match="epoch 2 is not the key pinned"):
        state.check_key(2, k1)
    assert state.seen_keys == {}, "configured keys learn nothing"
    legacy = PrivateState(pinned_key=k1)  # the API before key epochs: one key, whatever the epoch
    legacy.check_key(9, k1)
    with pytest.raises(PrivateKeyMismatch):
        legacy.check_key(9, k2)


def _v1_state(key: bytes, epoch: int, outputs: dict[bytes, bytes], evaluations: int) -> bytes:
    """A state as the SDK saved it before key epochs (format DPC1, no snapshot)."""
    parts = [b"DPC1", struct.pack(">B32sqI", 1, key, epoch, len(outputs))]
    parts += [h + y for h, y in outputs.items()]
    parts.append(struct.pack(">QI", evaluations, 0))
    return b"".join(parts)


def test_a_state_saved_before_key_epochs_still_loads() -> None:
    key, outputs = os.urandom(32), {os.urandom(32): os.urandom(64) for _ in range(3)}
    state = PrivateState.from_bytes(_v1_state(key, 1, outputs, 3))
    assert (state.pinned_key, state.epoch, state.outputs, state.evaluations) == (key, 1, outputs, 3)
    assert state.pinned_keys == {} and state.seen_keys == {}
    state.check_key(1, key)
    assert state.outputs == outputs
    with pytest.raises(PrivateKeyMismatch):  # its key stays pinned for every epoch
        state.check_key(2, os.urandom(32))
    # Saved again, in the new format, with keys by epoch.
    state.pinned_keys = {2: os.urandom(32)}
    state.seen_keys = {1: key}
    again = PrivateState.from_bytes(state.to_bytes())
    assert state.to_bytes()[:4] == b"DPC2"
    assert (again.pinned_key, again.pinned_keys, again.seen_keys) == (key, state.pinned_keys, {1: key})
    assert (again.epoch, again.outputs, again.evaluations) == (1, outputs, 3)


def test_the_cli_takes_keys_by_epoch() -> None:
    k1, k2 = os.urandom(32), os.urandom(32)
    assert parse_private_keys([k1.hex()]) == (k1, {})
    assert parse_private_keys([f"1:{k1.hex()}", f"2:{k2.hex()}"]) == (None, {1: k1, 2: k2})
    for bad in (
        ["2:zz"],
        ["x:" + k1.hex()],
        ["0:" + k1.hex()],
        [k1.hex()[:10]],
        [f"1:{k1.hex()}", f"1:{k2.hex()}"],
    ):
        with pytest.raises(InputError):
            parse_private_keys(bad)


# -- on real servers -----------------------------------------------------------------------------


def target(server: DiscoveryServer) -> str:
    return f"127.0.0.1:{server.port}"


def store_url(request: pytest.FixtureRequest, backend: str) -> str:
    if backend == "sqlite":
        return ""
    return str(request.getfixturevalue("redis_url" if backend == "redis" else "redis_cluster_url"))


@pytest.fixture
def start_private(start_server: StartServer) -> Callable[..., Awaitable[DiscoveryServer]]:
    async def start(**overrides: object) -> DiscoveryServer:
        options: dict[str, object] = {"private_mode": True, "private_jitter_seconds": 0.0}
        options.update(overrides)
        return await start_server(**options)

    return start


def private_of(server: DiscoveryServer) -> Any:
    private = server.service.private
    assert private is not None
    return private


def gauge(server: DiscoveryServer, epoch: int) -> float | None:
    return server.service.metrics.registry.get_sample_value(MISSING, {"epoch": str(epoch)})


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def private_discover(server: DiscoveryServer, state: PrivateState, numbers: list[str]) -> set[str]:
    async with AsyncDiscoveryClient(target(server), user_id="carol") as client:
        client.private_state = state
        return {m.user_id for m in (await client.discover_private(numbers)).matches}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_rotation_procedure_end_to_end(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
    request: pytest.FixtureRequest,
    backend: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    store = store_url(request, backend)
    numbers = e164_numbers(5, seed=71)
    users = dict(zip(["alice", "bob", "dave", "erin", "carl"], numbers, strict=True))
    # Epoch 1, as every deployment serves it today.
    server = await start_private(store=store)
    key_1 = private_of(server).key.public_key
    async with AsyncAdminClient(target(server)) as admin:
        for name in ("alice", "bob", "dave", "erin"):
            await admin.register_user(name, users[name])
    await until(lambda: private_of(server).index.count == 4)
    state = PrivateState(pinned_keys={1: key_1})
    assert await private_discover(server, state, numbers) == {"alice", "bob", "dave", "erin"}
    saved, evaluated = state.to_bytes(), state.evaluations
    assert gauge(server, 1) == 0 and gauge(server, 2) is None
    await server.stop(grace=0)

    # Step 1: the operator prints the next epoch's key (to publish in the apps) from the server secret.
    assert cli_main(["private-key", "--epoch", "2", "--data-dir", str(tmp_path / "data")]) == 0
    epoch_text, _, hex_key = capsys.readouterr().out.strip().partition(":")
    assert epoch_text == "2"
    key_2 = bytes.fromhex(hex_key)

    # Step 2: every instance prepares epoch 2. Clients still see epoch 1; nobody has an epoch-2 record yet.
    server = await start_private(store=store, private_next_key_epoch=2)
    private = private_of(server)
    assert (private.key.epoch, private.key.public_key) == (1, key_1)
    assert (gauge(server, 1), gauge(server, 2)) == (0, 4)
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("carl", users["carl"])  # written with both epochs' records
        await until(lambda: private.index.count == 5)
        warm = PrivateState.from_bytes(saved)
        assert await private_discover(server, warm, numbers) == set(users)
        # Step 3: re-import every user but dave (the account service's export); carl is unchanged too.
        report = await admin.import_users([(n, users[n]) for n in ("alice", "bob", "erin", "carl")])
        assert (report.imported, report.unchanged, report.rejected_total) == (0, 4, 0)
    # Step 4: the gauge, counted again (every RECOUNT_SECONDS on a running instance), shows dave alone.
    await private.index.recount()
    assert (gauge(server, 1), gauge(server, 2)) == (0, 1)
    assert warm.evaluations == evaluated, "epoch 1 kept serving: the saved outputs held"
    await server.stop(grace=0)

    # Step 5: the switch. The saved old state, with both epochs' keys pinned, evaluates afresh and finds
    # everyone re-imported; dave, never re-imported, is missing (and counted) until he is.
    server = await start_private(store=store, private_key_epoch=2)
    private = private_of(server)
    assert (private.key.epoch, private.key.public_key) == (2, key_2)
    assert (private.index.count, gauge(server, 2), gauge(server, 1)) == (4, 1, None)
    old = PrivateState.from_bytes(saved)
    old.pinned_keys = {1: key_1, 2: key_2}
    found = await private_discover(server, old, numbers)
    assert found == {"alice", "bob", "erin", "carl"}
    assert old.evaluations == evaluated + len(numbers), "every contact is evaluated under the new key"
    async with AsyncDiscoveryClient(target(server), user_id="carol") as client:
        standard = {m.user_id for m in (await client.discover(numbers)).matches}
    assert standard == set(users), "standard mode is unaffected"
    # The CLI (the blocking client) with the old state file and both keys pinned, as an app would ship them.
    state_file, book = tmp_path / "carol.state", tmp_path / "book.txt"
    state_file.write_bytes(saved)
    book.write_text("".join(f"{n}\n" for n in numbers))
    cli = ["discover", "--target", target(server), "--user-id", "carol", "--json", "--contacts", str(book)]
    cli += ["--private", "--private-state", str(state_file)]
    cli += ["--private-key", f"1:{key_1.hex()}", "--private-key", f"2:{key_2.hex()}"]
    capsys.readouterr()
    assert await asyncio.to_thread(cli_main, cli) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {m["user_id"] for m in printed["matches"]} == found
    assert PrivateState.from_bytes(state_file.read_bytes()).epoch == 2
    assert PrivateState.from_bytes(state_file.read_bytes()).pinned_keys == {1: key_1, 2: key_2}, "kept"
    fresh = [*cli[:-6], "--private-state", str(tmp_path / "new.state"), "--private-key", f"1:{key_1.hex()}"]
    assert await asyncio.to_thread(cli_main, fresh) != 0, "epoch 2 has no key pinned"
    assert "epoch 2 has no key pinned" in capsys.readouterr().err
    # Re-importing dave now fills his epoch-2 record in, through the feed, on every instance.
    async with AsyncAdminClient(target(server)) as admin:
        report = await admin.import_users([("dave", users["dave"])])
        assert report.unchanged == 1
    await until(lambda: private.index.count == 5)
    await private.index.recount()
    assert gauge(server, 2) == 0
    assert await private_discover(server, old, numbers) == set(users)
    # A client that never pinned epoch 2's key is refused.
    with pytest.raises(PrivateKeyMismatch, match="epoch 2 has no key pinned"):
        await private_discover(server, PrivateState(pinned_keys={1: key_1}), numbers)
    with pytest.raises(PrivateKeyMismatch, match="epoch 2 is not the key pinned"):
        await private_discover(server, PrivateState(pinned_keys={2: key_1}), numbers)
    await server.stop(grace=0)
    # Restarted as it now runs: every entry has epoch 2, the count says so at load.
    server = await start_private(store=store, private_key_epoch=2)
    assert (private_of(server).index.count, gauge(server, 2)) == (5, 0)


async def test_a_server_refuses_an_epoch_no_entry_has(
    start_private: Callable[..., Awaitable[DiscoveryServer]], tmp_path: Path
) -> None:
    server = await start_private()
    async with AsyncAdminClient(target(server)) as admin:
        await admin.register_user("alice", e164_numbers(1, seed=72)[0])
    await server.stop(grace=0)
    with pytest.raises(StartupRefused, match=r"epoch 1 \(1 users\).*--private-next-key-epoch 3"):
        await start_private(private_key_epoch=3)
    prepared = await start_private(private_next_key_epoch=3)  # what the message says to do first
    assert gauge(prepared, 3) == 1
    await prepared.stop(grace=0)
    serve = [sys.executable, "-m", "discovery", "serve", "--listen", "127.0.0.1:0", "--auth", "dev"]
    serve += ["--data-dir", str(tmp_path / "data"), "--private-mode", "true", "--private-key-epoch", "3"]
    done = await asyncio.to_thread(subprocess.run, serve, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no stored private-mode entry has a record of key epoch 3" in done.stderr
    again = await start_private(private_key_epoch=1)
    assert private_of(again).index.count == 1


async def test_evaluation_under_another_epoch_is_refused_and_charges_no_quota(
    start_private: Callable[..., Awaitable[DiscoveryServer]],
) -> None:
    server = await start_private(private_next_key_epoch=2)
    blinded = blind_batch([contact_hash(n) for n in e164_numbers(3, seed=73)]).blinded
    async with grpc.aio.insecure_channel(target(server)) as channel:
        stub = private_pb2_grpc.PrivateDiscoveryServiceStub(channel)
        before = await bucket_level(server, "carol")
        for epoch in (2, 7):  # the prepared epoch is not served either
            request = private_pb2.EvaluateBlindedRequest(blinded_elements=blinded, epoch=epoch)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.EvaluateBlinded(request, metadata=user_metadata("carol"))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason(refused.value) == "PRIVATE_EPOCH_REFUSED"
            details = status_details(refused.value)
            assert [v.field for d in details for v in getattr(d, "field_violations", [])] == ["epoch"]
        assert await bucket_level(server, "carol") <= before, "no new-contact quota charged"
        for epoch in (0, 1):  # 0: whichever the server serves
            request = private_pb2.EvaluateBlindedRequest(blinded_elements=blinded, epoch=epoch)
            response = await stub.EvaluateBlinded(request, metadata=user_metadata("carol"))
            assert response.epoch == 1 and len(response.evaluated_elements) == len(blinded)
        assert await bucket_level(server, "carol") == pytest.approx(before + 6, abs=0.5)


class RollingStub:
    """A load balancer in the middle of a rolling key switch: the first GetPrivateParams reaches the instance
    not switched yet (``old``), every later call the switched one (``new``)."""

    def __init__(self, old: grpc.aio.Channel, new: grpc.aio.Channel) -> None:
        self._old = private_pb2_grpc.PrivateDiscoveryServiceStub(old)
        self._new = private_pb2_grpc.PrivateDiscoveryServiceStub(new)
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        first = not self.calls
        self.calls.append(name)
        return getattr(self._old if first else self._new, name)


async def test_a_client_caught_in_a_rolling_switch_starts_its_sync_over_once(
    start_private: Callable[..., Awaitable[DiscoveryServer]], request: pytest.FixtureRequest
) -> None:
    """Two instances on one store (Redis), one still on epoch 1 preparing 2, one switched to 2: the client
    pinned both keys; its evaluation under epoch 1 is refused by the switched instance, and the sync starts
    over from GetPrivateParams there."""
    store = store_url(request, "redis")
    alice = e164_numbers(1, seed=74)[0]
    old = await start_private(store=store, private_next_key_epoch=2)
    async with AsyncAdminClient(target(old)) as admin:
        await admin.register_user("alice", alice)  # with records of both epochs
    new = await start_private(store=store, private_key_epoch=2)
    assert private_of(new).index.count == 1
    keys = {1: private_of(old).key.public_key, 2: private_of(new).key.public_key}
    state = PrivateState(pinned_keys=keys)
    async with (
        grpc.aio.insecure_channel(target(old)) as old_channel,
        grpc.aio.insecure_channel(target(new)) as new_channel,
        AsyncDiscoveryClient(target(new), user_id="carol") as client,
    ):
        stub = RollingStub(old_channel, new_channel)
        found = await client._run(_calls.private_discover_hashes(stub, state, [contact_hash(alice)]))  # type: ignore[arg-type]
    assert [user_id for _, user_id in found] == ["alice"]
    assert stub.calls[:3] == ["GetPrivateParams", "EvaluateBlinded", "GetPrivateParams"]
    assert state.epoch == 2 and state.evaluations == 1, "the refused batch was not evaluated"
