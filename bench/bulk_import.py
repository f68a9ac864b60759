"""Scenario 5: bulk import. Users per second through ``ImportUsers`` into each store.

A fresh server (on an empty store: the embedded SQLite file, a redis-server, a 3-master Redis
Cluster, each started here on loopback without persistence) receives one client-streaming
``ImportUsers`` call from a separate process, in messages of ``import_batch`` users. The
messages are serialized with numpy straight from the registry arrays (the protobuf wire
format of ``ImportUsersRequest`` is simple enough), not built user by user. A last line
imports into the embedded store with private mode on (every user's private entry computed
in the OPRF worker pool), on fewer users; it has no goal.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.context import Context
from bench.data import Registry, make_registry
from bench.loadgen import write_frames
from bench.procs import Process, auth_for, cpu_seconds, discovery_server, run_json, running, unthrottled_args
from bench.profiling import pyspy_finish, pyspy_start
from bench.report import Goal, Report
from bench.summary import headline
from discovery.v1 import discovery_pb2 as pb
from tests.support.redis_fixtures import MISSING, REDIS_CLI, REDIS_SERVER, start_cluster, start_redis

IMPORT_METHOD = "/discovery.v1.DirectoryAdminService/ImportUsers"
GOAL_USERS_PER_S = 100_000.0
PROFILE_USERS = 200_000
#: The stores whose import is profiled (the SQLite writer and the Redis store differ).
PROFILED = ("sqlite", "redis")
MAX_PROFILE_SECONDS = 10.0
#: Private mode computes an OPRF-derived entry per user in a worker pool: far fewer users.
PRIVATE_USERS_SHARE = 10
_TAG_USERS = 0x0A  # ImportUsersRequest.users, field 1, length-delimited
_TAG_USER_ID = 0x0A  # ImportUser.user_id, field 1
_TAG_HASH = 0x12  # ImportUser.contact_hash, field 2
_HASH = 32


def import_messages(registry: Registry, batch: int) -> list[bytes]:
    """Serialized ImportUsersRequest messages of ``batch`` users each.

    Each user is ``0A <36+L> 0A <L> <id> 12 20 <hash>`` (L < 128, so every length is one
    byte): 38 + L bytes, written for all users at once with fancy indexing.
    """
    n = registry.size
    lens = registry.id_lens
    if int(lens.max()) + 36 >= 128:
        raise ValueError("user ids this long need multi-byte lengths")
    sizes = 38 + lens
    ends = np.cumsum(sizes)
    starts = ends - sizes
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    out[starts] = _TAG_USERS
    out[starts + 1] = 36 + lens
    out[starts + 2] = _TAG_USER_ID
    out[starts + 3] = lens
    blob = np.frombuffer(registry.id_blob, dtype=np.uint8)
    id_starts = np.cumsum(lens + 1) - lens - 1
    within = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    out[np.repeat(starts + 4, lens) + within] = blob[np.repeat(id_starts, lens) + within]
    after = starts + 4 + lens
    out[after] = _TAG_HASH
    out[after + 1] = _HASH
    out[(after + 2)[:, None] + np.arange(_HASH)] = registry.hashes
    cuts = [0, *(int(ends[min(i + batch, n) - 1]) for i in range(0, n, batch))]
    return [out[a:b].tobytes() for a, b in itertools.pairwise(cuts)]


def stream_import(
    server: Process, frames_path: str, metadata: tuple[tuple[str, str], ...]
) -> tuple[float, pb.ImportUsersResponse]:
    args = [
        "-m",
        "bench.loadgen",
        "stream",
        "--target",
        server.target,
        "--method",
        IMPORT_METHOD,
        "--frames",
        frames_path,
    ]
    for key, value in metadata:
        args += ["--metadata", f"{key}={value}"]
    result = run_json(args, timeout=3600)
    return float(result["seconds"]), pb.ImportUsersResponse.FromString(bytes.fromhex(result["response"]))


@contextlib.contextmanager
def store_urls(workdir: Path) -> Iterator[dict[str, tuple[str | None, list[int]]]]:
    """Store URL per backend (None: the embedded default) and the pids of its redis-servers;
    Redis ones only with redis-server."""
    urls: dict[str, tuple[str | None, list[int]]] = {"sqlite": (None, [])}
    if REDIS_SERVER is None or REDIS_CLI is None:
        yield urls
        return
    single = start_redis(workdir / "redis")
    try:
        cluster = start_cluster(workdir / "cluster")
        try:
            yield {
                **urls,
                "redis": (single.url, _pids([single.process])),
                "redis-cluster": (cluster.url, _pids([n.process for n in cluster.nodes])),
            }
        finally:
            cluster.stop()
    finally:
        single.stop()


def _pids(processes: Sequence[Any]) -> list[int]:
    return [int(p.pid) for p in processes if p is not None]


def import_once(
    ctx: Context,
    name: str,
    workdir: Path,
    registry: Registry,
    extra: Sequence[str],
    redis_pids: Sequence[int] = (),
) -> dict[str, Any]:
    """One fresh server on an empty store, one ImportUsers stream of the whole registry."""
    sizes = ctx.sizes
    frames = workdir / f"import-{name}.frames"
    write_frames(frames, import_messages(registry, sizes.import_batch))
    data_dir = workdir / f"data-{name}"
    auth = auth_for(data_dir)
    unthrottled, _ = unthrottled_args()
    users = registry.size
    with running(discovery_server(data_dir, workdir, auth, [*unthrottled, *extra])) as server:
        cpu = server.cpu_seconds()
        redis_cpu = sum(cpu_seconds(pid) for pid in redis_pids)
        seconds, response = stream_import(server, str(frames), auth.backend_metadata)
        cpu = server.cpu_seconds() - cpu
        redis_cpu = sum(cpu_seconds(pid) for pid in redis_pids) - redis_cpu
        rate = users / seconds
        ctx.log(
            f"import {name}: {users:,} users in {seconds:.1f} s = {rate:,.0f} users/s, server CPU {cpu:.1f} s"
            + (f", redis-server CPU {redis_cpu:.1f} s" if redis_pids else "")
        )
        out: dict[str, Any] = {
            "users": users,
            "seconds": seconds,
            "users_per_s": round(rate),
            # Less noisy than the wall clock on a shared machine: all the server's threads.
            "server_cpu_s": round(cpu, 2),
            "users_per_server_cpu_s": round(users / cpu) if cpu else None,
            "imported": response.imported,
            "rejected": response.rejected_total,
            "server_peak_rss_mib": round(server.memory_kib().get("VmHWM", 0) / 1024, 1),
        }
        if redis_pids:
            # Every redis-server of the store (the cluster's three), over the same stream.
            out["redis_cpu_s"] = round(redis_cpu, 2)
        if ctx.profile and rate < GOAL_USERS_PER_S and name in PROFILED:
            extra_users = make_registry(min(PROFILE_USERS, users), seed=2).shuffled()
            profile_frames = workdir / f"import-profile-{name}.frames"
            write_frames(profile_frames, import_messages(extra_users, sizes.import_batch))
            output = workdir / f"import-profile-{name}.txt"
            spy = pyspy_start(server.pid, min(MAX_PROFILE_SECONDS, extra_users.size / rate), output)
            stream_import(server, str(profile_frames), auth.backend_metadata)
            profile = pyspy_finish(spy, output)
            profile["tool"] = f"py-spy --gil (server process, a second import of {extra_users.size:,} users)"
            out["profile"] = profile
    return out


def run(ctx: Context) -> Report:
    sizes = ctx.sizes
    users = sizes.import_users
    # Users in random order: contact hashes (and so directory keys) come in no particular order.
    registry = ctx.registry(users).shuffled()
    workdir = ctx.work / "bulk_import"
    workdir.mkdir(parents=True, exist_ok=True)
    check = pb.ImportUsersRequest.FromString(import_messages(registry, sizes.import_batch)[0])
    assert len(check.users) == min(sizes.import_batch, users) and len(check.users[0].contact_hash) == _HASH
    private_users = max(users // PRIVATE_USERS_SHARE, 1)
    report = Report(
        "bulk_import",
        {
            "users": users,
            "users_per_message": sizes.import_batch,
            "order": "random (shuffled users: ids and contact hashes in no particular order)",
            "stores": "embedded SQLite (synchronous=NORMAL, WAL), redis-server, 3-master Redis Cluster;"
            " each empty at start, no persistence for Redis",
            "private_mode_users": private_users,
            "auth": "jwt or dev, as the server has",
            "client": "separate process, one client-streaming call, pre-serialized messages",
        },
    )
    backends: dict[str, Any] = {}
    with store_urls(workdir) as urls:
        for name, (url, pids) in urls.items():
            backends[name] = import_once(
                ctx, name, workdir, registry, [] if url is None else ["--store", url], pids
            )
    backends["sqlite-private"] = import_once(
        ctx,
        "sqlite-private",
        workdir,
        make_registry(private_users, seed=3).shuffled(),
        ["--private-mode", "true"],
    )
    if len(urls) == 1:
        report.notes.append(f"Redis and Redis Cluster not measured: {MISSING}")
    embedded = backends["sqlite"]
    # The embedded store's figures stay at the top level, as before the Redis lines.
    report.results.update({k: v for k, v in embedded.items() if k != "users"})
    report.results["backends"] = {
        name: {k: v for k, v in out.items() if k != "profile"} for name, out in backends.items()
    }
    # The embedded store's profile is the top-level "profile"; the others' go here.
    report.results["other_profiles"] = {
        name: out["profile"] for name, out in backends.items() if name != "sqlite" and "profile" in out
    }
    for name, out in backends.items():
        if out["imported"] != out["users"]:
            report.notes.append(f"{name}: only {out['imported']} of {out['users']} users were imported")
    labels = {
        "sqlite": "the embedded store",
        "redis": "Redis",
        "redis-cluster": "Redis Cluster",
        "sqlite-private": "the embedded store, private mode on",
    }
    report.results["headline"] = []
    for name, out in backends.items():
        if name != "sqlite-private":
            report.goals.append(
                Goal(
                    f"bulk import into {labels[name]}",
                    GOAL_USERS_PER_S,
                    out["users_per_s"],
                    "users/s",
                    at_most=False,
                )
            )
        report.results["headline"].append(
            headline(
                f"ImportUsers into {labels[name]}",
                out["users_per_s"],
                "users/s",
                f"{out['users']:,} users in messages of {sizes.import_batch:,};"
                f" server CPU {out['server_cpu_s']} s",
            )
        )
    return report
