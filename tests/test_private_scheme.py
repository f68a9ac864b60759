"""Private discovery mode building blocks: RFC 9497 and scheme vectors, proofs, formats, a round trip."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from pathlib import Path

import pytest
from voprf import ristretto

from discovery.core.errors import InvalidArgument, Reason
from discovery.core.private import (
    OffLoopEvaluator,
    OprfKey,
    PrivateDirectory,
    check_blinded_shape,
    check_bucket_range,
    check_cursor,
    check_range_load,
    evaluate_blinded,
    key_info,
    registration_entry,
)
from discovery.private_scheme import (
    SLACK,
    Bucket,
    Delta,
    DeltaRecord,
    ProofError,
    SchemeError,
    Snapshot,
    apply_delta,
    blind_batch,
    bucket_capacity,
    bucket_count,
    bucket_of_rank,
    bucket_ranks,
    bucket_size,
    finalize_batch,
    min_users,
    open_sealed,
    seal_user_id,
    tag_of,
)

VECTORS = json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "private_mode_vectors.json").read_text()
)
SECRET = b"test private mode secret".ljust(32, b"!")

# RFC 9497 Appendix A.1.2, ristretto255-SHA512, VOPRF mode.
RFC_SEED = bytes.fromhex("a3" * 32)
RFC_KEY_INFO = bytes.fromhex("74657374206b6579")
RFC_PK = bytes.fromhex("c803e2cc6b05fc15064549b5920659ca4a77b2cca6f04f6b357009335476ad4e")
RFC_VECTORS = [
    {  # Test Vector 1, Batch Size 1
        "inputs": ["00"],
        "blinded": ["863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945"],
        "evaluated": ["aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e"],
        "outputs": [
            "b58cfbe118e0cb94d79b5fd6a6dafb98764dff49c14e1770b566e42402da1a7d"
            "a4d8527693914139caee5bd03903af43a491351d23b430948dd50cde10d32b3c"
        ],
    },
    {  # Test Vector 2, Batch Size 1
        "inputs": ["5a" * 17],
        "blinded": ["cc0b2a350101881d8a4cba4c80241d74fb7dcbfde4a61fde2f91443c2bf9ef0c"],
        "evaluated": ["60a59a57208d48aca71e9e850d22674b611f752bed48b36f7a91b372bd7ad468"],
        "outputs": [
            "8a9a2f3c7f085b65933594309041fc1898d42d0858e59f90814ae90571a6df60"
            "356f4610bf816f27afdd84f47719e480906d27ecd994985890e5f539e7ea74b6"
        ],
    },
    {  # Test Vector 3, Batch Size 2
        "inputs": ["00", "5a" * 17],
        "blinded": [
            "863f330cc1a1259ed5a5998a23acfd37fb4351a793a5b3c090b642ddc439b945",
            "90a0145ea9da29254c3a56be4fe185465ebb3bf2a1801f7124bbbadac751e654",
        ],
        "evaluated": [
            "aa8fa048764d5623868679402ff6108d2521884fa138cd7f9c7669a9a014267e",
            "cc5ac221950a49ceaa73c8db41b82c20372a4c8d63e5dded2db920b7eee36a2a",
        ],
        "outputs": [
            "b58cfbe118e0cb94d79b5fd6a6dafb98764dff49c14e1770b566e42402da1a7d"
            "a4d8527693914139caee5bd03903af43a491351d23b430948dd50cde10d32b3c",
            "8a9a2f3c7f085b65933594309041fc1898d42d0858e59f90814ae90571a6df60"
            "356f4610bf816f27afdd84f47719e480906d27ecd994985890e5f539e7ea74b6",
        ],
    },
]


@pytest.mark.parametrize("vector", RFC_VECTORS, ids=["vector1", "vector2", "batch2"])
def test_rfc9497_voprf_vectors(vector: dict[str, list[str]]) -> None:
    """DeriveKeyPair, BlindEvaluate (the evaluated elements, deterministic in the blinded ones) and Evaluate.

    The library draws the blind and the proof's random scalar itself, so the Blind and Proof columns of the
    vectors cannot be replayed; the proof of the same batch is checked to verify below instead.
    """
    evaluator = ristretto.Evaluator.from_seed(RFC_SEED, RFC_KEY_INFO)
    assert evaluator.public_key.serialize() == RFC_PK
    blinded = [ristretto.BlindedInput.deserialize(bytes.fromhex(b)) for b in vector["blinded"]]
    out = evaluator.evaluate_batch(blinded).serialize()
    assert out[64:].hex() == "".join(vector["evaluated"])  # proof (64 bytes) first, then the elements
    for raw, expected in zip(vector["inputs"], vector["outputs"], strict=True):
        assert evaluator.evaluate_known_input(bytes.fromhex(raw)).hex() == expected
    batch = blind_batch([bytes.fromhex(i) for i in vector["inputs"]])
    own = evaluator.evaluate_batch(
        [
            ristretto.BlindedInput.deserialize(batch.blinded[i : i + 32])
            for i in range(0, len(batch.blinded), 32)
        ]
    ).serialize()
    assert [y.hex() for y in finalize_batch(batch, own[64:], own[:64], RFC_PK)] == vector["outputs"]


def scheme_vectors() -> dict[str, object]:
    """docs/private_mode_vectors.json, computed. Regenerate the file with ``python -c "import json,
    tests.test_private_scheme as t; print(json.dumps(t.scheme_vectors(), indent=2))"``."""
    secret, epoch, id_pad = bytes(range(32)), 7, 64
    key = OprfKey.from_secret(secret, epoch)
    entries = []
    for contact_hash, user_id, nonce in [
        (bytes([1]) * 32, "alice", bytes(12)),
        (bytes([2]) * 32, "user-42@example.org", bytes([1]) * 12),
        (bytes([0xAA]) * 16 + bytes([0x55]) * 16, "Zo\u00eb", bytes([2]) * 12),
    ]:
        y = key.output_of(contact_hash)
        entries.append(
            {
                "contact_hash": contact_hash.hex(),
                "output_y": y.hex(),
                "tag": tag_of(y).hex(),
                "user_id": user_id,
                "nonce": nonce.hex(),
                "sealed": seal_user_id(y, epoch, user_id, id_pad, nonce).hex(),
            }
        )
    # The range grid over 100 tags with k = 8: 12 buckets of 8 or 9 tags.
    grid_tags = sorted(tag_of(key.output_of(bytes([i]) * 32)) for i in range(100, 200))
    snapshot = Snapshot.of_tags(epoch, 1, grid_tags, id_pad)
    k, n = 8, len(grid_tags)
    grid = [
        {
            "rank": r,
            "tag": grid_tags[r].hex(),
            "bucket": bucket_of_rank(r, n, k),
            "range": snapshot.bucket_range(grid_tags[r], k).hex(),
        }
        for r in (0, 7, 8, 33, 50, 91, 99)
    ]
    sealed = [bytes.fromhex(str(e["sealed"])) for e in entries]
    tags = [bytes.fromhex(str(e["tag"])) for e in entries]
    delta = Delta(
        epoch,
        10,
        12,
        (DeltaRecord(tags[0], 1, (sealed[0],)), DeltaRecord(tags[1], 0, ())),
        True,
        id_pad,
    )
    bucket = Bucket.build(epoch, 2, 2, min(tags[:2]) + max(tags[:2]), sealed[:2], id_pad)
    return {
        "suite": "ristretto255-SHA512",
        "mode": "VOPRF",
        "server_secret": secret.hex(),
        "seed_context": "discovery.v1 2026-11-22 private-mode OPRF key seed from server secret",
        "epoch": epoch,
        "seed": key.seed.hex(),
        "key_info": key_info(epoch).hex(),
        "public_key": key.public_key.hex(),
        "id_pad": id_pad,
        "entries": entries,
        "grid": {"k": k, "tags": [t.hex() for t in grid_tags], "buckets": bucket_count(n, k), "ranks": grid},
        "delta_with_sealed_ids": delta.serialize().hex(),
        "delta_tags_only": Delta(epoch, 10, 12, (DeltaRecord(tags[0], 1), DeltaRecord(tags[1], 0)))
        .serialize()
        .hex(),
        "bucket_without_padding": bucket.serialize().hex(),
    }


