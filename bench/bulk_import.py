"""Scenario 5: bulk import. Users per second into the embedded store through ``ImportUsers``.

A fresh server (empty embedded store) receives one client-streaming ``ImportUsers`` call
from a separate process, in messages of ``import_batch`` users. The messages are
serialized with numpy straight from the registry arrays (the protobuf wire format of
``ImportUsersRequest`` is simple enough), not built user by user.
"""

from __future__ import annotations

import itertools

import numpy as np

from bench.context import Context
from bench.data import Registry, make_registry
from bench.loadgen import write_frames
from bench.procs import Process, auth_for, discovery_server, run_json, running, unthrottled_args
from bench.profiling import pyspy_finish, pyspy_start
from bench.report import Goal, Report
from bench.summary import headline
from discovery.v1 import discovery_pb2 as pb

IMPORT_METHOD = "/discovery.v1.DirectoryAdminService/ImportUsers"
GOAL_USERS_PER_S = 100_000.0
PROFILE_USERS = 200_000
MAX_PROFILE_SECONDS = 10.0
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


def run(ctx: Context) -> Report:
    sizes = ctx.sizes
    users = sizes.import_users
    # Users in random order: contact hashes (and so directory keys) come in no particular order.
    registry = ctx.registry(users).shuffled()
    workdir = ctx.work / "bulk_import"
    workdir.mkdir(parents=True, exist_ok=True)
    messages = import_messages(registry, sizes.import_batch)
    check = pb.ImportUsersRequest.FromString(messages[0])
    assert len(check.users) == min(sizes.import_batch, users) and len(check.users[0].contact_hash) == _HASH
    frames = workdir / "import.frames"
    write_frames(frames, messages)
    data_dir = workdir / "data"
    auth = auth_for(data_dir)
    extra, _ = unthrottled_args()
    report = Report(
        "bulk_import",
        {
            "users": users,
            "users_per_message": sizes.import_batch,
            "order": "random (shuffled users: ids and contact hashes in no particular order)",
            "store": "embedded SQLite, empty at start, default settings (synchronous=NORMAL, WAL)",
            "auth": auth.mode,
            "client": "separate process, one client-streaming call, pre-serialized messages",
        },
    )
    with running(discovery_server(data_dir, workdir, auth, extra)) as server:
        cpu = server.cpu_seconds()
        seconds, response = stream_import(server, str(frames), auth.backend_metadata)
        cpu = server.cpu_seconds() - cpu
        rate = users / seconds
        ctx.log(f"import: {users:,} users in {seconds:.1f} s = {rate:,.0f} users/s, server CPU {cpu:.1f} s")
        report.results.update(
            seconds=seconds,
            users_per_s=round(rate),
            # Less noisy than the wall clock on a shared machine: all the server's threads.
            server_cpu_s=round(cpu, 2),
            users_per_server_cpu_s=round(users / cpu) if cpu else None,
            imported=response.imported,
            rejected=response.rejected_total,
            server_peak_rss_mib=round(server.memory_kib().get("VmHWM", 0) / 1024, 1),
        )
        if response.imported != users:
            report.notes.append(f"only {response.imported} of {users} users were imported")
        if ctx.profile and rate < GOAL_USERS_PER_S:
            extra_users = make_registry(min(PROFILE_USERS, users), seed=2).shuffled()
            profile_frames = workdir / "import-profile.frames"
            write_frames(profile_frames, import_messages(extra_users, sizes.import_batch))
            output = workdir / "import-profile.txt"
            spy = pyspy_start(server.pid, min(MAX_PROFILE_SECONDS, extra_users.size / rate), output)
            stream_import(server, str(profile_frames), auth.backend_metadata)
            profile = pyspy_finish(spy, output)
            profile["tool"] = f"py-spy --gil (server process, a second import of {extra_users.size:,} users)"
            report.results["profile"] = profile
    report.goals.append(
        Goal("bulk import into the embedded store", GOAL_USERS_PER_S, rate, "users/s", at_most=False)
    )
    report.results["headline"] = [
        headline(
            "ImportUsers into the embedded store",
            round(rate),
            "users/s",
            f"{users:,} users in messages of {sizes.import_batch:,}",
        ),
    ]
    return report
