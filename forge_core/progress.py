"""A one-line progress display on a terminal: candles done / expected, rate, ETA."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .pipeline import Progress


class ProgressLine:
    """Redraws one stderr line at most a few times a second; silent when not a TTY."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.interval = interval
        self._last = 0.0
        self._drawn = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < self.interval and p.total_done < p.total_expected):
            return
        self._last = now
        pct = 100.0 * p.total_done / p.total_expected if p.total_expected else 100.0
        eta = f"ETA {_duration(p.eta)}" if p.eta is not None else ""
        line = (f"{p.symbol}: {p.total_done:,}/{p.total_expected:,} candles ({pct:5.1f}%) "
                f"{p.rate:,.0f}/s {eta}")
        self.stream.write("\r" + line.ljust(79)[:120])
        self.stream.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
