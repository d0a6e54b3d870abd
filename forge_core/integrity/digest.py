"""The content digest of a partition of candles, defined so any tool can compute it.

A **partition** is the candles of one series (source, symbol, timeframe) whose ``open_ts``
falls in one UTC calendar month (key ``YYYY-MM``), clipped to the range checked.

The **canonical line** of a row is ``open_ts,end_ts,open,high,low,close,volume`` followed by
``\\n``: the two times as decimal integers (epoch milliseconds) and the five values as
normalized decimals: no exponent, no ``+``, no leading zeros before the point, trailing zeros
of the fraction removed and the point with them when nothing is left (``42000.50000000`` ->
``42000.5``, ``0.00000000`` -> ``0``, ``-0`` -> ``0``); a missing value (SQL ``NULL``) is the
empty string. This is exactly PostgreSQL's ``trim_scale(value::numeric)::text``.

The **digest** is the lower-case hex SHA-256 of the UTF-8 concatenation of the lines of every
row in the partition, ordered by ``open_ts`` then by the line itself (so duplicated rows count).
An empty partition has the digest of the empty string.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from itertools import repeat
from typing import Any

VALUE_FIELDS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
LINE_FIELDS: tuple[str, ...] = ("open_ts", "end_ts", *VALUE_FIELDS)
EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


def normalize(value: Any) -> str:
    """A decimal value as its canonical text (see the module docstring)."""
    s = value if type(value) is str else ("" if value is None else str(value))
    t = s.rstrip("0").rstrip(".") if "." in s else s
    # the usual case, e.g. "42000.50000000": plain ASCII digits with at most one point
    if t.replace(".", "", 1).isdigit() and t.isascii() and (t[0] != "0" or t == "0" or t[1] == ".") and t[0] != ".":
        return t
    if value is None:
        return ""
    try:
        d = Decimal(s.strip())
    except InvalidOperation:
        return s  # not a number: compared as given
    if not d.is_finite():
        return s
    if d == 0:
        return "0"
    t = format(d, "f")
    return t.rstrip("0").rstrip(".") if "." in t else t


def line(open_ts: int, end_ts: int, values: Iterable[str]) -> str:
    """The canonical line of a row whose five values are already normalized."""
    return f"{open_ts},{end_ts},{','.join(values)}\n"


def digest(lines: Iterable[str]) -> str:
    """SHA-256 hex of ``lines`` sorted as the definition says (by ``open_ts``, then text)."""
    ordered = sorted(lines, key=lambda s: (int(s.split(",", 1)[0]), s))
    h = hashlib.sha256()
    for text in ordered:
        h.update(text.encode())
    return h.hexdigest()


_LEADING_ZERO = re.compile(r",0\d")
_NOT_NUMERIC = str.maketrans("", "", "0123456789.,")


def digest_rows(rows: Sequence[tuple[Any, ...]]) -> str:
    """The digest of ``(open_ts, end_ts, open, high, low, close, volume)`` tuples, ascending and
    unique by ``open_ts``, with the values as the exchange gave them. Equal to :func:`digest` of
    their canonical lines; fast for the usual decimal strings (a point in every value: column by
    column, strip zeros and the point on the right, check the result once), per value otherwise."""
    if not rows:
        return EMPTY_DIGEST
    cols = list(zip(*rows, strict=True))
    values = normalized_columns(cols[2:])
    text = "\n".join(map(",".join, zip(map(str, cols[0]), map(str, cols[1]), *values, strict=True))) + "\n"
    return hashlib.sha256(text.encode()).hexdigest()


def normalized_columns(columns: Sequence[Sequence[Any]]) -> list[list[str]]:
    """Each column of values normalized (:func:`normalize`), in bulk when every value is a
    decimal string with a point (the exchanges' usual form), else value by value."""
    try:
        usual = all(",".join(c).count(".") == len(c) for c in columns)
    except TypeError:  # not all strings
        usual = False
    if usual:
        values = [list(map(str.rstrip, map(str.rstrip, c, repeat("0")), repeat("."))) for c in columns]
        if all(_canonical(v) for v in values):
            return values
    return [list(map(normalize, c)) for c in columns]


def _canonical(values: list[str]) -> bool:
    """Whether right-stripped values are all canonical: digits with at most one point inside,
    no leading zero, nothing empty."""
    joined = "," + ",".join(values) + ","
    return (",," not in joined and ",." not in joined and _LEADING_ZERO.search(joined) is None
            and not joined.translate(_NOT_NUMERIC))


def partition_key(ts: int) -> str:
    """``YYYY-MM`` of the UTC month holding ``ts``."""
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc).strftime("%Y-%m")


def month_start(ts: int) -> int:
    d = datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
    return int(datetime(d.year, d.month, 1, tzinfo=timezone.utc).timestamp()) * 1000


def next_month(ts: int) -> int:
    d = datetime.fromtimestamp(month_start(ts) / 1000, tz=timezone.utc)
    y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
    return int(datetime(y, m, 1, tzinfo=timezone.utc).timestamp()) * 1000


def partitions(start: int, end: int) -> list[tuple[str, int, int]]:
    """The partitions ``(key, start, end)`` covering ``[start, end)``, clipped to it."""
    out = []
    ts = start
    while ts < end:
        nxt = min(next_month(ts), end)
        out.append((partition_key(ts), ts, nxt))
        ts = nxt
    return out
