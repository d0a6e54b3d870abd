"""The mock's candles coarser than 1m are its 1m candles aggregated, as a real exchange's: open of
the first, close of the last, high/low the extremes, volumes and trades summed exactly, in the
exchange's own number format, over the 1m candles that exist (holes, the listing left out),
the still-open candle over the minutes so far. Checked against the 1m candles the routes serve,
aggregated here with Decimal; the 1m candles themselves are pinned to their values."""

from __future__ import annotations

import io
import random
import zipfile
from decimal import Decimal
from typing import Any

import pytest
import requests

from forge_core.testing import FROZEN_NOW, MockConfig, MockExchange, market
from forge_core.timeframes import DAY, HOUR, MINUTE, parse_timeframe
from forge_okx.mock import HongKong

JAN_10 = 1704844800000  # 2024-01-10: the maintenance hole 03:00-05:30
NEW_LISTED = market.NEW_LISTED  # NEWUSDT / NEW-USDT from 2024-01-15 08:00
PREFIX = {"spot": "/api/v3", "usdm": "/fapi/v1", "coinm": "/dapi/v1"}


@pytest.fixture(scope="module")
def mock() -> Any:
    """A mock of this module's own, its rate limits out of the way of many 1m pages."""
    config = MockConfig(now=FROZEN_NOW, binance_weight_limit=10**9, binance_futures_weight_limit=10**9,
                        extra={"okx_history_rate": 10**9})
    with MockExchange(config) as server:
        yield server


def binance(mock: Any, flavor: str, symbol: str, interval: str, start: int, end: int) -> list[list]:
    """The klines opening in ``[start, end)``, in windows of at most 1000 candles."""
    tf, rows = parse_timeframe(interval), []
    while start < end:
        stop = min(end, tf.next_open(start, 1000))
        rows += requests.get(f"{mock.url}{PREFIX[flavor]}/klines", timeout=30, params={
            "symbol": symbol, "interval": interval, "startTime": start, "endTime": stop - 1, "limit": 1000}).json()
        start = stop
    return rows


def okx(mock: Any, inst: str, bar: str, start: int, end: int) -> list[list[str]]:
    """The bars opening in ``[start, end)``, oldest first."""
    rows: list[list[str]] = []
    while True:
        page = requests.get(f"{mock.url}/api/v5/market/history-candles", timeout=30, params={
            "instId": inst, "bar": bar, "after": end, "before": start - 1, "limit": 300}).json()["data"]
        rows += page
        if len(page) < 300:
            return rows[::-1]
        end = int(page[-1][0])


def fixed(d: Decimal) -> str:
    return format(d, "f")


def plain(d: Decimal) -> str:
    return format(d.normalize(), "f")


def aggregate(minutes: list[list], floor, number, summed: tuple[int, ...]) -> dict[int, list]:
    """1m rows by period: ``[ts, o, h, l, c, ...]``, the columns ``summed`` added up, any other
    one the first minute's (the caller sets the times)."""
    out: dict[int, list] = {}
    for r in minutes:
        acc = out.setdefault(floor(int(r[0])), [Decimal(v) if i < 5 or (i in summed and isinstance(v, str)) else v
                                                 for i, v in enumerate(r)])
        if acc[0] == Decimal(r[0]):
            continue
        acc[2], acc[3], acc[4] = max(acc[2], Decimal(r[2])), min(acc[3], Decimal(r[3])), Decimal(r[4])
        for i in summed:
            acc[i] += Decimal(r[i]) if isinstance(r[i], str) else r[i]
    return {k: [number(v) if isinstance(v, Decimal) else v for v in acc] for k, acc in out.items()}


BINANCE_CASES = [
    ("spot", "BTCUSDT", "1h", JAN_10, JAN_10 + DAY),  # 03:00 and 04:00 missing, 05:00 of 30 minutes
    ("spot", "BTCUSDT", "15m", JAN_10 + 2 * HOUR, JAN_10 + 6 * HOUR),
    ("spot", "ETHUSDT", "1d", JAN_10 - 2 * DAY, JAN_10 + 2 * DAY),
    ("spot", "NEWUSDT", "1d", NEW_LISTED - 8 * HOUR, NEW_LISTED + 40 * HOUR),  # the listing day: 16 hours
    ("spot", "NEWUSDT", "1w", 1704672000000, 1706486400000),  # Mondays 2024-01-08 .. 01-29
    ("spot", "BTCUSDT", "3d", 1704585600000, 1705104000000),  # epoch-aligned: 2024-01-07, 01-10
    ("spot", "ADAUSDT", "1M", 1706745600000, 1709251200000),  # February 2024: 29 days
    ("usdm", "BTCUSDT", "4h", JAN_10, JAN_10 + DAY),
    ("coinm", "BTCUSD_PERP", "1d", JAN_10 - DAY, JAN_10 + DAY),
    ("spot", "BTCUSDT", "1h", FROZEN_NOW - FROZEN_NOW % HOUR - HOUR, FROZEN_NOW),  # the open hour
    ("spot", "BTCUSDT", "1d", FROZEN_NOW - FROZEN_NOW % DAY, FROZEN_NOW),  # the open day
    ("usdm", "BTCUSDT", "1w", 1741564800000, FROZEN_NOW),  # the open week, from Monday 03-10
]


