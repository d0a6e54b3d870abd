"""Rows to PostgreSQL ``COPY ... FROM STDIN`` text format.

The hot path formats a whole batch with one ``%`` template per row (C loops only: ``map`` over
``itemgetter``), then proves the result is what exact escaping would have produced: the counts
of tabs and newlines must match the row and column counts, and no backslash, carriage return
or ``None`` may appear. Exchange prices are plain decimal strings, so that proof holds for
real data; anything else (a NULL, a tab in a string, a backslash) takes the exact slow path.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from forge_core.records import Row


def encode(rows: Sequence[Row], indexes: Sequence[int]) -> str:
    """The ``COPY`` text of ``rows`` taking the values at ``indexes``, one line per row."""
    if not rows:
        return ""
    k = len(indexes)
    template = "\t".join(["%s"] * k) + "\n"
    if k == 1:
        i = indexes[0]
        values: Any = ((row[i],) for row in rows)
    else:
        values = map(itemgetter(*indexes), rows)
    try:
        text = "".join(map(template.__mod__, values))
    except TypeError:  # a value that is itself a tuple: leave it to the exact path
        return encode_exact(rows, indexes)
    n = len(rows)
    if (text.count("\t") == n * (k - 1) and text.count("\n") == n
            and "\\" not in text and "\r" not in text and "None" not in text):
        return text
    return encode_exact(rows, indexes)


def encode_exact(rows: Sequence[Row], indexes: Sequence[int]) -> str:
    """Value by value: ``None`` is ``\\N``; backslash, tab, newline and CR are escaped."""
    lines = []
    for row in rows:
        lines.append("\t".join(_field(row[i]) for i in indexes))
    return "\n".join(lines) + "\n" if lines else ""


def _field(value: Any) -> str:
    if value is None:
        return "\\N"
    text = value if isinstance(value, str) else str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text
