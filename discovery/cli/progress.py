"""``on_progress`` for the ``import`` command: a text bar on a TTY, else a line now and then."""

from __future__ import annotations

import threading
import time
from typing import IO

__all__ = ["ProgressReporter"]


class ProgressReporter:
    """``on_progress`` for imports: a text bar on a TTY, else a line at most every ``interval`` seconds."""

    BAR_WIDTH = 30

    def __init__(self, stream: IO[str], total: int | None = None, interval: float = 2.0) -> None:
        self.stream = stream
        self.total = total
        self.interval = interval
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last = float("-inf")
        self._lock = threading.Lock()
        self._drawn = False
        self._latest = 0
        self._written = -1

    def __call__(self, processed: int) -> None:
        with self._lock:
            self._latest = processed
            if self.tty:
                self.stream.write("\r" + self._bar(processed))
                self._drawn = True
            else:
                now = time.monotonic()
                if now - self._last < self.interval and processed != self.total:
                    return
                self._last = now
                self._line(processed)
            self.stream.flush()

    def _line(self, processed: int) -> None:
        self.stream.write(f"import: {self._count(processed)} rows processed\n")
        self._written = processed

    def _count(self, processed: int) -> str:
        return f"{processed:,}/{self.total:,}" if self.total else f"{processed:,}"

    def _bar(self, processed: int) -> str:
        if not self.total:
            return f"importing... {processed:,} rows"
        fraction = min(1.0, processed / self.total)
        filled = int(fraction * self.BAR_WIDTH)
        bar = "#" * filled + "-" * (self.BAR_WIDTH - filled)
        return f"[{bar}] {fraction:4.0%} {self._count(processed)} rows"

    def finish(self) -> None:
        """End the bar's line (TTY), or write the last count if it was not written yet."""
        with self._lock:
            if self.tty:
                if self._drawn:
                    self.stream.write("\n")
            elif self._latest != self._written and self._latest > 0:
                self._line(self._latest)
            self.stream.flush()
