"""Routes imitating Bybit's v5 market endpoints, for Forge's shared mock exchange.

Found through the entry point group ``forge_etl_mock`` (see ``pyproject.toml``), so
``forge mock-exchange`` serves Bybit too and tests get it from the testing kit's
``mock_exchange`` fixture. Candles come from Forge's deterministic synthetic market
(:mod:`forge_core.testing.market`), so :func:`bybit_rows` knows every expected candle exactly.
"""

from __future__ import annotations

from forge_core import parse_timeframe
from forge_core.testing import MockExchange, Request, Response
from forge_core.testing.market import MAINTENANCE, Listing, candle, has_candle, open_times

ENVIRONMENT = ("FORGE_BYBIT_URL",)  # the source's base-URL override: set to the mock's URL
LISTINGS = {"BTCUSDT": Listing("BTCUSDT", 1625443200000, (MAINTENANCE,), 4_200_000)}  # 2021-07-05
INTERVALS = {"1": "1m", "3": "3m", "5": "5m", "15": "15m", "30": "30m", "60": "1h", "120": "2h",
             "240": "4h", "360": "6h", "720": "12h", "D": "1d", "W": "1w", "M": "1M"}
MAX_LIMIT = 1000


def install(mock: MockExchange) -> None:
    def ok(result: dict) -> Response:
        return Response.json({"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": mock.now()})

    def error(code: int, msg: str) -> Response:  # Bybit answers bad parameters with HTTP 200
        return Response.json({"retCode": code, "retMsg": msg, "result": {}, "retExtInfo": {}, "time": mock.now()})

    def kline(req: Request) -> Response:
        """``/v5/market/kline``: the newest ``limit`` candles with ``start <= open <= end``,
        newest first, the still-open one included (Bybit sends it too); unknown symbols get an
        empty list."""
        interval = INTERVALS.get(req.arg("interval") or "")
        if interval is None:
            return error(10001, "Invalid period!")
        listing, tf, now = LISTINGS.get(req.arg("symbol") or ""), parse_timeframe(interval), mock.now()
        try:
            start, end = int(req.arg("start") or 0), int(req.arg("end") or now)
            limit = min(int(req.arg("limit") or 200), MAX_LIMIT)
        except ValueError:
            return error(10001, "params error")
        mock.count("bybit.requests")
        rows = []
        ts = tf.floor(min(end, now))
        while listing and ts >= start and len(rows) < limit:
            if has_candle(listing, tf, ts):
                o, h, lo, c, volume, turnover, *_ = candle(listing, tf, ts, now)
                rows.append([str(ts), o, h, lo, c, volume, turnover])
            ts = tf.floor(ts - 1)
        return ok({"symbol": req.arg("symbol"), "category": req.arg("category"), "list": rows})

    def instruments(req: Request) -> Response:
        found = [{"symbol": s, "status": "Trading"} for s in LISTINGS if s == req.arg("symbol")]
        return ok({"category": req.arg("category"), "list": found})

    def server_time(req: Request) -> Response:
        now = mock.now()
        return ok({"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)})

    mock.route("/v5/market/kline", kline)
    mock.route("/v5/market/instruments-info", instruments)
    mock.route("/v5/market/time", server_time)


def bybit_rows(symbol: str, timeframe: str, start: int, end: int, now: int) -> list[tuple]:
    """What a correct spot backfill of this mock produces, from the synthetic market alone:
    closed candles opening in ``[start, end)``, canonical columns then ``quote_volume``."""
    listing, tf = LISTINGS[symbol], parse_timeframe(timeframe)
    rows = []
    for ts in open_times(listing, tf, start, end):
        if tf.end_ts(ts) < now:  # closed candles only
            o, h, lo, c, volume, turnover, *_ = candle(listing, tf, ts)
            rows.append(("bybit", symbol, timeframe, ts, tf.end_ts(ts), o, h, lo, c, volume, turnover))
    return rows
