"""Timeframes in the user's notation (``1m``, ``1h``, ``1M``) and their calendar arithmetic.

All times are UTC epoch milliseconds. Periods up to ``1d`` are aligned to the epoch, ``3d``
too (as Binance does), ``1w`` to Monday 00:00 UTC and ``1M`` to the first of the month.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

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


def parse_timeframe(name: str, allowed: tuple[str, ...] | None = None,
                    aliases: Mapping[str, str] | None = None, *, source: str | None = None,
                    notes: Mapping[str, str] | None = None) -> Timeframe:
    """Parse the user's notation; ``allowed`` narrows it to what one exchange supports and
    ``aliases`` adds that exchange's own spellings of them (OKX's ``1H`` for ``1h``). A name
    that is not allowed is a :class:`UsageError` naming it, the allowed ones, the exchange's
    ``notes`` on it (why it lacks it) and, when the name is another spelling of one of them
    (``1H``, ``60m``, ``1hour``), ``did you mean 1h?``."""
    allowed = allowed or NAMES
    name = aliases.get(name, name) if aliases else name
    if name not in allowed:
        month = " (1M is a month, 1m a minute)" if name.lower() in ("1mo", "1mon", "1month") else ""
        note = f": {notes[name]}" if notes and name in notes else ""
        raise UsageError(f"unsupported timeframe {name!r}{month}{note}; choose one of: {' '.join(allowed)}"
                         f"{_hint(name, allowed, aliases, source)}")
    return Timeframe(name, _FIXED_MS.get(name))


def source_timeframe(source: Any, name: str) -> Timeframe:
    """``name`` as one source serves it: its ``timeframes``, its ``timeframe_aliases``, and its
    ``timeframe_notes`` in the error for one it lacks."""
    return parse_timeframe(str(name), source.timeframes, getattr(source, "timeframe_aliases", None),
                           source=getattr(source, "name", None) or None,
                           notes=getattr(source, "timeframe_notes", None))


_SPELLED = re.compile(r"(\d+)\s*([a-zA-Z]+)")
_UNITS = {"s": SECOND, "sec": SECOND, "secs": SECOND, "second": SECOND, "seconds": SECOND,
          "m": MINUTE, "min": MINUTE, "mins": MINUTE, "minute": MINUTE, "minutes": MINUTE, "t": MINUTE,
          "h": HOUR, "hr": HOUR, "hrs": HOUR, "hour": HOUR, "hours": HOUR,
          "d": DAY, "day": DAY, "days": DAY, "w": WEEK, "wk": WEEK, "wks": WEEK, "week": WEEK, "weeks": WEEK}
_MONTHS = ("mo", "mon", "mth", "month", "months")


def _hint(name: str, allowed: tuple[str, ...], aliases: Mapping[str, str] | None = None,
          source: str | None = None) -> str:
    """``; did you mean 1h?`` when ``name`` is another spelling of an allowed timeframe, with
    the exchange's own name when that differs (OKX ``1D``: ``did you mean 1d (okx's 1Dutc)?``:
    its plain 1D bar opens on Hong Kong time)."""
    text = name.strip()
    if text == name and text in NAMES:  # a timeframe this source does not serve
        return _resample_hint(name, allowed)
    guess: str | None = text if text in allowed else None
    match = _SPELLED.fullmatch(text)
    if match is not None:
        count, unit = int(match.group(1)), match.group(2)
        if unit.lower() in _MONTHS:
            guess = f"{count}M"
        elif unit != "M" and unit.lower() in _UNITS:
            ms = count * _UNITS[unit.lower()]
            guess = next((n for n, v in _FIXED_MS.items() if v == ms), None)
    if guess is None and match is not None and text.lower() in allowed:
        guess = text.lower()  # 1H, 1D, 1W; 5M -> 5m too (Forge has no 5-month period)
    if guess not in allowed:
        return ""
    own = next((a for a, n in (aliases or {}).items() if n == guess and a.lower() != guess), None)
    if own is not None:
        return f"; did you mean {guess} ({source or 'the exchange'}'s {own})?"
    if guess[-1] == "m" and text[-1] == "M":
        return f"; did you mean {guess} (m is a minute, M a month)?"
    return f"; did you mean {guess}?"


def _resample_hint(name: str, allowed: tuple[str, ...]) -> str:
    """``; or fetch 4h and add --transform resample --resample-to 8h`` for a period the source
    lacks that is a multiple of one it serves."""
    ms = _FIXED_MS.get(name)
    finer = [n for n in allowed if n in _FIXED_MS and n != "1s" and (
        (ms is None and DAY % _FIXED_MS[n] == 0) or (ms is not None and ms > _FIXED_MS[n] and ms % _FIXED_MS[n] == 0))]
    if not finer:
        return ""
    best = max(finer, key=_FIXED_MS.__getitem__)
    return f"; or fetch {best} and add --transform resample --resample-to {name}"


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc)


def _ms(d: datetime) -> int:
    return int(d.timestamp()) * 1000
