"""Instructions per Discover call of the whole server, against the echo ceiling (callgrind).

The real ``discovery serve`` runs under ``valgrind --tool=callgrind --instr-atstart=no`` on an
embedded store of ``--users`` users, quotas on with their defaults. Each of ``--clients`` client
users first syncs its 1,000-contact book (half registered), then every one re-syncs once more
(warm-up), and then callgrind counts every instruction of the server, all its threads, while
``--calls`` re-syncs go at concurrency 16 (``callgrind_control -i on/off``): the request the
end_to_end_default scenario sends, 64 kB with the previous set and its token. Then the same for
the grpc.aio echo server with the request and response of the same sizes.

Unlike CPU time on a shared machine, the counts barely move with the machine's load, so they
compare designs; they leave out the kernel and memory stalls (the index lookup's cache misses).
The callers are named by the development header (``--auth dev``), not JWTs: callgrind slows the
server about fifty times, so a measured window outlasts the 30 s token cache and the count would
depend on how many tokens expired inside it. Prints JSON.

    python -m bench server_callgrind --users 100000 --calls 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grpc import aio

from bench.callgrind import control, largest_dump, top_functions, total_instructions
from bench.data import make_registry, write_store
from bench.echo_server import ECHO_METHOD
from bench.end_to_end import DISCOVER_METHOD
from bench.loadgen import MAX_MESSAGE
from bench.procs import Auth as ServeAuth
from bench.procs import Process, discovery_server, echo_server
from discovery.v1 import discovery_pb2 as pb

CONCURRENCY = 16
CONTACTS = 1000
START_TIMEOUT = 900.0  # loading the index under callgrind
OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
DEV_AUTH = ServeAuth(mode="dev header", client_metadata=(), backend_metadata=(), serve_args=("--auth", "dev"))


def caller(i: int) -> tuple[tuple[str, str], ...]:
    return (("x-discovery-user-id", f"client-{i:05d}"),)


async def drive(target: str, pid: int, method: str, requests: list[bytes], calls: int) -> int:
    """Warm up with one call per request, then count ``calls`` calls; returns the response size."""
    sizes: list[int] = []
    async with aio.insecure_channel(target, options=OPTIONS) as channel:
        call = channel.unary_unary(method)
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                response: bytes = await call(requests[i % len(requests)], metadata=caller(i % len(requests)))
                sizes.append(len(response))

        await asyncio.gather(*(one(i) for i in range(len(requests))))
        control(pid, "-i", "on")
        await asyncio.gather(*(one(i) for i in range(calls)))
        control(pid, "-i", "off")
        control(pid, "-d")
    return sizes[-1]


async def first_syncs(target: str, books: list[bytes]) -> list[bytes]:
    """Each client's first Discover of its book; the re-sync requests that follow it."""
    async with aio.insecure_channel(target, options=OPTIONS) as channel:
        call = channel.unary_unary(
            DISCOVER_METHOD,
            request_serializer=pb.DiscoverRequest.SerializeToString,
            response_deserializer=pb.DiscoverResponse.FromString,
        )
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int) -> bytes:
            async with gate:
                response: pb.DiscoverResponse = await call(
                    pb.DiscoverRequest(contact_hashes=books[i]), metadata=caller(i)
                )
                return pb.DiscoverRequest(
                    contact_hashes=books[i], previous_contact_hashes=books[i], previous_token=response.token
                ).SerializeToString()

        return list(await asyncio.gather(*(one(i) for i in range(len(books)))))


def counted(
    process: Process, method: str, calls: int, prepare: Callable[[str], list[bytes]]
) -> tuple[dict[str, Any], list[bytes]]:
    """Start ``process`` under callgrind, make its requests (``prepare(target)``), count ``calls``."""
    out_dir = process.workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    process.args = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.out.%p",
        *process.args,
    ]
    process.start(timeout=START_TIMEOUT)
    try:
        requests = prepare(process.target)
        response_bytes = asyncio.run(drive(process.target, process.pid, method, requests, calls))
    finally:
        process.stop()
    dump = largest_dump(out_dir)
    total = total_instructions(dump)
    result = {
        "instructions": total,
        "instructions_per_call": round(total / calls),
        "response_bytes": response_bytes,
        "top_inclusive": top_functions(dump),
    }
    return result, requests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000, help="registered users in the embedded store")
    ap.add_argument("--clients", type=int, default=150, help="client users, each with its own book")
    ap.add_argument("--calls", type=int, default=300, help="re-sync calls counted")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("needs valgrind (callgrind)", file=sys.stderr)
        return 1
    registry = make_registry(args.users)
    books = registry.requests(args.clients, CONTACTS, seed=11)
    with tempfile.TemporaryDirectory(prefix="server-callgrind-") as tmp:
        work = Path(tmp)
        data_dir = work / "store"
        write_store(data_dir, registry)
        server = discovery_server(data_dir, work / "server", DEV_AUTH)
        discover, requests = counted(
            server, DISCOVER_METHOD, args.calls, lambda target: asyncio.run(first_syncs(target, books))
        )
        echo_process = echo_server(work / "echo", discover["response_bytes"])
        echo, _ = counted(echo_process, ECHO_METHOD, args.calls, lambda _: requests)
    result = {
        "scenario": "server_callgrind",
        "users": args.users,
        "clients": args.clients,
        "calls": args.calls,
        "concurrency": CONCURRENCY,
        "request": "re-sync: the book as contact_hashes and previous_contact_hashes, with its token",
        "request_bytes": len(requests[0]),
        "auth": "development header (see the module docstring)",
        "discover": discover,
        "echo": echo,
        "discover_over_echo": round(discover["instructions_per_call"] / echo["instructions_per_call"], 2),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
