"""Micro-benchmark of the in-memory directory index (``discovery.index.DirectoryIndex``).

Builds an index of N random keys with user ids of 10..20 bytes through
``bulk_load_packed``, then times lookups of 1,000 keys of which half are present (a
fresh batch each time, so the caches are as cold as in service), and prints JSON.

    python -m bench index_micro --n 1000000
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import numpy as np
import numpy.typing as npt

from discovery.index import DirectoryIndex

ALPHABET = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz234567", dtype=np.uint8)


def make_ids(rng: np.random.Generator, n: int) -> tuple[bytes, npt.NDArray[np.int64]]:
    """n NUL-terminated ASCII ids of 10..20 bytes as one blob, and their lengths."""
    lens = rng.integers(10, 21, n, dtype=np.int64)
    ends = np.cumsum(lens + 1)
    blob = ALPHABET[rng.integers(0, ALPHABET.size, int(ends[-1]))]
    blob[ends - 1] = 0
    return blob.tobytes(), lens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="entries in the index")
    ap.add_argument("--batch", type=int, default=1000, help="keys per lookup")
    ap.add_argument("--rounds", type=int, default=2000, help="lookups to time")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    n, batch = args.n, args.batch
    rng = np.random.default_rng(args.seed)

    keys = rng.bytes(16 * n)
    blob, lens = make_ids(rng, n)
    discoverable = rng.random(n) < 0.9

    index = DirectoryIndex()
    t0 = time.perf_counter()
    index.bulk_load_packed(keys, blob, discoverable)
    build_s = time.perf_counter() - t0
    assert len(index) == n
    mem = index.memory_bytes()

    # bulk_load from a list of str (the path the service's loader uses), on up to 1M entries
    m = min(n, 1_000_000)
    id_list = blob[: int(np.sum(lens[:m] + 1))].decode().split("\x00")[:-1]
    small = DirectoryIndex()
    t0 = time.perf_counter()
    small.bulk_load(keys[: 16 * m], id_list, discoverable[:m])
    list_s = time.perf_counter() - t0
    del small, id_list

    key_rows = np.frombuffer(keys, dtype=np.uint8).reshape(n, 16)
    batches = []
    half = batch // 2
    for _ in range(args.rounds):
        present = key_rows[rng.integers(0, n, half)]
        absent = rng.integers(0, 256, (batch - half, 16), dtype=np.uint8)
        mixed = np.concatenate((present, absent))
        batches.append(mixed[rng.permutation(batch)].tobytes())
    index.lookup(batches[0])  # warm up code paths
    times = []
    found = 0
    for q in batches:
        t0 = time.perf_counter_ns()
        _, ids = index.lookup(q)
        times.append((time.perf_counter_ns() - t0) / 1000)
        found += len(ids)
    times.sort()

    # 10,000 single upserts of new keys, then their removal (they may grow the arrays)
    upsert_keys = [rng.bytes(16) for _ in range(10_000)]
    t0 = time.perf_counter()
    for k in upsert_keys:
        index.upsert(k, "someone-new", True)
    upsert_us = (time.perf_counter() - t0) / len(upsert_keys) * 1e6
    t0 = time.perf_counter()
    for k in upsert_keys:
        index.remove(k)
    remove_us = (time.perf_counter() - t0) / len(upsert_keys) * 1e6

    print(
        json.dumps(
            {
                "n": n,
                "build_s": round(build_s, 3),
                "bulk_load_list_n": m,
                "bulk_load_list_s": round(list_s, 3),
                "lookup_batch": batch,
                "lookup_us_median": round(statistics.median(times), 1),
                "lookup_us_p99": round(times[int(len(times) * 0.99) - 1], 1),
                "lookup_us_mean": round(statistics.fmean(times), 1),
                "found_per_lookup": round(found / len(batches), 1),
                "upsert_us": round(upsert_us, 2),
                "remove_us": round(remove_us, 2),
                "memory_bytes": mem,
                "bytes_per_entry": round(mem / n, 1),
                "bytes_per_entry_after_churn": round(index.memory_bytes() / n, 1),
                "mean_id_bytes": round(float(lens.mean()), 1),
                "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
