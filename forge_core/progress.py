"""A one-line progress display on a terminal: the current symbol's candles and the run's total,
rate and ETA, always within the terminal's width (a longer line would wrap, and every redraw
would then add a line)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TextIO

from .pipeline import Progress


class ProgressLine:
    """Redraws one stderr line at most a few times a second; silent when not a TTY.

    ``width`` fixes the terminal width (default: asked at every redraw, so resizing works)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 0.2, width: int | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.interval = interval
        self.width = width
        self._last = 0.0
        self._drawn = 0  # length of what is on the line now
        self._symbol: str | None = None
        self._base = 0  # the run's total when the current symbol began
        self._seen = 0

    def _columns(self) -> int:
        if self.width is not None:
            return self.width
        try:  # the terminal stderr is on (shutil asks stdout's, which may be redirected)
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        env = os.environ.get("COLUMNS", "")
        return (int(env) if env.isdigit() else 0) or columns or shutil.get_terminal_size((80, 24)).columns

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.symbol != self._symbol:
            self._symbol, self._base = p.symbol, self._seen
        self._seen = p.total_done
        if not self.enabled or (now - self._last < self.interval and p.total_done < p.total_expected):
            return
        self._last = now
        room = max(self._columns() - 1, 1)  # never the last column: some terminals wrap there
        line = fit(render_parts(p, min(p.total_done - self._base, p.expected)), room)
        self.stream.write("\r" + line + " " * max(self._drawn - len(line), 0))
        if self._drawn > len(line):
            self.stream.write("\r" + line)
        self.stream.flush()
        self._drawn = len(line)

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0


def render_parts(p: Progress, done: int) -> list[str]:
    """The pieces of the line, most important first: the symbol's candles (``done`` of its
    ``expected``, counted as the total is: candles of the source's timeframe fetched), the
    run's total, rate, ETA."""
    parts = [f"{p.symbol} {done:,}/{p.expected:,}"]
    if p.total_expected != p.expected:  # several symbols: the whole run, honestly apart
        pct = 100.0 * p.total_done / p.total_expected if p.total_expected else 100.0
        parts.append(f"total {p.total_done:,}/{p.total_expected:,} ({pct:.1f}%)")
    else:
        pct = 100.0 * done / p.expected if p.expected else 100.0
        parts[0] += f" ({pct:.1f}%)"
    parts.append(f"{p.rate:,.0f}/s")
    if p.eta is not None:
        parts.append(f"ETA {_duration(p.eta)}")
    return parts


def fit(parts: list[str], room: int) -> str:
    """As many leading parts as fit in ``room`` characters; the first one cut if it alone is too long."""
    line = parts[0]
    for part in parts[1:]:
        candidate = f"{line} | {part}"
        if len(candidate) > room:
            break
        line = candidate
    return line[:room]


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
