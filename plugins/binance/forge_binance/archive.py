"""Binance's bulk kline archive (data.binance.vision): planning, verified download, parsing.

Layout (``exchange-apis.md`` section B)::

    {root}/data/{spot|futures/um|futures/cm}/{monthly|daily}/klines/{SYM}/{iv}/{SYM}-{iv}-{date}.zip
    ... same path + ".CHECKSUM"  ->  "<sha256 hex>  <zip name>"

``iv`` is the REST interval except ``1M``, spelled ``1mo``. Daily files exist for ``1s``..``1d``
only. Every zip is checked against its ``.CHECKSUM`` before any of its rows is used. Spot files
from 2025 carry microsecond timestamps and futures files a header row in newer files only; both
are sniffed per file, never assumed from the date.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zipfile
from array import array
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from forge_core import (
    CANDLE_COLUMNS,
    DAY,
    EXTRA_COLUMNS,
    HOUR,
    Cancelled,
    Fetched,
    GaveUp,
    HttpClient,
    Row,
    RowMaker,
    SourceError,
    Task,
    TextRows,
    Timeframe,
    default_check,
    get_logger,
    iso,
    retrying,
    row_maker,
)
from forge_core.records import ascending, ramp

from .kline_text import (
    _CUT,
    _PLAIN,
    Helper,
    HelperGone,
    Parsed,
    csv_member,
    new_helper,
    pieces,
    split_piece,
    steady_text,
)
from .kline_text import MICROS as _MICROS

log = get_logger(__name__)

ARCHIVE_URL = "https://data.binance.vision"
# the bucket's own S3 endpoint answers ListObjects (data.binance.vision/?prefix= is a browser
# page that asks it): third-party scripts list it this way; the exact XML is unverified here
S3_LISTING = "https://s3-ap-northeast-1.amazonaws.com/data.binance.vision"
MARKET_DIRS = {"spot": "spot", "usdm": "futures/um", "coinm": "futures/cm"}
DAILY_TIMEFRAMES = frozenset({"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"})
# When the client assumes a file is published (the mock publishes earlier, see docs):
DAILY_LAG = DAY  # day D's file from D+2 00:00 UTC ("the next day", with a day of slack)
MONTHLY_LAG = DAY  # month M's file from the day after the first Monday of M+1
CHECKSUM_ATTEMPTS = 3  # downloads of a zip whose checksum does not match, before giving up on it
PROBES = 16  # .CHECKSUM requests at a time while planning
AHEAD = 1  # zips downloaded ahead of the task reading one (memory: one zip; the run loop reads one task ahead)
HELPED_AHEAD = 3  # with a helper: it reads the zips ahead while the run writes (measured: 2 and 1 are slower)


class ArchiveFailure(Exception):
    """A file that exists could not be obtained intact (bad zip, hopeless HTTP error)."""


class ArchiveUnreachable(ArchiveFailure):
    """The archive host did not answer at all (connection errors or timeouts until giving up)."""


class ChecksumMismatch(ArchiveFailure):
    """The zip never matched its ``.CHECKSUM`` (or the checksum file was unreadable)."""


# -- paths and calendar -------------------------------------------------------------------------
@dataclass(frozen=True)
class ArchiveFile:
    """One archive zip: ``period`` is ``monthly`` or ``daily``; it covers opens in ``[start, end)``."""

    period: str
    date: str  # "2024-02" or "2024-02-03"
    start: int
    end: int

    def name(self, symbol: str, tf: Timeframe) -> str:
        return f"{symbol}-{interval(tf)}-{self.date}.zip"

    def path(self, market: str, symbol: str, tf: Timeframe) -> str:
        return (f"/data/{MARKET_DIRS[market]}/{self.period}/klines/{symbol}/{interval(tf)}/"
                f"{self.name(symbol, tf)}")


def interval(tf: Timeframe) -> str:
    return "1mo" if tf.name == "1M" else tf.name


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc)


def _ms(d: datetime) -> int:
    return int(d.timestamp()) * 1000


def month_file(ts: int) -> ArchiveFile:
    d = _utc(ts)
    first = datetime(d.year, d.month, 1, tzinfo=timezone.utc)
    nxt = datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=timezone.utc)
    return ArchiveFile("monthly", first.strftime("%Y-%m"), _ms(first), _ms(nxt))


def day_file(ts: int) -> ArchiveFile:
    start = ts // DAY * DAY
    return ArchiveFile("daily", _utc(start).strftime("%Y-%m-%d"), start, start + DAY)


def first_monday(month_start: int) -> int:
    d = _utc(month_start)
    return _ms(d + timedelta(days=(7 - d.weekday()) % 7))


def published(f: ArchiveFile, now: int) -> bool:
    """Whether the client may expect ``f`` to be on the server at ``now`` (a conservative guess:
    Binance publishes daily files the next day, monthly files on the first Monday after)."""
    if f.period == "daily":
        return now >= f.end + DAILY_LAG
    return now >= first_monday(f.end) + MONTHLY_LAG


# -- planning -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """Opens in ``[start, end)`` from ``file``, or from REST when ``file`` is None."""

    start: int
    end: int
    file: ArchiveFile | None = None


def plan_segments(tf: Timeframe, start: int, end: int, now: int, *,
                  worth: Callable[[int, int], bool] | None = None) -> list[Segment]:
    """Cover ``[start, end)``: monthly files for complete months inside the range, daily files
    for partial months (monthly files for timeframes without daily files; daily files always for
    ``1s``, whose month would not fit in memory), REST for what is not published at ``now``.
    ``worth(start, end)`` may veto a file (then REST); adjacent REST segments are merged."""
    out: list[Segment] = []

    def add(seg_start: int, seg_end: int, f: ArchiveFile | None) -> None:
        if f is not None and (not published(f, now) or (worth is not None and not worth(seg_start, seg_end))):
            f = None
        if f is None and out and out[-1].file is None and out[-1].end == seg_start:
            out[-1] = Segment(out[-1].start, seg_end)
        else:
            out.append(Segment(seg_start, seg_end, f))

    has_daily = tf.name in DAILY_TIMEFRAMES
    ts = start
    while ts < end:
        month = month_file(ts)
        m_end = min(month.end, end)
        whole = ts == month.start and m_end == month.end
        if not has_daily or (whole and tf.name != "1s" and published(month, now)):
            add(ts, m_end, month)
        else:
            while ts < m_end:
                day = day_file(ts)
                d_end = min(day.end, m_end)
                add(ts, d_end, day)
                ts = d_end
        ts = m_end
    return out


# -- the bucket listing -------------------------------------------------------------------------
def listing_url(archive_url: str) -> str:
    """Where the archive's S3 listing is: the real bucket's endpoint for the real host; any
    other root (a mirror, the mock) is taken for a bucket endpoint listing at ``/``."""
    root = archive_url.rstrip("/")
    return S3_LISTING if root == ARCHIVE_URL else root + "/"


def parse_listing(body: bytes) -> tuple[list[str], bool, str]:
    """``(keys, truncated, next marker)`` of an S3 ListObjects (v1) ``ListBucketResult``, the
    folders of a ``delimiter`` listing (``CommonPrefixes``) among the keys; ValueError for
    anything else. Namespaces are ignored (S3 sends its 2006-03-01 one)."""
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise ValueError(f"archive listing is not XML ({exc})") from None

    def tag(e: Any) -> str:
        return str(e.tag).rsplit("}", 1)[-1]

    if tag(root) != "ListBucketResult":
        raise ValueError(f"archive listing is a {tag(root)}, not a ListBucketResult")
    keys, truncated, marker = [], False, ""
    for child in root:
        name = tag(child)
        if name in ("Contents", "CommonPrefixes"):
            keys += [(k.text or "") for k in child if tag(k) in ("Key", "Prefix")]
        elif name == "IsTruncated":
            truncated = (child.text or "").strip().lower() == "true"
        elif name == "NextMarker":
            marker = child.text or ""
    return sorted(keys), truncated, marker or (max(keys) if keys else "")


def listed_files(client: ArchiveClient, market: str, symbol: str, tf: Timeframe, period: str,
                 name_start: str = "") -> list[ArchiveFile]:
    """The ``period`` (monthly/daily) zips the listing has for the series, ascending; only
    those whose names start with ``{SYM}-{iv}-`` + ``name_start``."""
    folder = f"data/{MARKET_DIRS[market]}/{period}/klines/{symbol}/{interval(tf)}/"
    stem = f"{symbol}-{interval(tf)}-"
    found: dict[int, ArchiveFile] = {}
    for key in client.keys(folder + stem + name_start):
        name = key[len(folder):]
        if not (key.startswith(folder) and name.endswith(".zip")):
            continue
        date = name[len(stem):-4]
        try:
            day = datetime.strptime(date, "%Y-%m-%d" if period == "daily" else "%Y-%m").replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        f = (day_file if period == "daily" else month_file)(_ms(day))
        found[f.start] = f
    return [found[k] for k in sorted(found)]


def archive_extent(client: ArchiveClient, market: str, symbol: str, tf: Timeframe,
                   until: int) -> tuple[ArchiveFile, ArchiveFile] | None:
    """The first and the last file the listing has for the series (None: none at all): the
    first day's file when there are daily files (the smallest file holding the first candle),
    and the newest daily file after the last month. A few listing requests: the monthly
    folder, then the daily files of the first month and of the months after the last, up to
    the month of ``until``."""
    months = listed_files(client, market, symbol, tf, "monthly")
    if tf.name not in DAILY_TIMEFRAMES:
        return (months[0], months[-1]) if months else None
    if not months:
        days = listed_files(client, market, symbol, tf, "daily")
        return (days[0], days[-1]) if days else None
    first = listed_files(client, market, symbol, tf, "daily", months[0].date)[:1] or months[:1]
    last = months[-1]
    ts = last.end
    while ts <= until:
        month = month_file(ts)
        last = ([last] + listed_files(client, market, symbol, tf, "daily", month.date))[-1]
        ts = month.end
    return first[0], last


def file_opens(client: ArchiveClient, market: str, symbol: str, tf: Timeframe, f: ArchiveFile) -> list[int]:
    """The candle opens of one verified archive file (ArchiveFailure if it cannot be had)."""
    data = client.verified(f.path(market, symbol, tf))
    if data is None:
        raise ArchiveFailure(f"{f.name(symbol, tf)} is listed but not served (HTTP 404)")
    try:
        rows = read_rows(data, "", symbol, tf, f.start, f.end)
    except (ValueError, IndexError, zipfile.BadZipFile) as exc:
        raise ArchiveFailure(f"{f.name(symbol, tf)} is not a kline file: {exc}") from None
    return list(rows.open_ts) if isinstance(rows, TextRows) else [r[OPEN_INDEX] for r in rows]


# -- checksum and parsing -----------------------------------------------------------------------
def parse_checksum(text: str, name: str) -> str:
    """The sha256 hex from a ``sha256sum`` line for ``name`` (``<64 hex>  [*]<name>``, binary
    marker allowed); ValueError if it is not one. Read with ``str.split``, not a regular
    expression: compiling one costs more start-up than a whole year's checksums."""
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split()
        digest = fields[0] if len(fields) == 2 else ""
        if len(digest) != 64 or not digest.isascii() or digest.strip(_HEX):
            raise ValueError(f"not a sha256sum line: {line[:80]!r}")
        got = fields[1][1:] if fields[1].startswith("*") and len(fields[1]) > 1 else fields[1]
        if got != name:
            raise ValueError(f"checksum is for {got!r}, not {name!r}")
        return digest.lower()
    raise ValueError("empty checksum file")