@pytest.mark.parametrize("flavor,symbol,interval,start,end", BINANCE_CASES)
def test_binance_candles_are_the_aggregate_of_its_1m_candles(mock, flavor, symbol, interval, start, end):
    tf = parse_timeframe(interval)
    native = binance(mock, flavor, symbol, interval, start, end)
    minutes = binance(mock, flavor, symbol, "1m", tf.ceil(start), tf.next_open(tf.floor(end - 1)))
    want = aggregate(minutes, tf.floor, fixed, (5, 7, 8, 9, 10))
    assert native and [r[0] for r in native] == sorted(want)
    for row in native:
        expect = want[row[0]]
        expect[0], expect[6] = row[0], tf.end_ts(row[0])
        assert row == expect


OKX_CASES = [
    ("BTC-USDT", "1H", JAN_10, JAN_10 + DAY),
    ("BTC-USDT-SWAP", "1Dutc", JAN_10 - DAY, JAN_10 + 2 * DAY),
    ("BTC-USDT", "1D", JAN_10 - 8 * HOUR, JAN_10 + 40 * HOUR),  # Hong Kong days: 16:00 UTC to 16:00 UTC
    ("NEW-USDT", "1D", NEW_LISTED - 16 * HOUR, NEW_LISTED + 32 * HOUR),  # listed 08:00 UTC = 16:00 HK
    ("BTC-USDT", "6H", JAN_10 - 8 * HOUR, JAN_10 + 16 * HOUR),
    ("BTC-USDT", "1H", FROZEN_NOW - FROZEN_NOW % HOUR - HOUR, FROZEN_NOW),  # the open bar
]


@pytest.mark.parametrize("inst,bar,start,end", OKX_CASES)
def test_okx_bars_are_the_aggregate_of_its_1m_bars(mock, inst, bar, start, end):
    from forge_okx.mock import bar as okx_bar

    tf = okx_bar(bar, True)
    assert tf is not None
    native = okx(mock, inst, bar, start, end)
    minutes = okx(mock, inst, "1m", tf.ceil(start), tf.next_open(tf.floor(end - 1)))
    # OKX's rows: ts o h l c vol volCcy volCcyQuote confirm; confirm is no volume, set below
    want = aggregate([r[:8] for r in minutes], tf.floor, plain, (5, 6, 7))
    assert native and [int(r[0]) for r in native] == sorted(want)
    for row in native:
        expect = want[int(row[0])]
        expect[0] = row[0]
        assert row == [*expect, "1" if tf.next_open(int(row[0])) <= FROZEN_NOW else "0"]
    assert isinstance(tf, HongKong) == (bar in ("1D", "6H"))


def test_the_archive_serves_the_rest_candles(mock):
    """data.binance.vision's monthly 1d and daily 1h files: the REST klines, row for row."""
    for path, interval, start, end in (
            ("monthly/klines/BTCUSDT/1d/BTCUSDT-1d-2024-01.zip", "1d", 1704067200000, 1706745600000),
            ("daily/klines/BTCUSDT/1h/BTCUSDT-1h-2024-01-10.zip", "1h", JAN_10, JAN_10 + DAY)):
        body = requests.get(f"{mock.url}/data/spot/{path}", timeout=30)
        assert body.status_code == 200, path
        text = zipfile.ZipFile(io.BytesIO(body.content)).read(path.rsplit("/", 1)[1][:-4] + ".csv").decode()
        rest = binance(mock, "spot", "BTCUSDT", interval, start, end)
        assert text.splitlines() == [",".join(map(str, r)) for r in rest]


def test_1m_candles_are_unchanged(mock):
    """The 1m candles are what they always were (tests, the README and benchmarks quote them)."""
    (row,) = binance(mock, "spot", "BTCUSDT", "1m", 1704067200000, 1704067260000)
    assert row == [1704067200000, "36028.44000000", "36078.00000000", "36028.44000000", "36030.08000000",
                   "12.44608762", 1704067259999, "448433.53263560", 746, "7.71657432", "278028.79007554", "0"]
    (flat,) = binance(mock, "spot", "BTCUSDT", "1m", 1704311220000, 1704311280000)  # no trades
    assert flat[1:6] == ["32065.70000000"] * 4 + ["0.00000000"] and flat[8] == 0
    minute = FROZEN_NOW - FROZEN_NOW % MINUTE
    (still,) = binance(mock, "spot", "BTCUSDT", "1m", minute, minute + MINUTE)  # open: volumes so far
    assert still[1:6] == ["41141.96000000", "41220.12000000", "41094.43000000", "41133.51000000", "0.04734000"]
    assert still[7:11] == ["2873.11720000", 7, "0.02000000", "1213.88000000"]


def test_bulk_minutes_equal_the_minute_by_minute_reference():
    """The numpy path (forge_core.testing._minutes) against market._minutes, one 1m candle at
    a time: whole days, hours and odd stretches, with the hole, the listing and a delisting."""
    pytest.importorskip("numpy")
    from forge_core.testing import _minutes

    spot = market.Market.binance_spot()
    rng = random.Random(7)
    for symbol, day in (("BTCUSDT", JAN_10), ("NEWUSDT", NEW_LISTED - NEW_LISTED % DAY),
                        ("OLDUSDT", market.DELISTED - DAY), ("ADAUSDT", 1583020800000)):
        listing = spot.get(symbol)
        assert listing is not None
        assert _minutes.whole_day(listing, day) == market._minutes(listing, day, day + DAY)
        hours = _minutes.day_hours(listing, day)
        assert list(hours) == [market._minutes(listing, t, t + HOUR) for t in range(day, day + DAY, HOUR)]
        for _ in range(5):
            a, b = sorted(rng.sample(range(1441), 2))
            start, stop = day + a * MINUTE, day + b * MINUTE
            assert _minutes.day_part(listing, day, start, stop) == market._minutes(listing, start, stop)
