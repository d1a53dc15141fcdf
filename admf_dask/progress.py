"""A plain text progress bar for long work, shown on terminals only unless asked for.

On a terminal it redraws one line (done/total, rate, ETA). When stderr is a file or
a pipe (cron, a CI log) it shows nothing, unless ``ADMF_PROGRESS=1`` (``admf
--progress``) asks for it: then it prints a line at every tenth of the work, so logs
stay short. ``ADMF_PROGRESS=0`` turns bars off on terminals too. Work that finishes
within ``delay`` seconds shows nothing: bars are for long work.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO


def wanted(stream: TextIO) -> bool:
    """Whether to show progress on ``stream``: ``ADMF_PROGRESS`` if set (1/true/yes or 0/false/no),
    else only on a terminal."""
    setting = os.environ.get("ADMF_PROGRESS", "").strip().lower()
    if setting in ("1", "true", "yes", "on"):
        return True
    if setting in ("0", "false", "no", "off"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


class Progress:
    """Count finished items and show it (when :func:`wanted` says so and ``enabled``).

    >>> import io
    >>> bar = Progress("write", 4, stream=io.StringIO(), delay=0)   # not a terminal: nothing shown
    >>> for _ in range(4):
    ...     bar.advance()
    >>> bar.close()
    >>> bar.enabled, bar.done
    (False, 4)
    """

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None, enabled: bool = True,
                 delay: float = 1.0) -> None:
        self.label, self.total, self.done = label, max(int(total), 0), 0
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled and self.total > 0 and wanted(self.stream)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.delay = delay
        self._last_draw = 0.0
        self._drawn = False
        self._next_tenth = 1

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.start < self.delay and self.done < self.total:
            return
        if not self._drawn and self.done >= self.total and now - self.start < self.delay:
            return
        self._drawn = True
        if self.tty:
            if now - self._last_draw > 0.1 or self.done >= self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
        elif self.done * 10 >= self._next_tenth * self.total:
            while self.done * 10 >= self._next_tenth * self.total:
                self._next_tenth += 1
            self.stream.write(self._line(now) + "\n")
            self.stream.flush()

    def _line(self, now: float) -> str:
        elapsed = now - self.start
        frac = self.done / self.total
        width = 24
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (f"{self.label} [{bar}] {self.done}/{self.total} {frac:4.0%} "
                f"{elapsed:5.1f}s elapsed, {rate:,.1f}/s, ETA {eta:4.0f}s")

    def close(self) -> None:
        if self.enabled and self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
