"""Scenario 3: Discover end to end over gRPC, against the transport's own ceiling.

The real server (``python -m discovery serve``) runs on an embedded store written with
the registry, and loads its index itself. A separate load-generator process sends
Discover requests of 1,000 contact hashes (half registered) at concurrency 1 and 16
over grpc.aio. In the same run, a grpc.aio echo server process answers requests of the
same size with a response of the same size as Discover's: the ceiling of the transport.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.context import Context
from bench.data import REGISTERED_FRACTION, Registry
from bench.echo_server import ECHO_METHOD
from bench.loadgen import write_frames
from bench.procs import (
    Auth,
    Process,
    auth_for,
    discovery_server,
    echo_server,
    run_json,
    running,
    unthrottled_args,
)
from bench.profiling import pyspy_finish, pyspy_start
from bench.report import Goal, Report
from bench.summary import headline
from discovery.v1 import discovery_pb2 as pb

DISCOVER_METHOD = "/discovery.v1.DiscoveryService/Discover"
CONCURRENCY = (1, 16)
GOAL_FRACTION_OF_ECHO = 0.75
PROFILE_SECONDS = 6.0
Json = dict[str, Any]


def discover_frames(registry: Registry, count: int, contacts: int) -> list[bytes]:
    return [
        pb.DiscoverRequest(contact_hashes=packed).SerializeToString()
        for packed in registry.requests(count, contacts, seed=3)
    ]


def load(
    target: str,
    method: str,
    frames: Path,
    metadata: Sequence[tuple[str, str]],
    concurrency: int,
    seconds: float,
    warmup: float,
    *,
    keep_first: bool = False,
    metadata_file: Path | None = None,
) -> Json:
    args = [
        "-m",
        "bench.loadgen",
        "unary",
        "--target",
        target,
        "--method",
        method,
        "--frames",
        str(frames),
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
        "--warmup",
        str(warmup),
    ]
    for key, value in metadata:
        args += ["--metadata", f"{key}={value}"]
    if keep_first:
        args.append("--keep-first")
    if metadata_file is not None:
        args += ["--metadata-file", str(metadata_file)]
    return run_json(args, timeout=seconds + warmup + 300)


def server_index_stats(server: Process, users: int) -> Json:
    """What the server logged about loading its index, and its memory right after."""
    loaded = server.log_events("index_loaded")
    memory = server.memory_kib()
    out: Json = {"rss_after_load_mib": round(memory.get("VmRSS", 0) / 1024, 1)}
    if loaded:
        record = loaded[-1]
        out["index_load_s"] = record.get("seconds")
        if isinstance(record.get("memory_bytes"), int):
            out["index_memory_bytes"] = record["memory_bytes"]
            out["index_bytes_per_user"] = round(record["memory_bytes"] / max(1, users), 1)
    return out


def combine(runs: list[Json]) -> Json:
    """One load level over several rounds: totals for throughput, medians of the percentiles."""
    requests = sum(r["requests"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    return {
        "concurrency": runs[0]["concurrency"],
        "rounds": len(runs),
        "requests": requests,
        "seconds": round(seconds, 3),
        "rps": round(requests / seconds, 1),
        "p50_us": round(float(np.median([r["p50_us"] for r in runs])), 1),
        "p99_us": round(float(np.median([r["p99_us"] for r in runs])), 1),
        "mean_us": round(sum(r["mean_us"] * r["requests"] for r in runs) / max(1, requests), 1),
        "errors": sum(r["errors"] for r in runs),
        "first_errors": [e for r in runs for e in r["first_errors"]][:3],
        "request_bytes": runs[0]["request_bytes"],
        "response_bytes": runs[0]["response_bytes"],
        "per_round_rps": [r["rps"] for r in runs],
    }


def measure(ctx: Context, server: Process, frames: Path, auth: Auth, workdir: Path) -> tuple[Json, Json]:
    """Discover and echo at each concurrency, alternating in rounds so both see the same load
    on the shared machine. Returns (discover, echo)."""
    sizes = ctx.sizes
    probe = load(server.target, DISCOVER_METHOD, frames, auth.client_metadata, 1, 0.3, 0.1, keep_first=True)
    first = pb.DiscoverResponse.FromString(bytes.fromhex(probe["first_response"]))
    response_bytes = probe["response_bytes"]
    per_round = sizes.e2e_seconds / sizes.e2e_rounds
    runs: dict[tuple[str, int], list[Json]] = {}
    with running(echo_server(workdir, response_bytes)) as echo:
        targets = (
            ("discover", server.target, DISCOVER_METHOD, auth.client_metadata),
            ("echo", echo.target, ECHO_METHOD, ()),
        )
        for round_ in range(sizes.e2e_rounds):
            for concurrency in CONCURRENCY:
                for name, target, method, metadata in targets:
                    result = load(target, method, frames, metadata, concurrency, per_round, sizes.e2e_warmup)
                    result.pop("first_response", None)
                    runs.setdefault((name, concurrency), []).append(result)
                    ctx.log(
                        f"round {round_ + 1}: {name} c={concurrency}: {result['rps']} req/s, "
                        f"p50 {result['p50_us']} µs"
                    )
    discover: Json = {"matches_in_first_response": len(first.match_user_ids)}
    echo_out: Json = {"response_bytes": response_bytes}
    for concurrency in CONCURRENCY:
        discover[f"c{concurrency}"] = combine(runs[("discover", concurrency)])
        discover[f"c{concurrency}"]["contacts_per_s"] = round(
            discover[f"c{concurrency}"]["rps"] * sizes.contacts
        )
        echo_out[f"c{concurrency}"] = combine(runs[("echo", concurrency)])
    return discover, echo_out


def profile_server(ctx: Context, server: Process, frames: Path, auth: Auth, workdir: Path) -> Json:
    """py-spy on the server while the load generator runs at concurrency 16."""
    output = workdir / "server-profile.txt"
    spy = pyspy_start(server.pid, PROFILE_SECONDS, output)
    with contextlib.suppress(RuntimeError):
        load(server.target, DISCOVER_METHOD, frames, auth.client_metadata, 16, PROFILE_SECONDS + 1, 0.5)
    profile = pyspy_finish(spy, output)
    profile["tool"] = "py-spy --gil (server process, Discover at concurrency 16)"
    return profile


def run(ctx: Context) -> Report:
    sizes = ctx.sizes
    users = sizes.e2e_users
    registry = ctx.registry(users)
    data_dir = ctx.store(users)
    workdir = ctx.work / "end_to_end"
    workdir.mkdir(parents=True, exist_ok=True)
    frames = workdir / "discover.frames"
    write_frames(frames, discover_frames(registry, sizes.e2e_payloads, sizes.contacts))
    auth = auth_for(data_dir)
    extra, throttle_notes = unthrottled_args()
    report = Report(
        "end_to_end",
        {
            "registry_users": users,
            "store": "embedded SQLite (written directly, loaded by the server at start)",
            "contacts_per_request": sizes.contacts,
            "registered_fraction": REGISTERED_FRACTION,
            "concurrency": list(CONCURRENCY),
            "seconds_per_level": sizes.e2e_seconds,
            "rounds": sizes.e2e_rounds,
            "warmup_seconds_per_run": sizes.e2e_warmup,
            "distinct_requests": sizes.e2e_payloads,
            "auth": auth.mode,
            "server_flags": [*auth.serve_args, *extra],
            "load_generator": "separate process, grpc.aio, one channel, pre-serialized requests",
            "echo": "grpc.aio generic handler in its own process, the same requests, "
            "a response of Discover's size",
        },
        notes=list(throttle_notes),
    )
    with running(discovery_server(data_dir, workdir, auth, extra)) as server:
        report.results["server"] = server_index_stats(server, users)
        ctx.log(f"server up with {users:,} users: {report.results['server']}")
        discover, echo = measure(ctx, server, frames, auth, workdir)
        memory = server.memory_kib()
        report.results["server"]["peak_rss_mib"] = round(memory.get("VmHWM", 0) / 1024, 1)
        fractions = {f"c{c}": round(discover[f"c{c}"]["rps"] / echo[f"c{c}"]["rps"], 3) for c in CONCURRENCY}
        if ctx.profile and fractions["c16"] < GOAL_FRACTION_OF_ECHO:
            report.results["profile"] = profile_server(ctx, server, frames, auth, workdir)
    report.results.update(discover=discover, echo=echo, fraction_of_echo_rps=fractions)
    report.goals.append(
        Goal(
            f"Discover req/s as a fraction of the echo ceiling, concurrency 16, {users:,} users",
            GOAL_FRACTION_OF_ECHO,
            fractions["c16"],
            "",
            at_most=False,
        )
    )
    d16, e16, d1 = discover["c16"], echo["c16"], discover["c1"]
    report.results["headline"] = [
        headline(
            f"Discover over gRPC, c=16, {users:,} users",
            d16["rps"],
            "req/s",
            f"{d16['contacts_per_s']:,} contacts/s, p50 {d16['p50_us']:.0f} µs, p99 {d16['p99_us']:.0f} µs",
        ),
        headline(
            "gRPC echo ceiling, c=16, same payload",
            e16["rps"],
            "req/s",
            f"Discover reaches {fractions['c16']:.0%} of it",
        ),
        headline(
            "Discover over gRPC, c=1",
            d1["rps"],
            "req/s",
            f"p50 {d1['p50_us']:.0f} µs, p99 {d1['p99_us']:.0f} µs; echo {echo['c1']['rps']} req/s",
        ),
    ]
    return report
