"""An acknowledged write is committed before its reply, on the pragmas the promises rest on.

* `discovery serve` runs as a child process and is killed with SIGKILL right after the
  acknowledgement of a registration, in several rounds of different lengths: every
  acknowledged registration is found after the restart. A store that acknowledged before
  its commit, or committed only every few writes, loses the last ones.
* The SQLite connection the server really opened runs in WAL mode, with the configured
  ``synchronous`` (never OFF) and ``secure_delete`` on (forgotten keys do not linger in
  free pages). The connection is found among the live objects of the test process, so the
  test names no internal attribute.
"""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from discovery.client import AsyncAdminClient, AsyncDiscoveryClient
from tests.support.helpers import e164_numbers
from tests.support.serve_process import ServeProcess
from tests.support.server import StartServer

ROUNDS = (1, 2, 3, 5, 7, 11)  # registrations per round; the kill follows the last acknowledgement


async def test_every_acknowledged_registration_survives_sigkill(
    serve_processes: Callable[..., ServeProcess],
) -> None:
    process = serve_processes()
    numbers = e164_numbers(sum(ROUNDS) + 1, seed=701)
    acknowledged: list[tuple[str, str]] = []
    for round_size in ROUNDS:
        process.start()
        async with AsyncAdminClient(process.target) as admin:
            for _ in range(round_size):
                user_id, number = f"user-{len(acknowledged)}", numbers[len(acknowledged)]
                await admin.register_user(user_id, number)
                acknowledged.append((user_id, number))
        process.kill()  # SIGKILL right after the acknowledgement: nothing runs after it
    process.start()
    async with AsyncDiscoveryClient(process.target, user_id="user-0") as client:
        result = await client.discover([number for _, number in acknowledged])
    process.stop()
    assert sorted(m.user_id for m in result.matches) == sorted(user_id for user_id, _ in acknowledged)


def open_connections(path: Path) -> list[sqlite3.Connection]:
    """The live SQLite connections of this process whose main database is ``path``."""
    found = []
    for obj in gc.get_objects():
        if isinstance(obj, sqlite3.Connection):
            try:
                databases = obj.execute("PRAGMA database_list").fetchall()
            except sqlite3.ProgrammingError:  # closed
                continue
            if any(row[1] == "main" and row[2] and Path(row[2]).resolve() == path for row in databases):
                found.append(obj)
    return found


@pytest.mark.parametrize(("configured", "level"), [("NORMAL", 1), ("FULL", 2), ("EXTRA", 3)])
async def test_the_store_connection_runs_on_the_promised_pragmas(
    start_server: StartServer, configured: str, level: int
) -> None:
    server = await start_server(sqlite_synchronous=configured)
    async with AsyncAdminClient(f"127.0.0.1:{server.port}") as admin:
        await admin.register_user("alice", "+4915111111111")
    path = (server.config.data_dir / "discovery.db").resolve()
    connections = open_connections(path)
    assert connections, "the server's SQLite connection was not found"
    for conn in connections:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level != 0
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    # WAL is a property of the file too: a new connection finds it.
    fresh = sqlite3.connect(path)
    try:
        assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        fresh.close()


async def test_the_default_synchronous_mode_survives_a_process_crash(start_server: StartServer) -> None:
    """The default is NORMAL (WAL + NORMAL loses no committed write when the process dies)."""
    server = await start_server()
    connections = open_connections((server.config.data_dir / "discovery.db").resolve())
    assert connections
    assert {conn.execute("PRAGMA synchronous").fetchone()[0] for conn in connections} == {1}
