"""Cost of the anti-enumeration gate on the Discover hot path (``discovery.core.quota``).

The baseline, measured in the same run, is what Discover does without a gate: key the
batch (one AES call), check duplicates, probe an index of ``--n`` users. On top of it:

* ``tokens_only``: the CPU part of the gate, no store: sort the keys and MAC them, and
  for a re-sync also key, check, sort and verify the previous set and count the new ones;
* ``first_sync``: the whole gate on a real SQLite store: the request-rate and the
  contact charge (one transaction on the writer thread) and the token;
* ``resync``: the whole gate for an unchanged set sent with its token, as Discover calls
  it (with the request's hashes, so the previous set is recognised as the same): the rate
  charge and the token checks (the contact charge of 0 needs no transaction).

    python -m bench quota_gate --batch 1000 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from discovery.core.hashing import KeyRing
from discovery.core.keyset import SortedKeys, sort_keys
from discovery.core.quota import DiscoverGate, QuotaPolicy, SetTokens, count_new
from discovery.core.validation import check_no_duplicate_keys
from discovery.index import DirectoryIndex
from discovery.store.sqlite import SqliteStore


async def timed(fn: Callable[[], Awaitable[object]], rounds: int) -> float:
    """Median microseconds of ``rounds`` calls."""
    await fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        await fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(samples)


async def run(n: int, batches: list[int], rounds: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    keys = KeyRing.from_secret(rng.bytes(32))
    index = DirectoryIndex()
    registered = rng.bytes(16 * n)
    ids = b"".join(f"user-{i}\x00".encode() for i in range(n))
    index.bulk_load_packed(registered, ids, np.ones(n, dtype=np.bool_))
    unlimited = QuotaPolicy(capacity=10**12, refill_per_hour=0.0, rate_burst=10**12, rate_per_minute=0.0)
    tokens = SetTokens(keys.token_key, unlimited.token_ttl, unlimited.max_clock_skew)
    results: dict[str, object] = {"n": n, "rounds": rounds, "batches": {}}
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db")
        await store.open()
        gate = DiscoverGate(store, keys, unlimited, max(batches))
        try:
            for batch in batches:
                packed = rng.bytes(32 * batch)

                async def baseline(packed: bytes = packed) -> object:
                    k = keys.directory_keys(packed)
                    check_no_duplicate_keys(sort_keys(k))
                    return index.lookup(k)

                dkeys = keys.directory_keys(packed)
                ordered = sort_keys(dkeys)
                token = await gate.charge("bench", ordered, b"", b"")

                async def tokens_only(
                    packed: bytes = packed, token: bytes = token, dkeys: bytes = dkeys
                ) -> object:
                    previous = sort_keys(keys.directory_keys(packed))
                    previous.first_duplicate()
                    tokens.verify("bench", previous, token, time.time())
                    current = sort_keys(dkeys)
                    count_new(current, previous)
                    return tokens.issue("bench", current, time.time())

                async def first_sync(ordered: SortedKeys = ordered) -> object:
                    await gate.admit("bench")
                    return await gate.charge("bench", ordered, b"", b"")

                async def resync(
                    ordered: SortedKeys = ordered, packed: bytes = packed, token: bytes = token
                ) -> object:
                    await gate.admit("bench")
                    return await gate.charge("bench", ordered, packed, token, packed)

                base = await timed(baseline, rounds)
                figures = {"baseline_us": round(base, 1)}
                for name, fn in (
                    ("tokens_only", tokens_only),
                    ("first_sync", first_sync),
                    ("resync", resync),
                ):
                    us = await timed(fn, rounds)
                    figures[f"{name}_us"] = round(us, 1)
                    figures[f"{name}_ratio"] = round(us / base, 2)
                results["batches"][str(batch)] = figures  # type: ignore[index]
        finally:
            await store.close()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="users in the index")
    ap.add_argument("--batch", type=int, nargs="+", default=[1000, 5000], help="contacts per request")
    ap.add_argument("--rounds", type=int, default=300, help="requests to time per case")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.n, args.batch, args.rounds, args.seed)), indent=2))


if __name__ == "__main__":
    main()
