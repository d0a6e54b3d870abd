"""Parsing the user's dates into UTC epoch milliseconds. Naive times are UTC.

A range is inclusive of the ``to`` date as the user wrote it: a bare date covers that whole
day, a time covers candles opening at or before that instant. Internally ranges are
half-open ``[start, end)`` in milliseconds.
"""

from __future__ import annotations

import re
import time
from datetime import date, datetime, timezone

from .errors import UsageError

ACCEPTED = "YYYY-MM-DD, 'YYYY-MM-DD HH:MM[:SS]', ISO 8601 with zone, epoch milliseconds, or 'now'"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_instant(text: str, *, what: str = "date", now: int | None = None) -> tuple[int, bool]:
    """Return ``(epoch_ms, is_bare_date)`` for one of the accepted spellings."""
    value = str(text).strip()
    if value.lower() == "now":
        return (now_ms() if now is None else now), False
    if value.isascii() and value.isdigit():
        if len(value) == 8 and value.startswith(("19", "20")) and 1 <= int(value[4:6]) <= 12:
            raise UsageError(f"{what} {text!r} looks like a date without dashes; "
                             f"write {value[:4]}-{value[4:6]}-{value[6:]}")
        if len(value) < 11:
            raise UsageError(
                f"{what} {text!r} looks like epoch seconds; give epoch milliseconds ({value}000)"
            )
        if len(value) >= 16:
            raise UsageError(f"{what} {text!r} looks like epoch microseconds or nanoseconds; give epoch "
                             f"milliseconds (13 digits, e.g. {value[:13]})")
        return int(value), False
    try:
        if _DATE.match(value):
            d = date.fromisoformat(value)
            return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp()) * 1000, True
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: use {ACCEPTED}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp() * 1000), False


def parse_range(start: str, end: str, *, now: int | None = None) -> tuple[int, int]:
    """Parse ``from``/``to`` into a half-open millisecond range ``[start, end)``."""
    start_ms, _ = parse_instant(start, what="from date", now=now)
    end_ms, bare = parse_instant(end, what="to date", now=now)
    end_ms = end_ms + (86_400_000 if bare else 1)
    if start_ms >= end_ms:
        raise UsageError(f"from date {start!r} is after to date {end!r}")
    return start_ms, end_ms


def day_label(ts: int) -> str:
    """``YYYY-MM-DD`` of a millisecond timestamp, in UTC."""
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def iso(ts: int) -> str:
    """ISO 8601 in UTC: ``2024-01-15T08:00:00Z``; milliseconds only when there are any
    (``2023-09-18T09:59:59.999Z``), never microseconds."""
    dt = datetime.fromtimestamp(ts // 1000, tz=timezone.utc)
    ms = ts % 1000
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms:03d}" if ms else "") + "Z"


def display(ts: int) -> str:
    """A time the way users type it, for messages: ``2023-09-18 09:59:59 UTC`` (to the second;
    a candle's end ``09:59:59.999`` shows as ``09:59:59``)."""
    return datetime.fromtimestamp(ts // 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def inclusive_end_label(end_ms: int) -> str:
    """The ``to`` day as the user meant it, for file names: the day holding ``end - 1``."""
    return day_label(end_ms - 1)


__all__ = ["ACCEPTED", "day_label", "display", "inclusive_end_label", "iso", "now_ms", "parse_instant", "parse_range"]
