"""Private discovery mode: the costs that choose its structures (JSON lines on stdout).

    python -m bench.private_mode                     # 100k, 1M and 10M registered users
    python -m bench.private_mode --sizes 10000 --quick
    python -m bench.private_mode --only-sync          # first_sync, first_sync_options, registration
    python -m bench.private_mode --only-sizes         # the structure group at each of --sizes
    python -m bench.private_mode --only-oprf          # the oprf group, next to the AES and PSI baselines

One line per figure group:
- ``oprf``: server CPU per 1,000 evaluations (one batch, one proof; goal <= 250 ms) next to the standard
  mode's AES keying of 1,000 contact hashes and openmined-psi's server answering a 1,000-contact request
  (when installed apart: ``pip install --no-deps openmined-psi``), client CPU to blind,
  verify and finalize 1,000, and ``y`` at registration (registrations/s of the OPRF part alone);
- ``off_loop``: the largest gap of a 1 ms asyncio ticker while 1,000 elements are evaluated in this thread, in
  a thread pool and in a process pool;
- ``structure`` (per size): the Elias-Fano snapshot of 40-bit tags (the chosen structure) next to a binary
  fuse filter (pyfusefilter Fuse16): bytes per registered user, build time, client decode and lookup cost of
  1,000 contacts, false-positive rate; delta bytes per registration (tags only, and with sealed ids for
  the join stream); the range bucket's capacity and response size; the first sync of 1,000 contacts with
  300 registered (snapshot + one bucket per hit);
- ``first_sync``: the SDK's private-mode plan run against the server's domain in this process with
  ``--sync-size`` registered users: bytes downloaded (goal <= 4 MB), client CPU (goal <= 1 s), and the
  evaluations of a warm re-sync (goal 0), with the default id_pad (64) and with 128;
- ``first_sync_options``: the first sync's bytes for other k (``--private-bucket-min-users``) and id_pad;
- ``registration``: the private-mode entries of an import batch and of one registration, in the worker pool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from discovery.core.hashing import KeyRing
from discovery.core.private import OffLoopEvaluator, OprfKey, entry_from_output, evaluate_blinded
from discovery.private_scheme import (
    DEFAULT_BUCKET_USERS,
    DEFAULT_ID_PAD,
    SMALL_DIRECTORY_MAX,
    Delta,
    DeltaRecord,
    Snapshot,
    blind_batch,
    bucket_capacity,
    bucket_size,
    finalize_batch,
    sealed_size,
)

TAG_SPACE = 1 << 40


def cpu_ms(fn: Callable[[], object], repeat: int = 3) -> float:
    runs = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        runs.append((time.process_time() - start) * 1000)
    return round(statistics.median(runs), 2)


def wall_ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return round((time.perf_counter() - start) * 1000, 2)


def baseline_figures(hashes: list[bytes]) -> dict[str, Any]:
    """What the server spends on the same contacts in the standard mode (AES keying of the contact
    hashes) and in ECDH PSI (openmined-psi's server answering one request), per 1,000 contacts."""
    per = 1000 / len(hashes)
    ring = KeyRing.from_secret(b"bench private mode secret".ljust(32, b"."))
    packed = b"".join(hashes)
    figures: dict[str, Any] = {
        "standard_mode_keying_cpu_ms_per_1000": round(cpu_ms(lambda: ring.directory_keys(packed)) * per, 3)
    }
    try:
        import private_set_intersection.python as psi  # package openmined-psi, installed apart
    except ImportError:
        figures["psi_server_cpu_ms_per_1000"] = None
        figures["psi_note"] = "openmined-psi is not importable: pip install --no-deps openmined-psi"
        return figures
    request = psi.client.CreateWithNewKey(True).CreateRequest([h.hex() for h in hashes])
    server = psi.server.CreateWithNewKey(True)
    figures["psi_server_cpu_ms_per_1000"] = round(cpu_ms(lambda: server.ProcessRequest(request)) * per, 1)
    return figures


def oprf_figures(count: int) -> dict[str, Any]:
    key = OprfKey.from_secret(b"bench private mode secret".ljust(32, b"."), 1)
    hashes = [os.urandom(32) for _ in range(count)]
    batch = blind_batch(hashes)
    evaluated, proof = evaluate_blinded(key, batch.blinded, max_count=count)
    per = 1000 / count
    ys = [key.output_of(h) for h in hashes[:200]]
    return {
        "group": "oprf",
        "elements": count,
        "server_eval_cpu_ms_per_1000": round(
            cpu_ms(lambda: evaluate_blinded(key, batch.blinded, count)) * per, 1
        ),
        "server_eval_goal_ms_per_1000": 250,
        "client_blind_cpu_ms_per_1000": round(cpu_ms(lambda: blind_batch(hashes)) * per, 1),
        "client_verify_finalize_cpu_ms_per_1000": round(
            cpu_ms(lambda: finalize_batch(batch, evaluated, proof, key.public_key)) * per, 1
        ),
        **baseline_figures(hashes),
        "registration_y_per_s": round(
            200 / (cpu_ms(lambda: [key.output_of(h) for h in hashes[:200]]) / 1000)
        ),
        "registration_entry_per_s": round(
            200
            / (
                cpu_ms(lambda: [entry_from_output(y, 1, "user-0123456789", DEFAULT_ID_PAD) for y in ys])
                / 1000
            )
        ),
    }


async def _max_gap(run: Callable[[], Any]) -> float:
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    await run()
    done.set()
    await ticker
    return round(max(gaps) * 1000, 1)


async def off_loop_figures(count: int) -> dict[str, Any]:
    key = OprfKey.from_secret(b"bench private mode secret".ljust(32, b"."), 1)
    packed = blind_batch([os.urandom(32) for _ in range(count)]).blinded
    out: dict[str, Any] = {"group": "off_loop", "elements": count}

    async def inline() -> None:
        evaluate_blinded(key, packed, count)

    out["ticker_max_gap_ms_inline"] = await _max_gap(inline)
    for kind in ("thread", "process"):
        pool = OffLoopEvaluator(kind="thread" if kind == "thread" else "process")

        async def evaluate(pool: OffLoopEvaluator = pool) -> None:
            await pool.evaluate(key, packed, count)

        try:
            await pool.start(key)
            out[f"ticker_max_gap_ms_{kind}_pool"] = await _max_gap(evaluate)
            walls = [await _timed(evaluate) for _ in range(3)]
            out[f"wall_ms_{kind}_pool"] = round(1000 * statistics.median(walls), 1)
        finally:
            pool.close()
    return out


async def snapshot_rebuild_figures(n: int) -> dict[str, Any]:
    """A stale snapshot of `n` users rebuilt: on the loop (before) and in a worker thread (the server)."""
    from discovery.core.private_index import PrivateIndex

    index = PrivateIndex(None, 1)  # type: ignore[arg-type]
    index._entries = _random_entries(n, DEFAULT_ID_PAD)
    index.count = n
    out: dict[str, Any] = {"group": "snapshot_rebuild", "registered": n}

    async def inline() -> None:
        index._snapshot = None
        index.snapshot_bytes()

    async def threaded() -> None:
        await index.rebuild()

    out["ticker_max_gap_ms_inline"] = await _max_gap(inline)
    out["ticker_max_gap_ms_thread"] = await _max_gap(threaded)
    out["rebuild_wall_ms_thread"] = round(
        1000 * statistics.median([await _timed(threaded) for _ in range(3)]), 1
    )
    return out


def _random_entries(n: int, id_pad: int) -> dict[bytes, set[bytes]]:
    """`n` registered users' entries with random tags (one shared filler sealed id)."""
    rng = np.random.default_rng(7)
    filler = os.urandom(sealed_size(id_pad))
    return {int(t).to_bytes(5, "big"): {filler} for t in rng.integers(0, TAG_SPACE, size=n, dtype=np.uint64)}


async def _timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    await run()
    return time.perf_counter() - start


def structure_figures(n: int, contacts: int = 1000, hits: int = 300) -> dict[str, Any]:
    rng = np.random.default_rng(n)
    tags = np.unique(rng.integers(0, TAG_SPACE, size=n, dtype=np.uint64))
    snapshot = Snapshot(1, n, tags)
    start = time.perf_counter()
    raw = snapshot.serialize()
    ef_build = time.perf_counter() - start
    start = time.perf_counter()
    decoded = Snapshot.deserialize(raw)
    ef_decode = time.perf_counter() - start
    queries = [int(t).to_bytes(5, "big") for t in tags[:hits]] + [
        os.urandom(5) for _ in range(contacts - hits)
    ]
    ef_lookup = wall_ms(lambda: decoded.contains(queries))
    probes = rng.integers(0, TAG_SPACE, size=200_000, dtype=np.uint64)
    ef_fp = float(np.isin(probes, tags).mean())
    delta = Delta(1, n, n + 1000, tuple(DeltaRecord(os.urandom(5), 1) for _ in range(1000)))
    filler = os.urandom(sealed_size())
    joins = Delta(1, n, n + 1000, tuple(DeltaRecord(os.urandom(5), 1, (filler,)) for _ in range(1000)), True)
    k = DEFAULT_BUCKET_USERS
    capacity = bucket_capacity(n, k)
    out: dict[str, Any] = {
        "group": "structure",
        "registered": n,
        "snapshot_bytes_per_user": round(len(raw) / n, 3),
        "snapshot_mb": round(len(raw) / 1e6, 2),
        "snapshot_build_ms": round(ef_build * 1000, 1),
        "client_decode_ms": round(ef_decode * 1000, 1),
        "client_lookup_ms_per_1000": ef_lookup,
        "false_positive_rate": ef_fp,
        "false_positive_rate_theory": round(n / TAG_SPACE, 9),
        "delta_bytes_per_registration": round(len(delta.serialize()) / 1000, 2),
        "join_delta_bytes_per_registration": round(len(joins.serialize()) / 1000, 2),
        "bucket_users": k,
        "bucket_capacity": capacity,
        "bucket_bytes_id_pad_64": bucket_size(capacity, DEFAULT_ID_PAD),
        "bucket_bytes_id_pad_128": bucket_size(capacity, 128),
        "first_sync_mb_id_pad_64": round((len(raw) + hits * bucket_size(capacity, DEFAULT_ID_PAD)) / 1e6, 2),
        "first_sync_mb_id_pad_128": round((len(raw) + hits * bucket_size(capacity, 128)) / 1e6, 2),
        "small_directory_snapshot_mb": round(min(n, SMALL_DIRECTORY_MAX) * (5 + sealed_size()) / 1e6, 2),
    }
    out.update(fuse_figures(tags, queries, probes))
    return out


def fuse_figures(
    tags: np.ndarray[Any, Any], queries: list[bytes], probes: np.ndarray[Any, Any]
) -> dict[str, Any]:
    try:
        import pyfusefilter  # type: ignore[import-untyped]
    except ImportError:
        return {"fuse16": "pyfusefilter is not installed (bench extra)"}
    # pyfusefilter 1.3.0 hashes str(item) with xxhash, which xxhash 4 refuses (it wants bytes): the tags are
    # uniform 40-bit integers already, so they go in as the filter's 64-bit keys unhashed.
    pyfusefilter.pyfusefilter.hash = int
    items = tags.tolist()
    start = time.perf_counter()
    fuse = pyfusefilter.Fuse16(items)
    build = time.perf_counter() - start
    raw = fuse.serialize()
    keys = [int.from_bytes(q, "big") for q in queries]
    lookup = wall_ms(lambda: [k in fuse for k in keys])
    sample = probes[:20_000].tolist()
    known = set(items)
    fp = sum(1 for p in sample if p in fuse and p not in known) / len(sample)
    return {
        "fuse16_bytes_per_user": round(len(raw) / len(items), 3),
        "fuse16_build_ms": round(build * 1000, 1),
        "fuse16_lookup_ms_per_1000": lookup,
        "fuse16_false_positive_rate": fp,
        "fuse16_deltas": "none: a fuse filter is static; a delta needs a side list or a rebuild",
    }


class _Direct:
    """A PrivateDiscoveryService stub that calls the domain in this process and counts response bytes."""

    def __init__(self, private: Any) -> None:
        from discovery.v1 import private_pb2 as pb

        self.pb, self.private, self.downloaded, self.server_s = pb, private, 0, 0.0

    def _count(self, message: Any, started: float) -> Any:
        self.downloaded += message.ByteSize()
        self.server_s += time.process_time() - started
        return message

    def GetPrivateParams(self, request: Any, **_: Any) -> Any:
        t = time.process_time()
        from discovery.api.private_service import params_response

        return self._count(params_response(asyncio.run(self.private.params())), t)

    def EvaluateBlinded(self, request: Any, **_: Any) -> Any:
        t = time.process_time()
        evaluated, proof = evaluate_blinded(self.private.key, request.blinded_elements)
        return self._count(
            self.pb.EvaluateBlindedResponse(evaluated_elements=evaluated, proof=proof, epoch=1), t
        )

    def GetPrivateSnapshot(self, request: Any, **_: Any) -> Any:
        t = time.process_time()
        total, chunks = asyncio.run(self.private.snapshot_chunks())
        return [
            self._count(self.pb.GetPrivateSnapshotResponse(chunk=c, total_bytes=total), t) for c in chunks
        ]

    def GetPrivateBuckets(self, request: Any, **_: Any) -> Any:
        t = time.process_time()
        return self._count(
            self.pb.GetPrivateBucketsResponse(
                buckets=asyncio.run(self.private.buckets(list(request.ranges)))
            ),
            t,
        )


def first_sync_figures(
    n: int, contacts: int = 1000, hits: int = 300, id_pad: int = DEFAULT_ID_PAD
) -> dict[str, Any]:
    """The SDK plan in private mode against `n` registered users: bytes, client CPU, warm re-sync."""
    from discovery.client import _calls
    from discovery.client.private import PrivateState
    from discovery.core.private_index import PrivateDiscovery, PrivateIndex
    from discovery.core.quota import ALLOW_ALL
    from discovery.private_scheme import tag_of

    key = OprfKey(1, bytes(32))
    index = PrivateIndex(None, 1, id_pad=id_pad)  # type: ignore[arg-type]
    entries = _random_entries(n - hits, id_pad)
    hashes = [os.urandom(32) for _ in range(contacts)]
    for i, h in enumerate(hashes[:hits]):
        entry = entry_from_output(key.output_of(h), 1, f"user-{i:06d}", id_pad)
        entries.setdefault(entry.tag, set()).add(entry.sealed)
    index._entries, index.count = entries, sum(len(v) for v in entries.values())
    private = PrivateDiscovery(index, key, None, ALLOW_ALL)  # type: ignore[arg-type]
    asyncio.run(index.snapshot())  # the server builds its snapshot before the client asks
    stub = _Direct(private)
    state = PrivateState()

    def run() -> list[tuple[int, str]]:
        plan = _calls.private_discover_hashes(stub, state, hashes)  # type: ignore[arg-type]
        step = _calls.start(plan)
        while isinstance(step, _calls.Call):
            response = step.method(step.request)
            step = _calls.resume(plan, response)
        return step.value

    started = time.process_time()
    matches = run()
    total = time.process_time() - started
    first_bytes, first_evaluations = stub.downloaded, state.evaluations
    client_s = total - stub.server_s
    stub.downloaded = 0
    warm = run()
    assert len(matches) == hits and warm == matches, (len(matches), hits)
    return {
        "group": "first_sync",
        "registered": n,
        "contacts": contacts,
        "registered_contacts": hits,
        "id_pad": id_pad,
        "downloaded_mb": round(first_bytes / 1e6, 2),
        "goal_downloaded_mb": 4.0,
        "client_cpu_s": round(client_s, 3),
        "goal_client_cpu_s": 1.0,
        "evaluations_first": first_evaluations,
        "evaluations_warm": state.evaluations - first_evaluations,
        "warm_downloaded_kb": round(stub.downloaded / 1e3, 1),
        "tags_matched": sum(1 for h in hashes[:hits] if tag_of(state.outputs[h])),
    }


def first_sync_options(n: int, hits: int = 300) -> list[dict[str, Any]]:
    """The first sync's bytes at `n` users for each k (``--private-bucket-min-users``) and id_pad, from the
    real snapshot and the range bucket capacity; and what general-purpose compression takes off the
    snapshot."""
    import lzma
    import zlib

    rng = np.random.default_rng(n)
    raw = Snapshot(1, n, np.unique(rng.integers(0, TAG_SPACE, size=n, dtype=np.uint64))).serialize()
    compressed = {"zlib_9": len(zlib.compress(raw, 9)), "lzma": len(lzma.compress(raw))}
    rows: list[dict[str, Any]] = []
    for k in (64, 32, 16):
        capacity = bucket_capacity(n, k)
        for pad in (128, 64, 36):
            total = len(raw) + hits * bucket_size(capacity, pad)
            rows.append(
                {
                    "group": "first_sync_options",
                    "registered": n,
                    "bucket_users": k,
                    "bucket_capacity": capacity,
                    "id_pad": pad,
                    "bucket_bytes": bucket_size(capacity, pad),
                    "first_sync_mb": round(total / 1e6, 2),
                    "meets_4_mb": total <= 4_000_000,
                    "snapshot_mb": round(len(raw) / 1e6, 3),
                    "snapshot_compressed_mb": {name: round(v / 1e6, 3) for name, v in compressed.items()},
                }
            )
    return rows


async def registration_figures(batch: int = 10_000) -> dict[str, Any]:
    """What private mode adds to a registration and to ImportUsers: the entries, off the loop."""
    from discovery.core.private_index import PrivateRegistrar

    evaluator = OffLoopEvaluator()
    key = OprfKey(1, bytes(32))
    await evaluator.start(key)
    registrar = PrivateRegistrar(key, evaluator)
    hashes = [os.urandom(32) for _ in range(batch)]
    ids = [f"user-{i:08d}" for i in range(batch)]
    start = time.perf_counter()
    await registrar.entries(hashes, ids)
    bulk = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(200):
        await registrar.entries(hashes[i : i + 1], ids[i : i + 1])
    single = (time.perf_counter() - start) / 200
    evaluator.close()
    return {
        "group": "registration",
        "import_entries_per_s": round(batch / bulk),
        "register_entry_ms": round(single * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.private_mode", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="100000,1000000,10000000", help="registered users, comma-separated"
    )
    parser.add_argument("--quick", action="store_true", help="200 evaluations instead of 1,000")
    parser.add_argument("--sync-size", type=int, default=1_000_000, help="registered users of the first sync")
    parser.add_argument(
        "--only-sync", action="store_true", help="only the first_sync and registration groups"
    )
    parser.add_argument("--only-sizes", action="store_true", help="only the structure group at each size")
    parser.add_argument(
        "--only-oprf", action="store_true", help="only the oprf group (next to the AES and PSI baselines)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    count = 200 if args.quick else 1000
    if args.only_oprf:
        print(json.dumps(oprf_figures(count)), flush=True)
        return 0
    if args.only_sizes:
        for n in sizes:
            print(json.dumps(structure_figures(n)), flush=True)
        return 0
    for pad in (DEFAULT_ID_PAD, 128):
        print(json.dumps(first_sync_figures(args.sync_size, id_pad=pad)), flush=True)
    for row in first_sync_options(args.sync_size):
        print(json.dumps(row), flush=True)
    print(json.dumps(asyncio.run(registration_figures())), flush=True)
    if args.only_sync:
        return 0
    print(json.dumps(oprf_figures(count)), flush=True)
    print(json.dumps(asyncio.run(off_loop_figures(count))), flush=True)
    print(json.dumps(asyncio.run(snapshot_rebuild_figures(args.sync_size))), flush=True)
    for n in sizes:
        print(json.dumps(structure_figures(n)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
