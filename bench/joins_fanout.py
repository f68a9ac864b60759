"""Join notification fan-out: latency from RegisterUser to the event at a live subscriber,
and the server memory each live subscriber costs.

Starts ``discovery serve`` as a child process (embedded SQLite in a temporary directory,
development auth, 127.0.0.1 only), so the server's memory is measured on its own and the
subscribers are real gRPC streams over TCP. Steps:

1. import ``--streams`` users (notify_on_join on by default on this server);
2. ``--subscribers`` of them upload address books holding future joiners' numbers, so each
   joiner is watched by ``--fanout`` subscribers; open one stream each; wait until every
   stream reports ``caught_up``;
3. baseline: RegisterUser of users nobody watches (the bare call, same run);
4. ``--rounds`` registrations, one after another, each waited for at all its watchers:
   latency = event received - RegisterUser sent;
5. burst: one registration watched by every subscriber (time to each of them);
6. open streams up to ``--streams`` and read the server's RSS at each step.

    .venv/bin/python -m bench joins_fanout                 # 1,000 subscribers, then 10,000 streams
    .venv/bin/python -m bench joins_fanout --streams 2000  # quicker

Prints one JSON object. Client and server share this machine's cores, so the latencies
include the client's own scheduling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from grpc import aio

from discovery.client import AsyncAdminClient, AsyncDiscoveryClient
from discovery.v1 import joins_pb2, joins_pb2_grpc

STREAMS_PER_CHANNEL = 500
OPEN_WAVE = 500
PREFIX = "+49157"


def number(i: int) -> str:
    return f"{PREFIX}{i:08d}"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {
        "p50_ms": at(0.50),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
        "samples": len(ordered),
    }


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Server:
    """``discovery serve`` in a child process on 127.0.0.1, port chosen by the OS."""

    def __init__(self, data_dir: Path, max_streams: int) -> None:
        port_file = data_dir / "port"
        env = dict(os.environ, DISCOVERY_AUTH="dev")
        args = [sys.executable, "-m", "discovery", "serve", "--listen", "127.0.0.1:0"]
        args += ["--data-dir", str(data_dir), "--port-file", str(port_file), "--log-level", "WARNING"]
        args += ["--default-notify-on-join", "true", "--join-max-streams", str(max_streams)]
        args += ["--quota-capacity", "0", "--rate-limit-burst", "0"]
        # Fan-out at registration is what these scenarios measure: every watcher is told (the
        # EVERYONE mode; MUTUAL, the default, tells at the joiner's Discover), with no release delay.
        args += ["--default-announce-mode", "everyone", "--join-release-jitter-seconds", "0"]
        # The server's logs go to $JOINS_BENCH_SERVER_LOG when set.
        self.log = Path(os.environ.get("JOINS_BENCH_SERVER_LOG", os.devnull)).open("wb")  # noqa: SIM115
        self.process = subprocess.Popen(args, env=env, stderr=self.log)
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.target = f"127.0.0.1:{int(port_file.read_text())}"

    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class Subscribers:
    """Raw SubscribeJoins streams; records when each joiner's event reaches each stream."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channels: list[aio.Channel] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.received: dict[str, list[float]] = {}
        self.waiters: dict[str, tuple[int, asyncio.Event]] = {}
        self.caught_up = 0
        self._all_caught_up = asyncio.Event()
        self._expected = 0

    def _channel(self) -> aio.Channel:
        if not self.channels or len(self.tasks) % STREAMS_PER_CHANNEL == 0:
            # A local subchannel pool gives each channel its own connection.
            self.channels.append(
                aio.insecure_channel(self.target, options=[("grpc.use_local_subchannel_pool", 1)])
            )
        return self.channels[-1]

    async def open(self, user_ids: list[str]) -> None:
        """Open streams in waves of OPEN_WAVE: gRPC cancels calls beyond about 1,000 waiting
        to be picked up by the server at once, as clients arriving together would see."""
        for start in range(0, len(user_ids), OPEN_WAVE):
            await self._open_wave(user_ids[start : start + OPEN_WAVE])

    async def _open_wave(self, user_ids: list[str]) -> None:
        self._expected += len(user_ids)
        self._all_caught_up.clear()
        for user_id in user_ids:
            stub: Any = joins_pb2_grpc.JoinNotificationServiceStub(self._channel())
            call = stub.SubscribeJoins(
                joins_pb2.SubscribeJoinsRequest(), metadata=(("x-discovery-user-id", user_id),)
            )
            self.tasks.append(asyncio.create_task(self._read(call)))
        await asyncio.wait_for(self._all_caught_up.wait(), timeout=120)

    async def _read(self, call: Any) -> None:
        async for message in call:
            now = time.perf_counter()
            if message.caught_up:
                self.caught_up += 1
                if self.caught_up >= self._expected:
                    self._all_caught_up.set()
            for event in message.events:
                self.received.setdefault(event.user_id, []).append(now)
                waiter = self.waiters.get(event.user_id)
                if waiter is not None and len(self.received[event.user_id]) >= waiter[0]:
                    waiter[1].set()

    async def wait_for(self, joiner: str, count: int) -> list[float]:
        done = asyncio.Event()
        self.waiters[joiner] = (count, done)
        if len(self.received.get(joiner, ())) >= count:
            done.set()
        await asyncio.wait_for(done.wait(), timeout=60)
        del self.waiters[joiner]
        return self.received[joiner]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="joins-bench-") as tmp:
        server = Server(Path(tmp), max_streams=args.streams + 100)
        try:
            return await measure(args, rng, server)
        finally:
            server.stop()


