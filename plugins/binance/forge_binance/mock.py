"""Binance spot (``/api/v3``), USD-M (``/fapi/v1``) and COIN-M (``/dapi/v1``, end-anchored
windows of at most 200 days) market-data endpoints.

Formats, errors and limits follow ``exchange-apis.md`` section A: 12-field kline rows with
ints at 0/6/8; ``startTime <= openTime <= endTime``; 400 bodies ``{"code":-1121,...}``;
request weight per IP in a fixed window reported in ``X-MBX-USED-WEIGHT-1M``; 429 with
``Retry-After`` past the limit, and a 418 ban for clients that keep going after 429s.

``extra["binance_errors"] = [[status, code], ...]``: the next klines requests answer these, one
each, in order, with the docs' message for the code (``errors.md`` 10xx, "General Server or
Network issues": -1000, -1001, -1006, -1007, -1008 can come with 400, 408, 503... not only 5xx).

``extra["binance_future_403"] = True``: klines with a ``startTime`` or ``endTime`` after the
exchange's clock answer HTTP 403 with an empty body, as one third party reports the live API
does ("particularly strict for FUTURES_COIN"; ccxt clamps inverse ``endTime`` to now). Doubtful
(``exchange-apis.md`` F.5), so opt-in: by default such a request is answered as any other.

An expired delivery contract (``Listing.expired``: ``BTCUSDT_240329``, ``BTCUSD_240329``) is
gone from exchangeInfo after its delivery, as Binance removes them; its archive files stay.
What REST klines answer for it is not documented (unverified): ``extra["expired_klines"]`` =
``"invalid"`` (default: 400 -1121, as for a symbol never listed: the answer that proves
nothing, so a client must not lean on it), ``"empty"`` (``[]``) or ``"serve"`` (its candles).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

from forge_core.testing.market import Listing, Market, candle, has_candle, open_times
from forge_core.testing.server import MockExchange, Request, Response
from forge_core.timeframes import NAMES, parse_timeframe

ENVIRONMENT = ("FORGE_BINANCE_URL", "FORGE_BINANCE_FUTURES_URL", "FORGE_BINANCE_COINM_URL")

SYMBOL_RE = re.compile(r"^[A-Z0-9\-_.]{1,20}$")
DIGITS_RE = re.compile(r"^[0-9]{1,20}$")
SYMBOLS_RE = re.compile(r'^\[("[A-Z0-9\-_.]{1,20}"(,"[A-Z0-9\-_.]{1,20}")*)?\]$')  # exchangeInfo `symbols`
class PageCache:
    """Rendered kline pages of closed ranges, least recently used first out, bounded in bytes.

    Generating a 1000-candle page costs the mock ~15 ms of Python; on a 2-core machine that
    competes with the client it serves. A warmed cache lets benchmarks measure the client."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        from collections import OrderedDict
        from threading import Lock

        self.max_bytes, self.size = max_bytes, 0
        self.pages: OrderedDict[tuple[str, str], tuple[bytes, int]] = OrderedDict()
        self.lock = Lock()

    def get(self, key: tuple[str, str]) -> tuple[bytes, int] | None:
        with self.lock:
            found = self.pages.get(key)
            if found is not None:
                self.pages.move_to_end(key)
            return found

    def put(self, key: tuple[str, str], value: tuple[bytes, int]) -> None:
        with self.lock:
            if key in self.pages:
                return
            self.pages[key] = value
            self.size += len(value[0])
            while self.size > self.max_bytes:
                self.size -= len(self.pages.popitem(last=False)[1][0])


BAN_AFTER = 5  # over-limit requests tolerated after a 429 before a ban
BAN_SECONDS = 120
COINM_SPAN = 200 * 86_400_000  # COIN-M: at most 200 days between startTime and endTime


@dataclass
class Flavor:
    key: str  # "spot" | "usdm"
    prefix: str  # "/api/v3" | "/fapi/v1"
    market: Market
    intervals: tuple[str, ...]
    max_limit: int
    params: frozenset[str]

    def weight(self, limit: int) -> int:
        if self.key == "spot":
            return 2
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


SPOT = Flavor("spot", "/api/v3", Market.binance_spot(), NAMES, 1000,
              frozenset({"symbol", "interval", "startTime", "endTime", "limit", "timeZone"}))