_HEX = "0123456789abcdefABCDEF"


COLUMNS = CANDLE_COLUMNS + EXTRA_COLUMNS
"""The rows this module builds: the Binance source's columns."""
OPEN_INDEX = COLUMNS.index("open_ts")


def read_rows(data: bytes, source: str, symbol: str, tf: Timeframe, start: int, end: int,
              make: RowMaker | None = None, columns: tuple[str, ...] = COLUMNS,
              on_gap: Callable[[int, int], None] | None = None, helper: Helper | None = None,
              key: str = "") -> Sequence[Row]:
    """Canonical rows opening in ``[start, end)`` from a verified zip, streamed from its CSV in
    256 KiB pieces (the archive's CSV has no quoting: fields are split on commas).

    Rows in this module's :data:`COLUMNS` come as :class:`~forge_core.TextRows` (the exchange's
    strings reordered into CSV records, no tuple per row) when every piece is plain kline CSV;
    otherwise, or for other ``columns``, as tuples from ``make``. A first line not starting
    with a digit is a header; timestamps above 1e13 are microseconds. ValueError (or
    IndexError) for anything that is not a kline CSV.

    ``on_gap(a, b)`` is told, as soon as the piece showing it is read, of each range ``[a, b)``
    inside ``[start, end)`` whose candles the file lacks, before the end of the file (a hint:
    :func:`find_gaps` on the result is what counts)."""
    gaps = _GapWatch(tf, start, end, on_gap) if on_gap is not None and tf.ms is not None else None
    parts: list[TextRows | list[Row]] = []
    reader = _Reader(data, source, symbol, tf, make, columns, helper, key)
    try:
        while (got := reader.next_rows(start, end)) is not None:
            parts.append(got)
            if gaps is not None and isinstance(got, TextRows):
                gaps.see(got)
    finally:
        reader.close()
    if not parts:
        return []
    if all(isinstance(p, TextRows) for p in parts):
        rows = TextRows.join(parts)  # type: ignore[arg-type]
        opens = rows.open_ts
        if rows.step is not None or ascending(opens):
            lo, hi = bisect_left(opens, start), bisect_left(opens, end)
            return rows[lo:hi]
        parts = [list(rows)]
    out: list[Row] = []
    i = columns.index("open_ts")
    for p in parts:
        out += p if isinstance(p, list) else [r for r in p if start <= r[i] < end]
    return out