def test_scheme_vectors() -> None:
    assert scheme_vectors() == VECTORS
    key = OprfKey.from_secret(bytes.fromhex(VECTORS["server_secret"]), VECTORS["epoch"])
    for entry in VECTORS["entries"]:
        y = key.output_of(bytes.fromhex(entry["contact_hash"]))
        sealed = bytes.fromhex(entry["sealed"])
        assert open_sealed(y, key.epoch, sealed, VECTORS["id_pad"]) == entry["user_id"]
        assert open_sealed(y, key.epoch + 1, sealed, VECTORS["id_pad"]) is None
    alice = key.output_of(bytes.fromhex(VECTORS["entries"][0]["contact_hash"]))
    bucket = Bucket.deserialize(bytes.fromhex(VECTORS["bucket_without_padding"]))
    assert bucket.open(alice) == ["alice"]
    delta = Delta.deserialize(bytes.fromhex(VECTORS["delta_with_sealed_ids"]))
    assert [(r.users, len(r.sealed)) for r in delta.records] == [(1, 1), (0, 0)]
    assert len(bytes.fromhex(VECTORS["delta_tags_only"])) == 30 + 2 * 6


def _evaluated(key: OprfKey, inputs: list[bytes]) -> tuple[object, bytes, bytes]:
    batch = blind_batch(inputs)
    evaluated, proof = evaluate_blinded(key, batch.blinded)
    return batch, evaluated, proof