async def measure(args: argparse.Namespace, rng: random.Random, server: Server) -> dict[str, Any]:
    n_subs, rounds, fanout = args.subscribers, args.rounds, args.fanout
    users = [f"sub-{i}" for i in range(args.streams)]
    async with AsyncAdminClient(server.target) as admin:
        await admin.import_users([(u, number(i)) for i, u in enumerate(users)])
        # Joiner j (rounds 0..R-1) is watched by `fanout` random subscribers; the burst
        # joiner (index R) by all of them.
        books: list[list[str]] = [[] for _ in range(n_subs)]
        first_joiner = args.streams
        for j in range(rounds):
            for s in rng.sample(range(n_subs), fanout):
                books[s].append(number(first_joiner + j))
        for s in range(n_subs):
            books[s].append(number(first_joiner + rounds))
        for s in range(n_subs):
            async with AsyncDiscoveryClient(server.target, user_id=users[s]) as client:
                await client.discover(books[s])
        rss_before = server.rss()
        subscribers = Subscribers(server.target)
        await subscribers.open(users[:n_subs])
        rss_at_subs = server.rss()

        baseline: list[float] = []
        for i in range(args.baseline):
            started = time.perf_counter()
            await admin.register_user(f"lone-{i}", number(first_joiner + rounds + 1 + i))
            baseline.append(time.perf_counter() - started)

        latencies: list[float] = []
        for j in range(rounds):
            joiner = f"joiner-{j}"
            started = time.perf_counter()
            await admin.register_user(joiner, number(first_joiner + j))
            latencies.extend(t - started for t in await subscribers.wait_for(joiner, fanout))
            await asyncio.sleep(args.gap)

        started = time.perf_counter()
        await admin.register_user("joiner-all", number(first_joiner + rounds))
        burst = [t - started for t in await subscribers.wait_for("joiner-all", n_subs)]

        memory = [{"streams": 0, "rss_mb": round(rss_before / 2**20, 1)}]
        memory.append({"streams": n_subs, "rss_mb": round(rss_at_subs / 2**20, 1)})
        opened = n_subs
        for step in args.memory_steps:
            if step <= opened or step > args.streams:
                continue
            await subscribers.open(users[opened:step])
            opened = step
            await asyncio.sleep(1.0)
            memory.append({"streams": opened, "rss_mb": round(server.rss() / 2**20, 1)})
        rss_full = server.rss()
        await subscribers.close()

    fan = percentiles(latencies)
    base = percentiles(baseline)
    per_stream = (rss_full - rss_before) / max(1, opened)
    return {
        "benchmark": "joins_fanout",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "live_subscribers": n_subs,
        "registrations": rounds,
        "watchers_per_registration": fanout,
        "baseline_register_unwatched": base,
        "fanout_latency": fan,
        "ratio_p50_vs_baseline": round(fan["p50_ms"] / base["p50_ms"], 2),
        "ratio_p99_vs_baseline": round(fan["p99_ms"] / base["p99_ms"], 2),
        "goal_p99_ms": 50.0,
        "goal_p99_met": fan["p99_ms"] <= 50.0,
        "burst_one_registration_to_all_subscribers": percentiles(burst),
        "memory": {
            "points": memory,
            "streams_held": opened,
            "bytes_per_stream": int(per_stream),
            "kib_per_stream": round(per_stream / 1024, 1),
        },
        "goal_streams": 10_000,
        "goal_streams_met": opened >= 10_000,
    }


def in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh (spawned) process. grpc.aio binds its poller to the first event
    loop of a process, so a harness that runs several scenarios with ``asyncio.run`` each
    drives gRPC from a child per scenario."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subscribers", type=int, default=1000, help="live subscribers during the latency runs")
    ap.add_argument("--rounds", type=int, default=400, help="registrations timed one after another")
    ap.add_argument("--fanout", type=int, default=5, help="watchers of each timed registration")
    ap.add_argument("--baseline", type=int, default=200, help="unwatched registrations (baseline)")
    ap.add_argument("--gap", type=float, default=0.005, help="seconds between timed registrations")
    ap.add_argument("--streams", type=int, default=10_000, help="streams held for the memory figure")
    ap.add_argument(
        "--memory-steps", type=int, nargs="*", default=[2500, 5000, 10_000], help="stream counts to sample"
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.streams < args.subscribers:
        ap.error("--streams must be at least --subscribers")
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