class _Reader:
    """The CSV of a verified zip, read :data:`PIECE` bytes at a time: pieces of whole lines
    (a header row dropped) parsed as :class:`~forge_core.TextRows` while every piece is plain
    kline CSV, else as tuples from ``make``. :meth:`take` reads a file a slice at a time.
    With a ``helper`` that takes the file, the helper process inflates and reads it (the
    machine's other core); the rows are the same."""

    def __init__(self, data: bytes, source: str, symbol: str, tf: Timeframe, make: RowMaker | None,
                 columns: tuple[str, ...], helper: Helper | None = None, key: str = "") -> None:
        self._zf, self._raw = csv_member(data)
        self.tf, self.columns, self.source, self.symbol, self.make = tf, columns, source, symbol, make
        self.fixed = {"source": source, "symbol": symbol, "timeframe": tf.name}
        self.fast = columns == COLUMNS and tf.ms is not None
        self._pieces = pieces(self._raw)
        self._carry: TextRows | list[Row] | None = None  # rows read past the last slice's end
        self._helped: Parsed | None = None
        if helper is not None and tf.ms is not None and helpable(tf, columns):
            self._helped = helper.claim(key, data) or helper.offer(data, tf.ms, ",".join(self.fixed.values()))

    def next_rows(self, start: int, end: int) -> TextRows | list[Row] | None:
        """The next piece's rows (:meth:`parse`), None after the last."""
        if self._helped is not None:
            try:
                answer = self._helped.next()
            except HelperGone:  # go on here, from the piece the helper reached
                self._unhelped()
            else:
                if answer is None:  # the file's end, for the next slices too
                    self._helped, self._pieces = None, iter(())
                    return None
                if answer[0] == "S":
                    _, text, n, first = answer
                    return _steady_rows(text, n, first, self.tf, self.fixed)
                rows = self.parse(answer[1], start, end)
                if not self.fast:  # tuples from here on, as in-process: read on here
                    self._unhelped()
                return rows
        piece = next(self._pieces, None)
        return None if piece is None else self.parse(piece, start, end)

    def _unhelped(self) -> None:
        """Read the rest of the file in-process, from the piece after the helper's last."""
        assert self._helped is not None
        parsed, self._helped = self._helped, None
        parsed.abandon()
        for _ in range(parsed.delivered):
            next(self._pieces)

    def parse(self, piece: bytes, start: int, end: int) -> TextRows | list[Row]:
        """A piece's rows: all of them as TextRows, or as tuples those opening in ``[start, end)``."""
        if self.fast:
            rows = _text_rows(piece, self.tf, self.fixed)
            if rows is not None:
                return rows
            self.fast = False
        out: list[Row] = []
        make = self.make or row_maker(self.columns, self.tf, source=self.source, symbol=self.symbol)
        _rows(piece.decode("utf-8").splitlines(), out, make, self.tf, start, end)
        return out

    def take(self, start: int, end: int, on_gap: Callable[[int, int], None] | None = None) -> Sequence[Row]:
        """The rows opening in ``[start, end)`` from the rows not read yet: pieces are read until
        one reaches ``end``, and its rows from ``end`` on are kept for the next slice. Rows of an
        earlier slice found later (a file out of order) are dropped: that slice found them
        missing and asked REST (:func:`find_gaps`). ``on_gap`` as for :func:`read_rows`."""
        gaps = _GapWatch(self.tf, start, end, on_gap) if on_gap is not None and self.tf.ms is not None else None
        i = self.columns.index("open_ts")
        parts: list[TextRows | list[Row]] = []
        while True:
            rows, self._carry = self._carry, None
            if rows is None:
                rows = self.next_rows(start, 1 << 63)
                if rows is None:
                    break
            if isinstance(rows, TextRows):
                opens = rows.open_ts
                if rows.step is not None or ascending(opens):
                    lo, hi = bisect_left(opens, start), bisect_left(opens, end)
                    if lo < hi:
                        parts.append(rows[lo:hi])
                        if gaps is not None:
                            gaps.see(parts[-1])
                    if hi < len(opens):
                        self._carry = rows[hi:]
                        break
                    continue
                rows = list(rows)
            mine = [r for r in rows if start <= r[i] < end]
            later = [r for r in rows if r[i] >= end]
            if mine:
                parts.append(mine)
            if later:
                self._carry = later
                break
        if all(isinstance(p, TextRows) for p in parts):
            return TextRows.join(parts) if parts else []  # type: ignore[arg-type]
        return [r for p in parts for r in p]

    def close(self) -> None:
        self._carry = None
        if self._helped is not None:
            self._helped.abandon()
            self._helped = None
        self._raw.close()
        self._zf.close()


SLICE_ROWS = 4096
"""About the candles of one slice of a big file's segment (:func:`slices`): a month of 1m is
read in 3-day slices of 4,320 candles (0.8 MB as text), a day of 1s in 2-hour ones."""