def test_wrong_key_or_forged_proof_is_caught() -> None:
    key, other = OprfKey.from_secret(SECRET, 1), OprfKey.from_secret(SECRET, 2)
    inputs = [os.urandom(32) for _ in range(5)]
    batch = blind_batch(inputs)
    evaluated, proof = evaluate_blinded(key, batch.blinded)
    assert finalize_batch(batch, evaluated, proof, key.public_key) == [key.output_of(h) for h in inputs]
    with pytest.raises(ProofError):  # evaluated under another key than the pinned one
        finalize_batch(batch, *evaluate_blinded(other, batch.blinded), key.public_key)
    with pytest.raises(ProofError):
        finalize_batch(batch, evaluated, proof, other.public_key)
    swapped = evaluated[32:64] + evaluated[:32] + evaluated[64:]
    with pytest.raises(ProofError):
        finalize_batch(batch, swapped, proof, key.public_key)
    for at in (0, 31, 40, 63):
        forged = bytearray(proof)
        forged[at] ^= 0x01
        with pytest.raises(ProofError):
            finalize_batch(batch, evaluated, bytes(forged), key.public_key)
    forged_element = bytearray(evaluated)
    forged_element[0] ^= 0x02
    with pytest.raises(ProofError):
        finalize_batch(batch, bytes(forged_element), proof, key.public_key)
    with pytest.raises(SchemeError):
        finalize_batch(batch, evaluated[:-32], proof, key.public_key)


def _field(excinfo: pytest.ExceptionInfo[InvalidArgument]) -> str:
    return excinfo.value.violations[0].field


