"""redis-server instructions per imported user: the Redis store's import under callgrind.

A redis-server runs under ``valgrind --tool=callgrind --instr-atstart=no`` on loopback. The
store (``open_redis_store``) first imports ``--prefill`` users uninstrumented, so that the
buckets are as full as in a registry of that size, then callgrind counts every instruction
redis-server executes while ``--users`` more are imported (``callgrind_control -i on/off``).
The users come in random order in groups of 10,000 distinct users with watch tags and no
watches, as ``ImportUsers`` sends them; the counts do not depend on the machine's load
(except for the few of redis-server's timers that fall into the window). Prints JSON, with
the functions of most inclusive cost.

    python -m bench import_callgrind --prefill 100000 --users 40000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

from bench.callgrind import control, largest_dump, top_functions, total_instructions
from bench.data import make_registry, split_ids
from discovery.core.model import ImportGroup, PrivacySettings
from discovery.store.redis import open_redis_store
from tests.support.redis_fixtures import MISSING, REDIS_SERVER, free_port

GROUP = 10_000


def groups(count: int, seed: int) -> list[ImportGroup]:
    registry = make_registry(count, seed=seed).shuffled()
    ids = split_ids(registry.id_blob)
    tags = np.random.default_rng(seed).bytes(16 * count)
    settings = [PrivacySettings()] * count

    def announce(positions: object) -> list[Any]:
        raise AssertionError("nobody watches: no announcement is asked for")

    return [
        ImportGroup(
            ids[a : a + GROUP],
            registry.keys[16 * a : 16 * (a + GROUP)],
            settings[a : a + GROUP],
            tags[16 * a : 16 * (a + GROUP)],
            announce,
            distinct=True,
        )
        for a in range(0, count, GROUP)
    ]


async def imports(url: str, pid: int, prefill: list[ImportGroup], measured: list[ImportGroup]) -> int:
    store = await open_redis_store(url)
    try:
        for group in prefill:
            await store.import_groups([group])
        control(pid, "-i", "on")
        reports = await store.import_groups(measured)
        control(pid, "-i", "off")
        control(pid, "-d")
    finally:
        await store.close()
    return sum(r.imported for r in reports)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, default=100_000, help="users imported before counting")
    ap.add_argument("--users", type=int, default=40_000, help="users imported while counting")
    args = ap.parse_args()
    if REDIS_SERVER is None or shutil.which("valgrind") is None:
        print(f"needs valgrind and redis-server ({MISSING})", file=sys.stderr)
        return 1
    prefill, measured = groups(args.prefill, 1), groups(args.users, 2)
    with tempfile.TemporaryDirectory(prefix="import-callgrind-") as tmp:
        work = Path(tmp)
        port = free_port()
        server = subprocess.Popen(
            [
                "valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={work}/callgrind.out.%p",
                REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(work),
                "--save", "", "--appendonly", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=port)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            imported = asyncio.run(imports(f"redis://127.0.0.1:{port}/0", server.pid, prefill, measured))
        finally:
            client.close()
            server.terminate()
            server.wait()
        dump = largest_dump(work)
        total = total_instructions(dump)
        result = {
            "prefill_users": args.prefill,
            "users": args.users,
            "imported": imported,
            "instructions": total,
            "instructions_per_imported_user": round(total / imported) if imported else None,
            "top_inclusive": top_functions(dump),
        }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
