"""data.binance.vision for the synthetic market: monthly and daily kline zips with ``.CHECKSUM``.

Paths as on the real host (``exchange-apis.md`` section B)::

    /data/{spot|futures/um|futures/cm}/{monthly|daily}/klines/{SYM}/{iv}/{SYM}-{iv}-{date}.zip[.CHECKSUM]

``iv`` is ``1mo`` for a month (``1M`` is a 404, as on the real host); daily files exist for
``1s``..``1d`` only; futures have no ``1s``. The candles are those of the REST routes
(``forge_binance.mock.SPOT``/``USDM`` markets, ``Market.binance_coinm()`` for ``futures/cm``).

Publication, relative to ``mock.now()``: a daily file from 00:00 UTC the next day; a monthly
file from 00:00 UTC on the first Monday of the next month (Binance's stated schedule), and
never before its last candle has closed. Unpublished files, unknown symbols or intervals and
periods without a candle (before the listing, after a delisting: the month of the last candle
is published with the candles up to it, the files after it never are) are 404s.

Format quirks: spot files have no header and, from 2025-01-01, microsecond timestamps; futures
files start with a header row from 2022-01-01 on, none before.

Faults for tests, in ``mock.config.extra``:

* ``archive_corrupt = {"BTCUSDT-1m-2024-02.zip": kind}`` with kind ``zip`` (bytes flipped, the
  checksum is the intact file's), ``zip_once`` (only the first download is damaged),
  ``checksum`` (a wrong hash), ``short`` (rows 10-19 left out, checksum matching the short zip)
  or ``values`` (rows 10-19 with another close than REST serves, checksum matching: a file
  re-uploaded with different candles, which only a cross-check against REST finds);
* ``archive_missing = {"BTCUSDT-1m-2024-02.zip", ...}``: 404 although published.

Both are read on every request: setting ``short`` or ``values`` while the mock runs (after a
load) is Binance re-publishing the file, with a new ``.CHECKSUM``; removing it again re-publishes
the intact one.

The bucket listing, ``GET /?prefix=data/.../klines/{SYM}/{iv}/[name start]&marker=...&max-keys=N``
(with ``delimiter=/`` and ``prefix=data/.../klines/[name start]``: the symbol folders, as
``CommonPrefixes``),
answers in the shape of S3's ListObjects (v1) XML: ``ListBucketResult`` with a ``Contents``
entry (``Key``, ``LastModified``, ``ETag``, ``Size``, ``StorageClass``) for each zip and its
``.CHECKSUM`` in key order, ``IsTruncated`` past ``max-keys`` (default and at most 1000), the
next page from ``marker`` (the last key). The real listing is the bucket's own S3 endpoint
(``https://s3-ap-northeast-1.amazonaws.com/data.binance.vision``, third-party scripts; its
exact field values are unverified here); ``data.binance.vision/?prefix=`` itself is a browser
page. The mock lists only prefixes down to a symbol's interval folder (others: no keys), and
files by the listing and delisting times (a period wholly inside a hole is still listed).

Generated zips are cached in a process-wide LRU (content depends only on the path and the
corruption kind), so repeated downloads cost nothing.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import zipfile
from collections import OrderedDict
from datetime import datetime, timedelta, timezone

from forge_core.testing.market import Listing, Market, candle, open_times
from forge_core.testing.server import MockExchange, Request, Response
from forge_core.timeframes import NAMES, Timeframe, parse_timeframe

from .mock import SPOT, USDM

ENVIRONMENT = ("FORGE_BINANCE_ARCHIVE_URL",)  # what `forge mock-exchange` tells users to export

PATH_RE = re.compile(
    r"^/data/(spot|futures/um|futures/cm)/(monthly|daily)/klines/([A-Z0-9_.\-]{1,30})/([0-9a-z]{2,3})/"
    r"([A-Z0-9_.\-]{1,30})-([0-9a-z]{2,3})-(\d{4}-\d{2}(?:-\d{2})?)\.zip(\.CHECKSUM)?$")
MARKETS: dict[str, Market] = {"spot": SPOT.market, "futures/um": USDM.market, "futures/cm": Market.binance_coinm()}
DAILY = frozenset({"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"})
MICROS_FROM = 1735689600000  # 2025-01-01: spot files in microseconds from here
HEADER_FROM = 1640995200000  # 2022-01-01: futures files with a header row from here
HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore"
CACHE_BYTES = 512 * 1024 * 1024
NOT_FOUND = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>"


class _Cache:
    """Zip bytes and sha256 by (path, corruption), least recently used out past CACHE_BYTES."""

    def __init__(self) -> None:
        self.items: OrderedDict[tuple[str, str], tuple[bytes, str]] = OrderedDict()
        self.size = 0
        self.lock = threading.Lock()
        self.building: dict[tuple[str, str], threading.Lock] = {}

    def get(self, key: tuple[str, str], build) -> tuple[bytes, str]:
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
                return hit
            gate = self.building.setdefault(key, threading.Lock())
        with gate:  # one thread builds a file, the others wait for it
            with self.lock:
                hit = self.items.get(key)
            if hit is not None:
                return hit
            data = build()
            value = (data, hashlib.sha256(data).hexdigest())
            with self.lock:
                self.items[key] = value
                self.size += len(data)
                self.building.pop(key, None)
                while self.size > CACHE_BYTES and len(self.items) > 1:
                    _, (old, _) = self.items.popitem(last=False)
                    self.size -= len(old)
            return value


CACHE = _Cache()


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc)


def _ms(d: datetime) -> int:
    return int(d.timestamp()) * 1000


def period_of(kind: str, date: str) -> tuple[int, int, int] | None:
    """``(start, end, published_at)`` of a file, or None for a date that does not exist."""
    try:
        if kind == "daily":
            day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
            start, end = _ms(day), _ms(day + timedelta(days=1))
            return start, end, end
        first = datetime.strptime(date, "%Y-%m").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    nxt = datetime(first.year + first.month // 12, first.month % 12 + 1, 1, tzinfo=timezone.utc)
    monday = nxt + timedelta(days=(7 - nxt.weekday()) % 7)
    return _ms(first), _ms(nxt), _ms(monday)


def csv_bytes(listing: Listing, tf: Timeframe, start: int, end: int, *, micros: bool, header: bool,
              skip: range = range(0), alter: range = range(0)) -> bytes:
    lines = [HEADER] if header else []
    for i, ts in enumerate(open_times(listing, tf, start, end)):
        if i in skip:
            continue
        o, h, lo, c, v, qv, n, tb, tq = candle(listing, tf, ts)
        if i in alter:  # another close than REST's, still inside the candle's range
            c = lo if c != lo else h
        close = tf.end_ts(ts)
        if micros:
            ts, close = ts * 1000, close * 1000 + 999
        lines.append(f"{ts},{o},{h},{lo},{c},{v},{close},{qv},{n},{tb},{tq},0")
    if len(lines) == (1 if header else 0):  # no candle (before the listing, after a delisting): no file, not a header alone
        return b""
    return ("\n".join(lines) + "\n").encode()


def zip_bytes(csv_name: str, data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr(csv_name, data)
    return out.getvalue()


def serve(mock: MockExchange, req: Request) -> Response:
    m = PATH_RE.match(req.path)
    if m is None:
        return _missing(mock)
    where, kind, symbol, iv, symbol2, iv2, date, checksum = m.groups()
    market = MARKETS[where]
    listing = market.get(symbol)
    intervals = NAMES if where == "spot" else tuple(n for n in NAMES if n != "1s")
    tf_name = "1M" if iv == "1mo" else iv
    if (listing is None or symbol2 != symbol or iv2 != iv or tf_name not in intervals or iv == "1M"
            or (kind == "daily" and (tf_name not in DAILY or len(date) != 10))
            or (kind == "monthly" and len(date) != 7)):
        return _missing(mock)
    period = period_of(kind, date)
    if period is None:
        return _missing(mock)
    start, end, published = period
    tf = parse_timeframe(tf_name)
    published = max(published, tf.next_open(tf.floor(end - 1)))  # the last candle has closed
    name = f"{symbol}-{iv}-{date}.zip"
    extra = mock.config.extra
    if mock.now() < published or name in extra.get("archive_missing", ()):
        return _missing(mock)
    corrupt = extra.get("archive_corrupt", {}).get(name, "")
    if corrupt == "zip_once":
        with mock.lock:
            seen = mock.state.setdefault("archive.zip_once", set())
            first = name not in seen
            if not checksum:
                seen.add(name)
        corrupt = "zip" if first else ""
    variant = corrupt if corrupt in ("short", "values", "tail") else ""

    def build() -> bytes:
        rows = csv_bytes(listing, tf, start, end, micros=where == "spot" and start >= MICROS_FROM,
                         header=where != "spot" and start >= HEADER_FROM,
                         skip=range(10, 20) if variant == "short" else range(tf.count(start, end) * 17 // 20, 1 << 62)
                         if variant == "tail" else range(0),
                         alter=range(10, 20) if variant == "values" else range(0))
        return zip_bytes(name[:-4] + ".csv", rows) if rows else b""

    data, digest = CACHE.get((req.path.removesuffix(".CHECKSUM"), variant), build)
    if not data:  # no candle in the period: before the listing
        return _missing(mock)
    if checksum:
        mock.count("archive.checksum")
        if corrupt == "checksum":
            digest = hashlib.sha256(b"not the file").hexdigest()
        return Response(200, f"{digest}  {name}\n".encode(), content_type="text/plain")
    mock.count("archive.zip")
    if corrupt == "zip":
        mock.count("archive.corrupted")
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:]
    return Response(200, data, content_type="application/zip")


LISTING_RE = re.compile(r"^data/(spot|futures/um|futures/cm)/(monthly|daily)/klines/([A-Z0-9_.\-]{1,30})/([0-9a-z]{2,3})/")
S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


FOLDERS_RE = re.compile(r"^data/(spot|futures/um|futures/cm)/(monthly|daily)/klines/([A-Z0-9_.\-]{0,30})$")


def listed_folders(prefix: str) -> list[str]:
    """With ``delimiter=/``: the symbol folders under ``data/.../klines/`` whose names start
    with the rest of ``prefix`` (the market's own symbols, not the load-test ones), sorted."""
    m = FOLDERS_RE.match(prefix)
    if m is None:
        return []
    where, kind, start = m.groups()
    return sorted(f"data/{where}/{kind}/klines/{name}/" for name in MARKETS[where].listings if name.startswith(start))


def listed_keys(mock: MockExchange, prefix: str) -> list[str]:
    """Every key of the bucket under ``prefix`` (a symbol's interval folder or deeper), sorted."""
    m = LISTING_RE.match(prefix)
    if m is None:
        return []
    where, kind, symbol, iv = m.groups()
    listing = MARKETS[where].get(symbol)
    tf_name = "1M" if iv == "1mo" else iv
    intervals = NAMES if where == "spot" else tuple(n for n in NAMES if n != "1s")
    if listing is None or tf_name not in intervals or iv == "1M" or (kind == "daily" and tf_name not in DAILY):
        return []
    tf = parse_timeframe(tf_name)
    now = mock.now()
    last = min(now, listing.delisted) if listing.delisted is not None else now
    missing = mock.config.extra.get("archive_missing", ())
    folder = f"data/{where}/{kind}/klines/{symbol}/{iv}/"
    keys = []
    day = _utc(listing.listed).replace(hour=0, minute=0, second=0, microsecond=0)
    if kind == "monthly":
        day = day.replace(day=1)
    while _ms(day) < last:
        date = day.strftime("%Y-%m-%d" if kind == "daily" else "%Y-%m")
        start, end, published = period_of(kind, date)  # type: ignore[misc]
        name = f"{symbol}-{iv}-{date}.zip"
        first = max(tf.ceil(start), tf.floor(listing.listed))  # the period's first candle, holes aside
        some = first < end and (listing.delisted is None or tf.next_open(first) <= listing.delisted)
        if now >= max(published, tf.next_open(tf.floor(end - 1))) and name not in missing and some:
            keys += [folder + name, folder + name + ".CHECKSUM"]
        day = _utc(end)
    return sorted(k for k in keys if k.startswith(prefix))


def listing(mock: MockExchange, req: Request) -> Response:
    from xml.sax.saxutils import escape

    prefix, marker = req.arg("prefix") or "", req.arg("marker") or ""
    text = req.arg("max-keys") or "1000"
    limit = min(int(text), 1000) if text.isdigit() else 1000
    folders = req.arg("delimiter") == "/" and FOLDERS_RE.match(prefix) is not None
    keys = [k for k in (listed_folders(prefix) if folders else listed_keys(mock, prefix)) if k > marker]
    page, truncated = keys[:limit], len(keys) > limit
    mock.count("archive.listing")
    if folders:  # a folder listing: CommonPrefixes, and NextMarker as S3 sends with a delimiter
        contents = "".join(f"<CommonPrefixes><Prefix>{escape(k)}</Prefix></CommonPrefixes>" for k in page)
        contents += f"<NextMarker>{escape(page[-1])}</NextMarker>" if truncated else ""
    else:
        contents = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>2024-04-01T06:12:31.000Z</LastModified>"
            f"<ETag>&quot;{hashlib.md5(k.encode()).hexdigest()}&quot;</ETag>"
            f"<Size>{100 if k.endswith('CHECKSUM') else 50000}</Size><StorageClass>STANDARD</StorageClass></Contents>"
            for k in page)
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{S3_NS}"><Name>data.binance.vision</Name>'
            f"<Prefix>{escape(prefix)}</Prefix><Marker>{escape(marker)}</Marker><MaxKeys>{limit}</MaxKeys>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{contents}</ListBucketResult>")
    return Response(200, body.encode(), content_type="application/xml")


def _missing(mock: MockExchange) -> Response:
    mock.count("archive.404")
    return Response(404, NOT_FOUND, content_type="application/xml")


def install(mock: MockExchange) -> None:
    mock.route_prefix("/data/", lambda req: serve(mock, req))
    mock.route("/", lambda req: listing(mock, req))