def test_bad_blinded_elements_are_refused() -> None:
    key = OprfKey.from_secret(SECRET, 1)
    good = blind_batch([b"a" * 32]).blinded
    malformed, too_many = Reason.MALFORMED_BLINDED_ELEMENTS, Reason.TOO_MANY_BLINDED_ELEMENTS
    for bad, field, reason in [
        (good + bytes(32), "blinded_elements[1]", malformed),  # the identity
        (b"\xff" * 32, "blinded_elements[0]", malformed),  # not a canonical encoding
        (good + b"\x01" + bytes(31), "blinded_elements[1]", malformed),  # non-canonical or off-group
        (good[:31], "blinded_elements", malformed),  # not a multiple of 32
        (good * 3, "blinded_elements", too_many),  # over the cap
    ]:
        with pytest.raises(InvalidArgument) as excinfo:
            evaluate_blinded(key, bad, max_count=2)
        assert (_field(excinfo), excinfo.value.reason) == (field, reason)
    assert check_blinded_shape(good * 2, 2) == 2
    for bad in (b"", b"\x00" * 9, b"\x00" * 11, b"\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x01"):
        with pytest.raises(InvalidArgument) as excinfo:
            check_bucket_range(bad)
        assert (_field(excinfo), excinfo.value.reason) == ("range", Reason.BUCKET_RANGE_REFUSED)
    assert check_bucket_range(b"\x00\x00\x00\x00\x01" * 2) == (1, 1)
    # Capacity and floor at 1M users, k = 32: 32 users per bucket, 3 of slack each way.
    assert (bucket_capacity(1_000_000, 32), min_users(1_000_000, 32)) == (32 + SLACK, 32 - SLACK)
    check_range_load(35, 1_000_000, 32)
    check_range_load(29, 1_000_000, 32)
    for load in (36, 28):
        with pytest.raises(InvalidArgument) as excinfo:
            check_range_load(load, 1_000_000, 32, "ranges[3]")
        assert (_field(excinfo), excinfo.value.reason) == ("ranges[3]", Reason.BUCKET_RANGE_REFUSED)
    with pytest.raises(InvalidArgument) as excinfo:
        check_cursor(11, 1, 10, 1)
    assert excinfo.value.reason == Reason.PRIVATE_CURSOR_REFUSED
    with pytest.raises(InvalidArgument) as excinfo:
        check_cursor(3, 2, 10, 1)
    assert (_field(excinfo), excinfo.value.reason) == ("cursor.epoch", Reason.PRIVATE_EPOCH_REFUSED)


