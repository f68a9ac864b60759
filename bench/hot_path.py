"""Scenario 1: the hot path in process.

For each Discover batch: directory-key derivation (``KeyRing.directory_keys``, one AES
call) plus the index lookup (``DirectoryIndex.lookup``), timed per request, on batches of
1,000 contact hashes of which half belong to registered users. Every batch is a fresh
one, so the index's memory is as cold as in service.

At the largest size two references are timed in the same run, on other fresh batches:
the numpy probe loops of the index (its fallback when the compiled kernel is not built)
and the naive Python way, a dict of directory key -> user id probed once per key.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from bench.context import Context
from bench.data import DISCOVERABLE_FRACTION, REGISTERED_FRACTION, Registry, split_ids
from bench.profiling import cprofile_top
from bench.report import Goal, Report, summarize_ns
from bench.summary import headline
from discovery.core.hashing import KeyRing
from discovery.index import DirectoryIndex
from discovery.index import table as index_table

GOAL_MEDIAN_US = 150.0
GOAL_SPEEDUP_DICT = 8.0
REFERENCE_REQUESTS = 500
GOAL_BYTES_PER_USER = 64.0
WARMUP = 20


class Lookup(Protocol):
    def lookup(self, keys: bytes) -> tuple[object, list[str]]: ...


@dataclass
class HotPathTimes:
    total_ns: npt.NDArray[np.int64]
    keys_ns: npt.NDArray[np.int64]
    lookup_ns: npt.NDArray[np.int64]
    matches: int

    def summary(self, contacts: int) -> dict[str, Any]:
        out = summarize_ns(self.total_ns, contacts)
        out["keys_median_us"] = round(float(np.median(self.keys_ns)) / 1000, 2)
        out["lookup_median_us"] = round(float(np.median(self.lookup_ns)) / 1000, 2)
        out["matches_per_request"] = round(self.matches / max(1, self.total_ns.size), 1)
        out["matches_total"] = self.matches
        return out


def time_hot_path(keyring: KeyRing, index: Lookup, requests: Sequence[bytes]) -> HotPathTimes:
    """Time keys + lookup for each packed batch (after a short warm-up on the first ones)."""
    for packed in requests[:WARMUP]:
        index.lookup(keyring.directory_keys(packed))
    n = len(requests)
    keys_ns = np.empty(n, dtype=np.int64)
    total_ns = np.empty(n, dtype=np.int64)
    matches = 0
    clock = time.perf_counter_ns
    gc.collect()
    for i, packed in enumerate(requests):
        t0 = clock()
        keys = keyring.directory_keys(packed)
        t1 = clock()
        _, ids = index.lookup(keys)
        t2 = clock()
        keys_ns[i] = t1 - t0
        total_ns[i] = t2 - t0
        matches += len(ids)
    return HotPathTimes(total_ns, keys_ns, total_ns - keys_ns, matches)


def time_numpy_loops(keyring: KeyRing, index: DirectoryIndex, requests: Sequence[bytes]) -> HotPathTimes:
    """:func:`time_hot_path` with the index's numpy fallback instead of the compiled kernel."""
    kernel = index_table._kernel
    index_table._kernel = None
    try:
        return time_hot_path(keyring, index, requests)
    finally:
        index_table._kernel = kernel


