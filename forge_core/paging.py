"""Page walks every source needs, written once: forward (``startTime`` APIs such as Binance)
and backward (``after``/``end`` APIs such as OKX and Bybit).

Both walks keep asking after a short page (a page shorter than asked for is not the end of
data) and treat an **empty** page with suspicion: an exchange under load sometimes answers
``200 []`` for a range that has candles. An empty answer is re-asked with backoff, and a hole
is accepted only when the exchange affirms it: for a forward walk, a probe without an end
returns a first candle after the hole (or keeps answering empty: the end of the data); for a
backward walk, the empty answer is repeated and no candle is known to exist before the cursor.
Affirmed holes are reported to ``on_hole`` with their evidence, for ledgers and summaries.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import SourceError
from .records import ColumnRows, Row, TextRows
from .timeframes import Timeframe
from .times import iso

AFFIRM_BACKOFF = (0.0, 0.25, 1.0, 2.0, 4.0)
"""Seconds before each re-ask of an empty page that may be wrong (the first is immediate: most
faults are one-offs). A forward walk believes the end of the data only after all of them
answered empty (about 7 s, once per series: see ``end_of_data``); an empty answer where
candles are known to exist (a backward walk above the first candle, or a candle seen inside
the range) fails loudly after them instead."""


@dataclass(frozen=True)
class Hole:
    """``[start, end)`` holds no candle, as the exchange affirmed; ``evidence`` says how."""

    start: int
    end: int
    evidence: str


def forward_pages(
    request: Callable[[int, int | None], Sequence[Row]],
    tf: Timeframe,
    start: int,
    end: int,
    *,
    open_index: int,
    window: int | None = None,
    on_hole: Callable[[Hole], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    end_of_data: dict[str, int] | None = None,
) -> list[Row]:
    """Rows opening in ``[start, end)``, ascending, from an API that pages forward: a list,
    or :class:`~forge_core.records.TextRows` when every page ``request`` returned is one.

    ``request(cursor, stop)`` returns up to a page of rows, ascending, opening in
    ``[cursor, stop)``; with ``stop=None`` it is a probe: rows from ``cursor`` on, unbounded (one
    row is enough). ``window`` caps one request's span (COIN-M's 200 days).
    ``open_index`` is the position of ``open_ts`` in the rows (``columns.index("open_ts")``).
    ``end_of_data`` (one dict per series, shared by its tasks) remembers where the exchange
    affirmed its data ends, so later tasks of a delisted symbol cost no request.
    """
    pages: list[Sequence[Row]] = []
    cursor = tf.ceil(start)
    if end_of_data is not None and end_of_data.get("at", _FAR) <= cursor:
        return []
    while cursor < end:
        stop = end if window is None else min(end, cursor + window)
        page: Sequence[Row] = request(cursor, stop)
        if not isinstance(page, TextRows):  # rows kept as text or columns stay so
            page = list(page)
        if not page:
            page, hole_end = _affirm_forward(request, cursor, stop, open_index, sleep)
            if not page:
                if on_hole is not None and hole_end is not None:
                    evidence = ("the exchange's next candle opens at " + iso(hole_end)
                                if hole_end < _FAR else "no candle after it (end of data)")
                    on_hole(Hole(cursor, min(stop, hole_end), evidence))
                if hole_end is not None and hole_end >= _FAR and end_of_data is not None:
                    end_of_data["at"] = min(end_of_data.get("at", _FAR), cursor)
                if stop < end and (hole_end is None or hole_end < _FAR):
                    cursor = tf.ceil(min(max(stop, hole_end or stop), end))
                    continue
                break
        last = page.open_ts[-1] if isinstance(page, TextRows) else page[-1][open_index]
        if last < cursor:
            raise SourceError(f"the exchange returned candles before the requested start {iso(cursor)}")
        pages.append(page)
        cursor = tf.next_open(last)
    if len(pages) == 1:
        return pages[0]  # type: ignore[return-value]
    if pages and all(isinstance(p, TextRows) and not isinstance(p, ColumnRows) for p in pages):
        return TextRows.join(pages)  # type: ignore[arg-type,return-value]
    return [row for p in pages for row in p]


_FAR = 1 << 62


def _affirm_forward(request: Callable[[int, int | None], Sequence[Row]], cursor: int, stop: int,
                    open_index: int, sleep: Callable[[float], None]) -> tuple[list[Row], int | None]:
    """After an empty page for ``[cursor, stop)``: the rows after all (a transient empty
    answer), or ``([], next_open)`` where the exchange's first candle at or after ``cursor``
    opens at ``next_open >= stop`` (``_FAR``: none at all, the end of its data). A probe that
    shows a candle inside while the page stays empty is never taken for a hole: after the
    retries that is a loud failure, not a silent loss."""
    inside: int | None = None
    for wait in AFFIRM_BACKOFF:
        if wait:
            sleep(wait)
        probe = list(request(cursor, None))
        if probe:
            first = probe[0][open_index]
            if first >= stop:
                return [], first  # affirmed: the exchange has candles after the hole, none inside
            inside = first
            page = list(request(cursor, stop))  # the empty answer was wrong: ask again
            if page:
                return page, None
    if inside is not None:
        raise SourceError(f"the exchange keeps answering empty pages from {iso(cursor)} though it has a "
                          f"candle at {iso(inside)}; try again later")
    return [], _FAR


def backward_pages(
    request: Callable[[int], Sequence[Row]],
    tf: Timeframe,
    start: int,
    end: int,
    *,
    open_index: int,
    known_first: int | None = None,
    bounded: bool = False,
    on_hole: Callable[[Hole], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Row]:
    """Rows opening in ``[start, end)``, ascending, from an API that pages backward.

    ``request(before)`` returns up to a page of rows opening before ``before`` (any order):
    unbounded below (OKX's ``after``) unless ``bounded``, when it also stops at ``start``
    (Bybit's ``start``/``end``). ``known_first`` is the first candle the exchange is known to
    have (an empty answer above it is never believed).
    """
    rows: list[Row] = []
    before = end
    while before > start:
        page = list(request(before))
        if not page:
            # Candles known to exist below the cursor make an empty answer wrong: ask until it is
            # right. Unbounded and nothing known below: before the listing, believed at once.
            # Bounded (a window [start, before)): one re-ask confirms.
            strict = known_first is not None and known_first < before and not bounded
            waits = AFFIRM_BACKOFF if strict else (0.0,) if bounded else ()
            for wait in waits:
                if wait:
                    sleep(wait)
                page = list(request(before))
                if page:
                    break
        if not page:
            if known_first is not None and known_first < before and not bounded:
                raise SourceError(f"the exchange keeps answering empty for candles before {iso(before)}, "
                                  f"though it has candles from {iso(known_first)}")
            if on_hole is not None:
                evidence = "empty answer, repeated" if bounded else "no candle before it (before listing)"
                on_hole(Hole(start, before, evidence))
            break
        oldest = min(row[open_index] for row in page)
        if oldest >= before:
            raise SourceError(f"the exchange returned candles not older than {iso(before)}")
        rows.extend(row for row in page if start <= row[open_index] < end)
        if oldest <= start:
            break
        before = oldest  # a short page is not the end: continue below its oldest row
    rows.sort(key=lambda row: row[open_index])
    return rows
