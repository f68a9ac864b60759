"""Scenario: Discover end to end with the default configuration, against the echo ceiling.

The configuration users run: JWT authentication (HS256 bearer tokens, one per user) and
quotas on with their defaults (a contact quota and a request rate per user). The clients
re-sync: each of ``users`` client users first sends its 1,000-contact book once, then
keeps sending the same book with ``previous_contact_hashes`` and the ``previous_token``
of that first answer (a 64 KB request), as the SDK's re-sync does. The many users keep
the per-user request rate from refusing the load (it refills 10 a minute per user).

A second server, on the same store, runs with quotas off and gets the plain 32 KB
request: the quota-off line. Each has its grpc.aio echo ceiling of the same request and
response sizes, and the four loads alternate in rounds in the same run. Besides req/s,
the server's CPU time per call (``/proc/<pid>/stat`` over each load, divided by the
calls it answered, warm-up included) is reported: it is far less noisy than req/s on a
shared machine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc import aio

from bench.context import Context
from bench.echo_server import ECHO_METHOD
from bench.end_to_end import DISCOVER_METHOD, combine, load, server_index_stats
from bench.loadgen import MAX_MESSAGE, write_frames
from bench.procs import Process, auth_for, discovery_server, echo_server, running, serve_flags
from bench.profiling import pyspy_finish, pyspy_start
from bench.report import Goal, Report
from bench.summary import headline
from discovery.v1 import discovery_pb2 as pb

CONCURRENCY = 16
GOAL_FRACTION_OF_ECHO = 0.75
PROFILE_SECONDS = 8.0
FULL_USERS = 3000  # client users: 30 requests of burst each, 0.17/s refill each
QUICK_USERS = 256
QUOTA_OFF = ("--quota-capacity", "0", "--rate-limit-burst", "0")
Json = dict[str, Any]


@dataclass
class Load:
    """One of the four loads of a round."""

    name: str
    process: Process
    method: str
    frames: Path
    metadata_file: Path | None


def client_tokens(data_dir: Path, users: int) -> list[str]:
    """One bearer token per client user, minted with the service's own code."""
    from discovery.app.credentials import mint_token, signing_key
    from discovery.config import ServerConfig

    config = ServerConfig(data_dir=data_dir)
    key = signing_key(config)
    return [mint_token(config.auth.jwt_algorithm, key, f"client-{i:05d}", 24 * 3600.0) for i in range(users)]


async def first_syncs(target: str, books: list[bytes], tokens: list[str]) -> list[bytes]:
    """Each user's first Discover of its book, 16 at a time; returns the previous-set tokens."""
    gate = asyncio.Semaphore(16)
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
    ]
    async with aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(
            DISCOVER_METHOD,
            request_serializer=pb.DiscoverRequest.SerializeToString,
            response_deserializer=pb.DiscoverResponse.FromString,
        )

        async def one(book: bytes, bearer: str) -> bytes:
            async with gate:
                response: pb.DiscoverResponse = await call(
                    pb.DiscoverRequest(contact_hashes=book),
                    metadata=(("authorization", f"Bearer {bearer}"),),
                    timeout=60,
                )
                return response.token

        return list(await asyncio.gather(*(one(b, t) for b, t in zip(books, tokens, strict=True))))


def write_metadata(path: Path, tokens: list[str]) -> Path:
    path.write_text("".join(json.dumps([["authorization", f"Bearer {t}"]]) + "\n" for t in tokens))
    return path


def measured(ctx: Context, work: Load, seconds: float, warmup: float) -> Json:
    before = work.process.cpu_seconds()
    result = load(
        work.process.target,
        work.method,
        work.frames,
        (),
        CONCURRENCY,
        seconds,
        warmup,
        metadata_file=work.metadata_file,
    )
    cpu = work.process.cpu_seconds() - before
    result.pop("first_response", None)
    result["server_cpu_s"] = round(cpu, 3)
    result["server_cpu_us_per_call"] = round(cpu / max(1, result["calls_total"]) * 1e6, 1)
    ctx.log(
        f"{work.name}: {result['rps']} req/s, p50 {result['p50_us']} µs, "
        f"server CPU {result['server_cpu_us_per_call']} µs/call, errors {result['errors']}"
    )
    return result


def summarize(runs: list[Json]) -> Json:
    out = combine(runs)
    calls = sum(r["calls_total"] for r in runs)
    cpu = sum(r["server_cpu_s"] for r in runs)
    out["server_cpu_us_per_call"] = round(cpu / max(1, calls) * 1e6, 1)
    return out


def profile(ctx: Context, work: Load, output: Path) -> Json:
    """py-spy (--native) on the default-config server while the load runs at concurrency 16."""
    spy = pyspy_start(work.process.pid, PROFILE_SECONDS, output, native=True)
    try:
        load(
            work.process.target,
            work.method,
            work.frames,
            (),
            CONCURRENCY,
            PROFILE_SECONDS + 1,
            0.5,
            metadata_file=work.metadata_file,
        )
    except RuntimeError as exc:
        ctx.log(f"profile load failed: {exc}")
    result = pyspy_finish(spy, output, top=20)
    result["tool"] = "py-spy record --native (default-config server, Discover at concurrency 16)"
    result["collapsed_stacks"] = str(output)
    return result