def time_naive_dict(keyring: KeyRing, registry: Registry, requests: Sequence[bytes]) -> HotPathTimes:
    """The same keys, looked up one by one in a dict of the discoverable users."""
    visible = registry.discoverable.tolist()
    keys = registry.keys
    table = {
        keys[16 * i : 16 * i + 16]: uid
        for i, (uid, disc) in enumerate(zip(split_ids(registry.id_blob), visible, strict=True))
        if disc
    }

    class DictIndex:
        @staticmethod
        def lookup(packed: bytes) -> tuple[list[int], list[str]]:
            positions: list[int] = []
            ids: list[str] = []
            for i in range(len(packed) // 16):
                uid = table.get(packed[16 * i : 16 * i + 16])
                if uid is not None:
                    positions.append(i)
                    ids.append(uid)
            return positions, ids

    try:
        return time_hot_path(keyring, DictIndex(), requests)
    finally:
        table.clear()


def references(
    keyring: KeyRing, index: DirectoryIndex, registry: Registry, contacts: int, ours: dict[str, Any]
) -> dict[str, Any]:
    """The numpy loops and the naive dict on fresh batches of their own, and our speed-up."""
    fresh = registry.requests(2 * (REFERENCE_REQUESTS + WARMUP), contacts, seed=1)
    numpy_loops = time_numpy_loops(keyring, index, fresh[: REFERENCE_REQUESTS + WARMUP]).summary(contacts)
    naive = time_naive_dict(keyring, registry, fresh[REFERENCE_REQUESTS + WARMUP :]).summary(contacts)
    return {
        "kernel": "compiled (discovery/index/_probe.c)" if index_table.KERNEL else "numpy (not built)",
        "numpy_loops": numpy_loops,
        "naive_dict": naive,
        "faster_than_numpy_loops": round(numpy_loops["median_us"] / ours["median_us"], 2),
        "faster_than_naive_dict": round(naive["median_us"] / ours["median_us"], 2),
    }


def hot_path_profile(
    keyring: KeyRing, index: DirectoryIndex, requests: Sequence[bytes]
) -> list[dict[str, Any]]:
    batches = iter(requests)
    return cprofile_top(lambda: index.lookup(keyring.directory_keys(next(batches))), len(requests))


def largest_goals(
    ctx: Context,
    report: Report,
    registry: Registry,
    index: DirectoryIndex,
    requests: Sequence[bytes],
    entry: dict[str, Any],
) -> None:
    """The references and the goals at the largest size (and a profile if the median misses)."""
    entry["references"] = references(registry.keyring, index, registry, ctx.sizes.contacts, entry)
    at = f"{registry.size:,} users"
    report.goals += [
        Goal(f"hot path median, 1,000 contacts, {at}", GOAL_MEDIAN_US, entry["median_us"], "µs"),
        Goal(
            f"hot path vs the naive dict, same run, {at}",
            GOAL_SPEEDUP_DICT,
            entry["references"]["faster_than_naive_dict"],
            "x",
            at_most=False,
        ),
        Goal(
            f"index memory per registered user, {at}",
            GOAL_BYTES_PER_USER,
            entry["index_bytes_per_user"],
            "bytes",
        ),
    ]
    if ctx.profile and entry["median_us"] > GOAL_MEDIAN_US:
        report.results["profile_at_largest"] = {
            "tool": "cProfile",
            "top_by_own_time": hot_path_profile(registry.keyring, index, requests[:300]),
        }


def run(ctx: Context) -> Report:
    sizes = ctx.sizes
    report = Report(
        "hot_path",
        {
            "registry_users": list(sizes.hot_path_users),
            "contacts_per_request": sizes.contacts,
            "registered_fraction": REGISTERED_FRACTION,
            "discoverable_fraction": DISCOVERABLE_FRACTION,
            "requests_per_registry": sizes.hot_path_requests,
            "user_id_bytes": "10..20 ASCII (mean 15)",
            "measured": "KeyRing.directory_keys + DirectoryIndex.lookup, one thread, GC on",
        },
    )
    per_size: dict[str, Any] = {}
    largest = max(sizes.hot_path_users)
    for users in sizes.hot_path_users:
        registry = ctx.registry(users)
        started = time.perf_counter()
        index = registry.build_index()
        build_s = time.perf_counter() - started
        requests = registry.requests(sizes.hot_path_requests + WARMUP, sizes.contacts)
        times = time_hot_path(registry.keyring, index, requests)
        entry = times.summary(sizes.contacts)
        memory = index.memory_bytes()
        entry.update(
            index_bytes=memory,
            index_bytes_per_user=round(memory / users, 1),
            index_build_s=round(build_s, 2),
            index_build_users_per_s=round(users / build_s),
        )
        per_size[str(users)] = entry
        ctx.log(
            f"hot path at {users:,}: median {entry['median_us']} µs, {entry['index_bytes_per_user']} B/user"
        )
        if users == largest:
            largest_goals(ctx, report, registry, index, requests, entry)
        del index
    report.results["registries"] = per_size
    top = per_size[str(largest)]
    report.results["headline"] = [
        headline(
            f"keys + lookup, 1,000 contacts, {largest:,} users: median",
            top["median_us"],
            "µs",
            f"p99 {top['p99_us']} µs, {top['ns_per_contact']} ns per contact",
        ),
        headline(
            f"index memory per registered user, {largest:,} users", top["index_bytes_per_user"], "bytes"
        ),
    ]
    if ctx.quick:
        report.notes.append("quick mode: goals are checked at the quick registry size, not at 10M users")
    return report
