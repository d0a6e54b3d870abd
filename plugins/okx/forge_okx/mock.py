"""OKX API v5 public market-data endpoints (``exchange-apis.md`` section C).

``/api/v5/market/history-candles`` and ``/api/v5/market/candles``: rows of nine strings
``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]``, **newest first**; ``after`` and
``before`` are exclusive (``before < ts < after``) and the newest ``limit`` rows of that
interval are served, so ``before`` alone gives the latest page. ``limit`` defaults to 100 and
is capped at 300 (history: ``config.okx_history_limit``, 100 = the legacy maximum).
``candles`` only has the latest 1,440 bars; the bar still open at ``mock.now()`` comes with
``confirm "0"``; ``1s`` bars only for the last ``extra["okx_1s_days"]`` (90) days; LTC-USDT's
bars shorter than a day only from 2018-01-11 11:12 UTC, months after its listTime (C.2). Plain ``6H 12H 1D 1W 1M`` open on Hong Kong (UTC+8) boundaries, their
``utc`` variants on UTC ones; a wrong case (``1h``) is HTTP 400 ``51000``. An unknown
``instId`` is HTTP **200** ``51001`` with ``"data":[]``; ``instruments`` for ``instType=OPTION``
without ``instFamily`` (or ``uly``) is HTTP 400 ``50015``, and ``1s`` bars of an option 400 ``51000``; ``candles`` for a settled (expired)
contract is HTTP 200 ``50047`` (its bars are on ``history-candles`` only). ``extra["okx_timeouts"]
= N``: the first N candle requests answer HTTP **400** ``50004`` (OKX's endpoint timeout).
``extra["okx_errors"] = [[status, code], ...]``: the next candle requests answer these, one each,
in order, with the error table's message (``50001`` 503, ``50005`` 410, ``52000`` 200, ...).

Rate limits are per endpoint, in a sliding window of ``config.okx_window`` seconds
(20 history, 40 candles, 20 instruments, 10 time; ``config.extra["okx_history_rate"]`` and
``["okx_candles_rate"]`` override the first two). Past the limit: HTTP 429
``{"msg":"Too Many Requests","code":"50011"}``, or with ``extra["okx_rate_limit_status"] = 200``
the HTTP 200 variant. Refused requests do not use up the budget. Counters in ``mock.stats``:
``okx.requests``, ``okx.history.requests``, ``okx.candles.requests``, ``okx.429``, ``okx.50011``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from forge_core.testing.market import (
    MAINTENANCE,
    NEW_LISTED,
    Listing,
    candle,
    has_candle,
    open_times,
)
from forge_core.testing.server import MockExchange, Request, Response
from forge_core.timeframes import HOUR, Timeframe, parse_timeframe

ENVIRONMENT = ("FORGE_OKX_URL",)  # what `forge mock-exchange` tells users to export

SPOT_LISTED = 1515628800000  # 2018-01-11: the oldest BTC-USDT 1m bar OKX serves
SWAP_LISTED = 1575936000000  # 2019-12-10
OLD_LISTED = 1507593600000  # 2017-10-10: LTC-USDT's listTime and first daily bar
INTRADAY_FROM = 1515669120000  # 2018-01-11 11:12 UTC: its first 1m bar (DSM's BTC-USDT 1m, C.2)
FUTURES_LISTED = 1734076800000  # 2024-12-13 08:00 UTC
FUTURES_EXPIRY = 1743148800000  # 2025-03-28 08:00 UTC
EXPIRED_LISTED = 1703232000000  # 2023-12-22 08:00 UTC
EXPIRED = 1711699200000  # 2024-03-29 08:00 UTC
HK = 8 * HOUR
RECENT_BARS = 1440  # what /market/candles keeps
MAX_LIMIT = 300
ONE_SECOND_DAYS = 90  # history-candles keeps 1s bars for 3 months (docs; users report ~20 days)


@dataclass(frozen=True)
class Instrument:
    listing: Listing
    inst_type: str  # SPOT | SWAP | FUTURES
    ct_val: str = ""  # contract size in base currency, derivatives only
    exp_time: int | None = None
    # history-candles keeps bars shorter than a day only from here (exchange-apis.md C.2, "How far
    # back", a third party's measurement: BTC-USDT 1m back to 2018-01-11 11:12 UTC, 1D to 2017-10-10)
    intraday_from: int | None = None

    @property
    def inst_id(self) -> str:
        return self.listing.symbol


INSTRUMENTS: dict[str, Instrument] = {i.inst_id: i for i in (
    Instrument(Listing("BTC-USDT", SPOT_LISTED, (MAINTENANCE,), 4_200_000), "SPOT"),
    Instrument(Listing("ETH-USDT", SPOT_LISTED, (MAINTENANCE,), 250_000), "SPOT"),
    Instrument(Listing("NEW-USDT", NEW_LISTED, (), 150), "SPOT"),  # listed mid-range
    # listTime 2017-10-10 and daily bars from it, but minutes and hours only from 2018-01-11 11:12
    Instrument(Listing("LTC-USDT", OLD_LISTED, (), 5_000), "SPOT", intraday_from=INTRADAY_FROM),
    Instrument(Listing("BTC-USDT-SWAP", SWAP_LISTED, (MAINTENANCE,), 4_200_000), "SWAP", "0.01"),
    Instrument(Listing("BTC-USDT-250328", FUTURES_LISTED, (), 4_200_000), "FUTURES", "0.01", FUTURES_EXPIRY),
    Instrument(Listing("BTC-USD-250328-90000-C", FUTURES_LISTED, (), 4_200_000), "OPTION", "0.01", FUTURES_EXPIRY),
    # expired: gone from /public/instruments, its candles still served up to the expiry
    Instrument(Listing("BTC-USDT-240329", EXPIRED_LISTED, ((EXPIRED, 1 << 62),), 4_200_000), "FUTURES", "0.01",
               EXPIRED),
)}


@dataclass(frozen=True)
class HongKong:
    """A bar opening on UTC+8 boundaries (OKX's plain ``6H 12H 1D 1W 1M``); quacks like a
    :class:`Timeframe` as far as :mod:`.market` needs."""

    name: str
    utc: Timeframe

    def floor(self, ts: int) -> int:
        return self.utc.floor(ts + HK) - HK

    def ceil(self, ts: int) -> int:
        floor = self.floor(ts)
        return floor if floor == ts else self.next_open(floor)

    def next_open(self, open_ts: int, count: int = 1) -> int:
        return self.utc.next_open(open_ts + HK, count) - HK

    def end_ts(self, open_ts: int) -> int:
        return self.next_open(open_ts) - 1


UTC_BARS = {"1s": "1s", "1m": "1m", "3m": "3m", "5m": "5m", "15m": "15m", "30m": "30m", "1H": "1h",
            "2H": "2h", "4H": "4h", "6Hutc": "6h", "12Hutc": "12h", "1Dutc": "1d", "1Wutc": "1w",
            "1Mutc": "1M"}
HK_BARS = {"6H": "6h", "12H": "12h", "1D": "1d", "1W": "1w", "1M": "1M"}
# 2D 3D 3M (and their utc variants) are real OKX bars too; Forge never asks for them and the
# mock answers them like any unknown bar.


def bar(name: str, history: bool) -> Timeframe | HongKong | None:
    if name in UTC_BARS and (history or name != "1s"):  # 1s: history-candles only
        return parse_timeframe(UTC_BARS[name])
    if name in HK_BARS:
        return HongKong(name, parse_timeframe(HK_BARS[name]))
    return None


def plain(number: str) -> str:
    """OKX prints decimals without padding zeros: ``"102806"``, ``"102806.1"``."""
    return format(Decimal(number).normalize(), "f")


def okx_row(inst: Instrument, tf: Any, ts: int, now: int) -> list[str]:
    """``[ts, o, h, l, c, vol, volCcy, volCcyQuote, confirm]`` of one bar."""
    o, h, lo, c, base, quote, *_ = candle(inst.listing, tf, ts, now)  # the bar so far if still open
    confirm = "1" if tf.next_open(ts) <= now else "0"
    if inst.inst_type == "SPOT":  # vol is base currency, volCcy quote currency
        vol, vol_ccy = base, quote
    else:  # derivatives: vol is contracts, volCcy base currency
        vol, vol_ccy = str(Decimal(base) / Decimal(inst.ct_val)), base
    return [str(ts), *map(plain, (o, h, lo, c, vol, vol_ccy, quote)), confirm]


# OKX's error table (docs-v5 "Error Code", REST public 50000-53999), for extra["okx_errors"]
ERRORS = {
    "50001": "Service temporarily unavailable. Please try again later.",
    "50005": "API endpoint is inactive or unavailable.",
    "50013": "Systems are busy. Please try again later.",
    "50026": "System error. Try again later",
    "52000": "No market data found.",
}


def envelope(data: Any, code: str = "0", msg: str = "", status: int = 200) -> Response:
    return Response.json({"code": code, "msg": msg, "data": data}, status)


class Budget:
    """Requests accepted in a sliding window, like OKX's per-IP ``N requests per 2 seconds``."""

    def __init__(self, mock: MockExchange, key: str, capacity: int) -> None:
        self.mock, self.key, self.default = mock, key, capacity
        self.times: deque[float] = deque()

    def take(self) -> Response | None:
        """Count one request; return the 50011 response when it is over the limit."""
        mock = self.mock
        capacity = int(mock.config.extra.get(f"okx_{self.key}_rate", self.default))
        with mock.lock:
            now = time.monotonic()
            while self.times and self.times[0] <= now - mock.config.okx_window:
                self.times.popleft()
            mock.stats["okx.requests"] += 1
            mock.stats[f"okx.{self.key}.requests"] += 1
            if len(self.times) < capacity:
                self.times.append(now)
                return None
            mock.stats["okx.50011"] += 1
            if mock.config.extra.get("okx_rate_limit_status") == 200:
                return envelope([], "50011", "Rate limit reached. Please refer to API documentation "
                                "and throttle requests accordingly.")
            mock.stats["okx.429"] += 1
            return Response.json({"msg": "Too Many Requests", "code": "50011"}, 429)


def _number(req: Request, name: str) -> tuple[int | None, Response | None]:
    value = req.arg(name)
    if value is None or value == "":
        return None, None
    if not value.isdigit():
        return None, envelope([], "51000", f"Parameter {name} error", 400)
    return int(value), None


def candles(mock: MockExchange, budget: Budget, req: Request, history: bool) -> Response:
    refused = budget.take()
    if refused is not None:
        return refused
    inst_id = req.arg("instId")
    if not inst_id:
        return envelope([], "50014", "Parameter instId can not be empty.", 400)
    tf = bar(req.arg("bar") or "1m", history)
    if tf is None:
        return envelope([], "51000", "Parameter bar error", 400)
    numbers = {}
    for name in ("after", "before", "limit"):
        numbers[name], bad = _number(req, name)
        if bad is not None:
            return bad
    limit = numbers["limit"] if numbers["limit"] is not None else 100
    if limit < 1:
        return envelope([], "51000", "Parameter limit error", 400)
    limit = min(limit, mock.config.okx_history_limit if history else MAX_LIMIT)
    inst = INSTRUMENTS.get(inst_id)
    if inst is None:
        return envelope([], "51001", "Instrument ID, Instrument ID code, or Spread ID doesn't exist.")
    if inst.inst_type == "OPTION" and req.arg("bar") == "1s":  # history's 1s: "not supported for OPTION"
        return envelope([], "51000", "Parameter bar error", 400)
    now = mock.now()
    if not history and inst.exp_time is not None and inst.exp_time <= now:
        # OKX's error table: 50047 (HTTP 200) "{param0} has already settled. To check the relevant
        # candlestick data, please use {param1}": a settled contract's bars are on history-candles only
        return envelope([], "50047", f"{inst_id} has already settled. To check the relevant candlestick "
                        "data, please use /api/v5/market/history-candles")
    with mock.lock:
        timeouts = mock.state.setdefault("okx.timeouts", {"left": int(mock.config.extra.get("okx_timeouts", 0))})
        timed_out = timeouts["left"] > 0
        timeouts["left"] -= timed_out
    with mock.lock:
        queued = mock.config.extra.get("okx_errors") or []
        injected = queued.pop(0) if queued else None
    if injected is not None:
        status, code = injected
        mock.stats[f"okx.{code}"] += 1
        return envelope([], str(code), ERRORS.get(str(code), "Operation failed."), status)
    if timed_out:  # 50004 comes with HTTP 400 although it is the server's timeout, not a bad request
        mock.stats["okx.50004"] += 1
        return envelope([], "50004", "API endpoint request timeout. (does not mean that the request was "
                        "successful or failed, please check the request result).", 400)
    latest = tf.floor(now)
    oldest = first_bar(inst, tf)
    if not history:  # /market/candles keeps the latest 1,440 bars only
        oldest = max(oldest, tf.floor(_back(tf, latest, RECENT_BARS - 1)))
    elif req.arg("bar") == "1s":  # "It is last 3 months supported for 1s candlestick"
        oldest = max(oldest, now - int(mock.config.extra.get("okx_1s_days", ONE_SECOND_DAYS)) * 86_400_000)
    after, before = numbers["after"], numbers["before"]
    ts = latest if after is None else min(latest, tf.floor(after - 1))
    rows: list[list[str]] = []
    while ts >= oldest and len(rows) < limit and (before is None or ts > before):
        if has_candle(inst.listing, tf, ts):  # type: ignore[arg-type]
            rows.append(okx_row(inst, tf, ts, now))
        ts = tf.floor(ts - 1)
    mock.count(f"okx.{budget.key}.rows", len(rows))
    return envelope(rows)


def first_bar(inst: Instrument, tf: Any) -> int:
    """The oldest bar history-candles serves: the listing's, later for intraday bars of an
    instrument whose minutes OKX keeps for a shorter time than its days."""
    first = tf.floor(inst.listing.listed)
    ms = getattr(tf, "ms", None) or getattr(getattr(tf, "utc", None), "ms", None)
    if inst.intraday_from is not None and ms is not None and ms < 86_400_000:
        first = max(first, tf.ceil(inst.intraday_from))
    return first


def _back(tf: Any, ts: int, count: int) -> int:
    if getattr(tf, "ms", None):
        return ts - count * tf.ms
    for _ in range(count):  # calendar months
        ts = tf.floor(ts - 1)
    return ts


def instruments(mock: MockExchange, budget: Budget, req: Request) -> Response:
    refused = budget.take()
    if refused is not None:
        return refused
    inst_type = req.arg("instType")
    if not inst_type:
        return envelope([], "50014", "Parameter instType can not be empty.", 400)
    if inst_type not in ("SPOT", "MARGIN", "SWAP", "FUTURES", "OPTION"):
        return envelope([], "51000", "Parameter instType error", 400)
    family = req.arg("instFamily") or req.arg("uly")
    if inst_type == "OPTION" and not family:  # "If instType is OPTION, either uly or instFamily is required"
        return envelope([], "50015", "Either parameter uly or instFamily is required.", 400)
    wanted = req.arg("instId")
    found = [i for i in INSTRUMENTS.values() if i.inst_type == inst_type and (wanted is None or i.inst_id == wanted)
             and (family is None or i.inst_id.startswith(family + "-"))
             and (i.exp_time is None or i.exp_time > mock.now())]  # OKX drops expired instruments
    if wanted is not None and not found:
        return envelope([], "51001", "Instrument ID, Instrument ID code, or Spread ID doesn't exist.")
    return envelope([_describe(i) for i in found])


def _describe(inst: Instrument) -> dict[str, str]:
    """An instrument with the fields of the real ``instruments`` body."""
    base, quote = inst.inst_id.split("-")[:2]
    derivative = inst.inst_type != "SPOT"
    return {
        "alias": "quarter" if inst.inst_type == "FUTURES" else "", "auctionEndTime": "",
        "baseCcy": "" if derivative else base, "category": "1",
        "ctMult": "1" if derivative else "", "ctType": "linear" if derivative else "",
        "ctVal": inst.ct_val, "ctValCcy": base if derivative else "",
        "expTime": str(inst.exp_time) if inst.exp_time else "",
        "instFamily": f"{base}-{quote}" if derivative else "", "instId": inst.inst_id,
        "instType": inst.inst_type, "lever": "100" if derivative else "",
        "listTime": str(inst.listing.listed), "lotSz": "1" if derivative else "0.00000001",
        "maxIcebergSz": "9999999999.0000000000000000", "maxLmtAmt": "20000000",
        "maxLmtSz": "9999999999", "maxMktAmt": "1000000", "maxMktSz": "1000000",
        "maxStopSz": "1000000", "maxTriggerSz": "9999999999.0000000000000000",
        "maxTwapSz": "9999999999.0000000000000000", "minSz": "1" if derivative else "0.00001",
        "optType": inst.inst_id[-1] if inst.inst_type == "OPTION" else "", "quoteCcy": "" if derivative else quote, "ruleType": "normal",
        "settleCcy": quote if derivative else "", "state": "live",
        "stk": inst.inst_id.split("-")[3] if inst.inst_type == "OPTION" else "", "tickSz": "0.1",
        "uly": f"{base}-{quote}" if derivative else "",
    }


def not_found(req: Request) -> Response:
    """The gateway's 404 for an unknown ``/api/v5`` path: note the numeric ``code``."""
    return Response.json({"code": 404, "data": {}, "detailMsg": "", "error_code": "404",
                          "error_message": "Not Found", "msg": "Not Found"}, 404)


def install(mock: MockExchange) -> None:
    history, recent = Budget(mock, "history", 20), Budget(mock, "candles", 40)
    listing, clock = Budget(mock, "instruments", 20), Budget(mock, "time", 10)

    def _time(req: Request) -> Response:
        return clock.take() or envelope([{"ts": str(mock.now())}])

    mock.route("/api/v5/market/history-candles", lambda req: candles(mock, history, req, True))
    mock.route("/api/v5/market/candles", lambda req: candles(mock, recent, req, False))
    mock.route("/api/v5/public/instruments", lambda req: instruments(mock, listing, req))
    mock.route("/api/v5/public/time", _time)
    mock.route_prefix("/api/v5/", not_found)


def okx_rows(inst_id: str, timeframe: str, start: int, end: int, now: int) -> list[tuple]:
    """The exact rows a correct OKX backfill of this mock produces, from the synthetic market
    alone (not from the source plugin): Forge's UTC-aligned timeframes, closed bars only, the
    ten canonical columns (``volume`` in the base currency whatever the instrument type), then
    ``quote_volume`` (volCcyQuote), ``vol``, ``vol_ccy``."""
    inst = INSTRUMENTS[inst_id]
    tf = parse_timeframe(timeframe)
    rows = []
    for ts in open_times(inst.listing, tf, max(start, first_bar(inst, tf)), end):
        close = tf.end_ts(ts)
        if close >= now:
            break
        base = plain(candle(inst.listing, tf, ts)[4])
        _, o, h, lo, c, vol, vol_ccy, quote, _ = okx_row(inst, tf, ts, now)
        rows.append(("okx", inst_id, timeframe, ts, close, o, h, lo, c, base, quote, vol, vol_ccy))
    return rows
