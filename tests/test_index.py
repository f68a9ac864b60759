"""Tests of the in-memory directory index (discovery.index.DirectoryIndex)."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery.index import DirectoryIndex
from discovery.index import table as T
from discovery.index.packed import pack_strings, pack_varints, unpack_strings, varint, varint_size

Model = dict[bytes, tuple[str, bool]]


@pytest.fixture(autouse=True, params=["kernel", "numpy"])
def probe_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: on the compiled probe loops and on the numpy fallback."""
    if request.param == "numpy":
        monkeypatch.setattr(T, "_kernel", None)
    name: str = request.param
    return name


def test_the_compiled_kernel_is_built() -> None:
    # `pip install -e .` builds it (setup.py); without it the index falls back to numpy, slower.
    assert T.KERNEL


def key(lo: int, hi: int) -> bytes:
    return lo.to_bytes(8, "little") + hi.to_bytes(8, "little")


def rand_keys(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(n)]


def expected(model: Model, queries: list[bytes]) -> tuple[list[int], list[str]]:
    hits = [(i, model[k][0]) for i, k in enumerate(queries) if k in model and model[k][1]]
    return [i for i, _ in hits], [u for _, u in hits]


def check(index: DirectoryIndex, model: Model, extra: Sequence[bytes] = ()) -> None:
    """The index agrees with the model: len, get of every key, and one batched lookup."""
    assert len(index) == len(model)
    queries = list(model) + list(extra)
    random.Random(len(queries)).shuffle(queries)
    for k in queries:
        assert index.get(k) == model.get(k), k.hex()
    pos, ids = index.lookup(b"".join(queries))
    want_pos, want_ids = expected(model, queries)
    assert pos.dtype == np.uint32
    assert pos.tolist() == want_pos
    assert ids == want_ids
    check_packed(index, b"".join(queries), pos.tolist(), ids)


def check_packed(index: DirectoryIndex, queries: bytes, want_pos: list[int], want_ids: list[str]) -> None:
    """lookup_packed gives lookup's results, packed as index/packed.py says (with a prefix and without)."""
    for prefix in (b"", b"\x12", b"\xab\xcd"):
        pos, packed_pos, packed_ids = index.lookup_packed(queries, prefix)
        assert pos.dtype == np.uint32 and pos.tolist() == want_pos
        assert packed_pos == b"".join(varint(p) for p in want_pos)
        want = b"".join(prefix + varint(len(i.encode())) + i.encode() for i in want_ids)
        assert packed_ids == want
        assert unpack_strings(packed_ids, len(prefix)) == want_ids


def test_packing_helpers() -> None:
    assert [varint(v) for v in (0, 1, 127, 128, 300, 2**32 - 1)] == [
        b"\x00",
        b"\x01",
        b"\x7f",
        b"\x80\x01",
        b"\xac\x02",
        b"\xff\xff\xff\xff\x0f",
    ]
    assert pack_varints(np.array([1, 200], dtype=np.uint32)) == b"\x01\xc8\x01"
    for value in (*range(0, 20000, 7), 2**14 - 1, 2**14, 2**21, 2**35):
        slow = bytearray()
        rest = value
        while rest >= 0x80:
            slow.append(rest & 0x7F | 0x80)
            rest >>= 7
        slow.append(rest)
        assert varint(value) == bytes(slow) and varint_size(value) == len(slow)
    names = ["", "a", "ü" * 64, "x" * 200]
    assert unpack_strings(pack_strings(names, b"\x12"), 1) == names
    assert pack_strings(["ab"], b"\x12") == b"\x12\x02ab"


# ---------------------------------------------------------------- single-key API


