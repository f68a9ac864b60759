"""An embedded store file of schema 1 (feed entries found by an index on their user ids) opens
as schema 2: each user's row points to the one feed entry that names it, and the index is gone."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from discovery.core.model import PrivacySettings
from discovery.store.sqlite import SqliteStore
from tests.support.announce import jtag, new_user

SCHEMA_1 = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE users (
    user_id TEXT PRIMARY KEY, dkey BLOB NOT NULL UNIQUE, discoverable INTEGER NOT NULL,
    announce_join INTEGER NOT NULL, notify_on_join INTEGER NOT NULL, private BLOB
);
CREATE TABLE registry_feed (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, dkey BLOB NOT NULL, user_id TEXT,
    discoverable INTEGER NOT NULL, created REAL NOT NULL, private BLOB
);
CREATE INDEX registry_feed_user ON registry_feed(user_id) WHERE user_id IS NOT NULL;
INSERT INTO meta VALUES ('schema_version', 1), ('feed_floor', 0);
"""


def schema_1_file(path: Path, alice: bytes, bob: bytes) -> None:
    """alice registered, then hid (two feed entries name her); bob registered."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA_1)
    now = time.time()
    conn.executemany("INSERT INTO users VALUES (?, ?, ?, 1, 0, NULL)", [("alice", alice, 0), ("bob", bob, 1)])
    conn.executemany(
        "INSERT INTO registry_feed(dkey, user_id, discoverable, created) VALUES (?, ?, ?, ?)",
        [(alice, "alice", 1, now), (bob, "bob", 1, now), (alice, "alice", 0, now)],
    )
    conn.close()


async def test_a_schema_1_file_gets_feed_pointers(tmp_path: Path) -> None:
    path = tmp_path / "discovery.db"
    alice, bob = os.urandom(16), os.urandom(16)
    schema_1_file(path, alice, bob)
    store = SqliteStore(path)
    await store.open()
    try:
        # alice's first entry was superseded by her second (and the first write's pruning
        # moves the floor up to that gap).
        changes = await store.feed_read(1, 10)
        assert [(c.seq, c.user_id, c.discoverable) for c in changes] == [
            (2, "bob", True),
            (3, "alice", False),
        ]
        await store.unregister("alice", jtag("alice"))
        await store.import_users([new_user("carl", os.urandom(16), PrivacySettings())], 0)
        changes = await store.feed_read(1, 10)
        assert [(c.seq, c.user_id) for c in changes] == [(2, "bob"), (4, None), (5, "carl")]
        assert all(c.user_id != "alice" for c in changes)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "registry_feed_user" not in indexes
    pointers = dict(conn.execute("SELECT user_id, feed_seq FROM users").fetchall())
    assert pointers == {"bob": 2, "carl": 5}
    assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (2,)
    conn.close()
