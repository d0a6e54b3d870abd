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
import io
import re
import threading
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from forge_core import (
    CANDLE_COLUMNS,
    DAY,
    EXTRA_COLUMNS,
    Cancelled,
    Fetched,
    GaveUp,
    HttpClient,
    Row,
    RowMaker,
    SourceError,
    Timeframe,
    get_logger,
    iso,
    row_maker,
)

log = get_logger(__name__)

ARCHIVE_URL = "https://data.binance.vision"
MARKET_DIRS = {"spot": "spot", "usdm": "futures/um", "coinm": "futures/cm"}
DAILY_TIMEFRAMES = frozenset({"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"})
# When the client assumes a file is published (the mock publishes earlier, see docs):
DAILY_LAG = DAY  # day D's file from D+2 00:00 UTC ("the next day", with a day of slack)
MONTHLY_LAG = DAY  # month M's file from the day after the first Monday of M+1
CHECKSUM_ATTEMPTS = 3  # downloads of a zip whose checksum does not match, before giving up on it
_MICROS = 10**13  # open times above this are microseconds (ms stay below until the year 2286)
_CHECKSUM_LINE = re.compile(r"^\s*([0-9a-fA-F]{64})\s+\*?(\S+)\s*$")


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


# -- checksum and parsing -----------------------------------------------------------------------
def parse_checksum(text: str, name: str) -> str:
    """The sha256 hex from a ``sha256sum`` line for ``name``; ValueError if it is not one."""
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _CHECKSUM_LINE.match(line)
        if m is None:
            raise ValueError(f"not a sha256sum line: {line[:80]!r}")
        if m.group(2) != name:
            raise ValueError(f"checksum is for {m.group(2)!r}, not {name!r}")
        return m.group(1).lower()
    raise ValueError("empty checksum file")


COLUMNS = CANDLE_COLUMNS + EXTRA_COLUMNS
"""The rows this module builds: the Binance source's columns."""
OPEN_INDEX = COLUMNS.index("open_ts")