def test_upsert_get_remove_set_discoverable() -> None:
    index = DirectoryIndex()
    k1, k2, k3 = rand_keys(3)
    assert index.get(k1) is None
    index.upsert(k1, "alice", True)
    index.upsert(k2, "bob", False)
    assert len(index) == 2
    assert index.get(k1) == ("alice", True)
    assert index.get(k2) == ("bob", False)
    assert index.get(k3) is None

    index.upsert(k1, "alice-the-second-with-a-longer-id", True)  # replace, grows the record
    assert index.get(k1) == ("alice-the-second-with-a-longer-id", True)
    index.upsert(k1, "al", False)  # replace, shrinks in place
    assert index.get(k1) == ("al", False)
    assert len(index) == 2

    assert index.set_discoverable(k1, True)
    assert index.get(k1) == ("al", True)
    assert index.set_discoverable(k2, True)
    assert not index.set_discoverable(k3, True)
    assert index.get(k3) is None

    assert index.remove(k1)
    assert not index.remove(k1)
    assert index.get(k1) is None
    assert len(index) == 1
    check(index, {k2: ("bob", True)}, [k1, k3])


def test_lookup_returns_only_present_and_discoverable_in_query_order() -> None:
    index = DirectoryIndex()
    keys = rand_keys(6, seed=1)
    for i, k in enumerate(keys[:4]):
        index.upsert(k, f"user{i}", i != 2)
    queries = [keys[5], keys[3], keys[2], keys[0], keys[4], keys[1], keys[3]]
    pos, ids = index.lookup(b"".join(queries))
    assert pos.dtype == np.uint32
    assert pos.tolist() == [1, 3, 5, 6]
    assert ids == ["user3", "user0", "user1", "user3"]


def test_non_discoverable_never_returned() -> None:
    index = DirectoryIndex()
    keys = rand_keys(500, seed=2)
    for i, k in enumerate(keys):
        index.upsert(k, f"hidden{i}", False)
    assert index.lookup(b"".join(keys))[1] == []
    index.bulk_load(b"".join(keys[:100]), [f"h{i}" for i in range(100)], np.zeros(100, dtype=np.bool_))
    assert index.lookup(b"".join(keys))[1] == []
    index.set_discoverable(keys[7], True)
    pos, ids = index.lookup(b"".join(keys))
    assert pos.tolist() == [7] and ids == ["h7"]


def test_unicode_user_ids() -> None:
    index = DirectoryIndex()
    names = [
        "ünïcödé",
        "日本語のユーザー",
        "emoji-😀-🎉",
        "e\u0301\u0301",  # combining marks
        "ü" * 64,  # 128 UTF-8 bytes, the maximum
        "😀" * 32,  # 128 bytes of 4-byte characters
        "x" * 15,  # 15 + NUL: exactly one cell
        "y" * 16,  # 16 + NUL: spills into a second cell
        "\u00ff\u00fe",  # the UTF-8 of these contains no 0xFF byte, but the padding does
        "tab\there",
    ]
    keys = rand_keys(len(names), seed=3)
    for k, name in zip(keys, names, strict=True):
        index.upsert(k, name, True)
    check(index, {k: (n, True) for k, n in zip(keys, names, strict=True)})
    bulk = DirectoryIndex()
    bulk.bulk_load(b"".join(keys), names)
    check(bulk, {k: (n, True) for k, n in zip(keys, names, strict=True)})


def test_empty_lookups() -> None:
    index = DirectoryIndex()
    pos, ids = index.lookup(b"")
    assert pos.dtype == np.uint32 and pos.size == 0 and ids == []
    pos, ids = index.lookup(b"".join(rand_keys(10)))  # empty index
    assert pos.size == 0 and ids == []
    index.upsert(rand_keys(1, seed=9)[0], "someone", True)
    pos, ids = index.lookup(b"")
    assert pos.dtype == np.uint32 and pos.size == 0 and ids == []
    pos, ids = index.lookup(b"".join(rand_keys(10)))  # nothing matches
    assert pos.dtype == np.uint32 and pos.size == 0 and ids == []


