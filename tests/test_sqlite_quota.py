"""The SQLite quota store: decisions equal the QuotaStore rule (the in-memory reference),
``drained_at`` is rounded up but never before the bucket drains, so a row is pruned late,
never early, and stores on one file never overfill a bucket together."""

from __future__ import annotations

import asyncio
import math
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery.core.model import BucketCharge, QuotaCharge
from discovery.store.sqlite import SqliteStore
from discovery.store.sqlite.quota import MARK_MIN_GRID, MARK_SLACK, drained_mark, leak
from tests.support.memory_store import MemoryStore

START = 1_800_000_000.0
Row = tuple[float, float, float | None]


def raw_rows(path: Path) -> dict[str, Row]:
    """The table as stored, read through a connection of its own."""
    with closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT bucket, level, updated, drained_at FROM quota_buckets").fetchall()
    return {bucket: (level, updated, drained) for bucket, level, updated, drained in rows}


def assert_marks_bound_the_drain(rows: dict[str, Row], rates: dict[str, float]) -> None:
    """Each row's drained_at is a time at which the bucket is empty, and not far after it."""
    for bucket, (level, updated, drained_at) in rows.items():
        rate = rates[bucket]
        if rate <= 0:
            assert drained_at is None, bucket
            continue
        assert drained_at is not None, bucket
        assert leak(level, updated, drained_at, rate) == 0.0, bucket
        drain = level / rate
        late = 2 * max(MARK_MIN_GRID, drain * MARK_SLACK)  # two grid steps (and float rounding)
        assert drained_at - updated - drain <= late * (1 + 1e-9), bucket


def force_prune(store: SqliteStore) -> None:
    """The next charge prunes drained rows (they are pruned once a minute otherwise)."""
    store._last_quota_prune = -math.inf


async def charge_one(store: SqliteStore, bucket: str, cost: float, now: float, rate: float) -> QuotaCharge:
    (outcome,) = await store.charge([BucketCharge(bucket, cost, 30.0, rate)], now)
    return outcome


buckets = st.lists(
    st.tuples(
        st.floats(min_value=1.0, max_value=100.0),
        st.one_of(st.just(0.0), st.floats(min_value=1e-4, max_value=20.0)),
    ),
    min_size=1,
    max_size=3,
)
costs = st.one_of(st.integers(0, 40), st.floats(min_value=0.0, max_value=120.0))
calls = st.lists(
    st.tuples(
        st.lists(st.tuples(st.integers(0, 2), costs), min_size=1, max_size=3),
        st.one_of(st.floats(min_value=-5.0, max_value=1000.0), st.sampled_from([0.0, 64.0, 6.0])),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(buckets=buckets, calls=calls)
def test_decisions_equal_the_reference_and_only_drained_rows_are_pruned(
    buckets: list[tuple[float, float]], calls: list[tuple[list[tuple[int, float]], float, bool]]
) -> None:
    """Random charges (several per call, the clock going back a little at times, costs that
    do and do not fit, buckets that leak and do not) give the same outcomes, bit for bit, as
    the in-memory store. Each row pruned was empty at the pruning call's time by the
    reference's own arithmetic (the reference then forgets it too). After every call each
    row's drained_at bounds its drain time."""
    names = [f"b{i}" for i in range(len(buckets))]
    rates = {name: rate for name, (_, rate) in zip(names, buckets, strict=True)}

    async def scenario(path: Path) -> None:
        store = SqliteStore(path)
        await store.open()
        reference = MemoryStore()
        kept = reference.data.buckets
        try:
            now = START
            for charges, step, prune in calls:
                now += step
                if prune:
                    force_prune(store)
                    assert await store.charge([], now) == []
                    for name in set(kept) - set(raw_rows(path)):
                        assert leak(*kept.pop(name), now, rates[name]) == 0.0, (name, now)
                batch = []
                for index, cost in charges:
                    capacity, rate = buckets[index % len(buckets)]
                    batch.append(BucketCharge(names[index % len(buckets)], cost, capacity, rate))
                expected = await reference.charge(batch, now)
                assert await store.charge(batch, now) == expected, (batch, now)
                rows = raw_rows(path)
                assert set(rows) == set(kept)
                assert_marks_bound_the_drain(rows, rates)
        finally:
            await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp) / "store.db"))


@settings(max_examples=500, deadline=None)
@given(
    level=st.floats(min_value=0.0, max_value=1e7),
    now=st.one_of(st.floats(min_value=0.0, max_value=4e9), st.integers(0, 4_000_000_000).map(float)),
    rate=st.one_of(st.floats(min_value=1e-6, max_value=1e4), st.sampled_from([1 / 6, 1.0, 6 / 3600])),
)
def test_a_mark_is_on_its_grid_and_the_bucket_is_empty_by_then(level: float, now: float, rate: float) -> None:
    mark = drained_mark(level, now, rate)
    assert mark is not None and math.isfinite(mark)
    assert leak(level, now, mark, rate) == 0.0
    drain = level / rate
    grid = math.ldexp(1.0, math.frexp(max(MARK_MIN_GRID, drain * MARK_SLACK))[1] - 1)
    assert mark % grid == 0 and mark - (now + drain) <= 2 * grid
    assert drained_mark(level, now, 0.0) is None


