"""Structured logs: one JSON object per line.

Only fields passed explicitly through ``extra=`` are emitted. Call sites pass ids,
counts and codes, never a number, a contact hash or a token.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The type and the stack; exception arguments could carry request data.
            entry["exc_type"] = record.exc_info[0].__name__
            entry["stack"] = self.formatStack(self._frames(record))
        return json.dumps(entry, default=str)

    @staticmethod
    def _frames(record: logging.LogRecord) -> str:
        import traceback

        assert record.exc_info is not None
        tb = record.exc_info[2]
        return "".join(traceback.format_tb(tb)) if tb else ""


def configure_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # grpc's own logger can print peer data at debug level.
    logging.getLogger("grpc").setLevel(max(logging.WARNING, root.level))


class LogThrottle:
    """At most one log line per ``interval`` seconds for each key; the rest are counted.

    For events any unauthenticated peer can cause (garbage bytes, missing credentials): a
    flood of them costs one line per interval, which says how many were left out.
    """

    def __init__(self, interval: float = 60.0, clock: Any = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay silent; else the number of lines left out since the last one."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)