def slices(tf: Timeframe, seg: Segment) -> list[tuple[int, int]]:
    """``[start, end)`` parts of a file's segment, read one after the other from one download:
    whole days of a monthly file, whole hours of a daily one, of at least :data:`SLICE_ROWS`
    candles; one part for a segment of up to twice that (a month of 15m, a day of 1m)."""
    assert seg.file is not None
    if tf.ms is None or tf.count(seg.start, seg.end) <= 2 * SLICE_ROWS:
        return [(seg.start, seg.end)]
    unit = DAY if seg.file.period == "monthly" else HOUR
    step = -(-SLICE_ROWS * tf.ms // unit) * unit
    out, a, cut = [], seg.start, seg.file.start + step
    while cut < seg.end:
        if cut > a:
            out.append((a, cut))
            a = cut
        cut += step
    out.append((a, seg.end))
    return out


_MS_DIGITS = 13  # epoch ms have at most 13 digits until the year 2286, microseconds 14 or more


def helpable(tf: Timeframe, columns: tuple[str, ...]) -> bool:
    """Whether the helper may read files of ``tf`` into ``columns``: the fast path's rows, not
    pyarrow's parser (the same test for files read ahead and for files a task opens)."""
    return columns == COLUMNS and tf.ms is not None and _arrow() is None


def _text_rows(piece: bytes, tf: Timeframe, fixed: dict[str, str]) -> TextRows | None:
    """A piece of complete archive lines as TextRows, or None when it is not plain, regular
    kline CSV (then the caller reads it line by line, with that path's errors): by splitting the
    whole piece into columns, or, with ``FORGE_BINANCE_ARCHIVE_PARSER=pyarrow``, for big pieces
    by pyarrow's CSV reader and writer (see :func:`_arrow`)."""
    if len(piece) >= ARROW_FROM and _arrow() is not None and not piece.translate(None, _PLAIN):
        return _arrow_rows(piece, tf, fixed)
    split = split_piece(piece)
    if split is None:
        return None
    flat, n = split
    steady = None if tf.ms is None else steady_text(flat, n, tf.ms, ",".join(fixed.values()))
    if steady is not None:
        return _steady_rows(steady[0], n, steady[1], tf, fixed)
    opens, closes = flat[0::13], flat[6::13]
    if len(max(opens, key=len)) > _MS_DIGITS:
        if len(min(opens, key=len)) <= _MS_DIGITS or "10000000000000" in opens:
            return None  # milliseconds and microseconds mixed (or exactly 1e13)
        opens, closes = list(map(_CUT, opens)), list(map(_CUT, closes))
    fields = {"open_ts": opens, "end_ts": closes, "open": flat[1::13], "high": flat[2::13],
              "low": flat[3::13], "close": flat[4::13], "volume": flat[5::13], "quote_volume": flat[7::13],
              "trades": flat[8::13], "taker_buy_base_volume": flat[9::13], "taker_buy_quote_volume": flat[10::13]}
    rows = TextRows.build(COLUMNS, fields, fixed=fixed, ints=("trades",), plain=True)
    if rows is not None:
        _check_closes(rows, tf)
    return rows


def _steady_rows(text: str, n: int, first: int, tf: Timeframe, fixed: dict[str, str]) -> TextRows:
    """The records of :func:`~forge_binance.kline_text.steady_text` as TextRows: ``n`` candles,
    one after the other from ``first`` (checked there). The core checks their int64 arrays,
    from :func:`ramp`, against the grid again (``check_rows``)."""
    ms = tf.ms
    assert ms is not None
    rows = TextRows(COLUMNS, [text], [n], ramp(first, n, ms), ramp(first + ms - 1, n, ms), _INT_INDEXES, dict(fixed))
    rows.step = ms  # every open one candle after the previous: checked by steady_text
    return rows


_INT_INDEXES = tuple(COLUMNS.index(c) for c in ("open_ts", "end_ts", "trades"))
ARROW_FROM = 64 << 10  # bytes of CSV from which a piece is worth pyarrow
_ARROW: Any = None  # (pyarrow, pyarrow.csv, pyarrow.compute, options) once looked for; False: absent
_ARROW_LOCK = threading.Lock()
_IN = ("open_ts", "open", "high", "low", "close", "volume", "end_ts", "quote_volume", "trades",
       "taker_buy_base_volume", "taker_buy_quote_volume", "ignore")


def _arrow() -> Any:
    """pyarrow's CSV reader and writer when ``FORGE_BINANCE_ARCHIVE_PARSER=pyarrow``, imported
    on first use; None otherwise, or without pyarrow 16+ (then one info line says so).

    Not the default: pyarrow parses a file with several times less CPU, but a whole run was not
    faster (its import and per-piece overhead), and loading its libraries costs 60-100 MiB of
    resident memory, more than the whole rest of a run (bench/bench_archive.py)."""
    global _ARROW
    if _ARROW is None:
        with _ARROW_LOCK:
            if _ARROW is None and os.environ.get("FORGE_BINANCE_ARCHIVE_PARSER", "python") != "pyarrow":
                _ARROW = False
            if _ARROW is None:
                try:
                    import pyarrow as pa
                    import pyarrow.compute as pc
                    import pyarrow.csv as pcsv

                    options = (pcsv.ReadOptions(column_names=list(_IN), use_threads=True, block_size=1 << 22),
                               pcsv.ParseOptions(quote_char=False, double_quote=False),
                               pcsv.ConvertOptions(column_types={c: pa.string() for c in _IN},
                                                   strings_can_be_null=False),
                               pcsv.WriteOptions(include_header=False, quoting_style="none", eol="\r\n",
                                                 batch_size=1 << 16),
                               pc.cast(pcsv.read_csv(pa.py_buffer(b"k\n1000\n"))["k"], pa.int64())[0])
                    _ARROW = (pa, pcsv, pc, options)
                except (ImportError, TypeError, AttributeError) as exc:
                    log.warning("archive_csv_in_python", reason=f"FORGE_BINANCE_ARCHIVE_PARSER=pyarrow needs "
                                f"pyarrow>=16 ({exc})", hint="pip install 'forge-etl-binance[fast]'")
                    _ARROW = False
    return _ARROW or None


def _arrow_rows(piece: bytes, tf: Timeframe, fixed: dict[str, str]) -> TextRows | None:
    """:func:`_text_rows` through pyarrow: the same records, byte for byte."""
    pa, pcsv, pc, (read, parse, convert, write, thousand) = _ARROW
    n = piece.count(b"\n")
    if not n or piece.count(b",") != 11 * n:
        return None
    try:
        table = pcsv.read_csv(pa.py_buffer(piece), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, ValueError):
        return None  # a line with another number of fields
    if table.num_rows != n:
        return None  # an empty line

    def ints(name: str) -> Any:
        strings = table[name]
        values = pc.cast(strings, pa.int64(), safe=True)
        if not pc.all(pc.equal(pc.cast(values, pa.string()), strings)).as_py():
            raise ValueError(name)  # not canonical (a leading zero): the Python path decides
        return values

    try:
        opens, closes, _ = ints("open_ts"), ints("end_ts"), ints("trades")
    except (pa.ArrowInvalid, ValueError):
        return None
    low, high = pc.min_max(opens).values()
    if high.as_py() > _MICROS:
        if low.as_py() <= _MICROS:
            return None  # milliseconds and microseconds mixed
        opens, closes = pc.divide(opens, thousand), pc.divide(closes, thousand)
    # the constant columns are added to the text: any Python value handed to pyarrow (pa.repeat,
    # pa.scalar, pa.table) makes it import pandas, 40 MiB and half a second
    out = pa.Table.from_arrays([opens, closes, *(table[c] for c in COLUMNS[5:])], names=list(COLUMNS[3:]))
    sink = pa.BufferOutputStream()
    try:
        pcsv.write_csv(out, sink, write)
    except pa.ArrowInvalid:
        return None  # a value that would need quotes (cannot be, after the byte check)
    prefix = f"{fixed['source']},{fixed['symbol']},{fixed['timeframe']},"
    body = str(sink.getvalue(), "ascii")  # decoded from pyarrow's buffer, no copy before
    text = prefix + body[:-2].replace("\r\n", "\r\n" + prefix) + "\r\n"
    rows = TextRows.from_text(COLUMNS, text, _int64s(opens),
                              _int64s(closes), fixed=fixed, ints=("trades",))
    if rows is not None:
        _check_closes(rows, tf)
    return rows


def _int64s(values: Any) -> array:
    chunk = values.combine_chunks() if hasattr(values, "combine_chunks") else values
    out = array("q")
    out.frombytes(memoryview(chunk.buffers()[1])[chunk.offset * 8:(chunk.offset + len(chunk)) * 8])
    return out


def _check_closes(rows: TextRows, tf: Timeframe) -> None:
    """Every row closes at the last millisecond of a ``tf`` period (as :func:`_rows` checks)."""
    ms = tf.ms
    assert ms is not None
    if rows.steady(tf):  # one unbroken run of the grid (the usual case), remembered for the core
        return
    for ts, close in zip(rows.open_ts, rows.end_ts, strict=True):
        if close != ts + ms - 1:
            raise ValueError(f"row opening {ts} closes at {close}, not a {tf.name} candle")


def _rows(lines: list[str], out: list[Row], make: RowMaker, tf: Timeframe, start: int, end: int) -> None:
    """Archive lines (Binance's kline fields: open time, open, high, low, close, volume, close
    time, quote volume, trades, taker buy base, taker buy quote, ignore) into rows by name."""
    name, ms = tf.name, tf.ms
    append = out.append
    for line in lines:
        if not line:
            continue
        r = line.split(",")
        ts, close = int(r[0]), int(r[6])
        if ts > _MICROS:
            ts, close = ts // 1000, close // 1000
        if ms is not None and close != ts + ms - 1:
            raise ValueError(f"row opening {ts} closes at {close}, not a {name} candle")
        if start <= ts < end:
            append(make(open_ts=ts, end_ts=close, open=r[1], high=r[2], low=r[3], close=r[4], volume=r[5],
                        quote_volume=r[7], trades=int(r[8]), taker_buy_base_volume=r[9],
                        taker_buy_quote_volume=r[10]))


class _GapWatch:
    """The gaps of ``[start, end)`` in a file's pieces as they are read (TextRows, ascending),
    told to ``report`` at once; it stops at the first piece out of order."""

    def __init__(self, tf: Timeframe, start: int, end: int, report: Callable[[int, int], None]) -> None:
        assert tf.ms is not None
        self.ms, self.end, self.report = tf.ms, end, report
        self.expect: int | None = tf.ceil(start)

    def see(self, rows: TextRows) -> None:
        expect, ms, end = self.expect, self.ms, self.end
        opens = rows.open_ts
        if expect is None or not opens:
            return
        if rows.step == ms:  # an unbroken run: a gap can only be before it
            if opens[0] > expect and expect < end:
                self.report(expect, min(opens[0], end))
            self.expect = max(expect, opens[-1] + ms)
            return
        if not ascending(opens):
            self.expect = None
            return
        for ts in opens:
            if ts >= end:
                break
            if ts > expect:
                self.report(expect, ts)
            expect = max(expect, ts + ms)
        self.expect = expect


def find_gaps(rows: Sequence[Row], tf: Timeframe, start: int, end: int,
              open_index: int = OPEN_INDEX) -> list[tuple[int, int]]:
    """Ranges of ``[start, end)`` where ``rows`` (ascending) skip a candle open."""
    gaps = []
    expect = tf.ceil(start)
    opens: Iterable[int] = rows.open_ts if isinstance(rows, TextRows) else (row[open_index] for row in rows)
    if tf.ms is not None:  # the common case, without a method call per row
        ms = tf.ms
        if isinstance(rows, TextRows) and rows and rows.open_ts[0] == expect and rows.step == ms:
            expect = rows.open_ts[-1] + ms
            return [(expect, end)] if expect < end else []
        for ts in opens:
            if ts != expect:
                if ts >= end:
                    break
                if ts > expect:
                    gaps.append((expect, ts))
            expect = ts + ms
        if expect < end:
            gaps.append((expect, end))
        return gaps
    for ts in opens:
        if ts >= end:
            break
        if ts > expect:
            gaps.append((expect, ts))
        expect = tf.next_open(ts)
    if expect < end:
        gaps.append((expect, end))
    return gaps


# -- download -----------------------------------------------------------------------------------
class ArchiveClient:
    """Verified files from the archive host, through :meth:`HttpClient.get_bytes` (its
    retries and backoff; 404 means "no such file")."""

    def __init__(self, base_url: str) -> None:
        self.http = HttpClient(base_url, headers={"Accept": "*/*"}, envvar="FORGE_BINANCE_ARCHIVE_URL")
        self.listing = listing_url(base_url)
        self._listing_http: HttpClient | None = None
        self.date: int | None = None  # the listing host's clock (its last Date header), epoch ms
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._checksums: dict[str, bytes] = {}  # .CHECKSUM bodies fetched by probe(), used once
        self._ahead: dict[str, Future[bytes | None]] = {}  # zips downloaded ahead (prefetch), used once
        self.ahead = AHEAD  # zips downloaded ahead at most
        self._asked: set[str] = set()  # every zip ever prefetched: none twice
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def get(self, path: str) -> bytes | None:
        """The body of ``path``, or None for a 404; ArchiveFailure when retrying is hopeless
        (ArchiveUnreachable when the host itself could not be reached)."""
        try:
            return self.http.get_bytes(path)
        except Cancelled:
            raise
        except GaveUp as exc:
            raise (ArchiveUnreachable if exc.status is None else ArchiveFailure)(f"{path}: {exc}") from None
        except SourceError as exc:  # a final status, e.g. 403
            raise ArchiveFailure(f"{path}: {exc}") from None

    def keys(self, prefix: str, max_keys: int | None = None, delimiter: str | None = None) -> list[str]:
        """Every key under ``prefix`` from the bucket's S3 listing (pages of up to 1000 keys,
        each from the last key of the one before), or with ``delimiter`` the folders there;
        ArchiveFailure when it cannot be had."""
        parts = urlsplit(self.listing)
        with self._lock:
            if self._listing_http is None:
                self._listing_http = HttpClient(f"{parts.scheme}://{parts.netloc}", headers={"Accept": "*/*"},
                                                check=self._dated)
            http = self._listing_http
        out: list[str] = []
        marker = ""
        for _ in range(1000):  # a million keys: no folder of one series holds that many
            params = {"prefix": prefix, **({"marker": marker} if marker else {}),
                      **({"max-keys": max_keys} if max_keys else {}), **({"delimiter": delimiter} if delimiter else {})}
            try:
                body = http.get_bytes(parts.path or "/", params)
            except Cancelled:
                raise
            except GaveUp as exc:
                raise (ArchiveUnreachable if exc.status is None else ArchiveFailure)(
                    f"listing {self.listing}: {exc}") from None
            except SourceError as exc:
                raise ArchiveFailure(f"listing {self.listing}: {exc}") from None
            if body is None:
                raise ArchiveFailure(f"listing {self.listing}: HTTP 404")
            before = marker
            try:
                keys, truncated, marker = parse_listing(body)
            except ValueError as exc:
                raise ArchiveFailure(f"listing {self.listing}: {exc}") from None
            out += keys
            if not truncated or not keys or max_keys:
                break
            if marker <= before:  # a host that ignores ``marker`` answers the same page for ever
                raise ArchiveFailure(f"listing {self.listing}: page after {before!r} starts over (marker ignored)")
        return out

    def _dated(self, response: Any, body: Any) -> None:
        default_check(response, body)
        with suppress(KeyError, TypeError, ValueError, IndexError):  # no usable Date: the clock stays unknown
            self.date = int(parsedate_to_datetime(response.headers["Date"]).timestamp() * 1000)

    def clock(self, market: str) -> int | None:
        """The archive host's time (the Date header of one small listing), or None if it
        cannot be had: a clock for a run that REST refuses."""
        try:
            self.keys(f"data/{MARKET_DIRS[market]}/monthly/klines/", max_keys=1)
        except ArchiveFailure:
            return None
        return self.date

    def probe(self, path: str) -> bool:
        """Whether the zip at ``path`` is in the archive: its ``.CHECKSUM`` is fetched (and kept
        for :meth:`verified`, so a file that is there costs no extra request)."""
        text = self.get(path + ".CHECKSUM")
        if text is None:
            return False
        with self._lock:
            self._checksums[path] = text
        return True

    def prefetch(self, path: str, symbol: str | None = None, then: Callable[[bytes], None] | None = None) -> bool:
        """Start downloading the zip at ``path`` in the background for :meth:`verified`; False
        (nothing done) while :data:`AHEAD` zips wait for their tasks. A zip asked before, ahead
        or by :meth:`verified`, is not asked again (True).

        With one month per task and two tasks run at a time, both workers would otherwise
        download at the same moment and parse at the same moment, the CPU idle meanwhile.
        ``then(data)`` is called with the downloaded zip (to start reading it ahead)."""
        with self._lock:
            if path in self._asked:
                return True
            if self._closed or len(self._ahead) >= self.ahead:
                return False
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.ahead, thread_name_prefix="forge-archive-ahead")
            self._asked.add(path)

            def get() -> bytes | None:
                with retrying.symbol_context(symbol):  # a retry's display names the symbol
                    data = self.get(path)
                if data is not None and then is not None:
                    then(data)
                return data

            self._ahead[path] = self._pool.submit(get)
            return True

    def _download(self, path: str, future: Future[bytes | None] | None) -> bytes | None:
        """The zip at ``path``: the prefetched download if there is one, else a fresh one."""
        if future is None:
            return self.get(path)
        try:
            return future.result()
        except CancelledError:
            raise Cancelled("cancelled") from None

    def matches(self, path: str, data: bytes) -> bool:
        """Whether ``data`` matches the ``.CHECKSUM`` the planning read for ``path`` (False when
        it read none): :meth:`verified` checks it again, and decides."""
        with self._lock:
            text = self._checksums.get(path)
        try:
            return text is not None and hashlib.sha256(data).hexdigest() == parse_checksum(
                text.decode("utf-8", "replace"), path.rsplit("/", 1)[1])
        except ValueError:
            return False

    def verified(self, path: str) -> bytes | None:
        """The zip at ``path`` after its ``.CHECKSUM`` matched, or None if either is missing (404).

        A mismatch (or an unreadable checksum) is downloaded again, up to
        :data:`CHECKSUM_ATTEMPTS` times, then raised as ArchiveFailure."""
        name = path.rsplit("/", 1)[1]
        with self._lock:  # taken now, used or dropped: a zip left ahead would hold memory and a slot
            ahead = self._ahead.pop(path, None)
            self._asked.add(path)
        try:
            return self._verified(path, name, ahead)
        finally:
            if ahead is not None:
                ahead.cancel()  # nothing if it ran (its result was used or is dropped here)

    def _verified(self, path: str, name: str, ahead: Future[bytes | None] | None) -> bytes | None:
        problem = ""
        for attempt in range(1, CHECKSUM_ATTEMPTS + 1):
            if attempt > 1:
                self.count("archive_retries")
                log.info("archive_retry", file=name, attempt=attempt, problem=problem)
                if self.http.cancelled.wait(0.2 * attempt):
                    raise Cancelled("cancelled")
            with self._lock:
                text = self._checksums.pop(path, None) if attempt == 1 else None
            if text is None:
                text = self.get(path + ".CHECKSUM")
            if text is None:
                return None
            try:
                want = parse_checksum(text.decode("utf-8", "replace"), name)
            except ValueError as exc:
                problem = f"unreadable .CHECKSUM ({exc})"
                continue
            data = self._download(path, ahead) if attempt == 1 else self.get(path)
            if data is None:
                return None
            got = hashlib.sha256(data).hexdigest()
            if got == want:
                return data
            problem = f"sha256 {got[:16]}... != .CHECKSUM {want[:16]}... ({len(data)} bytes)"
        raise ChecksumMismatch(f"{problem} after {CHECKSUM_ATTEMPTS} downloads")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            for future in self._ahead.values():
                future.cancel()
            self._ahead.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()  # a download still running stops retrying
        if self._listing_http is not None:
            self._listing_http.close()