def test_bad_input() -> None:
    index = DirectoryIndex()
    k = rand_keys(1)[0]
    for bad in (b"x" * 15, b"x" * 17, b"x" * 33):
        with pytest.raises(ValueError):
            index.lookup(bad)
        with pytest.raises(ValueError):
            index.bulk_load(bad, ["a"])
        with pytest.raises(ValueError):
            index.bulk_load_packed(bad, b"a\x00")
    for bad_key in (b"", b"x" * 15, b"x" * 17):
        with pytest.raises(ValueError):
            index.upsert(bad_key, "a", True)
        with pytest.raises(ValueError):
            index.get(bad_key)
        with pytest.raises(ValueError):
            index.remove(bad_key)
        with pytest.raises(ValueError):
            index.set_discoverable(bad_key, True)
    for bad_id in ("", "x" * 129, "ü" * 65, "a\x00b"):
        with pytest.raises(ValueError):
            index.upsert(k, bad_id, True)
        with pytest.raises(ValueError):
            index.bulk_load(k, [bad_id])
    with pytest.raises(ValueError):
        index.bulk_load(k + k, ["a"])  # 2 keys, 1 id
    with pytest.raises(ValueError):
        index.bulk_load(k, ["a"], np.ones(2, dtype=np.bool_))
    for blob in (b"a", b"a\x00b\x00", b"\x00", b"\xff\xfe\x00", b"x" * 129 + b"\x00"):
        with pytest.raises(ValueError):
            index.bulk_load_packed(k, blob)
    with pytest.raises(ValueError):
        index.bulk_load_packed(b"", b"a\x00")
    assert len(index) == 0
    assert index.lookup(k)[1] == []


# ------------------------------------------------------------ table mechanics


def test_grow_and_rehash_one_by_one() -> None:
    index = DirectoryIndex(capacity=16)
    model: Model = {}
    keys = rand_keys(5000, seed=4)
    buckets = [index._nb]
    for i, k in enumerate(keys):
        index.upsert(k, f"u{i}", i % 5 != 0)
        model[k] = (f"u{i}", i % 5 != 0)
        if index._nb != buckets[-1]:
            buckets.append(index._nb)
    assert len(buckets) > 5  # it grew, several times
    assert len(index) / (index._nb * T.BUCKET) <= T.MAX_LOAD
    check(index, model, rand_keys(300, seed=5))


def colliding_keys(n: int, lo: int, seed: int) -> list[bytes]:
    """n keys sharing the low word, so the same home bucket."""
    rng = random.Random(seed)
    return [key(lo, rng.getrandbits(64)) for _ in range(n)]


def test_backward_shift_deletion_in_the_middle_of_a_run() -> None:
    index = DirectoryIndex(capacity=4096)
    nb = index._nb
    # Keys homed in bucket h (40 of them: the run spills over two more buckets), interleaved
    # with keys homed in buckets h + 1 and h + 2 that the spill pushes further on.
    h = nb // 2
    lo_h = ((h << 32) + nb - 1) // nb << 32  # the smallest lo >> 32 mapping to bucket h ...
    assert ((lo_h >> 32) * nb) >> 32 == h
    lo_h1 = (((h + 1) << 32) + nb - 1) // nb << 32
    assert ((lo_h1 >> 32) * nb) >> 32 == h + 1
    lo_h2 = (((h + 2) << 32) + nb - 1) // nb << 32
    group = colliding_keys(40, lo_h | 5, seed=6)
    next1 = colliding_keys(10, lo_h1 | 7, seed=7)
    next2 = colliding_keys(10, lo_h2 | 9, seed=8)
    model: Model = {}
    order = group[:20] + next1[:5] + group[20:] + next2 + next1[5:]
    for i, k in enumerate(order):
        index.upsert(k, f"id{i}", True)
        model[k] = (f"id{i}", True)
    absent = colliding_keys(20, lo_h | 5, seed=10) + colliding_keys(5, lo_h1 | 7, seed=11)
    check(index, model, absent)
    # Remove from the middle of the run, then from its start, then everything one by one.
    for k in group[10:14] + group[:3] + next1[2:4]:
        assert index.remove(k)
        del model[k]
        check(index, model, absent)
    for k in list(model):
        assert index.remove(k)
        del model[k]
        check(index, model, absent[:3])
    assert (index._flat == T._EMPTY).all()


def test_full_home_bucket_and_fingerprint_collisions() -> None:
    index = DirectoryIndex(capacity=64)
    lo = 0x1234_5678_9ABC_DEF0
    hi = 0x0FED_CBA9_8765_4321
    model: Model = {}
    # 60 keys with the same home and the same fingerprint (hi differs only in its low bits).
    same = [key(lo, hi ^ i) for i in range(60)]
    for i, k in enumerate(same):
        index.upsert(k, f"s{i}", i % 7 != 3)
        model[k] = (f"s{i}", i % 7 != 3)
    absent = [key(lo, hi ^ (1000 + i)) for i in range(20)] + [key(lo ^ 1, hi)]
    check(index, model, absent)
    for k in same[5:50:3]:
        index.remove(k)
        del model[k]
    check(index, model, absent)