async def test_drained_at_stays_while_charges_keep_under_it_and_moves_past_it(tmp_path: Path) -> None:
    """The request rate (10 a minute: 6 s a request): charges one second apart leave the row's
    drained_at on its 64 s grid point until the drain time passes it."""
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    await store.open()
    rate = 10 / 60
    try:
        start = 64.0 * 28_125_000  # on the grid: the first mark is the next grid point
        marks = []
        for i in range(12):
            await charge_one(store, "requests:u", 1, start + i, rate)
            marks.append(raw_rows(path)["requests:u"][2])
        # Each charge adds 6 s to the drain time: after charge i it is start + 6 (i + 1).
        drains = [start + 6 * (i + 1) for i in range(12)]
        assert all(mark is not None and mark >= drain for mark, drain in zip(marks, drains, strict=True))
        assert marks[:10] == [start + 64] * 10  # drain times up to start + 60
        assert marks[10:] == [start + 128] * 2  # start + 66 onward
    finally:
        await store.close()


async def test_a_rounded_row_is_pruned_once_drained_and_not_before(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await charge_one(store, "requests:u", 3, START, 1.0)  # drains at START + 3
        await charge_one(store, "requests:never", 3, START, 0.0)  # never drains
        (_, _, mark) = raw_rows(path)["requests:u"]
        assert mark is not None and START + 3 <= mark <= START + 3 + 2 * MARK_MIN_GRID
        # Drained but before its mark: kept, and it reads as empty all the same.
        force_prune(store)
        assert (await charge_one(store, "requests:other", 0, START + 3, 1.0)).level == 0.0
        assert set(raw_rows(path)) == {"requests:u", "requests:never"}
        assert (await charge_one(store, "requests:u", 0, START + 3, 1.0)).level == 0.0
        # Just before the drain time it holds a little still; at the mark it is pruned.
        assert (await charge_one(store, "requests:u", 0, START + 2.5, 1.0)).level == 0.5
        force_prune(store)
        await charge_one(store, "requests:other", 0, mark, 1.0)
        assert set(raw_rows(path)) == {"requests:never"}
        assert (await charge_one(store, "requests:u", 0, mark, 1.0)).level == 0.0
    finally:
        await store.close()


async def test_rows_of_an_earlier_version_are_charged_and_marked(tmp_path: Path) -> None:
    """Rows with an exact drained_at, or none where the bucket now leaks, as an earlier
    version (or a peer that still runs one) writes them."""
    path = tmp_path / "store.db"
    store = SqliteStore(path)
    await store.open()
    try:
        with closing(sqlite3.connect(path, isolation_level=None)) as conn:
            conn.execute(
                "INSERT INTO quota_buckets VALUES ('a', 4.0, ?, ?), ('b', 4.0, ?, NULL)",
                (START, START + 4.0, START),
            )
        assert await charge_one(store, "a", 1, START + 1, 1.0) == QuotaCharge(True, 4.0, 0.0)
        assert await charge_one(store, "b", 1, START + 1, 1.0) == QuotaCharge(True, 4.0, 0.0)
        assert_marks_bound_the_drain(raw_rows(path), {"a": 1.0, "b": 1.0})
        # A bucket charged as never leaking loses its mark: it must never be pruned.
        assert await charge_one(store, "a", 1, START + 2, 0.0) == QuotaCharge(True, 5.0, 0.0)
        assert raw_rows(path)["a"][2] is None
    finally:
        await store.close()


async def test_two_stores_on_one_file_never_overfill_a_bucket(tmp_path: Path) -> None:
    """Two stores (two connections, two writer threads) charge one bucket at the same time:
    20 of 60 charges fit, in both a leaking and a non-leaking bucket, and the level is full."""
    path = tmp_path / "store.db"
    first, second = SqliteStore(path), SqliteStore(path)
    await first.open()
    await second.open()
    try:
        for bucket, rate in (("racer", 0.0), ("leaky", 1e-9)):
            charge = BucketCharge(bucket, 1.0, 20.0, rate)
            outcomes = await asyncio.gather(
                *((first, second)[i % 2].charge([charge], START) for i in range(60))
            )
            assert sum(o.allowed for (o,) in outcomes) == 20
            (level,) = await first.charge([BucketCharge(bucket, 0, 20.0, rate)], START)
            assert level.level == 20.0
            refused = [o for (o,) in outcomes if not o.allowed]
            assert all(o.level == 20.0 for o in refused)
    finally:
        await first.close()
        await second.close()