# -- a task's rows, with fallbacks --------------------------------------------------------------
RestFetch = Callable[[str, Timeframe, int, int], list[Row]]


class _Stream:
    """The slices of one file's segment (:meth:`ArchiveFetcher.tasks`, the tasks' ``stream``),
    read in order from one download by whichever worker fetches the next slice."""

    def __init__(self, seg: Segment) -> None:
        self.seg = seg
        self.turn = threading.Condition()
        self.at = seg.start  # where the next slice to read starts
        self.reader: _Reader | None = None
        self.missing = False  # the file was not there: its days' files instead (a monthly file)
        self.rest: str | None = None  # why the file's remaining slices come from REST

    def __repr__(self) -> str:
        return f"_Stream({iso(self.seg.start)}..{iso(self.seg.end - 1)})"


class ArchiveFetcher:
    """Rows of one archive task. A monthly file that is missing (404) is replaced by the daily
    files of its days; a file that is missing or fails verification is replaced by REST for
    its range (``strict``: a SourceError instead); candles missing inside a file are asked
    from REST, so a short file cannot leave a hole the exchange does not have."""

    def __init__(self, client: ArchiveClient, market: str, source: str, rest: RestFetch, strict: bool,
                 maker: Callable[[str, Timeframe], RowMaker] | None = None,
                 columns: tuple[str, ...] = COLUMNS, check: RestFetch | None = None) -> None:
        self.client, self.market, self.source, self.rest, self.strict = client, market, source, rest, strict
        self.no_rest: str | None = None  # REST refused this location (HTTP 451): the refusal's line
        # REST asked whether a file's gaps hold candles (``rest`` stands in for whole files): the
        # source may answer [] when REST cannot tell, and then calls those holes unconfirmed
        self.check = check or rest
        self.columns = columns
        self.maker = maker or (lambda symbol, tf: row_maker(columns, tf, source=source, symbol=symbol))
        self.unreachable: str | None = None  # once the host is down, the other files go to REST at once
        self.probe_failure: str | None = None  # the last .CHECKSUM probe that failed other than by 404
        # the archive files of the plan in task order, for downloading ahead (ArchiveClient.prefetch)
        self._order: list[tuple[str, str, Timeframe]] = []  # (path, symbol, timeframe)
        self._position: dict[str, int] = {}
        self._cursor = 0  # the first file of _order not yet asked ahead
        self._first_asked = False  # the plan's first file was asked ahead while probing
        self._gaps: ThreadPoolExecutor | None = None  # REST for gaps found while a file is read
        self._order_lock = threading.Lock()
        self.helper = new_helper()  # the other core reads some of the zips
        if self.helper is not None:
            client.ahead = HELPED_AHEAD

    # -- planning around missing files ----------------------------------------------------------
    def resolve(self, symbol: str, tf: Timeframe, segments: list[Segment]) -> list[Segment]:
        """See :meth:`_resolve`; the files planned are remembered in order, to be downloaded
        ahead of their tasks."""
        out = self._resolve(symbol, tf, segments)
        with self._order_lock:
            for seg in out:
                if seg.file is not None:
                    path = seg.file.path(self.market, symbol, tf)
                    self._position.setdefault(path, len(self._order))
                    self._order.append((path, symbol, tf))
        return out

    def _reader_ahead(self, path: str, symbol: str, tf: Timeframe) -> Callable[[bytes], None] | None:
        """What hands a zip downloaded ahead, once it matches its checksum, to the helper (which
        reads it while the run writes the file before it); None without a helper."""
        helper = self.helper
        if helper is None or tf.ms is None or not helpable(tf, self.columns):
            return None
        ms, prefix = tf.ms, f"{self.source},{symbol},{tf.name}"

        def read(data: bytes) -> None:
            if self.client.matches(path, data):
                helper.offer(data, ms, prefix, key=path)

        return read

    def _ahead_of(self, path: str) -> None:
        """A task starts reading ``path``: download the next files of the plan ahead of it."""
        with self._order_lock:
            at = self._position.get(path)
            if at is None:
                return
            j = max(at + 1, self._cursor)
            while j < len(self._order) and self.client.prefetch(*self._order[j][:2], self._reader_ahead(*self._order[j])):
                j += 1
            self._cursor = max(self._cursor, j)

    def _resolve(self, symbol: str, tf: Timeframe, segments: list[Segment]) -> list[Segment]:
        """``segments`` with every archive file checked to be there (its ``.CHECKSUM``, which
        the download then reuses): a missing monthly file alone in its run is replaced by its
        month's daily files when its first day is there; every other missing file becomes
        REST, merged with the REST around it so the source plans ordinary full pages for all
        workers. One warning sums up what went to REST (``strict``: a SourceError instead).

        Missing files come in runs (a symbol the archive lacks, files not yet published): the
        probes gallop through a run (1, 2, 4, 8... files on) and bisect back to its end, so a
        year that is missing costs about five probes, not 377; the files between two missing
        probes are taken as missing too."""
        files = [seg for seg in segments if seg.file is not None]
        if not files:
            return segments
        missing: dict[Segment, bool] = {}
        if self.unreachable is None:
            try:
                present = self._present(symbol, tf, files)
            except ArchiveUnreachable as exc:
                self.client.count("archive_errors")
                self.unreachable = f"could not be fetched: archive host unreachable ({exc})"
                present = {seg: False for seg in files}
        else:
            present = {seg: False for seg in files}
        out: list[Segment] = []
        for seg in segments:
            if seg.file is not None and not present[seg]:
                expanded = self._daily_instead(symbol, tf, seg, files, present)
                if expanded is not None:
                    out += expanded[0]
                    missing.update(expanded[1])
                    continue
                missing[seg] = True
            out.append(seg)
        gone = [seg for seg in out if seg.file is not None and missing.get(seg)]
        if not gone:
            return out
        if self.strict:
            first = gone[0]
            where = f"{iso(first.start)}..{iso(first.end - 1)}"
            reason = self.unreachable or "is not in the archive (HTTP 404)"
            raise SourceError(f"archive file {first.file.name(symbol, tf)} {reason}; "  # type: ignore[union-attr]
                              + self._no_rest_advice(where))
        self.client.count("archive_fallbacks", len(gone))
        merged: list[Segment] = []
        for seg in out:
            if seg.file is not None and missing.get(seg):
                seg = Segment(seg.start, seg.end)
            if seg.file is None and merged and merged[-1].file is None and merged[-1].end == seg.start:
                merged[-1] = Segment(merged[-1].start, seg.end)
            else:
                merged.append(seg)
        spans = [s for s in merged if s.file is None]
        gone_spans = [s for s in spans if any(g.start >= s.start and g.end <= s.end for g in gone)]
        shown = ", ".join(f"{iso(s.start)}..{iso(s.end - 1)}" for s in gone_spans[:3])
        log.warning("archive_files_missing", symbol=symbol, timeframe=tf.name, files=len(gone),
                    first=gone[0].file.name(symbol, tf),  # type: ignore[union-attr]
                    reason=self.unreachable or ("not in the archive (HTTP 404)" if self.probe_failure is None
                                                else f"not in the archive, or failing: {self.probe_failure}"),
                    rest=shown + (f" and {len(gone_spans) - 3} more" if len(gone_spans) > 3 else ""))
        return merged

    def _daily_instead(self, symbol: str, tf: Timeframe, seg: Segment, files: list[Segment],
                       present: dict[Segment, bool]) -> tuple[list[Segment], dict[Segment, bool]] | None:
        """A missing monthly file's daily files (each checked), when it is alone in its run of
        missing files and its first day is there; else None."""
        assert seg.file is not None
        if seg.file.period != "monthly" or tf.name not in DAILY_TIMEFRAMES or self.unreachable is not None:
            return None
        i = files.index(seg)
        if not self.strict and ((i > 0 and not present[files[i - 1]]) or
                                (i + 1 < len(files) and not present[files[i + 1]])):
            return None  # a run of missing months: their days are not asked one by one
        days = []
        ts = seg.start
        while ts < seg.end:
            day = day_file(ts)
            days.append(Segment(ts, min(day.end, seg.end), day))
            ts = day.end
        try:
            first = None if self.strict else self._probe(symbol, tf, days[0])
            if first is False:
                return None
            found = self._present(symbol, tf, days, first)
        except ArchiveUnreachable as exc:
            self.client.count("archive_errors")
            self.unreachable = f"could not be fetched: archive host unreachable ({exc})"
            return None
        log.info("archive_monthly_missing", file=seg.file.name(symbol, tf), using="daily files")
        return days, {d: not ok for d, ok in found.items()}

    def _probe(self, symbol: str, tf: Timeframe, seg: Segment) -> bool:
        """Whether the file is there; a ``.CHECKSUM`` that keeps failing (a 503 after every
        retry) counts as not there, so its range comes from REST (``strict``: an error)."""
        assert seg.file is not None
        try:
            ok = self.client.probe(seg.file.path(self.market, symbol, tf))
        except ArchiveUnreachable:
            raise
        except ArchiveFailure as exc:
            if self.strict:
                raise SourceError(f"archive file {seg.file.name(symbol, tf)}: {exc}") from None
            self.client.count("archive_errors")
            self.probe_failure = str(exc)
            return False
        if not ok:
            self.client.count("archive_missing")
        return ok

    def _present(self, symbol: str, tf: Timeframe, files: list[Segment],
                 first: bool | None = None) -> dict[Segment, bool]:
        """Which of ``files`` are in the archive. The first is asked alone (a host that does not
        answer is found once); runs of files that are there are asked :data:`PROBES` at a
        time, runs of missing ones galloped through (every file, with ``strict``)."""
        n = len(files)
        state: list[bool | None] = [first] + [None] * (n - 1)
        pool = ThreadPoolExecutor(PROBES, thread_name_prefix="forge-archive-probe") if n > 1 else None

        def probe(i: int) -> bool:
            if state[i] is None:
                state[i] = self._probe(symbol, tf, files[i])
            return bool(state[i])

        def probe_many(indexes: list[int]) -> None:
            todo = [i for i in indexes if state[i] is None]
            if pool is None or len(todo) < 2:
                for i in todo:
                    probe(i)
                return
            for i, ok in zip(todo, pool.map(lambda k: self._probe(symbol, tf, files[k]), todo), strict=True):
                state[i] = ok

        try:
            if probe(0) and not self._first_asked:  # the run's first file: its zip downloads while the rest is probed
                self._first_asked = True
                self.client.prefetch(files[0].file.path(self.market, symbol, tf), symbol)  # type: ignore[union-attr]
            i = 0
            while i < n:
                if state[i] is None:
                    probe_many(list(range(i, min(n, i + PROBES))))
                if state[i] or self.strict:
                    i += 1
                    continue
                # a missing run starts at i: gallop to find where it ends
                last, step = i, 1
                while last + 1 < n:
                    j = min(last + step, n - 1)
                    if not probe(j):
                        last, step = j, step * 2
                        continue
                    lo, hi = last, j  # lo missing, hi there: bisect between them
                    while hi - lo > 1:
                        mid = (lo + hi) // 2
                        lo, hi = (mid, hi) if not probe(mid) else (lo, mid)
                    last = lo
                    break
                for k in range(i, last + 1):
                    state[k] = False
                i = last + 1
        finally:
            if pool is not None:
                pool.shutdown(wait=False)
        return {seg: bool(ok) for seg, ok in zip(files, state, strict=True)}

    def tasks(self, symbol: str, tf: Timeframe, seg: Segment) -> list[Task]:
        """The tasks of a file's segment: one, or its :func:`slices` read one after the other
        from one download (one :class:`_Stream`), so that no month is held whole."""
        assert seg.file is not None
        parts = slices(tf, seg)
        if len(parts) == 1:
            return [Task(symbol, tf, seg.start, seg.end, "archive", seg.file)]
        stream = _Stream(seg)
        return [Task(symbol, tf, a, b, "archive", seg.file, stream) for a, b in parts]

    def fetch(self, symbol: str, tf: Timeframe, f: ArchiveFile, start: int, end: int,
              stream: _Stream | None = None) -> Fetched:
        """The rows of ``f`` opening in ``[start, end)``; of the next slice of ``stream``
        (:meth:`tasks`) when given: slices are read in order, each waiting for the one before."""
        parts: list[tuple[Sequence[Row], str]] = []
        if stream is None:
            self._collect(symbol, tf, f, start, end, parts)
        else:
            self._slice(symbol, tf, f, start, end, stream, parts)
        out: Sequence[Row] = parts[0][0] if len(parts) == 1 else [r for rows, _ in parts for r in rows]
        if isinstance(out, list) and len(parts) > 1:
            out.sort(key=lambda r: r[OPEN_INDEX])
        origins = sorted({origin for rows, origin in parts if rows})
        return Fetched(out, "+".join(origins) or "archive")

    def _collect(self, symbol: str, tf: Timeframe, f: ArchiveFile, start: int, end: int,
                 parts: list[tuple[Sequence[Row], str]]) -> None:
        name = f.name(symbol, tf)
        count = self.client.count
        if self.unreachable is not None:
            return self._instead(symbol, tf, name, start, end, self.unreachable, parts)
        early: dict[tuple[int, int], Future[list[Row]]] = {}  # gaps asked from REST while the file is read

        def on_gap(a: int, b: int) -> None:
            early[(a, b)] = self._gap_pool().submit(self._rest_for, symbol, tf, a, b)

        try:
            try:
                path = f.path(self.market, symbol, tf)
                data = self.client.verified(path)
                self._ahead_of(path)  # the next files download while this one is read
                rows = None if data is None else read_rows(data, self.source, symbol, tf, start, end,
                                                          self.maker(symbol, tf), self.columns, on_gap, self.helper,
                                                          path)
            except ChecksumMismatch as exc:
                count("archive_checksum_failures")
                return self._instead(symbol, tf, name, start, end, f"failed verification: {exc}", parts)
            except ArchiveUnreachable as exc:
                count("archive_errors")
                self.unreachable = f"could not be fetched: archive host unreachable ({exc})"
                return self._instead(symbol, tf, name, start, end, self.unreachable, parts)
            except (ArchiveFailure, ValueError, IndexError, zipfile.BadZipFile) as exc:
                count("archive_errors")
                return self._instead(symbol, tf, name, start, end, f"unusable: {exc}", parts)
            return self._with_gaps(symbol, tf, f, start, end, rows, early, parts)
        finally:
            for future in early.values():  # asked for a file that is not used after all
                future.cancel()

    def _slice(self, symbol: str, tf: Timeframe, f: ArchiveFile, start: int, end: int, stream: _Stream,
               parts: list[tuple[Sequence[Row], str]]) -> None:
        """One slice of ``stream``, after the slice before it (planned and fetched in order)."""
        with stream.turn:
            while stream.at != start:
                if self.client.http.cancelled.is_set():
                    raise Cancelled("cancelled")
                stream.turn.wait(0.25)
        ok = False
        try:
            self._read_slice(symbol, tf, f, start, end, stream, parts)
            ok = True
        finally:
            with stream.turn:
                if (not ok or end >= stream.seg.end) and stream.reader is not None:
                    stream.reader.close()  # (a later slice after a failure reads the file again)
                    stream.reader = None
                stream.at = end
                stream.turn.notify_all()

    def _read_slice(self, symbol: str, tf: Timeframe, f: ArchiveFile, start: int, end: int, stream: _Stream,
                    parts: list[tuple[Sequence[Row], str]]) -> None:
        """As :meth:`_collect` for one slice: the file is downloaded and verified at the first;
        a file found missing or unusable is said once, and its later slices follow the first's
        way (daily files, or REST); the file counts as read at its last slice."""
        name = f.name(symbol, tf)
        count = self.client.count
        if stream.rest is not None:
            parts.append((self.rest(symbol, tf, start, end), "rest"))
            return None
        if stream.missing:
            return self._with_gaps(symbol, tf, f, start, end, None, {}, parts, said=True)
        if self.unreachable is not None and stream.reader is None:
            stream.rest = self.unreachable
            return self._instead(symbol, tf, name, start, end, self.unreachable, parts, stream.seg.end)
        early: dict[tuple[int, int], Future[list[Row]]] = {}

        def on_gap(a: int, b: int) -> None:
            early[(a, b)] = self._gap_pool().submit(self._rest_for, symbol, tf, a, b)

        try:
            try:
                if stream.reader is None:
                    path = f.path(self.market, symbol, tf)
                    data = self.client.verified(path)
                    self._ahead_of(path)
                    if data is None:
                        stream.missing = True
                        return self._with_gaps(symbol, tf, f, start, end, None, early, parts)
                    stream.reader = _Reader(data, self.source, symbol, tf, self.maker(symbol, tf), self.columns,
                                            self.helper, path)
                    del data
                rows = stream.reader.take(start, end, on_gap)
            except ChecksumMismatch as exc:
                count("archive_checksum_failures")
                stream.rest = f"failed verification: {exc}"
            except ArchiveUnreachable as exc:
                count("archive_errors")
                self.unreachable = stream.rest = f"could not be fetched: archive host unreachable ({exc})"
            except (ArchiveFailure, ValueError, IndexError, zipfile.BadZipFile) as exc:
                count("archive_errors")
                stream.rest = f"unusable: {exc}"
            if stream.rest is not None:
                return self._instead(symbol, tf, name, start, end, stream.rest, parts, stream.seg.end)
            return self._with_gaps(symbol, tf, f, start, end, rows, early, parts, counted=end >= stream.seg.end)
        finally:
            for future in early.values():
                future.cancel()

    def _with_gaps(self, symbol: str, tf: Timeframe, f: ArchiveFile, start: int, end: int,
                   rows: Sequence[Row] | None, early: dict[tuple[int, int], Future[list[Row]]],
                   parts: list[tuple[Sequence[Row], str]], *, said: bool = False, counted: bool = True) -> None:
        """The file's ``rows`` (None: it is missing; ``said``: already counted and logged), and
        from REST the candles it lacks: those asked while it was read (``early``) and any other
        gap :func:`find_gaps` finds. ``counted``: the file counts as read (a slice: its last)."""
        name = f.name(symbol, tf)
        count = self.client.count
        if rows is None:
            if not said:
                count("archive_missing")
            if f.period == "monthly" and tf.name in DAILY_TIMEFRAMES:
                if not said:
                    log.info("archive_monthly_missing", file=name, using="daily files")
                ts = start
                while ts < end:
                    day = day_file(ts)
                    self._collect(symbol, tf, day, ts, min(day.end, end), parts)
                    ts = day.end
                return None
            return self._instead(symbol, tf, name, start, end, "is not in the archive (HTTP 404)", parts)
        if counted:
            count("archive_files")
        parts.append((rows, "archive"))
        extra: list[Row] = []
        for a, b in find_gaps(rows, tf, start, end):
            asked = early.pop((a, b), None)
            extra += self.check(symbol, tf, a, b) if asked is None else asked.result()
        if extra:
            where = f"{iso(extra[0][OPEN_INDEX])}..{iso(extra[-1][OPEN_INDEX])}"
            if self.strict:
                raise SourceError(f"archive file {name} lacks {len(extra)} {tf.name} candles the exchange "
                                  f"serves ({where}); --archive auto fills them from REST")
            count("archive_gap_rows", len(extra))
            log.warning("archive_gap_filled", file=name, candles=len(extra), range=where)
            parts.append((extra, "rest"))
        return None

    def _gap_pool(self) -> ThreadPoolExecutor:
        with self._order_lock:
            if self._gaps is None:
                self._gaps = ThreadPoolExecutor(2, thread_name_prefix="forge-archive-gaps")
            return self._gaps

    def _rest_for(self, symbol: str, tf: Timeframe, start: int, end: int) -> list[Row]:
        with retrying.symbol_context(symbol):  # a retry's display names the symbol
            return self.check(symbol, tf, start, end)

    def close(self) -> None:
        with self._order_lock:
            pool, self._gaps = self._gaps, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self.helper is not None:
            self.helper.close()

    def _no_rest_advice(self, where: str) -> str:
        """Why ``where`` is not taken from REST instead (``strict``), and what would."""
        if self.no_rest is not None:  # REST refused this location: --archive auto would not help
            return f"{where} cannot come from REST either, which refused this location ({self.no_rest})"
        return f"with --archive archive nothing is taken from REST instead: use --archive auto to fetch {where} from REST"

    def _instead(self, symbol: str, tf: Timeframe, name: str, start: int, end: int, reason: str,
                 parts: list[tuple[Sequence[Row], str]], through: int | None = None) -> None:
        """REST for ``[start, end)`` in place of the file, said once: ``through`` is the end of
        what goes to REST with it (the file's later slices), if it goes on past ``end``."""
        where = f"{iso(start)}..{iso(max(end, through or end) - 1)}"
        if self.strict:
            raise SourceError(f"archive file {name} {reason}; " + self._no_rest_advice(where))
        self.client.count("archive_fallbacks")
        log.warning("archive_fallback", file=name, reason=reason, rest=where)
        parts.append((self.rest(symbol, tf, start, end), "rest"))
