"""The soak benchmark in quick mode (marked slow: the default test command leaves it out).

No timing is asserted: only that nothing failed, nothing was lost, and the report is complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_soak_loses_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--quick"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.stdout, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert done.returncode == 0, json.dumps(report, indent=2)[-3000:]
    assert report["live_subscribers"] == report["parameters"]["subscribers"]
    calls, events, server = report["calls"], report["events"], report["server"]
    assert calls["made"] > 0 and calls["failed"] == 0 and calls["discover_wrong_answers"] == 0
    assert events["expected"] > 0
    assert events["lost"] == 0 and events["delivered"] == events["expected"]
    assert events["misattributed"] == 0 and events["stream_errors"] == {}
    assert report["shutdown"]["exit_code"] == 0
    for point in ("start", "middle", "end"):
        assert server[point]["rss_mib"] > 0 and server[point]["fds"] > 0
