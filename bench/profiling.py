"""Where the time goes, for the closing notes of a missed goal.

In process: cProfile around repeated calls, the top functions by own time. Another
process (the server): py-spy, sampling its stacks while the load generator runs, the
top functions by own samples and by samples including callees.
"""

from __future__ import annotations

import cProfile
import pstats
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

Json = dict[str, Any]


def cprofile_top(fn: Callable[[], object], calls: int, top: int = 10) -> list[Json]:
    """Run ``fn`` ``calls`` times under cProfile; the top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, object]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [
        {
            "function": _name(path, line, func),
            "own_share": round(own / total, 3),
            "own_us_per_call": round(own / calls * 1e6, 2),
            "cumulative_us_per_call": round(cum / calls * 1e6, 2),
        }
        for (path, line, func), (_, _, own, cum, _) in rows
    ]


def _name(path: str, line: int, func: str) -> str:
    if path == "~":
        return func  # a builtin, e.g. <method 'take' of 'numpy' objects>
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{short}:{line}({func})"


def pyspy_binary() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def pyspy_start(
    pid: int, seconds: float, output: Path, *, native: bool = False
) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` for ``seconds`` into ``output`` (collapsed stacks); None without py-spy.

    Only samples where a thread holds the GIL count (``--gil``): the server's Python work is
    what bounds its throughput, and time spent waiting is left out. ``native`` adds the C
    frames (numpy, protobuf, the gRPC core); py-spy then has to pause the process per sample.
    """
    binary = pyspy_binary()
    if binary is None:
        return None
    return subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(output),
            *(("--native",) if native else ("--nonblocking",)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def pyspy_finish(proc: subprocess.Popen[bytes] | None, output: Path, top: int = 12) -> Json:
    """Wait for py-spy and summarise its samples (or say why there are none)."""
    if proc is None:
        return {"available": False, "why": "py-spy is not installed (pip install py-spy)"}
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0 or not output.exists():
        return {"available": False, "why": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
    return summarize_collapsed(output.read_text(), top)


def summarize_collapsed(text: str, top: int = 12) -> Json:
    """Top functions of collapsed stacks (``frame;frame;leaf count`` lines)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw = stack.split(";")
        total += count
        own[_frame(raw[-1])] += count
        # Including callees, for the service's own functions only (the trunk of every stack says nothing).
        for frame in {_frame(f) for f in raw if _is_service_frame(f)}:
            inclusive[frame] += count
    if not total:
        return {"available": True, "samples": 0}
    return {
        "available": True,
        "samples": total,
        "own": [{"function": f, "share": round(c / total, 3)} for f, c in own.most_common(top)],
        "service_functions_inclusive": [
            {"function": f, "share": round(c / total, 3)} for f, c in inclusive.most_common(top)
        ],
    }


def _is_service_frame(frame: str) -> bool:
    """A frame of the service's own code, below its entry points."""
    where = frame.partition(" (")[2]
    in_service = where.startswith("discovery/") or "/discovery/" in where
    return in_service and "site-packages" not in where and "/cli/" not in where and "__main__" not in where


def _frame(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``: lines vary, files and names tell enough."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})" if short else name


#: Leaf frames of a thread that waits (py-spy --native samples them too).
IDLE_LEAVES = (
    "epoll_wait",
    "_queue_SimpleQueue_get",
    "PyThread_acquire_lock_timed",
    "pthread_cond_timedwait",
    "pthread_cond_wait",
    "sem_wait",
    "sem_timedwait",
    "select_epoll_poll",
    "poll",
    "nanosleep",
)


def busy_breakdown(text: str, top: int = 40) -> Json:
    """Collapsed --native stacks without the waiting ones, split into the event-loop thread
    and the others; inclusive shares of the busy samples per frame name."""
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        names = [f.partition(" (")[0] for f in stack.split(";")]
        # An unresolved libc address under a lock or queue wait is the futex wait itself.
        waiting = names[-1] in IDLE_LEAVES or any(n in IDLE_LEAVES for n in names[-4:])
        if waiting:
            idle += count
            continue
        busy += count
        threads["event loop" if "run_serve" in names else "other threads"] += count
        for name in set(names):
            inclusive[name] += count
    share = {k: round(v / max(1, busy), 3) for k, v in threads.items()}
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "threads": share,
        "inclusive": [
            {"function": f, "share": round(c / max(1, busy), 3)} for f, c in inclusive.most_common(top)
        ],
    }


if __name__ == "__main__":
    import json

    print(
        json.dumps(
            busy_breakdown(Path(sys.argv[1]).read_text(), int(sys.argv[2]) if len(sys.argv) > 2 else 60),
            indent=1,
        )
    )
