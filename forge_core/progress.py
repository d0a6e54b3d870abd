"""A one-line progress display on a terminal: the current symbol's candles and the run's total,
rate and ETA, always within the terminal's width (a longer line would wrap, and every redraw
would then add a line). While a request waits to be retried, the line says so first: what, why,
attempt n of N, when the next attempt starts and when it gives up (``forge_core.retrying``);
while requests wait long for the rate limiter, it says which limiter and until when."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from typing import TextIO

from . import retrying
from .pipeline import Progress


class ProgressLine:
    """Redraws one stderr line at most a few times a second; silent when not a TTY.

    ``width`` fixes the terminal width (default: asked at every redraw, so resizing works).
    A retry beginning or ending redraws at once, from the retrying thread; :meth:`finish`
    clears the line and stops watching retries."""

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
        self._progress: Progress | None = None
        self._retrying: list[retrying.Retrying] = []
        self._lock = threading.Lock()  # retries are announced from the worker threads
        self._unwatch = retrying.watch(self._on_retry) if self.enabled else None

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
        with self._lock:
            if p.symbol != self._symbol:
                self._symbol, self._base = p.symbol, self._seen
            self._seen = p.total_done
            self._progress = p
            if not self.enabled or (now - self._last < self.interval and p.total_done < p.total_expected):
                return
            self._last = now
            self._draw()

    def _on_retry(self, active: list[retrying.Retrying]) -> None:
        with self._lock:
            self._retrying = active
            if self.enabled:
                self._draw()

    def _draw(self) -> None:
        p = self._progress
        parts = retry_parts(self._retrying) or throttle_parts(retrying.throttled())
        if p is not None:
            parts += render_parts(p, min(p.total_done - self._base, p.expected))
        if not parts:
            return
        room = max(self._columns() - 1, 1)  # never the last column: some terminals wrap there
        line = fit(parts, room)
        self.stream.write("\r" + line + " " * max(self._drawn - len(line), 0))
        if self._drawn > len(line):
            self.stream.write("\r" + line)
        self.stream.flush()
        self._drawn = len(line)

    def finish(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        with self._lock:
            if self._drawn:
                self.stream.write("\r" + " " * self._drawn + "\r")
                self.stream.flush()
                self._drawn = 0


def retry_parts(active: list[retrying.Retrying]) -> list[str]:
    """The line's first pieces while requests wait to be retried: the soonest one's symbol,
    error, next attempt and deadline (``retrying BTCUSDT HTTP 429: attempt 2/10 at 14:03:21 UTC,
    gives up 14:08:00``: 74 columns), its endpoint, and how many more wait."""
    if not active:
        return []
    r = active[0]
    who = f"{r.symbol} " if r.symbol else ""
    parts = [f"retrying {who}{r.error}: attempt {r.attempt}/{r.attempts} at {retrying.clock(r.until)} UTC, "
             f"gives up {retrying.clock(r.give_up_at)}", f"{r.host}{r.path}"]
    if len(active) > 1:
        parts.append(f"{len(active) - 1} more retrying")
    return parts


def throttle_parts(waits: list[retrying.Throttled]) -> list[str]:
    """The line's first piece while requests wait long for their rate limiter (the budget of
    this IP is spent, or the exchange asked every worker to pause):
    ``waiting for binance-spot's rate limit until 14:03:21 UTC (3 requests)``."""
    if not waits:
        return []
    w = waits[0]
    why = w.why or ("pause after a 429" if w.paused else "rate limit")
    more = f" ({len(waits)} requests)" if len(waits) > 1 else ""
    return [f"waiting for {w.limiter}'s {why} until {retrying.clock(w.until)} UTC{more}"]


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