def test_tail_extension_at_the_end_of_the_table() -> None:
    index = DirectoryIndex(capacity=4096)
    size = index._flat.size
    # Every one of these keys is homed in the last home bucket, so the run spills into the tail.
    keys = colliding_keys(400, 0xFFFF_FFFF_FFFF_FFFF, seed=12)
    model: Model = {}
    for i, k in enumerate(keys):
        index.upsert(k, f"t{i}", True)
        model[k] = (f"t{i}", True)
    assert index._flat.size > size
    assert (index._flat[-T.BUCKET :] == T._EMPTY).all()
    check(index, model, colliding_keys(20, 0xFFFF_FFFF_FFFF_FFFF, seed=13))
    for k in keys[::2]:
        index.remove(k)
        del model[k]
    check(index, model)


def test_big_lookup_is_chunked() -> None:
    index = DirectoryIndex()
    keys = rand_keys(2000, seed=14)
    index.bulk_load(b"".join(keys), [f"c{i}" for i in range(2000)])
    queries = rand_keys(70_000, seed=15)
    rng = random.Random(16)
    where = sorted(rng.sample(range(len(queries)), 1500))
    for j, w in enumerate(where):
        queries[w] = keys[j]
    pos, ids = index.lookup(b"".join(queries))
    assert pos.tolist() == where
    assert ids == [f"c{j}" for j in range(1500)]


# ------------------------------------------------------------------- bulk loads


def test_bulk_load_then_lookup() -> None:
    index = DirectoryIndex()
    keys = rand_keys(20_000, seed=17)
    ids = [f"user-{i}-{'z' * (i % 23)}" for i in range(len(keys))]
    disc = np.array([i % 4 != 0 for i in range(len(keys))])
    index.bulk_load(b"".join(keys), ids, disc)
    model = {k: (u, bool(d)) for k, u, d in zip(keys, ids, disc, strict=True)}
    check(index, model, rand_keys(1000, seed=18))


def test_bulk_load_packed() -> None:
    index = DirectoryIndex()
    keys = rand_keys(5000, seed=19)
    ids = [f"p{i}" if i % 3 else f"π-{i}" for i in range(len(keys))]
    blob = "".join(u + "\x00" for u in ids).encode()
    index.bulk_load_packed(b"".join(keys), blob)
    check(index, {k: (u, True) for k, u in zip(keys, ids, strict=True)}, rand_keys(100, seed=20))
    index.bulk_load_packed(b"", b"")
    assert len(index) == 5000


