"""The embedded store's writer thread (``SqliteBase._run``): jobs run one at a time in the
order queued, a cancelled caller's queued job never runs and its running one is interrupted
and rolled back, errors reach the caller with their type, and ``close`` stops the thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from discovery.store.sqlite import SqliteStore

THREAD = "sqlite-store"


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    yield store
    await store.close()


class Gate:
    """A job that holds the writer thread until released, so that jobs queue behind it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def job(self) -> None:
        self.entered.set()
        self.release.wait(60)

    async def wait_entered(self) -> None:
        await asyncio.to_thread(self.entered.wait, 60)


async def queued(*calls: Callable[[], object]) -> None:
    """Let the tasks just created reach their ``await`` (their jobs are then queued)."""
    for _ in range(3):
        await asyncio.sleep(0)
    assert not any(c() for c in calls)


async def test_a_cancelled_callers_queued_job_never_runs(store: SqliteStore) -> None:
    gate, ran = Gate(), []
    holder = asyncio.create_task(store._run(gate.job))
    await gate.wait_entered()
    tasks = [asyncio.create_task(store._run(lambda i=i: ran.append(i) or i)) for i in range(100)]
    await queued(*(t.done for t in tasks))
    for task in tasks[::2]:
        task.cancel()
    gate.release.set()
    await holder
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert ran == list(range(1, 100, 2))
    assert all(isinstance(r, asyncio.CancelledError) for r in results[::2])
    assert results[1::2] == list(range(1, 100, 2))
    await store.ping()


async def test_cancelling_a_running_statement_interrupts_it_and_rolls_it_back(store: SqliteStore) -> None:
    running = threading.Event()

    def started() -> int:
        running.set()
        return 0

    await store._run(lambda: store._db.create_function("started", 0, started))

    def half_then_forever(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta(name, value) VALUES ('half_written', 1)")
        # An endless recursive query: only an interrupt ends it.
        conn.execute(
            "WITH RECURSIVE n(x) AS (SELECT started() UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n"
        ).fetchone()

    write = asyncio.create_task(store._write(half_then_forever))
    await asyncio.to_thread(running.wait, 60)
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    # The next job runs once the interrupted one ended; the insert went with the rollback.
    row, in_transaction = await store._run(
        lambda: (
            store._db.execute("SELECT value FROM meta WHERE name = 'half_written'").fetchone(),
            store._db.in_transaction,
        )
    )
    assert row is None and not in_transaction
    await store._write(lambda conn: conn.execute("INSERT INTO meta(name, value) VALUES ('after', 2)"))
    after = await store._run(
        lambda: store._db.execute("SELECT value FROM meta WHERE name = 'after'").fetchone()
    )
    assert after == (2,)


class Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def test_errors_reach_the_caller_with_their_type(store: SqliteStore) -> None:
    def refuse() -> None:
        raise Refused("no")

    with pytest.raises(Refused) as raised:
        await store._run(refuse)
    assert raised.value.reason == "no"
    with pytest.raises(ZeroDivisionError):
        await store._run(lambda: 1 // 0)
    insert = "INSERT INTO meta(name, value) VALUES ('once', 1)"
    await store._write(lambda conn: conn.execute(insert))
    with pytest.raises(sqlite3.IntegrityError):
        await store._write(lambda conn: conn.execute(insert))
    # A StopIteration cannot be set on a future: the caller gets a RuntimeError, not a hang.
    with pytest.raises(RuntimeError, match="StopIteration"):
        await store._run(lambda: next(iter(())))
    assert not await store._run(lambda: store._db.in_transaction)
    await store.ping()


async def test_concurrent_hops_run_in_submission_order_and_each_gets_its_result(store: SqliteStore) -> None:
    order: list[int] = []

    def job(i: int) -> int:
        order.append(i)
        return i * i

    results = await asyncio.gather(*(store._run(lambda i=i: job(i)) for i in range(2000)))
    assert order == list(range(2000))
    assert results == [i * i for i in range(2000)]


async def test_close_waits_for_queued_jobs_and_joins_the_thread(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    assert not writer_threads()  # the thread starts with the first job
    await store.open()
    assert len(writer_threads()) == 1
    done: list[int] = []
    tasks = [asyncio.create_task(store._run(lambda i=i: done.append(i))) for i in range(50)]
    await queued(*(t.done for t in tasks))
    await store.close()
    assert done == list(range(50)) and all(t.done() for t in tasks)
    assert not writer_threads()
    # Closed, the same store opens again with a new thread, its data intact.
    await store.open()
    await store._write(lambda conn: conn.execute("INSERT INTO meta(name, value) VALUES ('again', 3)"))
    await store.close()
    assert not writer_threads()


def test_a_store_is_usable_from_one_event_loop_after_another(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")

    async def first() -> None:
        await store.open()
        await store._write(lambda conn: conn.execute("INSERT INTO meta(name, value) VALUES ('loop', 1)"))

    async def second() -> tuple[int, ...]:
        try:
            row: tuple[int, ...] = await store._run(
                lambda: store._db.execute("SELECT value FROM meta WHERE name = 'loop'").fetchone()
            )
            return row
        finally:
            await store.close()

    asyncio.run(first())
    assert asyncio.run(second()) == (1,)
    assert not writer_threads()
