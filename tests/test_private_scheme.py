"""Private discovery mode building blocks: RFC 9497 and scheme vectors, proofs, formats, a round trip."""

from __future__ import annotations

import asyncio
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
    check_bucket_prefix,
    check_cursor,
    evaluate_blinded,
    key_info,
    registration_entry,
)
from discovery.private_scheme import (
    Bucket,
    BucketLayout,
    BucketOverflow,
    Delta,
    ProofError,
    SchemeError,
    Snapshot,
    apply_delta,
    blind_batch,
    bucket_layout,
    bucket_prefix,
    bucket_size,
    finalize_batch,
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


def test_scheme_vectors() -> None:
    key = OprfKey.from_secret(bytes.fromhex(VECTORS["server_secret"]), VECTORS["epoch"])
    assert key.seed.hex() == VECTORS["seed"]
    assert key_info(key.epoch).hex() == VECTORS["key_info"]
    assert key.public_key.hex() == VECTORS["public_key"]
    for entry in VECTORS["entries"]:
        y = key.output_of(bytes.fromhex(entry["contact_hash"]))
        assert y.hex() == entry["output_y"]
        assert tag_of(y).hex() == entry["tag"]
        assert bucket_prefix(tag_of(y), VECTORS["prefix_bits"]).hex() == entry["prefix"]
        sealed = seal_user_id(
            y, key.epoch, entry["user_id"], VECTORS["id_pad"], bytes.fromhex(entry["nonce"])
        )
        assert sealed.hex() == entry["sealed"]
        assert (
            open_sealed(y, key.epoch, bytes.fromhex(entry["sealed"]), VECTORS["id_pad"]) == entry["user_id"]
        )
        assert open_sealed(y, key.epoch + 1, sealed, VECTORS["id_pad"]) is None


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
    layout = BucketLayout(11, 50)
    for prefix in (b"\x00", b"\x00\x00\x00", b"\x00\x01"):  # 11 bits: two bytes, low 5 bits zero
        with pytest.raises(InvalidArgument) as excinfo:
            check_bucket_prefix(prefix, layout)
        assert (_field(excinfo), excinfo.value.reason) == ("prefix", Reason.BUCKET_PREFIX_REFUSED)
    assert check_bucket_prefix(b"\xff\xe0", layout) == b"\xff\xe0"
    with pytest.raises(InvalidArgument) as excinfo:
        check_cursor(11, 1, 10, 1)
    assert excinfo.value.reason == Reason.PRIVATE_CURSOR_REFUSED
    with pytest.raises(InvalidArgument) as excinfo:
        check_cursor(3, 2, 10, 1)
    assert (_field(excinfo), excinfo.value.reason) == ("cursor.epoch", Reason.PRIVATE_EPOCH_REFUSED)


def test_buckets_are_one_size_whatever_they_hold() -> None:
    key = OprfKey.from_secret(SECRET, 1)
    directory = PrivateDirectory(1, small_directory_max=0)
    for i in range(400):
        directory.put(f"u{i}", registration_entry(key, os.urandom(32), f"user-{i:03d}" * (1 + i % 9)))
    layout = directory.layout()
    sizes = {
        len(directory.bucket(p.to_bytes(1, "big")).serialize())
        for p in range(0, 256, 1 << (8 - layout.prefix_bits))
    }
    empty = PrivateDirectory(1).bucket(b"\x00", layout).serialize()
    assert sizes == {bucket_size(layout)} == {len(empty)}
    with pytest.raises(BucketOverflow):
        Bucket.build(
            1,
            BucketLayout(0, 2),
            b"",
            list(directory.entries.values())[:3]
            and [(e.tag, e.sealed) for e in list(directory.entries.values())[:3]],
        )


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
    layout = directory.layout()
    found: dict[bytes, list[str]] = {}
    for h, y, hit in zip(contacts, outputs, snapshot.contains([tag_of(y) for y in outputs]), strict=True):
        if not hit:
            continue
        if small:
            ids = [u for s in snapshot.sealed_for(tag_of(y)) if (u := open_sealed(y, 3, s)) is not None]
        else:
            prefix = bucket_prefix(tag_of(y), layout.prefix_bits)
            ids = Bucket.deserialize(directory.bucket(prefix).serialize()).open(y)
        if ids:
            found[h] = ids
    assert found == {h: [u] for h, u in expected.items() if h in contacts}


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
    assert bucket_layout(1_000_000).prefix_bits == 14


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