def test_bulk_load_duplicates_last_wins_and_replaces_existing() -> None:
    index = DirectoryIndex()
    keys = rand_keys(3000, seed=21)
    index.bulk_load(b"".join(keys), [f"old{i}" for i in range(3000)])
    model: Model = {k: (f"old{i}", True) for i, k in enumerate(keys)}
    # A small batch (inserted in rounds) and a big one (rebuilds), both with repeats inside the
    # batch and keys that are already there.
    for size, seed in ((300, 22), (5000, 23)):
        rng = random.Random(seed)
        fresh = rand_keys(size, seed=seed + 100)
        batch = [rng.choice(keys) if rng.random() < 0.3 else rng.choice(fresh) for _ in range(size)]
        batch += batch[: size // 10]  # the same keys again, later in the batch
        ids = [f"b{seed}-{i}" for i in range(len(batch))]
        disc = np.array([rng.random() < 0.7 for _ in batch])
        index.bulk_load(b"".join(batch), ids, disc)
        for k, u, d in zip(batch, ids, disc, strict=True):
            model[k] = (u, bool(d))
        check(index, model, rand_keys(200, seed=seed + 200))


def test_bulk_load_crafted_collisions_and_duplicates() -> None:
    index = DirectoryIndex(capacity=16)
    lo = 0x5555_0000_0000_0001
    batch = [key(lo, i) for i in range(50)] + [key(lo + 1, 7), key(lo, 3), key(lo + (1 << 40), 3)]
    ids = [f"c{i}" for i in range(len(batch))]
    index.bulk_load(b"".join(batch), ids)
    model = {k: (u, True) for k, u in zip(batch, ids, strict=True)}
    assert model[key(lo, 3)] == ("c51", True)
    check(index, model, [key(lo, 1000), key(lo + 2, 3)])


def test_id_log_compaction_keeps_ids_correct() -> None:
    index = DirectoryIndex()
    keys = rand_keys(2000, seed=24)
    model: Model = {}
    compactions = 0
    used = index._used
    for rnd in range(30):
        name = f"{rnd:02d}-" + "w" * (100 + rnd % 20)
        for i, k in enumerate(keys):
            if (i + rnd) % 3 == 0 and k in model:
                index.remove(k)
                del model[k]
            else:
                index.upsert(k, f"{name}-{i}", (i + rnd) % 5 != 0)
                model[k] = (f"{name}-{i}", (i + rnd) % 5 != 0)
        if index._used < used:
            compactions += 1
        used = index._used
    assert compactions >= 2
    assert index._garbage <= max(T._COMPACT_MIN_CELLS, index._used - index._garbage)
    check(index, model, rand_keys(50, seed=25))
    index.bulk_load(b"".join(keys[:500]), ["short"] * 500)
    model.update({k: ("short", True) for k in keys[:500]})
    check(index, model)


def test_clear_and_memory_bytes() -> None:
    index = DirectoryIndex()
    keys = rand_keys(10_000, seed=26)
    index.bulk_load(b"".join(keys), [f"m{i}" for i in range(10_000)])
    assert 10_000 * 40 < index.memory_bytes() < 10_000 * 200
    index.clear()
    assert len(index) == 0
    assert index.lookup(b"".join(keys))[1] == []
    assert index.get(keys[0]) is None
    index.upsert(keys[0], "again", True)
    check(index, {keys[0]: ("again", True)}, keys[1:10])


# ---------------------------------------------------------- against a dict model

LOWS = [0, 1, 0x0000_0001_0000_0000, 0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF, 0x1234_5678_9ABC_DEF0]
HIGHS = [0, 1, 2, 0xFFFF_FFFF_FFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFE, 0x0123_4567_89AB_CDEF]
POOL = [key(lo, hi) for lo in LOWS for hi in HIGHS] + rand_keys(12, seed=27)
IDS = ["a", "bob", "ü" * 64, "x" * 128, "日本語", "😀!", "p" * 15, "q" * 16, "r" * 31, "s" * 33]

key_ix = st.integers(0, len(POOL) - 1)
entry = st.tuples(key_ix, st.integers(0, len(IDS) - 1), st.booleans())
op = st.one_of(
    st.tuples(st.just("upsert"), entry),
    st.tuples(st.just("remove"), key_ix),
    st.tuples(st.just("set"), st.tuples(key_ix, st.booleans())),
    st.tuples(st.just("bulk"), st.lists(entry, max_size=12)),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(op, max_size=60), st.sampled_from([16, 64, 4096]))
def test_against_dict_model(ops: list[tuple[str, object]], capacity: int) -> None:
    index = DirectoryIndex(capacity=capacity)
    model: Model = {}
    for name, arg in ops:
        if name == "upsert":
            k, u, d = arg  # type: ignore[misc]
            index.upsert(POOL[k], IDS[u], d)
            model[POOL[k]] = (IDS[u], d)
        elif name == "remove":
            assert index.remove(POOL[arg]) == (POOL[arg] in model)  # type: ignore[index]
            model.pop(POOL[arg], None)  # type: ignore[index]
        elif name == "set":
            k, d = arg  # type: ignore[misc]
            assert index.set_discoverable(POOL[k], d) == (POOL[k] in model)
            if POOL[k] in model:
                model[POOL[k]] = (model[POOL[k]][0], d)
        else:
            entries: list[tuple[int, int, bool]] = arg  # type: ignore[assignment]
            index.bulk_load(
                b"".join(POOL[k] for k, _, _ in entries),
                [IDS[u] for _, u, _ in entries],
                np.array([d for _, _, d in entries], dtype=np.bool_),
            )
            for k, u, d in entries:
                model[POOL[k]] = (IDS[u], d)
        pos, ids = index.lookup(b"".join(POOL))
        assert (pos.tolist(), ids) == expected(model, POOL)
    check(index, model, [k for k in POOL if k not in model])


def test_random_churn_against_dict_model() -> None:
    rng = random.Random(28)
    index = DirectoryIndex(capacity=16)
    model: Model = {}
    live: list[bytes] = []
    for step in range(6000):
        r = rng.random()
        if r < 0.55 or not live:
            k = os.urandom(16) if rng.random() < 0.8 or not live else rng.choice(live)
            u = f"c{step}" * rng.randint(1, 8)
            d = rng.random() < 0.8
            if k not in model:
                live.append(k)
            index.upsert(k, u, d)
            model[k] = (u, d)
        elif r < 0.85:
            k = live.pop(rng.randrange(len(live)))
            assert index.remove(k)
            del model[k]
        else:
            k = rng.choice(live)
            d = rng.random() < 0.5
            assert index.set_discoverable(k, d)
            model[k] = (model[k][0], d)
    check(index, model, rand_keys(200, seed=29))


# ------------------------------------------------------------------ growth off the loop


def test_grown_table_and_adopt() -> None:
    index = DirectoryIndex(capacity=64)
    keys = rand_keys(3000, seed=30)
    model: Model = {}
    for i, k in enumerate(keys[:40]):
        index.upsert(k, f"g{i}", i % 3 != 0)
        model[k] = (f"g{i}", i % 3 != 0)
    assert not index.needs_growth(1)
    assert index.needs_growth(len(keys))
    nb = index._nb
    table = index.grown_table(len(keys))
    assert index._nb == nb  # building it changes nothing
    check(index, model, keys[40:60])
    assert index.adopt(table)
    assert index._nb == table.n_buckets > nb
    check(index, model, keys[40:60])
    index.bulk_load(b"".join(keys[40:]), [f"b{i}" for i in range(len(keys) - 40)])
    assert index._nb == table.n_buckets  # it had room: no second growth
    model.update({k: (f"b{i}", True) for i, k in enumerate(keys[40:])})
    check(index, model, rand_keys(100, seed=31))
    # A table built before a change is refused.
    stale = index.grown_table(10_000)
    index.remove(keys[0])
    del model[keys[0]]
    assert not index.adopt(stale)
    check(index, model, keys[:1])


def test_grown_table_in_a_thread_while_looking_up() -> None:
    import threading

    index = DirectoryIndex(capacity=16)
    keys = rand_keys(20_000, seed=32)
    index.bulk_load(b"".join(keys), [f"t{i}" for i in range(len(keys))])
    batch = b"".join(keys[::7])
    want = index.lookup(batch)
    box: list[T.GrownTable] = []
    worker = threading.Thread(target=lambda: box.append(index.grown_table(100_000)))
    worker.start()
    for _ in range(50):  # bounded; lookups keep working on the old table meanwhile
        got = index.lookup(batch)
        assert got[0].tolist() == want[0].tolist() and got[1] == want[1]
    worker.join()
    assert index.adopt(box[0])
    got = index.lookup(batch)
    assert got[0].tolist() == want[0].tolist() and got[1] == want[1]


def test_both_probe_loops_agree_on_a_random_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    if not T.KERNEL:
        pytest.skip("the compiled kernel is not built")
    kernel = T._load_kernel()
    live = rand_keys(4000, seed=34)
    queries = b"".join(random.Random(33).sample(live, 1500) + rand_keys(500, seed=35))
    results = []
    for use in (kernel, None):
        monkeypatch.setattr(T, "_kernel", use)
        index = DirectoryIndex(capacity=16)
        index.bulk_load(b"".join(live[:2500]), [f"k{i}" * (i % 9 + 1) for i in range(2500)])
        for i, k in enumerate(live[2500:]):
            index.upsert(k, f"u{i}", i % 4 != 0)
        for k in live[::5]:
            index.remove(k)
        pos, ids = index.lookup(queries)
        results.append((pos.tolist(), ids, len(index), index.lookup_packed(queries, b"\x12")[1:]))
    assert results[0] == results[1]
