"""Scenario: no stall while the server's index grows.

The server (``discovery serve``, embedded SQLite, JWT, quotas off) loads ``users`` users;
its index is then sized for them, and grows (a rehash of every entry) when about a
quarter more have registered. The harness fills the registry, by SQL in one transaction
from this process (the server follows the change feed as it follows another instance),
to just below that point and waits until the server has caught up. Then Discover runs
at concurrency 16 from the load generator:

* ``normal``: nothing else happens;
* ``growth``: one second in, 20,000 more users are registered the same way, which makes
  the index grow; the run lasts until well after the growth ended.

The goal compares the p99 of the two runs. The server logs each growth (``index_grown``)
with its duration, so the JSON shows that the growth ran inside the measured window.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.context import Context
from bench.end_to_end import DISCOVER_METHOD, discover_frames, load
from bench.loadgen import write_frames
from bench.procs import auth_for, discovery_server, running, unthrottled_args
from bench.report import Goal, Report
from bench.summary import headline
from discovery.core.hashing import KeyRing
from discovery.index import DirectoryIndex
from discovery.index.table import BUCKET, MAX_LOAD
from discovery.v1 import discovery_pb2 as pb
from discovery.v1 import discovery_pb2_grpc as pb_grpc

GOAL_RATIO = 2.0
LAST_STEP = 20_000  # users that cross the growth point, during the measured run
FILL_STEP = 250_000
Json = dict[str, Any]


def growth_point(users: int) -> int:
    """Entries at which an index loaded with ``users`` grows."""
    index = DirectoryIndex(capacity=max(1024, users))
    buckets = int(index._nb)
    del index
    return int(MAX_LOAD * buckets * BUCKET)


def register_direct(db: Path, keyring: KeyRing, first: int, count: int, seed: int) -> bytes:
    """``count`` new users with their change-feed rows, in one transaction (as a bulk import
    by another instance would commit them); returns the contact hash of the last one."""
    rng = np.random.default_rng([seed, first])
    hashes = rng.bytes(32 * count)
    packed = keyring.directory_keys(hashes)
    keys = np.frombuffer(packed, dtype=np.dtype((np.void, 16))).tolist()
    now = time.time()
    rows = [(f"grow-{first + i:09d}", k) for i, k in enumerate(keys)]
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO users(user_id, dkey, discoverable, announce_join, notify_on_join)"
            " VALUES (?, ?, 1, 1, 0)",
            rows,
        )
        conn.executemany(
            "INSERT INTO registry_feed(dkey, user_id, discoverable, created) VALUES (?, ?, 1, ?)",
            [(k, u, now) for u, k in rows],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()
    return hashes[-32:]


def wait_known(
    target: str, metadata: tuple[tuple[str, str], ...], contact_hash: bytes, timeout: float = 900.0
) -> None:
    """Until the server's index knows ``contact_hash`` (it has caught up with the feed)."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.DiscoveryServiceStub(channel)
        while not stub.Discover(
            pb.DiscoverRequest(contact_hashes=contact_hash), metadata=metadata
        ).match_user_ids:
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not catch up with the registrations")
            time.sleep(0.2)


def run(ctx: Context) -> Report:
    sizes = ctx.sizes
    users = sizes.e2e_users
    registry = ctx.registry(users)
    data_dir = ctx.store(users)
    db = data_dir / "discovery.db"
    workdir = ctx.work / "stall_growth"
    workdir.mkdir(parents=True, exist_ok=True)
    frames = workdir / "discover.frames"
    write_frames(frames, discover_frames(registry, sizes.e2e_payloads, sizes.contacts))
    auth = auth_for(data_dir)
    extra, notes = unthrottled_args()
    point = growth_point(users)
    seconds = 3.0 if ctx.quick else 8.0
    report = Report(
        "stall_growth",
        {
            "registry_users": users,
            "growth_point_entries": point,
            "users_registered_during_growth_run": LAST_STEP,
            "concurrency": 16,
            "seconds_per_run": seconds,
            "server_flags": [*auth.serve_args, *extra],
        },
        notes=list(notes),
    )
    with running(discovery_server(data_dir, workdir, auth, extra)) as server:
        fill = point - users - LAST_STEP // 2
        ctx.log(f"registering {fill:,} users to just below the growth point ({point:,} entries)")
        # In steps the server catches up with: the feed keeps 1M changes, and a server that
        # fell further behind reloads its index (sized anew, so it would not grow).
        for first in range(0, fill, FILL_STEP):
            count = min(FILL_STEP, fill - first)
            last = register_direct(db, registry.keyring, first, count, seed=5)
            wait_known(server.target, auth.client_metadata, last)
        before = len(server.log_events("index_grown"))
        normal = load(server.target, DISCOVER_METHOD, frames, auth.client_metadata, 16, seconds, 1.0)
        timer = threading.Timer(
            2.0, register_direct, (db, registry.keyring, fill, LAST_STEP, 6)
        )  # warm-up + 1 s
        timer.start()
        during = load(server.target, DISCOVER_METHOD, frames, auth.client_metadata, 16, seconds, 1.0)
        timer.join()
        grown = server.log_events("index_grown")[before:]
    for result in (normal, during):
        result.pop("first_response", None)
    ratio = round(during["p99_us"] / normal["p99_us"], 3)
    report.results.update(normal=normal, during_growth=during, growths=grown, p99_ratio=ratio)
    reloads = len(server.log_events("index_loaded"))
    if reloads > 1:
        report.notes.append(f"the server reloaded its index {reloads - 1} times: it fell behind the feed")
    if not grown:
        report.notes.append("no index_grown event in the growth run: the ratio says nothing about growth")
    report.goals.append(
        Goal("Discover p99 during an index growth over its normal p99, c=16", GOAL_RATIO, ratio, "x")
    )
    report.results["headline"] = [
        headline(
            f"Discover p99 during an index growth ({users:,} users), c=16",
            round(during["p99_us"] / 1000, 2),
            "ms",
            f"{ratio}x the normal p99 of {normal['p99_us'] / 1000:.2f} ms; growth took "
            f"{grown[0].get('seconds') if grown else 'n/a'} s",
        )
    ]
    return report