def read_rows(data: bytes, source: str, symbol: str, tf: Timeframe, start: int, end: int,
              make: RowMaker | None = None) -> list[Row]:
    """Canonical rows opening in ``[start, end)`` from a verified zip, streamed from its CSV in
    1 MiB pieces (the archive's CSV has no quoting: fields are split on commas).

    A first line not starting with a digit is a header; timestamps above 1e13 are microseconds.
    ValueError (or IndexError) for anything that is not a kline CSV."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [n for n in zf.namelist() if n.lower().endswith(".csv")]
        if len(members) != 1:
            raise ValueError(f"expected one CSV in the zip, found {zf.namelist()}")
        out: list[Row] = []
        make = make or row_maker(COLUMNS, tf, source=source, symbol=symbol)
        with zf.open(members[0]) as raw:
            rest, first = b"", True
            while True:
                chunk = raw.read(1 << 20)
                if not chunk:
                    break
                cut = chunk.rfind(b"\n") + 1
                lines = (rest + chunk[:cut]).decode("utf-8").splitlines()
                rest = chunk[cut:] if cut else rest + chunk
                if first and lines:
                    first = False
                    if not lines[0][:1].isdigit():
                        lines = lines[1:]  # header row (newer futures files)
                _rows(lines, out, make, tf, start, end)
            if rest.strip():
                lines = rest.decode("utf-8").splitlines()
                if first and not lines[0][:1].isdigit():
                    lines = lines[1:]
                _rows(lines, out, make, tf, start, end)
        return out


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


def find_gaps(rows: list[Row], tf: Timeframe, start: int, end: int,
              open_index: int = OPEN_INDEX) -> list[tuple[int, int]]:
    """Ranges of ``[start, end)`` where ``rows`` (ascending) skip a candle open."""
    gaps = []
    expect = tf.ceil(start)
    if tf.ms is not None:  # the common case, without a method call per row
        ms = tf.ms
        for row in rows:
            ts = row[open_index]
            if ts != expect:
                if ts >= end:
                    break
                if ts > expect:
                    gaps.append((expect, ts))
            expect = ts + ms
        if expect < end:
            gaps.append((expect, end))
        return gaps
    for row in rows:
        ts = row[open_index]
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
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

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

    def verified(self, path: str) -> bytes | None:
        """The zip at ``path`` after its ``.CHECKSUM`` matched, or None if either is missing (404).

        A mismatch (or an unreadable checksum) is downloaded again, up to
        :data:`CHECKSUM_ATTEMPTS` times, then raised as ArchiveFailure."""
        name = path.rsplit("/", 1)[1]
        problem = ""
        for attempt in range(1, CHECKSUM_ATTEMPTS + 1):
            if attempt > 1:
                self.count("archive_retries")
                log.info("archive_retry", file=name, attempt=attempt, problem=problem)
                if self.http.cancelled.wait(0.2 * attempt):
                    raise Cancelled("cancelled")
            text = self.get(path + ".CHECKSUM")
            if text is None:
                return None
            try:
                want = parse_checksum(text.decode("utf-8", "replace"), name)
            except ValueError as exc:
                problem = f"unreadable .CHECKSUM ({exc})"
                continue
            data = self.get(path)
            if data is None:
                return None
            got = hashlib.sha256(data).hexdigest()
            if got == want:
                return data
            problem = f"sha256 {got[:16]}... != .CHECKSUM {want[:16]}... ({len(data)} bytes)"
        raise ChecksumMismatch(f"{problem} after {CHECKSUM_ATTEMPTS} downloads")

    def close(self) -> None:
        self.http.close()


# -- a task's rows, with fallbacks --------------------------------------------------------------
RestFetch = Callable[[str, Timeframe, int, int], list[Row]]


class ArchiveFetcher:
    """Rows of one archive task. A monthly file that is missing (404) is replaced by the daily
    files of its days; a file that is missing or fails verification is replaced by REST for
    its range (``strict``: a SourceError instead); candles missing inside a file are asked
    from REST, so a short file cannot leave a hole the exchange does not have."""

    def __init__(self, client: ArchiveClient, market: str, source: str, rest: RestFetch, strict: bool,
                 maker: Callable[[str, Timeframe], RowMaker] | None = None) -> None:
        self.client, self.market, self.source, self.rest, self.strict = client, market, source, rest, strict
        self.maker = maker or (lambda symbol, tf: row_maker(COLUMNS, tf, source=source, symbol=symbol))
        self.unreachable: str | None = None  # once the host is down, the other files go to REST at once

    def fetch(self, symbol: str, tf: Timeframe, f: ArchiveFile, start: int, end: int) -> Fetched:
        parts: list[tuple[list[Row], str]] = []
        self._collect(symbol, tf, f, start, end, parts)
        out = parts[0][0] if len(parts) == 1 else [r for rows, _ in parts for r in rows]
        if len(parts) > 1:
            out.sort(key=lambda r: r[OPEN_INDEX])
        origins = sorted({origin for rows, origin in parts if rows})
        return Fetched(out, "+".join(origins) or "archive")

    def _collect(self, symbol: str, tf: Timeframe, f: ArchiveFile, start: int, end: int,
                 parts: list[tuple[list[Row], str]]) -> None:
        name = f.name(symbol, tf)
        count = self.client.count
        if self.unreachable is not None:
            return self._instead(symbol, tf, name, start, end, self.unreachable, parts)
        try:
            data = self.client.verified(f.path(self.market, symbol, tf))
            rows = None if data is None else read_rows(data, self.source, symbol, tf, start, end,
                                                      self.maker(symbol, tf))
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
        if rows is None:
            count("archive_missing")
            if f.period == "monthly" and tf.name in DAILY_TIMEFRAMES:
                log.info("archive_monthly_missing", file=name, using="daily files")
                ts = start
                while ts < end:
                    day = day_file(ts)
                    self._collect(symbol, tf, day, ts, min(day.end, end), parts)
                    ts = day.end
                return None
            return self._instead(symbol, tf, name, start, end, "is not in the archive (HTTP 404)", parts)
        count("archive_files")
        parts.append((rows, "archive"))
        extra = [r for a, b in find_gaps(rows, tf, start, end) for r in self.rest(symbol, tf, a, b)]
        if extra:
            where = f"{iso(extra[0][OPEN_INDEX])}..{iso(extra[-1][OPEN_INDEX])}"
            if self.strict:
                raise SourceError(f"archive file {name} lacks {len(extra)} {tf.name} candles the exchange "
                                  f"serves ({where}); --archive auto fills them from REST")
            count("archive_gap_rows", len(extra))
            log.warning("archive_gap_filled", file=name, candles=len(extra), range=where)
            parts.append((extra, "rest"))
        return None

    def _instead(self, symbol: str, tf: Timeframe, name: str, start: int, end: int, reason: str,
                 parts: list[tuple[list[Row], str]]) -> None:
        where = f"{iso(start)}..{iso(end - 1)}"
        if self.strict:
            raise SourceError(f"archive file {name} {reason}; with --archive archive nothing is taken "
                              f"from REST instead: use --archive auto to fetch {where} from REST")
        self.client.count("archive_fallbacks")
        log.warning("archive_fallback", file=name, reason=reason, rest=where)
        parts.append((self.rest(symbol, tf, start, end), "rest"))
