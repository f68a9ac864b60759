"""The load generator: a separate process that drives one server over grpc.aio.

Requests are serialized beforehand (by the harness, into a frames file) and sent as raw
bytes, so the generator spends its CPU on gRPC alone, the same for the real server and
for the echo server. Prints one JSON object.

    python -m bench.loadgen unary --target 127.0.0.1:PORT --method /pkg.Svc/M \\
        --frames FILE --concurrency 16 --seconds 10
    python -m bench.loadgen stream --target 127.0.0.1:PORT --method /pkg.Svc/M --frames FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from grpc import aio

MAX_MESSAGE = 64 * 1024 * 1024
_LEN = struct.Struct("<I")


def write_frames(path: Path, messages: Iterable[bytes]) -> int:
    """Length-prefixed messages in one file; returns how many."""
    count = 0
    with path.open("wb") as out:
        for message in messages:
            out.write(_LEN.pack(len(message)))
            out.write(message)
            count += 1
    return count


def read_frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out: list[bytes] = []
    at = 0
    while at < len(data):
        (size,) = _LEN.unpack_from(data, at)
        at += _LEN.size
        out.append(data[at : at + size])
        at += size
    return out


def _metadata(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, _, v in (p.partition("=") for p in pairs))


def _channel(target: str) -> aio.Channel:
    return aio.insecure_channel(
        target,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )


async def unary(args: argparse.Namespace) -> dict[str, Any]:
    """``concurrency`` callers, each sending its next request as soon as the last returned."""
    frames = read_frames(args.frames)
    metadata = _metadata(args.metadata)
    # Per-frame metadata (frame i goes with line i: e.g. the bearer token of the user whose
    # previous-set token frame i carries), added to the common metadata.
    per_frame = _per_frame_metadata(args.metadata_file, metadata, len(frames))
    async with _channel(args.target) as channel:
        call = channel.unary_unary(args.method)  # bytes in, bytes out
        first: bytes = await call(frames[0], metadata=per_frame[0], timeout=60)
        latencies: list[float] = []
        errors: list[str] = []
        calls = [1]  # every call made, warm-up included (the harness divides server CPU by it)
        start = time.perf_counter() + args.warmup
        stop = start + args.seconds

        async def caller(offset: int) -> None:
            i = offset
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                k = i % len(frames)
                try:
                    await call(frames[k], metadata=per_frame[k], timeout=60)
                except aio.AioRpcError as e:
                    errors.append(f"{e.code().name}: {e.details()}")
                    continue
                finally:
                    i += args.concurrency
                    calls[0] += 1
                if t0 >= start:
                    latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(caller(k) for k in range(args.concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.asarray(latencies, dtype=np.float64) * 1e6 if latencies else np.zeros(1)
    return {
        "concurrency": args.concurrency,
        "requests": len(latencies),
        "calls_total": calls[0],
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_us": round(float(np.percentile(lat, 50)), 1),
        "p99_us": round(float(np.percentile(lat, 99)), 1),
        "mean_us": round(float(lat.mean()), 1),
        "request_bytes": len(frames[0]),
        "response_bytes": len(first),
        "first_response": first.hex() if args.keep_first else None,
    }


def _per_frame_metadata(
    path: Path | None, common: tuple[tuple[str, str], ...], frames: int
) -> list[tuple[tuple[str, str], ...]]:
    if path is None:
        return [common] * frames
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if len(lines) != frames:
        raise SystemExit(f"{path}: {len(lines)} metadata lines for {frames} frames")
    return [common + tuple((str(k), str(v)) for k, v in line) for line in lines]


async def stream(args: argparse.Namespace) -> dict[str, Any]:
    """One client-streaming call carrying every frame; the time is until its response."""
    frames = read_frames(args.frames)
    metadata = _metadata(args.metadata)

    async def messages() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame

    async with _channel(args.target) as channel:
        call = channel.stream_unary(args.method)
        t0 = time.perf_counter()
        response: bytes = await call(messages(), metadata=metadata, timeout=3600)
        elapsed = time.perf_counter() - t0
    return {
        "messages": len(frames),
        "request_bytes": sum(len(f) for f in frames),
        "seconds": round(elapsed, 3),
        "response": response.hex(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("unary", "stream"))
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--frames", type=Path, required=True)
    parser.add_argument("--metadata", action="append", default=[], help="key=value (repeatable)")
    parser.add_argument(
        "--metadata-file",
        type=Path,
        default=None,
        help="JSON list of [key, value] pairs per frame, one a line",
    )
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--keep-first", action="store_true", help="include the first response (hex)")
    args = parser.parse_args()
    result = asyncio.run(unary(args) if args.mode == "unary" else stream(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