@pytest.mark.parametrize("n", [1, 5, 31, 32, 63, 64, 100, 1000, 1023, 1024, 1025, 5000, 123_457])
@pytest.mark.parametrize("k", [1, 8, 32])
def test_the_grid_covers_every_rank_once_with_k_or_more_tags_each(n: int, k: int) -> None:
    b = bucket_count(n, k)
    bounds = [bucket_ranks(j, n, k) for j in range(b)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(stop == start for (_, stop), (start, _) in itertools.pairwise(bounds))
    sizes = {stop - start for start, stop in bounds}
    assert min(sizes) >= min(k, n) and max(sizes) <= -(-n // b) and max(sizes) - min(sizes) <= 1
    if n >= k * k:
        assert sizes <= {k, k + 1}
    assert max(sizes) + SLACK <= bucket_capacity(n, k) and min(sizes) >= min_users(n, k)
    for j, (start, stop) in enumerate(bounds[:50]):
        assert {bucket_of_rank(r, n, k) for r in range(start, stop)} == {j}


def _directory(key: OprfKey, users: int, small: bool = False, k: int = 32) -> PrivateDirectory:
    directory = PrivateDirectory(key.epoch, small_directory_max=10_000 if small else 0, bucket_users=k)
    for i in range(users):
        directory.put(f"u{i}", registration_entry(key, os.urandom(32), f"user-{i:03d}" * (1 + i % 7)))
    return directory


def test_buckets_are_one_size_whatever_they_hold() -> None:
    key = OprfKey.from_secret(SECRET, 1)
    directory = _directory(key, 400, k=16)
    snapshot = directory.snapshot()
    ranges = {snapshot.bucket_range(int(t).to_bytes(5, "big"), 16) for t in snapshot.tags}
    assert len(ranges) == bucket_count(400, 16) == 25
    buckets = [Bucket.deserialize(directory.bucket(r).serialize()) for r in ranges]
    capacity = bucket_capacity(400, 16)
    assert {len(b.serialize()) for b in buckets} == {bucket_size(capacity)}
    assert {b.capacity for b in buckets} == {capacity} and {b.k for b in buckets} == {16}
    assert sum(len(b.sealed) for b in buckets) == 25 * capacity
    assert all(list(b.sealed) == sorted(b.sealed) for b in buckets)
    # A range that is too narrow, or too wide, for the current set is refused, not served.
    tags = [int(t).to_bytes(5, "big") for t in snapshot.tags]
    for narrow_or_wide in (tags[0] + tags[5], tags[0] + tags[40]):
        with pytest.raises(InvalidArgument) as excinfo:
            directory.bucket(narrow_or_wide)
        assert excinfo.value.reason == Reason.BUCKET_RANGE_REFUSED
    with pytest.raises(SchemeError):
        Bucket.build(1, 2, 2, tags[0] + tags[2], [os.urandom(len(buckets[0].sealed[0]))] * 3)


@pytest.mark.parametrize("small", [False, True], ids=["buckets", "small-directory"])
def test_round_trip_finds_exactly_the_registered(small: bool) -> None:
    key = OprfKey.from_secret(SECRET, 3)
    directory = PrivateDirectory(3, small_directory_max=10_000 if small else 0)
    registered = {os.urandom(32): f"user-{i}" for i in range(300)}
    for h, user in registered.items():
        directory.put(user, registration_entry(key, h, user))
    directory.put("user-0", None)  # unregistered: must not be found
    expected = {h: u for h, u in registered.items() if u != "user-0"}
    contacts = [*list(registered)[:150], *(os.urandom(32) for _ in range(150))]
    batch = blind_batch(contacts)
    evaluated, proof = evaluate_blinded(key, batch.blinded)
    outputs = finalize_batch(batch, evaluated, proof, key.public_key)
    snapshot = Snapshot.deserialize(directory.snapshot().serialize())
    found: dict[bytes, list[str]] = {}
    for h, y, hit in zip(contacts, outputs, snapshot.contains([tag_of(y) for y in outputs]), strict=True):
        if not hit:
            continue
        if small:
            ids = [u for s in snapshot.sealed_for(tag_of(y)) if (u := open_sealed(y, 3, s)) is not None]
        else:
            range_ = snapshot.bucket_range(tag_of(y), directory.bucket_users)
            assert range_[:5] <= tag_of(y) <= range_[5:]  # the bucket's range holds it
            ids = Bucket.deserialize(directory.bucket(range_).serialize()).open(y)
        if ids:
            found[h] = ids
    assert found == {h: [u] for h, u in expected.items() if h in contacts}


def test_delta_records_state_a_tag_whole() -> None:
    key = OprfKey.from_secret(SECRET, 1)
    directory = _directory(key, 100)
    old = directory.snapshot()
    joiner = os.urandom(32)
    directory.put("joiner", registration_entry(key, joiner, "joiner"))
    directory.put("u1", None)
    tags_only, with_ids = directory.delta(old.cursor), directory.delta(old.cursor, with_sealed_ids=True)
    assert len(tags_only.serialize()) == 30 + 2 * 6  # 6 bytes a record
    joined = [r for r in with_ids.records if r.present]
    assert [r.users for r in with_ids.records].count(0) == 1 and len(joined) == 1
    (record,) = joined
    assert Bucket(1, 1, 1, record.tag * 2, record.sealed).open(key.output_of(joiner)) == ["joiner"]
    fresh = directory.snapshot().serialize()
    for delta in (tags_only, with_ids):  # either kind brings a tag-only snapshot to the fresh one
        assert apply_delta(old, Delta.deserialize(delta.serialize())).serialize() == fresh
    with pytest.raises(SchemeError):  # a snapshot with sealed ids needs them in its deltas
        apply_delta(PrivateDirectory(1).snapshot(with_sealed_ids=True), tags_only)
    with pytest.raises(SchemeError):  # a record of 1 user without its sealed id, in a delta with ids
        Delta(1, 0, 1, (DeltaRecord(b"x" * 5, 1),), True).serialize()


@pytest.mark.parametrize("small", [False, True], ids=["tags", "small-directory"])
def test_deltas_bring_an_old_snapshot_to_a_fresh_one(small: bool) -> None:
    key = OprfKey.from_secret(SECRET, 1)
    directory = PrivateDirectory(1, small_directory_max=10_000 if small else 0)
    hashes = [os.urandom(32) for _ in range(200)]
    for i, h in enumerate(hashes[:120]):
        directory.put(f"u{i}", registration_entry(key, h, f"u{i}"))
    old = Snapshot.deserialize(directory.snapshot().serialize())
    middle_cursor = None
    for i in range(30):
        directory.put(f"u{i}", None)  # unregister
    for i in range(30, 40):
        directory.put(f"u{i}", registration_entry(key, hashes[150 + i], f"u{i}"))  # change number
        if i == 35:
            middle_cursor = directory.cursor
    for i in range(120, 150):
        directory.put(f"u{i}", registration_entry(key, hashes[i], f"u{i}"))  # register
    fresh = directory.snapshot().serialize()
    delta = Delta.deserialize(directory.delta(old.cursor).serialize())
    assert apply_delta(old, delta).serialize() == fresh
    assert apply_delta(apply_delta(old, delta), delta).serialize() == fresh  # replay: at least once
    assert middle_cursor is not None
    two_steps = apply_delta(apply_delta(old, directory.delta(old.cursor)), directory.delta(middle_cursor))
    assert two_steps.serialize() == fresh
    with pytest.raises(SchemeError):
        apply_delta(Snapshot.build(2, old.cursor, [], small), delta)  # another epoch


def test_snapshot_round_trips_at_size() -> None:
    import numpy as np

    tags = np.unique(np.random.default_rng(1).integers(0, 1 << 40, size=50_000, dtype=np.uint64))
    snapshot = Snapshot(1, 9, tags)
    raw = snapshot.serialize()
    back = Snapshot.deserialize(raw)
    assert (back.tags == tags).all() and back.cursor == 9
    assert len(raw) < 3.5 * len(tags)
    with pytest.raises(SchemeError):
        Snapshot.deserialize(raw[:-1])


async def test_off_loop_evaluation_keeps_the_loop_responsive() -> None:
    key = OprfKey.from_secret(SECRET, 1)
    packed = blind_batch([os.urandom(32) for _ in range(1000)]).blinded
    pool = OffLoopEvaluator()
    try:
        await pool.start(key)
        gaps: list[float] = []
        done = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            for _ in range(100_000):
                if done.is_set():
                    return
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        evaluated, proof = await pool.evaluate(key, packed)
        done.set()
        await ticker
        assert len(evaluated) == len(packed) and len(proof) == 64
        assert max(gaps) < 0.15  # the inline evaluation alone blocks for about 0.2 s
        with pytest.raises(InvalidArgument):
            await pool.evaluate(key, bytes(32))
        assert await pool.outputs_of(key, [b"x" * 32]) == [key.output_of(b"x" * 32)]
    finally:
        pool.close()


@pytest.mark.parametrize("small", [False, True], ids=["tags", "small-directory"])
def test_join_events_are_opened_from_the_delta_once_each(small: bool) -> None:
    from discovery.client.private import PrivateState

    key = OprfKey.from_secret(SECRET, 1)
    directory = _directory(key, 40, small)
    book = [os.urandom(32) for _ in range(4)]
    directory.put("old", registration_entry(key, book[0], "old"))
    state = PrivateState(epoch=1, outputs={h: key.output_of(h) for h in book})
    state.snapshot = directory.snapshot()
    start = state.snapshot.cursor
    directory.put("bob", registration_entry(key, book[1], "bob"))
    directory.put("dave", registration_entry(key, book[2], "dave"))
    delta = directory.delta(start, with_sealed_ids=True)
    events, opened = state.joins(delta, book)
    assert sorted(user for _, user in events) == ["bob", "dave"]
    assert state.snapshot.cursor == start, "joins changes nothing: the caller applies"
    state.apply(delta, opened)
    assert sorted(state.opened.values()) == [("bob",), ("dave",)]
    # The same entries touched again (another setting changed), and one contact leaving: no event.
    after = directory.cursor
    directory.put("old", registration_entry(key, book[0], "old"))
    directory.put("bob", None)
    again = directory.delta(after, with_sealed_ids=True)
    assert state.joins(again, book)[0] == []
    state.apply(again, state.joins(again, book)[1])
    # A stream resumed from an older cursor reports every id it carries for the book (at least once),
    # here dave again and old (touched since).
    replayed, _ = state.joins(directory.delta(start, with_sealed_ids=True), book)
    assert sorted(user for _, user in replayed) == ["dave", "old"]
    with pytest.raises(SchemeError):  # a tags-only delta cannot open a joiner
        state.joins(Delta(1, after, after, ()), book)
