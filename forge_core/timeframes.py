"""Timeframes in the user's notation (``1m``, ``1h``, ``1M``) and their calendar arithmetic.

All times are UTC epoch milliseconds. Periods up to ``1d`` are aligned to the epoch, ``3d``
too (as Binance does), ``1w`` to Monday 00:00 UTC and ``1M`` to the first of the month.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from .errors import UsageError

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
WEEK = 7 * DAY
_MONDAY_OFFSET = 4 * DAY  # 1970-01-01 was a Thursday; the first Monday is 1970-01-05

_FIXED_MS = {
    "1s": SECOND,
    "1m": MINUTE,
    "3m": 3 * MINUTE,
    "5m": 5 * MINUTE,
    "15m": 15 * MINUTE,
    "30m": 30 * MINUTE,
    "1h": HOUR,
    "2h": 2 * HOUR,
    "4h": 4 * HOUR,
    "6h": 6 * HOUR,
    "8h": 8 * HOUR,
    "12h": 12 * HOUR,
    "1d": DAY,
    "3d": 3 * DAY,
    "1w": WEEK,
}
NAMES: tuple[str, ...] = (*_FIXED_MS, "1M")


@dataclass(frozen=True)
class Timeframe:
    """A candle period. ``ms`` is its length, or ``None`` for the calendar month ``1M``."""

    name: str
    ms: int | None

    def __str__(self) -> str:
        return self.name

    def floor(self, ts: int) -> int:
        """Open time of the candle containing ``ts``."""
        if self.ms is None:
            d = _utc(ts)
            return _ms(datetime(d.year, d.month, 1, tzinfo=timezone.utc))
        offset = _MONDAY_OFFSET if self.name == "1w" else 0
        return (ts - offset) // self.ms * self.ms + offset

    def ceil(self, ts: int) -> int:
        """Open time of the first candle opening at or after ``ts``."""
        floor = self.floor(ts)
        return floor if floor == ts else self.next_open(floor)

    def next_open(self, open_ts: int, count: int = 1) -> int:
        """Open time ``count`` periods after ``open_ts`` (which must be a candle open)."""
        if self.ms is not None:
            return open_ts + count * self.ms
        d = _utc(open_ts)
        months = d.year * 12 + d.month - 1 + count
        return _ms(datetime(months // 12, months % 12 + 1, 1, tzinfo=timezone.utc))

    def end_ts(self, open_ts: int) -> int:
        """The last millisecond of the candle opened at ``open_ts`` (Binance's close time)."""
        return self.next_open(open_ts) - 1

    def count(self, start: int, end: int) -> int:
        """How many candles open in the half-open range ``[start, end)``."""
        first = self.ceil(start)
        if first >= end:
            return 0
        if self.ms is not None:
            return (end - 1 - first) // self.ms + 1
        n, ts = 0, first
        while ts < end:
            n, ts = n + 1, self.next_open(ts)
        return n


def parse_timeframe(name: str, allowed: tuple[str, ...] | None = None) -> Timeframe:
    """Parse the user's notation; ``allowed`` narrows it to what one exchange supports."""
    allowed = allowed or NAMES
    if name not in allowed:
        hint = " (1M is a month, 1m a minute)" if name.lower() in ("1mo", "1mon", "1month") else ""
        raise UsageError(
            f"unsupported timeframe {name!r}{hint}; choose one of: {' '.join(allowed)}"
        )
    return Timeframe(name, _FIXED_MS.get(name))


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc)


def _ms(d: datetime) -> int:
    return int(d.timestamp()) * 1000