COINM = Flavor("coinm", "/dapi/v1", Market.binance_coinm(), tuple(n for n in NAMES if n != "1s"), 1500,
               frozenset({"symbol", "interval", "startTime", "endTime", "limit"}))
USDM = Flavor("usdm", "/fapi/v1", Market.binance_usdm(), tuple(n for n in NAMES if n != "1s"), 1500,
              frozenset({"symbol", "interval", "startTime", "endTime", "limit"}))


# errors.md, "10xx - General Server or Network issues" (the messages as the docs give them)
SERVER_ERRORS = {
    -1000: "An unknown error occurred while processing the request.",
    -1001: "Internal error; unable to process your request. Please try again.",
    -1006: "An unexpected response was received from the message bus. Execution status unknown.",
    -1007: "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
    -1008: "Server is currently overloaded with other requests. Please try again in a few minutes.",
}


def error(code: int, msg: str, status: int = 400, **headers: str) -> Response:
    return Response.json({"code": code, "msg": msg}, status, **headers)


class Weights:
    """Request weight per fixed window, per flavor (one IP: the mock has one client)."""

    def __init__(self, mock: MockExchange, flavor: Flavor) -> None:
        self.mock, self.flavor = mock, flavor
        config = mock.config
        self.window = config.weight_window
        self.limit = config.binance_weight_limit if flavor.key == "spot" else config.binance_futures_weight_limit
        self.header = "X-MBX-USED-WEIGHT-1M" if self.window == 60 else f"X-MBX-USED-WEIGHT-{self.window}S"

    def _state(self) -> dict[str, Any]:
        return self.mock.state.setdefault(f"weights.{self.flavor.key}", {"window": -1, "used": 0, "over": 0, "banned_until": 0.0})

    def charge(self, weight: int) -> Response | None:
        """Charge ``weight``; return a 429/418 response if the request must be refused."""
        import time

        now = time.time()
        with self.mock.lock:
            st = self._state()
            window = int(now // self.window)
            if window != st["window"]:
                st.update(window=window, used=0, over=0)
            if now < st["banned_until"]:
                until = st["banned_until"]
                self.mock.stats["binance.418"] += 1
                return error(-1003, f"Way too much request weight used; IP banned until {int(until * 1000)}. "
                             "Please use WebSocket Streams for live updates to avoid bans.", 418,
                             **{"Retry-After": str(math.ceil(until - now))})
            st["used"] += weight
            self.log().append((now, weight))
            self.mock.stats[f"binance.{self.flavor.key}.requests"] += 1
            self.mock.stats["binance.weight_max"] = max(self.mock.stats["binance.weight_max"], st["used"])
            if st["used"] > self.limit:
                st["over"] += 1
                retry = math.ceil((window + 1) * self.window - now)
                if st["over"] > BAN_AFTER:
                    st["banned_until"] = now + BAN_SECONDS
                    self.mock.stats["binance.418"] += 1
                    return error(-1003, f"Way too much request weight used; IP banned until "
                                 f"{int((now + BAN_SECONDS) * 1000)}. Please use WebSocket Streams for "
                                 "live updates to avoid bans.", 418, **{"Retry-After": str(BAN_SECONDS)})
                self.mock.stats["binance.429"] += 1
                unit = "1 MINUTE" if self.window == 60 else f"{self.window} SECOND"
                return error(-1003, f"Too much request weight used; current limit is {self.limit} request weight "
                             f"per {unit}. Please use WebSocket Streams for live updates to avoid polling the API.",
                             429, **{"Retry-After": str(retry), "X-MBX-USED-WEIGHT": str(st["used"]),
                                        self.header: str(st["used"])})
            return None

    def log(self) -> deque[tuple[float, int]]:
        """``(time, weight)`` of the latest charged requests (the limit's rate is checked on it)."""
        return self.mock.state.setdefault(f"weights.{self.flavor.key}.log", deque(maxlen=200_000))

    def used(self) -> str:
        with self.mock.lock:
            return str(self._state()["used"])

    def headers(self) -> dict[str, str]:
        """The used-weight headers of an answer: the interval's and, as the real API still
        sends beside it, the bare legacy ``X-MBX-USED-WEIGHT`` (same count)."""
        used = self.used()
        return {"X-MBX-USED-WEIGHT": used, self.header: used}


def _params(req: Request, flavor: Flavor) -> Response | None:
    for values in req.query.values():
        if len(values) > 1:
            return error(-1101, "Duplicate values for a parameter detected.")
    unknown = [n for n in req.query if n not in flavor.params]
    if unknown:
        return error(-1104, f"Not all sent parameters were read; read '{len(req.query) - len(unknown)}' "
                     f"parameter(s) but was sent '{len(req.query)}'.")
    return None


def _validate_symbol(req: Request, flavor: Flavor) -> tuple[Listing | None, Response | None]:
    symbol = req.arg("symbol")
    if not symbol:
        return None, error(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
    if not SYMBOL_RE.match(symbol):
        return None, error(-1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.")
    listing = flavor.market.get(symbol)
    if listing is None:
        return None, error(-1121, "Invalid symbol.")
    return listing, None


def gone(mock: MockExchange, listing: Listing | None) -> bool:
    """An expired delivery contract after its delivery: not in exchangeInfo any more."""
    return (listing is not None and listing.expired and listing.delisted is not None
            and mock.now() >= listing.delisted)


def klines(mock: MockExchange, flavor: Flavor, weights: Weights, pages: PageCache, req: Request) -> Response:
    limit_text = req.arg("limit")
    limit = int(limit_text) if limit_text and limit_text.isdigit() else 500
    refused = weights.charge(flavor.weight(limit))
    if refused is not None:
        return refused
    headers = weights.headers()
    with mock.lock:
        queued = mock.config.extra.get("binance_errors") or []
        injected = queued.pop(0) if queued else None
    if injected is not None:
        status, code = injected
        mock.stats[f"binance.error{code}"] += 1
        return error(code, SERVER_ERRORS.get(code, "Unknown error."), status, **headers)
    bad = _params(req, flavor)
    if bad is not None:
        bad.headers.update(headers)
        return bad
    listing, bad = _validate_symbol(req, flavor)
    if bad is not None:
        bad.headers.update(headers)
        return bad
    expired = mock.config.extra.get("expired_klines", "invalid") if gone(mock, listing) else None
    if expired == "invalid":
        return error(-1121, "Invalid symbol.", **headers)
    interval = req.arg("interval")
    if not interval:
        return error(-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.", **headers)
    if interval not in flavor.intervals:
        return error(-1120, "Invalid interval.", **headers)
    for name in ("startTime", "endTime", "limit"):
        value = req.arg(name)
        if value is not None and not DIGITS_RE.match(value):
            return error(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.", **headers)
    limit = min(max(limit, 1), flavor.max_limit)
    start = int(req.arg("startTime")) if req.arg("startTime") else None
    end = int(req.arg("endTime")) if req.arg("endTime") else None
    if mock.config.extra.get("binance_future_403") and max(start or 0, end or 0) > mock.now():
        mock.stats["binance.future403"] += 1
        return Response(403, b"", headers)
    if start is not None and end is not None and start > end:
        if flavor.key != "spot":
            return error(-1023, "Start time is greater than end time.", **headers)
        return Response.json([], **headers)
    if flavor.key == "coinm" and start is not None and end is not None and end - start > COINM_SPAN:
        return error(-1127, "More than 200 days between startTime and endTime.", **headers)
    assert listing is not None
    tf = parse_timeframe(interval)
    now = mock.now()
    key = (flavor.key, req.raw_query)
    closed = end is not None and tf.end_ts(tf.floor(end)) < now  # then the page never changes
    cached = pages.get(key) if closed else None
    if cached is not None:
        mock.count(f"binance.{flavor.key}.candles", cached[1])
        return Response(200, cached[0], headers)
    if flavor.key == "coinm" and (start is not None or end is not None):
        # COIN-M is end-anchored: the most recent `limit` rows between startTime and endTime; only
        # startTime means endTime = startTime + 200 days (at most now), only endTime startTime =
        # endTime - 200 days (exchange-apis.md A.9): `startTime=X&limit=1` is NOT the first candle
        if end is None:
            end = min(start + COINM_SPAN, now)  # type: ignore[operator]
        elif start is None:
            start = end - COINM_SPAN
        rows = [r for r in select(listing, tf, None, end, limit, now) if r[0] >= start]
    else:
        rows = select(listing, tf, start, end, limit, now)
    if expired == "empty":
        rows = []
    mock.count(f"binance.{flavor.key}.candles", len(rows))
    response = Response.json(rows, **headers)
    if closed:
        pages.put(key, (response.body, len(rows)))
    return response


def kline_row(listing: Listing, tf: Any, ts: int, now: int) -> list[Any]:
    o, h, lo, c, v, qv, n, tb, tq = candle(listing, tf, ts, now)  # the candle so far if still open
    return [ts, o, h, lo, c, v, tf.end_ts(ts), qv, n, tb, tq, "0"]


def select(listing: Listing, tf: Any, start: int | None, end: int | None, limit: int, now: int) -> list[list[Any]]:
    """Rows with ``start <= open <= end``, oldest first; only ``end``/neither: the newest ones."""
    last_open = tf.floor(now)
    if listing.delisted is not None:  # nothing after a delisting: walk no further than it
        last_open = min(last_open, tf.floor(listing.delisted - 1))
    for a, b in listing.pauses:  # in a BREAK: no candle since it began, not even an open one
        if a <= now < b:
            last_open = min(last_open, tf.floor(a - 1))
    first_open = tf.floor(listing.listed)
    rows: list[list[Any]] = []
    if start is not None:
        ts = tf.ceil(max(start, first_open))
        stop = min(end if end is not None else last_open, last_open)
        while ts <= stop and len(rows) < limit:
            if has_candle(listing, tf, ts):
                rows.append(kline_row(listing, tf, ts, now))
            ts = tf.next_open(ts)
        return rows
    ts = tf.floor(min(end, last_open) if end is not None else last_open)
    while ts >= first_open and len(rows) < limit:
        if has_candle(listing, tf, ts):
            rows.append(kline_row(listing, tf, ts, now))
        ts = tf.floor(ts - 1)
    rows.reverse()
    return rows


def exchange_info(mock: MockExchange, flavor: Flavor, weights: Weights, req: Request) -> Response:
    refused = weights.charge(20 if flavor.key == "spot" else 1)
    mock.count(f"binance.{flavor.key}.exchangeInfo")
    if refused is not None:
        return refused
    wanted: list[str] | None = None
    if req.arg("symbol"):
        wanted = [req.arg("symbol") or ""]
    elif req.arg("symbols"):
        text = req.arg("symbols") or ""
        if SYMBOLS_RE.match(text):  # compact JSON only: '["A", "B"]' (a space) is -1100 on the real API
            import json

            wanted = json.loads(text)
        else:
            return error(-1100, "Illegal characters found in parameter 'symbols'; legal range is '^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.")
    if flavor.key != "spot":
        wanted = None  # futures exchangeInfo takes no parameters: always the whole list
    names = wanted if wanted is not None else [n for n, li in flavor.market.listings.items() if not gone(mock, li)]
    symbols = []
    for name in names:
        if not SYMBOL_RE.match(name):
            return error(-1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.")
        listing = flavor.market.get(name)
        if listing is None or gone(mock, listing):
            return error(-1121, "Invalid symbol.", **weights.headers())
        symbols.append(symbol_info(flavor, listing, mock.now()))
    window = mock.config.weight_window
    interval, num = ("MINUTE", 1) if window == 60 else ("SECOND", window)
    limit = weights.limit
    futures = {"futuresType": "U_MARGINED" if flavor.key == "usdm" else "COIN_MARGINED", "assets": []}
    return Response.json({
        "timezone": "UTC",
        "serverTime": mock.now(),
        **(futures if flavor.key != "spot" else {}),
        "rateLimits": [
            {"rateLimitType": "REQUEST_WEIGHT", "interval": interval, "intervalNum": num, "limit": limit},
            {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
            {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
        ],
        "exchangeFilters": [],
        "symbols": symbols,
    }, **weights.headers())


PERPETUAL_DELIVERY = 4133404800000  # 2100-12-25 08:00 UTC: a perpetual's deliveryDate


def symbol_info(flavor: Flavor, listing: Listing, now: int) -> dict[str, Any]:
    """One exchangeInfo ``symbols[]`` entry at ``now`` in the market's own form: spot ``status``
    (BREAK before a pair trades and after its delisting: it stays listed); USD-M ``status``
    (PENDING_TRADING before its ``onboardDate``), ``contractType``, ``deliveryDate`` (moved to the
    delisting time, status SETTLING, when a perpetual is delisted) and ``onboardDate``; COIN-M
    the same with ``contractStatus`` and ``contractSize``. Field order as the real answers."""
    name = listing.symbol
    if flavor.key == "spot":
        return {"symbol": name, "status": listing.status_at(now), "baseAsset": name[:-4], "baseAssetPrecision": 8,
                "quoteAsset": "USDT", "quotePrecision": 8, "quoteAssetPrecision": 8,
                "orderTypes": ["LIMIT", "MARKET"], "isSpotTradingAllowed": True, "filters": [],
                "permissions": ["SPOT"]}
    delivery = PERPETUAL_DELIVERY if listing.delisted is None else listing.delisted
    status = listing.status_at(now, flavor.key)
    contract = "CURRENT_QUARTER" if listing.expired else "PERPETUAL"  # a delivery contract before it expires
    if flavor.key == "usdm":
        return {"symbol": name, "pair": name.partition("_")[0], "contractType": contract, "deliveryDate": delivery,
                "onboardDate": listing.listed, "status": status,
                "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000", "baseAsset": name[:-4],
                "quoteAsset": "USDT", "marginAsset": "USDT", "pricePrecision": 2, "quantityPrecision": 3,
                "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [],
                "settlePlan": 0, "triggerProtect": "0.0500", "liquidationFee": "0.012000",
                "marketTakeBound": "0.30", "filters": [], "orderTypes": ["LIMIT", "MARKET"],
                "timeInForce": ["GTC", "IOC", "FOK", "GTX"]}
    pair, _, _ = name.partition("_")
    return {"symbol": name, "pair": pair, "contractType": contract, "deliveryDate": delivery,
            "onboardDate": listing.listed, "contractStatus": status,
            "contractSize": 100, "quoteAsset": "USD", "baseAsset": pair[:-3], "marginAsset": pair[:-3],
            "pricePrecision": 1, "quantityPrecision": 0, "baseAssetPrecision": 8, "quotePrecision": 8,
            "equalQtyPrecision": 4, "triggerProtect": "0.0500", "maintMarginPercent": "2.5000",
            "requiredMarginPercent": "5.0000", "underlyingType": "COIN", "underlyingSubType": [],
            "filters": [], "OrderType": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
            "liquidationFee": "0.010000", "marketTakeBound": "0.30"}  # "OrderType": so the docs' example


def install(mock: MockExchange) -> None:
    for flavor in (SPOT, USDM, COINM):
        weights = Weights(mock, flavor)

        def _time(req: Request, w: Weights = weights) -> Response:
            refused = w.charge(1)
            return refused or Response.json({"serverTime": mock.now()}, **w.headers())

        def _ping(req: Request, w: Weights = weights) -> Response:
            refused = w.charge(1)
            return refused or Response.json({}, **w.headers())

        cache = PageCache()
        mock.route(f"{flavor.prefix}/klines", lambda req, f=flavor, w=weights, c=cache: klines(mock, f, w, c, req))
        mock.route(f"{flavor.prefix}/exchangeInfo", lambda req, f=flavor, w=weights: exchange_info(mock, f, w, req))
        mock.route(f"{flavor.prefix}/time", _time)
        mock.route(f"{flavor.prefix}/ping", _ping)


def binance_rows(symbol: str, timeframe: str, start: int, end: int, now: int,
                 market: Market | None = None) -> list[tuple]:
    """The exact rows a correct backfill of this mock produces, from the synthetic market alone
    (not from the source plugin): closed candles opening in ``[start, end)`` as canonical tuples
    with Binance's four extra columns."""
    market = market or Market.binance_spot()
    listing = market.get(symbol)
    assert listing is not None, symbol
    tf = parse_timeframe(timeframe)
    rows = []
    for ts in open_times(listing, tf, start, end):
        close = tf.end_ts(ts)
        if close >= now:
            break
        o, h, lo, c, v, qv, n, tb, tq = candle(listing, tf, ts)
        rows.append((market.source, symbol, timeframe, ts, close, o, h, lo, c, v, qv, n, tb, tq))
    return rows