def run(ctx: Context) -> Report:
    sizes = ctx.sizes
    users = sizes.e2e_users
    clients = QUICK_USERS if ctx.quick else FULL_USERS
    registry = ctx.registry(users)
    data_dir = ctx.store(users)
    workdir = ctx.work / "end_to_end_default"
    workdir.mkdir(parents=True, exist_ok=True)
    books = registry.requests(clients, sizes.contacts, seed=11)
    tokens = client_tokens(data_dir, clients)
    plain = workdir / "plain.frames"
    write_frames(plain, (pb.DiscoverRequest(contact_hashes=b).SerializeToString() for b in books))
    metadata = write_metadata(workdir / "clients.metadata", tokens)
    auth = auth_for(data_dir)
    missing = [f for f in ("--auth", "--quota-capacity", "--rate-limit-burst") if f not in serve_flags()]
    if missing:
        raise RuntimeError(f"discovery serve lacks {missing}")
    report = Report(
        "end_to_end_default",
        {
            "registry_users": users,
            "client_users": clients,
            "store": "embedded SQLite (written directly, loaded by the server at start)",
            "contacts_per_request": sizes.contacts,
            "concurrency": CONCURRENCY,
            "seconds_per_load": sizes.e2e_seconds,
            "rounds": sizes.e2e_rounds,
            "default_server_flags": list(auth.serve_args),
            "quota_off_server_flags": [*auth.serve_args, *QUOTA_OFF],
            "request": "re-sync: the same book as contact_hashes and previous_contact_hashes, "
            "with the previous_token of the user's first sync",
            "load_generator": "separate process, grpc.aio, one channel, pre-serialized requests, "
            "frame i sent with the bearer token of client user i",
        },
    )
    default_dir, off_dir = workdir / "default", workdir / "quota-off"
    with (
        running(discovery_server(data_dir, default_dir, auth)) as default,
        running(discovery_server(data_dir, off_dir, auth, QUOTA_OFF)) as quota_off,
    ):
        report.results["server"] = server_index_stats(default, users)
        previous = asyncio.run(first_syncs(default.target, books, tokens))
        resync = workdir / "resync.frames"
        write_frames(
            resync,
            (
                pb.DiscoverRequest(
                    contact_hashes=b, previous_contact_hashes=b, previous_token=t
                ).SerializeToString()
                for b, t in zip(books, previous, strict=True)
            ),
        )
        probe = load(
            default.target, DISCOVER_METHOD, resync, (), 1, 0.2, 0.0, keep_first=True, metadata_file=metadata
        )
        first = pb.DiscoverResponse.FromString(bytes.fromhex(probe["first_response"]))
        response_bytes = probe["response_bytes"]
        with running(echo_server(workdir / "echo", response_bytes)) as echo:
            loads = [
                Load("default (jwt, quotas, re-sync)", default, DISCOVER_METHOD, resync, metadata),
                Load("echo of the re-sync sizes", echo, ECHO_METHOD, resync, None),
                Load("quota off (jwt, plain request)", quota_off, DISCOVER_METHOD, plain, metadata),
                Load("echo of the plain sizes", echo, ECHO_METHOD, plain, None),
            ]
            runs: dict[str, list[Json]] = {w.name: [] for w in loads}
            per_round = sizes.e2e_seconds / sizes.e2e_rounds
            for round_ in range(sizes.e2e_rounds):
                ctx.log(f"round {round_ + 1} of {sizes.e2e_rounds}")
                for work in loads:
                    runs[work.name].append(measured(ctx, work, per_round, sizes.e2e_warmup))
            if ctx.profile:
                # Kept beside the JSON (the work directory goes): docs/perf holds copies.
                report.results["profile"] = profile(ctx, loads[0], ctx.out / "end_to_end_default.pyspy.txt")
        report.results["server"]["peak_rss_mib"] = round(default.memory_kib().get("VmHWM", 0) / 1024, 1)
    lines = {w.name: summarize(runs[w.name]) for w in loads}
    d, e, q, qe = (lines[w.name] for w in loads)
    share: Callable[[Json, Json], float] = lambda a, b: round(a["rps"] / b["rps"], 3)  # noqa: E731
    report.results.update(
        matches_in_first_response=len(first.match_user_ids),
        default=d,
        echo=e,
        quota_off=q,
        echo_plain=qe,
        fraction_of_echo_rps={"default": share(d, e), "quota_off": share(q, qe)},
        cpu_per_call_us={
            "default": d["server_cpu_us_per_call"],
            "echo": e["server_cpu_us_per_call"],
            "quota_off": q["server_cpu_us_per_call"],
            "echo_plain": qe["server_cpu_us_per_call"],
        },
        echo_cpu_over_discover_cpu=round(e["server_cpu_us_per_call"] / d["server_cpu_us_per_call"], 3),
    )
    report.goals.append(
        Goal(
            f"Discover req/s over echo, default config (jwt, quotas, re-sync), c=16, {users:,} users",
            GOAL_FRACTION_OF_ECHO,
            share(d, e),
            "",
            at_most=False,
        )
    )
    report.results["headline"] = [
        headline(
            f"Discover, default config (jwt, quotas on, re-sync with token), c=16, {users:,} users",
            d["rps"],
            "req/s",
            f"{share(d, e):.0%} of echo ({e['rps']} req/s); server CPU {d['server_cpu_us_per_call']:.0f} "
            f"µs/call vs echo {e['server_cpu_us_per_call']:.0f}; p99 {d['p99_us']:.0f} µs",
        ),
        headline(
            "Discover, quotas off, plain request, c=16",
            q["rps"],
            "req/s",
            f"{share(q, qe):.0%} of echo ({qe['rps']} req/s); server CPU {q['server_cpu_us_per_call']:.0f} "
            f"µs/call vs echo {qe['server_cpu_us_per_call']:.0f}",
        ),
    ]
    if any(r["errors"] for r in (d, q)):
        report.notes.append(f"errors: default {d['first_errors']}, quota off {q['first_errors']}")
    return report
