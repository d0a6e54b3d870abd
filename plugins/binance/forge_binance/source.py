"""Binance spot (``/api/v3/klines``), USD-M (``/fapi/v1/klines``) and COIN-M
(``/dapi/v1/klines``) source, with the bulk archive (data.binance.vision) for history.

REST pages go forward with ``startTime``/``endTime`` (both inclusive on open time); COIN-M is
end-anchored and limited to 200 days per request, so its windows never hold more than a page.
The request weight budget is read from ``exchangeInfo`` and kept by a limiter shared by all
workers, which also follows the server's ``X-MBX-USED-WEIGHT-*`` count; a 429 pauses every
worker for its ``Retry-After``; a 418 (ban) is never retried.

With ``archive`` set to ``auto`` (default) or ``archive``, :meth:`BinanceSource.plan` takes
published months and days from checksum-verified archive zips (see :mod:`.archive`) and REST
for the rest; ``rest`` is REST only.
"""

from __future__ import annotations

import difflib
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from datetime import datetime, timezone
from itertools import chain
from typing import Any

import requests

from forge_core import (
    CANDLE_COLUMNS,
    DAY,
    EXTRA_COLUMNS,
    MINUTE,
    NAMES,
    Fetched,
    HttpClient,
    Option,
    RateLimiter,
    RetryableError,
    Row,
    Source,
    SourceError,
    SymbolInfo,
    Task,
    TextRows,
    Timeframe,
    forward_pages,
    get_logger,
    now_ms,
    retrying,
)
from forge_core.http import Cancelled, body_reason, error_line
from forge_core.http import retry_after as parse_retry_after
from forge_core.partitions import run_cache
from forge_core.records import ramp
from forge_core.times import display

from . import bans
from .archive import (
    ARCHIVE_URL,
    DAILY_LAG,
    DAILY_TIMEFRAMES,
    MARKET_DIRS,
    ArchiveClient,
    ArchiveFailure,
    ArchiveFetcher,
    Segment,
    archive_extent,
    day_file,
    file_opens,
    listed_files,
    month_file,
    plan_segments,
)

# Binance's market-data-only host for spot (klines, exchangeInfo, time; no keys): named when
# api.binance.com refuses a region (HTTP 451), as Binance's market_data_only FAQ offers it
DATA_API = "https://data-api.binance.vision"

MARKETS: dict[str, dict[str, Any]] = {
    "spot": {"prefix": "/api/v3", "env": "FORGE_BINANCE_URL", "url": "https://api.binance.com",
             "weight_limit": 6000, "page": 1000, "timeframes": NAMES},
    "usdm": {"prefix": "/fapi/v1", "env": "FORGE_BINANCE_FUTURES_URL", "url": "https://fapi.binance.com",
             "weight_limit": 2400, "page": 499, "timeframes": tuple(n for n in NAMES if n != "1s")},
    "coinm": {"prefix": "/dapi/v1", "env": "FORGE_BINANCE_COINM_URL", "url": "https://dapi.binance.com",
              "weight_limit": 2400, "page": 499, "timeframes": tuple(n for n in NAMES if n != "1s"),
              "window": 200 * DAY},  # end-anchored: at most 200 days per request
}
ARCHIVE_MODES = ("auto", "archive", "rest")
_MARKET_WORDS = {"spot": "spot", "usdm": "USD-M futures", "coinm": "COIN-M futures"}
log = get_logger(__name__)
_WINDOW_SECONDS = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86400}
_SYMBOL_RE = re.compile(r"^[A-Z0-9\-_.]{1,20}$")  # what Binance accepts as a symbol (-1100 otherwise)
# symbols asked by name in one exchangeInfo request; more go in several (weight 20 each) rather
# than the whole list (megabytes). The docs give no maximum for `symbols`: 100 is unverified
_INFO_BATCH = 100
PROBES_AHEAD = 8  # first-candle probes asked at once (prepare_symbols)
# a futures delivery contract (quarterly: BTCUSDT_240329, BTCUSD_240329): Binance removes it from
# exchangeInfo after its delivery, at 08:00 UTC of the date in its name (COIN-M exchangeInfo
# deliveryDate values; USD-M assumed alike), while the archive keeps its files
_DELIVERY_RE = re.compile(r"^[A-Z0-9]{2,16}_(\d{2})(\d{2})(\d{2})$")
_DELIVERY_HOUR = 8 * 3_600_000
# exchangeInfo statuses of a symbol that does not trade, its series cut at the newest candle, in
# words for the summary; spot enums.md, futures "Contract status": USD-M perpetuals delisted go
# SETTLING. Spot BREAK is a delisting or a maintenance alike: a follow run asks again (recheck).
# Spot CANCEL_ONLY makes market data "except for klines" (spot_glossary.md): no candle while it
# lasts, as in BREAK. Any other (TRADING, PENDING_TRADING, spot HALT, which still makes market
# data, END_OF_DAY, a status new to Forge) only pauses trading at most, and futures
# PRE_DELIVERING / PRE_SETTLE still trade until the deliveryDate: they confirm no end, so
# nothing is cut at the newest candle
_STATUS_WORDS = {"BREAK": "delisted", "SETTLING": "delisted", "CLOSE": "delisted",
                 "DELIVERED": "delivered", "DELIVERING": "delivering", "CANCEL_ONLY": "not trading"}
# errors.md "10xx - General Server or Network issues": the server failed, not the request, and
# these come with 400, 408 or 503 as well as 5xx. -1006 and -1007 say "execution status unknown":
# every request here is a market-data read, so sending it again is safe.
SERVER_CODES = {-1000: "UNKNOWN", -1001: "DISCONNECTED", -1006: "UNEXPECTED_RESP", -1007: "TIMEOUT",
                -1008: "SERVER_BUSY"}


def kline_weight(market: str, limit: int) -> int:
    if market == "spot":
        return 2
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


class BinanceSource(Source):
    name = "binance"
    label = "Binance"
    description = "Binance spot, USD-M and COIN-M klines (REST and the data.binance.vision archive)"
    columns = CANDLE_COLUMNS + EXTRA_COLUMNS
    options = (
        Option("base_url", "Exchange host root, e.g. https://api.binance.com (paths are the plugin's).",
               envvar={m: spec["env"] for m, spec in MARKETS.items()}, envvar_by="market", metavar="URL"),
        Option("market", "Binance market: spot, usdm (USD-M futures) or coinm (COIN-M futures).",
               default="spot", choices=tuple(MARKETS)),
        Option("archive", "Where Binance history comes from: auto = checksum-verified data.binance.vision "
               "files where they save requests, REST for the rest and in place of any file missing or "
               "failing verification (REST only if --base-url is overridden without --archive-url); "
               "archive = every published month and day from the archive, an error instead of any REST "
               "substitute; rest = REST only.", default="auto", choices=ARCHIVE_MODES),
        Option("archive_url", f"Archive host root (paths start /data/...), default {ARCHIVE_URL}.",
               envvar="FORGE_BINANCE_ARCHIVE_URL", metavar="URL"),
    )

    _open_index = columns.index("open_ts")

    @property
    def source_value(self) -> str:
        return self._source_value

    def describe(self) -> str:
        return f"Binance {_MARKET_WORDS[self.market]}"

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.market = self.settings["market"]  # the core checked it is one of MARKETS
        spec = MARKETS[self.market]
        # spot and futures share symbol names: futures rows say so in their source column and file name
        self._source_value = "binance" if self.market == "spot" else f"binance-{self.market}"
        self.label = "Binance" if self.market == "spot" else f"Binance-{self.market.upper()}"
        self.prefix = spec["prefix"]
        self.timeframes = spec["timeframes"]
        if self.market != "spot":
            self.timeframe_notes = {"1s": f"Binance {_MARKET_WORDS[self.market]} has no 1s klines; "
                                          "1s exists on spot (--market spot)"}
        base_url = self.settings["base_url"] or spec["url"]  # the core read the market's variable
        # a tenth of the published weight until exchangeInfo tells this IP's real limit
        self.limiter = RateLimiter(spec["weight_limit"] * 0.95, 61.0, name=f"binance-{self.market}",
                                   initial=spec["weight_limit"] * 0.1)
        self.http = HttpClient(base_url, limiter=self.limiter, check=self._check, envvar=spec["env"])
        self._limits_known = False
        self._info_key = ("binance.exchangeInfo", base_url, self.market)
        self._ends: dict[tuple[str, str], dict[str, int]] = {}
        # where a series that no longer trades ends (after its last candle; 0: it has none),
        # as exchangeInfo and the newest klines confirmed: nothing at or after it is asked for
        self._stops: dict[tuple[str, str], int] = {}
        self._firsts: dict[tuple[str, str], int | None] = {}  # each series' first candle, as prepared
        self._probes: dict[tuple[str, str], Future[Sequence[Row]]] = {}  # first-candle probes asked ahead
        self._probe_pool: ThreadPoolExecutor | None = None
        self._now: int | None = None
        self._now_read = 0.0  # time.monotonic() when _now was read
        # REST refused this location (HTTP 451) and --archive archive goes on from the archive
        # alone: the refusal's line. Series then end where the archive's listing ends (_extent)
        self._rest_down: str | None = None
        self._extent: dict[tuple[str, str], int] = {}
        self._expired: set[str] = set()  # delivery contracts gone from exchangeInfo, from the archive
        self._rest_serves: set[str] = set()  # ... of which REST klines still gave the last candle
        self._unconfirmed: dict[str, str] = {}  # symbol -> why REST could not check its archive gaps
        self.archive_mode = self.settings["archive"]
        archive_url = self.settings["archive_url"]
        if archive_url is None and self.archive_mode == "auto" and base_url.rstrip("/") not in (spec["url"], DATA_API):
            # REST goes to a mock, proxy or other host: the real archive may not describe it
            # (Binance's own market-data host, which a 451 names, is the same exchange)
            log.info("archive_off", reason="base URL overridden without an archive URL", base_url=base_url)
            self.archive_mode = "rest"
        self.archive = ArchiveClient(archive_url or ARCHIVE_URL)
        self.archive_fetcher = ArchiveFetcher(self.archive, self.market, self._source_value, self._fetch_rest,
                                              strict=self.archive_mode == "archive",
                                              maker=lambda symbol, tf: self.row_maker(Task(symbol, tf, 0, 0)),
                                              columns=tuple(self.columns), check=self._check_gap)

    # -- HTTP plumbing ----------------------------------------------------------------------
    def _check(self, response: requests.Response, body: Any) -> None:
        status = response.status_code
        used = None
        for name, value in response.headers.items():
            lowered = name.lower()
            if lowered.startswith("x-mbx-used-weight-"):  # the interval's: X-MBX-USED-WEIGHT-1M
                used = _float(value)
                break
            if lowered == "x-mbx-used-weight":  # the legacy bare one (the minute's), if alone
                used = _float(value)
        if used is not None:
            self.limiter.observe(used)
        if status < 400:
            return
        code = body.get("code") if isinstance(body, dict) else None
        # not Binance's JSON (a WAF, CDN or proxy page, maybe kilobytes of HTML): a short reason only
        msg = str(body.get("msg", "")) if isinstance(body, dict) else body_reason(response.content)
        retry_after = parse_retry_after(response)  # seconds or an HTTP date
        if status == 418:
            until = _ban_until(msg, retry_after)
            if until is not None and until > now_ms():
                # every worker, and every process sharing the IP's budget, stays quiet until the
                # ban's end (the client paused only for Retry-After, or 60 s without one), and
                # so does the next run on this machine (bans.py)
                self.limiter.pause((until - now_ms()) / 1000)
                bans.remember(self.http.host, until)
            raise SourceError(f"Binance has banned this IP ({msg}); not retrying, a retry would extend "
                              f"the ban; {_ban_end(until)}")
        if isinstance(code, int) and code in SERVER_CODES:  # (a list as code would not hash)
            raise RetryableError(f"HTTP {status} {code} {SERVER_CODES[code]}: {msg}", retry_after,
                                 busy=code == -1008)  # every worker backs off together
        if status in (429, 408) or status >= 500:
            raise RetryableError(" ".join(str(x) for x in (f"HTTP {status}", code, msg) if x), retry_after)
        # Binance's code 0 (a 451's) or none says nothing: the message alone
        reason = f"{code} {msg}" if isinstance(body, dict) and code not in (None, 0) else msg
        if status == 451 and self.market == "spot" and "data-api.binance.vision" not in (response.url or ""):
            reason += f"; spot market data is also served by {DATA_API} (--base-url {DATA_API})"
        if status == 451 and self.archive_mode == "rest":  # auto and archive go on without REST
            reason += "; --archive archive takes the archive's files alone, without REST"
        if status == 404 and not isinstance(body, dict):  # no such path: a base URL with a path in it
            reason += f"; is the base URL the host root, like {MARKETS[self.market]['url']}? (the plugin adds {self.prefix})"
        line = error_line(response, reason)
        raise BinanceError(status, code, msg, line)

    def _get(self, path: str, params: dict[str, Any], cost: float, parse: Any = None, raw: Any = None) -> Any:
        return self.http.get_json(self.prefix + path, params, cost=cost, parse=parse, raw=raw)

    # -- symbols: exchangeInfo --------------------------------------------------------------
    def _learn(self, symbols: Sequence[str], fresh: bool = False) -> dict[str, Any]:
        """exchangeInfo for ``symbols``, once per run (``fresh``: asked again): the limiter sized
        from its ``rateLimits`` (the live values change) and each symbol's entry kept (status,
        listing, delivery).

        Spot asks about all of them in one request (``symbols=[...]``, weight 20 like one
        symbol), or one per :data:`_INFO_BATCH` when there are more (the whole list is
        megabytes); a -1121 there (one is unknown) asks for the whole list instead, which says
        which one and what is close. Futures exchangeInfo has no symbol parameter: the whole
        list, weight 1. Within one :func:`forge_core.partitions.run` the answers are kept for
        every later partition group of the same host and market: N groups cost one request."""
        info = self._info
        cache = run_cache()
        later = sorted(cache.get(("symbols", self.name, self.market), ())) if cache is not None and not fresh else []
        want = [s for s in dict.fromkeys([*symbols, *later]) if fresh or s not in info["symbols"]]
        if fresh or info["rateLimits"] is None or (want and not info["complete"]):
            batches: list[dict[str, Any]] = [{}]
            if self.market == "spot":
                asked = [s for s in want if _SYMBOL_RE.match(s)]  # a malformed one: klines explains it
                if len(asked) == 1:
                    batches = [{"symbol": asked[0]}]
                elif asked:
                    batches = [{"symbols": json.dumps(asked[i:i + _INFO_BATCH], separators=(",", ":"))}
                               for i in range(0, len(asked), _INFO_BATCH)]
                elif info["rateLimits"] is not None:
                    return info
            cost = 20 if self.market == "spot" else 1
            for params in batches:
                try:
                    body = self._get("/exchangeInfo", params, cost)
                except BinanceError as exc:
                    if exc.code != -1121 or not params:
                        raise
                    params = {}  # one of them is unknown: the whole list tells which, and what is close
                    body = self._get("/exchangeInfo", params, cost)
                if not isinstance(body, dict):
                    raise SourceError(f"Binance {self.market} exchangeInfo is not a JSON object")
                entries = body.get("symbols")
                info["symbols"].update((e["symbol"], e) for e in (entries if isinstance(entries, list) else [])
                                       if isinstance(e, dict) and isinstance(e.get("symbol"), str))
                info["complete"] = info["complete"] or not params
                limits = body.get("rateLimits")
                info["rateLimits"] = limits if isinstance(limits, list) else []
                if not params:
                    break  # the whole list has them all
        if not self._limits_known:
            self._limits_known = True
            for limit in info["rateLimits"]:
                if isinstance(limit, dict) and limit.get("rateLimitType") == "REQUEST_WEIGHT":
                    sized = _weight_limit(limit)
                    if sized is None:  # the start-up limit stays: conservative
                        log.warning("rate_limit_unreadable", market=self.market, entry=str(limit)[:200])
                        continue
                    weight, window = sized
                    slack = max(0.25, window * 0.02)  # network jitter between our clock and theirs
                    # the server counts in fixed windows of `window` from the epoch: observe aligns on them
                    self.limiter.reconfigure(weight * 0.95, window + slack, counting_window=window)
        return info

    @property
    def _info(self) -> dict[str, Any]:
        """This run's exchangeInfo (shared by the pipelines of one partitions run)."""
        cache = run_cache()
        fresh: dict[str, Any] = {"rateLimits": None, "symbols": {}, "complete": False}
        if cache is None:
            return self.__dict__.setdefault("_own_info", fresh)
        return cache.setdefault(self._info_key, fresh)

    # -- the Source contract ----------------------------------------------------------------
    def server_time(self) -> int:
        cache = run_cache()
        if self._rest_down is None and cache is not None:  # an earlier partition group was refused
            self._rest_down = cache.get(("binance.rest_down", *self._info_key[1:]))
        if self._rest_down is None:
            until = bans.banned_until(self.http.host)
            if until is not None:
                raise SourceError(f"Binance banned this IP (HTTP 418, remembered from an earlier run in "
                                  f"{bans.path()}); not asking before the ban ends, a request would extend it; "
                                  f"{_ban_end(until)}")
            try:
                self._now = int(self._get("/time", {}, 1)["serverTime"])
                self._now_read = time.monotonic()
                return self._now
            except BinanceError as exc:
                if not self._refused_here(exc):
                    raise
        # the archive host's clock (its Date header), else this machine's: the archive only needs the day
        self._now = self.archive.clock(self.market) or now_ms()
        self._now_read = time.monotonic()
        return self._now

    def _exchange_now(self) -> int:
        """The exchange's clock now, from its last reading (the local clock if none yet)."""
        if self._now is None:
            return now_ms()
        return self._now + int((time.monotonic() - self._now_read) * 1000)

    def _refused_here(self, exc: BinanceError) -> bool:
        """Whether ``exc`` is REST refusing this location (HTTP 451) with ``--archive archive`` or
        ``auto``: then the run goes on from the archive alone, and one warning says what that
        loses (``--archive rest`` asked for REST: it stops with the refusal's line)."""
        if exc.status != 451 or self.archive_mode == "rest":
            return False
        if self._rest_down is None:
            self._rest_down = exc.line
            cache = run_cache()
            if cache is not None:  # the later partition groups of this run: neither asked nor warned again
                cache[("binance.rest_down", *self._info_key[1:])] = exc.line
            log.warning("rest_unreachable", market=self.market, refused=exc.line,
                        going_on=f"--archive {self.archive_mode} from the archive's files alone, on the archive "
                                 "host's clock",
                        lost="the newest days not archived yet; symbols unchecked against exchangeInfo (their "
                             "range is the archive's listing); the exchange's confirmation of holes: they are "
                             "reported unconfirmed")
        return True

    def prepare_symbols(self, symbols: Sequence[str], timeframe: Timeframe) -> None:
        """Every symbol of the run in one exchangeInfo request (see :meth:`_learn`), while the
        first-candle probes :meth:`prepare` will need are asked in the background."""
        if self._rest_down is not None:
            return
        self._probe_ahead(symbols, timeframe)
        try:
            self._learn(symbols)
        except BinanceError as exc:
            if self._refused_here(exc):
                return
            raise SourceError(f"Binance {self.market} refused exchangeInfo: {exc.line}") from None

    def prepare(self, symbol: str, timeframe: Timeframe) -> SymbolInfo:
        """The symbol's first candle, and, when exchangeInfo says it no longer trades (spot
        ``status`` BREAK, USD-M ``status`` SETTLING, COIN-M ``contractStatus`` DELIVERED...), its
        last candle (the newest klines has): the exchange's confirmation that nothing follows.

        A futures delivery contract that exchangeInfo no longer lists and whose delivery date
        (in its name) has passed is taken from the archive (:meth:`_from_archive`); so is
        every symbol once REST refused this location (``--archive archive``)."""
        delivery = self._delivery(symbol)
        if self._rest_down is not None:
            return self._from_archive(symbol, timeframe, delivery)
        try:
            try:
                meta = self._learn([symbol])["symbols"].get(symbol)
            except BinanceError as exc:
                if not self._refused_here(exc):
                    raise
                return self._from_archive(symbol, timeframe, delivery)
            if meta is None and delivery is not None and self._info["complete"]:
                return self._from_archive(symbol, timeframe, delivery)
            if self.market == "coinm":  # end-anchored klines: startTime=0 finds nothing
                if meta is None:
                    raise BinanceError(400, -1121, "Invalid symbol.")
                onboard = meta.get("onboardDate")
                first: int | None = int(onboard) if onboard else None
            else:
                rows = self._first_rows(symbol, timeframe)
                first = rows[0][self._open_index] if rows else None
                if first is None and meta is not None and meta.get("onboardDate"):
                    first = int(meta["onboardDate"])  # a futures contract not trading yet: its listing time
            self._firsts[(symbol, timeframe.name)] = first
            return self._end(symbol, timeframe, meta, first)
        except BinanceError as exc:
            raise self._explain(exc, symbol, timeframe) from None

    def _probe_ahead(self, symbols: Sequence[str], timeframe: Timeframe) -> None:
        """Ask the first-candle probes :meth:`prepare` will need, on :data:`PROBES_AHEAD`
        threads, while exchangeInfo answers: a run's symbols are not prepared one round trip
        after the other. Not for COIN-M (its listing comes from exchangeInfo), a malformed name
        (klines would explain it: prepare asks) or a delivery contract past its delivery (it may
        be gone from exchangeInfo: the archive then says where it starts)."""
        if self.market == "coinm":
            return
        todo = [s for s in dict.fromkeys(symbols) if _SYMBOL_RE.match(s) and self._delivery(s) is None
                and (s, timeframe.name) not in self._probes]
        if not todo:
            return
        if self._probe_pool is None:
            self._probe_pool = ThreadPoolExecutor(PROBES_AHEAD, thread_name_prefix="forge-binance-probe")

        def probe(symbol: str) -> Sequence[Row]:
            with retrying.symbol_context(symbol):  # a retry's display names the symbol
                return self._klines(symbol, timeframe, {"startTime": 0, "limit": 1})

        for symbol in todo:
            self._probes[(symbol, timeframe.name)] = self._probe_pool.submit(probe, symbol)

    def _first_rows(self, symbol: str, timeframe: Timeframe) -> Sequence[Row]:
        """The symbol's first candle (klines from time 0, one row): the probe asked ahead, or now."""
        ahead = self._probes.pop((symbol, timeframe.name), None)
        if ahead is None:
            return self._klines(symbol, timeframe, {"startTime": 0, "limit": 1})
        try:
            return ahead.result()
        except CancelledError:
            raise Cancelled("cancelled") from None

    def recheck(self, symbols: Sequence[str], timeframe: Timeframe) -> dict[str, SymbolInfo]:
        """exchangeInfo asked again for a follow run (spot: these symbols by name, weight 20;
        futures: the whole list, weight 1), and the newest candle of each one that still does
        not trade. Where a page walk found a series' data ending is forgotten once the newest
        candle is past it (a paused pair's candles come back). A symbol exchangeInfo no longer
        lists is left out (unchanged), and so is every symbol once REST refused this location."""
        if self._rest_down is not None:
            return {}
        try:
            known = self._learn(symbols, fresh=True)["symbols"]
            answers = {}
            for symbol in symbols:
                key = (symbol, timeframe.name)
                if symbol not in known:
                    continue
                answers[symbol] = info = self._end(symbol, timeframe, known[symbol], self._firsts.get(key))
                ended_at = self._ends.get(key, {}).get("at")
                if ended_at is None:
                    continue
                newest = info.last_open if info.ended is not None else self._newest(symbol, timeframe)
                if newest is not None and newest >= ended_at:
                    del self._ends[key]
            return answers
        except BinanceError as exc:
            raise SourceError(f"Binance {self.market} refused a status look-up: {exc.line}") from None

    def _end(self, symbol: str, timeframe: Timeframe, meta: dict[str, Any] | None, first: int | None) -> SymbolInfo:
        """The symbol as exchangeInfo's entry says: trading, or not (its newest candle then the
        end of the series, cut in :attr:`_stops`)."""
        self._stops.pop((symbol, timeframe.name), None)
        status = self._status(meta)
        if status is None:
            return SymbolInfo(symbol, first)
        last, confirmed = self._last_candle(symbol, timeframe, first)
        if not confirmed:
            log.warning("last_candle_unconfirmed", symbol=symbol, status=status,
                        reason="the newest klines came back empty although the symbol has candles")
            return SymbolInfo(symbol, first)
        self._stops[(symbol, timeframe.name)] = timeframe.next_open(last) if last is not None else 0
        # a delivery contract past its delivery that exchangeInfo says does not trade: for good
        return SymbolInfo(symbol, first, last, self._ended_reason(meta, status, last),  # type: ignore[arg-type]
                          final=self._delivery(symbol) is not None)

    def _delivery(self, symbol: str) -> int | None:
        """The delivery time a futures delivery contract's name gives, once it has passed
        (None: not such a name, not a date, or not delivered yet by this run's clock)."""
        m = _DELIVERY_RE.match(symbol) if self.market != "spot" else None
        if m is None:
            return None
        try:
            day = datetime(2000 + int(m[1]), int(m[2]), int(m[3]), tzinfo=timezone.utc)
        except ValueError:
            return None
        delivery = int(day.timestamp()) * 1000 + _DELIVERY_HOUR
        now = self._now if self._now is not None else self.server_time()
        return delivery if delivery <= now else None

    def _from_archive(self, symbol: str, tf: Timeframe, delivery: int | None) -> SymbolInfo:
        """The series as the archive's listing has it: its first candle from its first file;
        for an expired delivery contract (``delivery``), its last candle from its last file,
        and an end (the archive's data confirms it, the name gives the date). A contract of
        which the archive has no file is an unknown symbol, as exchangeInfo said."""
        now = self._now if self._now is not None else self.server_time()
        where = {"spot": "Binance", "usdm": "Binance USD-M", "coinm": "Binance COIN-M"}[self.market]
        try:
            extent = archive_extent(self.archive, self.market, symbol, tf, now if delivery is None else delivery)
            if extent is None:
                if delivery is not None and self._rest_down is None:
                    raise self._explain(BinanceError(400, -1121, "Invalid symbol."), symbol, tf,
                                        self._archived_like(symbol))
                raise SourceError(f"{symbol} has no {tf.name} files in the {where} archive ({self.archive.listing}) "
                                  "and REST refused this location (HTTP 451): check the symbol's spelling")
            first_file, last_file = extent
            first = file_opens(self.archive, self.market, symbol, tf, first_file)[:1]
            self._extent[(symbol, tf.name)] = last_file.end
            if delivery is None:
                if last_file.end < now - 3 * DAY:  # far more than the archive's publication lag
                    log.warning("archive_ends_early", symbol=symbol, timeframe=tf.name, last_file=last_file.name(symbol, tf),
                                meaning="no file after it: delisted? REST, which would confirm it, refused this "
                                        "location; nothing after it is fetched")
                return SymbolInfo(symbol, first[0] if first else None)
            if last_file.period == "monthly" and tf.name in DAILY_TIMEFRAMES:
                # the delivery day's file, a smaller one, if listed; not the last daily file listed:
                # with a daily file missing, that one would end the series early
                day = day_file(delivery - 1)
                if day.start >= last_file.start and listed_files(self.archive, self.market, symbol, tf, "daily",
                                                                 day.date) == [day]:
                    last_file = day
            last = file_opens(self.archive, self.market, symbol, tf, last_file)[-1:]
        except ArchiveFailure as exc:
            raise SourceError(f"the {where} archive could not say where {symbol} {tf.name} starts and ends: "
                              f"{exc}") from None
        self._expired.add(symbol)
        last_open = last[0] if last else None
        if last_open is not None and self._rest_down is None:
            self._ask_rest_about(symbol, tf, last_open)
        self._stops[(symbol, tf.name)] = tf.next_open(last_open) if last_open is not None else 0
        if last_open is not None and tf.next_open(last_open) < delivery - DAY:
            log.warning("delivery_contract_ends_early", symbol=symbol, delivery=display(delivery),
                        last_candle=display(last_open), file=last_file.name(symbol, tf))
        log.info("delivery_contract_from_archive", symbol=symbol, delivery=display(delivery),
                 first=display(first[0]) if first else None, last=display(last_open) if last else None)
        # delivered, and gone from exchangeInfo: for good (under a 451 REST could not confirm it)
        return SymbolInfo(symbol, first[0] if first else None, last_open,
                          f"delivered {display(delivery)} (an expired {where} delivery contract: gone from "
                          "exchangeInfo, its candles from the archive)", final=self._rest_down is None)

    def _ask_rest_about(self, symbol: str, tf: Timeframe, last_open: int) -> None:
        """Whether REST still serves an expired contract: its klines up to the archive's last
        candle (only ``endTime``: the newest before it, on every market) must end with that
        candle. Binance does not document what it answers (unverified: -1121, ``[]`` or the
        candles); anything but the candle means REST is not asked about it again, so an empty
        answer is never taken for the exchange confirming a hole."""
        try:
            rows = self._klines(symbol, tf, {"endTime": tf.end_ts(last_open), "limit": 1})
        except BinanceError as exc:
            if exc.code != -1121 and not self._refused_here(exc):
                raise self._explain(exc, symbol, tf) from None
            rows = []
        opens = rows.open_ts if isinstance(rows, TextRows) else [r[self._open_index] for r in rows]
        if list(opens)[-1:] == [last_open]:
            self._rest_serves.add(symbol)
        else:
            self._unconfirmed[symbol] = f"Binance {self.market} REST does not serve the expired contract"
        log.info("delivery_contract_rest", symbol=symbol, serves=symbol in self._rest_serves)

    def _archived_like(self, symbol: str) -> str:
        """The delivery contract of the same pair in the archive closest to ``symbol`` (a typo
        in its date: ``BTCUSDT_240328``), from one folder listing; "" if none is close."""
        pair = symbol.rpartition("_")[0]
        try:
            folders = self.archive.keys(f"data/{MARKET_DIRS[self.market]}/monthly/klines/{pair}_", delimiter="/")
        except ArchiveFailure:
            return ""
        names = [f.rstrip("/").rsplit("/", 1)[-1] for f in folders]
        found = difflib.get_close_matches(symbol, [n for n in names if _DELIVERY_RE.match(n)], n=1, cutoff=0.75)
        return found[0] if found else ""

    def holes_unconfirmed(self, symbol: str) -> str | None:
        """Why REST could not check the gaps of ``symbol``'s archive files (None: it did): the
        holes there are not the exchange's word."""
        if self._rest_down is not None:
            return f"Binance {self.market} REST refused this location (HTTP 451), the archive's files alone"
        return self._unconfirmed.get(symbol)

    def _check_gap(self, symbol: str, tf: Timeframe, start: int, end: int) -> list[Row]:
        """REST's candles in a gap of an archive file; [] when REST cannot tell (refused here,
        or it does not serve an expired contract): the gap then stays an unconfirmed hole."""
        if self._rest_down is not None or (symbol in self._expired and symbol not in self._rest_serves):
            return []
        return self._fetch_rest(symbol, tf, start, end)

    def _status(self, meta: dict[str, Any] | None) -> str | None:
        """exchangeInfo's status when it says the symbol does not trade: ended, or a spot BREAK
        (None: trading, paused at most, or not in exchangeInfo). COIN-M calls it ``contractStatus``."""
        if meta is None:
            return None
        status = meta.get("contractStatus" if self.market == "coinm" else "status", meta.get("status"))
        if not isinstance(status, str) or status not in _STATUS_WORDS:
            return None
        return status

    def _ended_reason(self, meta: dict[str, Any], status: str, last: int | None) -> str:
        """``delisted (Binance exchangeInfo status BREAK)``, with the futures ``deliveryDate``.
        "delisted" only once the last candle is a day old: a pair in BREAK for a few hours (a
        maintenance) is "not trading"; the data is the same either way."""
        recent = last is None or (self._now is not None and last > self._now - 2 * DAY)
        word = "not trading" if recent else _STATUS_WORDS[status]
        field = "contractStatus" if self.market == "coinm" else "status"
        where = {"spot": "Binance", "usdm": "Binance USD-M", "coinm": "Binance COIN-M"}[self.market]
        delivery = meta.get("deliveryDate")
        when = (f", deliveryDate {display(delivery)}" if isinstance(delivery, int) and self._now is not None
                and delivery <= self._now + 366 * DAY else "")  # a perpetual's is 2100-12-25
        return f"{word} ({where} exchangeInfo {field} {status}{when})"

    def _newest(self, symbol: str, tf: Timeframe) -> int | None:
        """The open of the newest candle klines has (neither start nor end time: the newest, on
        every market), or None for an empty answer."""
        rows = self._klines(symbol, tf, {"limit": 1})
        opens = rows.open_ts if isinstance(rows, TextRows) else [r[self._open_index] for r in rows]
        return max(opens) if opens else None

    def _last_candle(self, symbol: str, tf: Timeframe, first: int | None) -> tuple[int | None, bool]:
        """:meth:`_newest` and whether that answer is believed: an empty one is asked again, and
        believed only if it stays empty and the first-candle request found none either (one
        empty answer each is no proof of a symbol without candles)."""
        for attempt in range(3):
            if attempt and self.http.cancelled.wait(0.25 * attempt):
                return None, False
            newest = self._newest(symbol, tf)
            if newest is not None:
                return newest, True
        return None, first is None  # no candle at all, as the first-candle request said too

    def page_size(self, timeframe: Timeframe) -> int:
        return MARKETS[self.market]["page"]

    def plan(self, symbol: str, timeframe: Timeframe, start: int, end: int) -> Iterator[Task]:
        """REST pages; or archive files for what the archive has published, REST pages for the rest."""
        if self.archive_mode == "rest":
            yield from super().plan(symbol, timeframe, start, end)
            return
        segments = self.segments(symbol, timeframe, start, end)
        # missing files become REST here, merged into full pages for every worker
        for seg in self.archive_fetcher.resolve(symbol, timeframe, segments):
            if seg.file is None:
                yield from super().plan(symbol, timeframe, seg.start, seg.end)
            else:
                yield from self.archive_fetcher.tasks(symbol, timeframe, seg)

    def segments(self, symbol: str, tf: Timeframe, start: int, end: int) -> list[Segment]:
        """:func:`~.archive.plan_segments` for ``[start, end)`` in this source's archive mode,
        cut at the series' confirmed end (:attr:`_stops`). Planned up to the end of the month
        of its last candle first, so that month's file is used (a delisted pair's last month
        is published, its later ones are not), rather than a file per day up to the cut."""
        now = self._now if self._now is not None else self.server_time()
        page = self.page_size(tf)
        # an expired contract's files are all there is (REST may not serve it): every one is worth it
        worth = (None if self.archive_mode == "archive" or symbol in self._expired
                 else (lambda a, b: tf.count(a, b) > page))
        stop = self._stops.get((symbol, tf.name))
        if self._rest_down is not None:
            return self._archive_only(symbol, tf, start, end, now)
        if stop is None or stop > end:
            return plan_segments(tf, start, end, now, worth=worth)
        if stop <= start:
            return []
        planned = plan_segments(tf, start, max(end, month_file(stop - 1).end), now, worth=worth)
        return [Segment(seg.start, min(seg.end, stop), seg.file) for seg in planned if seg.start < stop]

    def _archive_only(self, symbol: str, tf: Timeframe, start: int, end: int, now: int) -> list[Segment]:
        """The archive's files for ``[start, end)`` once REST refused this location: up to where
        the archive's listing ends (its files are taken as published, whatever the usual guess
        says); the newest days, not archived yet, are not fetched."""
        self.archive_fetcher.no_rest = self._rest_down  # a missing file's error says REST cannot stand in
        stop = min(self._extent.get((symbol, tf.name), start), self._stops.get((symbol, tf.name), end))
        if stop < end:
            log.info("not_archived_yet", symbol=symbol, timeframe=tf.name, reason="REST unreachable",
                     not_fetched=f"{display(max(start, stop))}..{display(end - 1)}")
        if stop <= start:
            return []
        planned = plan_segments(tf, start, stop, max(now, stop + DAILY_LAG))
        return [seg for seg in planned if seg.file is not None]

    def fetch(self, task: Task) -> Iterable[Row] | Fetched:
        if task.kind == "archive":
            return self.archive_fetcher.fetch(task.symbol, task.timeframe, task.detail, task.start, task.end,
                                              task.stream)
        return self._fetch_rest(task.symbol, task.timeframe, task.start, task.end)

    def _fetch_rest(self, symbol: str, tf: Timeframe, start: int, end: int) -> list[Row]:
        """Candles opening in ``[start, end)`` from REST pages (none after a confirmed end)."""
        end = min(end, self._stops.get((symbol, tf.name), end))
        if start >= end:
            return []
        if self._rest_down is not None:  # --archive auto standing REST in for a file the archive lacks
            raise SourceError(f"{symbol} {tf.name} {display(start)}..{display(end - 1)} is not in the Binance "
                              f"archive, and REST refused this location: {self._rest_down}")
        if symbol in self._expired and symbol not in self._rest_serves:
            raise SourceError(f"Binance {self.market} REST does not serve the expired contract {symbol}: its "
                              f"candles come from the archive alone, which cannot give {display(start)}.."
                              f"{display(end - 1)}")
        limit = self.page_size(tf)
        make = self.row_maker(Task(symbol, tf, start, end))
        window = MARKETS[self.market].get("window")  # end-anchored API: a window never holds more than a page
        span = None if window is None else min(window, limit * (tf.ms or DAY * 31))

        def request(cursor: int, stop: int | None) -> Sequence[Row]:
            if stop is None and span is not None:
                # a probe for the next candle: COIN-M answers a bare startTime with the newest candle
                # of the 200 days after it, not the first, so ask for one whole window instead, but
                # not past the exchange's clock (nothing opens there; a time in the future is
                # reported to get a 403 from COIN-M, and ccxt clamps inverse endTime to now)
                stop = max(cursor + 1, min(cursor + span, self._exchange_now()))
            # futures weight grows with `limit`: ask for no more candles than the window holds
            # (a follow step of a few candles costs 1, not 2)
            fits = limit if stop is None or not tf.ms else max(1, min(limit, -(-(stop - cursor) // tf.ms)))
            params = {"startTime": cursor, "limit": 1} if stop is None else {
                "startTime": cursor, "endTime": stop - 1, "limit": fits}
            try:
                return self._klines(symbol, tf, params, make)
            except BinanceError as exc:
                raise self._explain(exc, symbol, tf) from None

        ends = self._ends.setdefault((symbol, tf.name), {})  # where this series' data ends, if affirmed
        rows = forward_pages(request, tf, start, end, open_index=self._open_index, end_of_data=ends, window=span)
        at = ends.get("at")
        if at is not None and at < end and self._now is not None and at < self._now - MINUTE:
            self._confirm_end(symbol, tf, at)
        return rows

    def _confirm_end(self, symbol: str, tf: Timeframe, at: int) -> None:
        """A page walk found no candle from ``at`` on, a minute or more before the exchange's
        clock: believed only if exchangeInfo, asked again, now says the symbol no longer trades
        (a maintenance began, or a delisting) with its last candle before ``at``. An exchange that
        says it trades but answers empty for its past is failing: a retryable error (a follow
        rides it out; a backfill stops loudly with what it wrote kept), never a silent tail loss."""
        key = (symbol, tf.name)
        try:
            meta = self._learn([symbol], fresh=True)["symbols"].get(symbol)
        except BinanceError as exc:
            raise self._explain(exc, symbol, tf) from None
        if meta is not None and symbol not in self._expired:
            self._end(symbol, tf, meta, self._firsts.get(key))
        stop = self._stops.get(key)
        if stop is not None and stop <= at:
            return
        self._ends.pop(key, None)
        raise RetryableError(f"Binance {self.market} answers no {tf.name} candle of {symbol} from {display(at)} on, "
                             f"though its exchangeInfo says it trades; try again later")

    def _klines(self, symbol: str, tf: Timeframe, params: dict[str, Any], make: Any = None) -> Sequence[Row]:
        query = {"symbol": symbol, "interval": tf.name, **params}
        make = make or self.row_maker(Task(symbol, tf, 0, 0))
        fixed = {"source": self._source_value, "symbol": symbol, "timeframe": tf.name}

        def parse(body: Any) -> Sequence[Row]:
            if not isinstance(body, list):
                raise TypeError(f"expected a list of klines, got {type(body).__name__}")
            rows = _columns(body, self.columns, fixed)
            if rows is not None:
                return rows
            return [make(open_ts=int(k[0]), end_ts=int(k[6]), open=k[1], high=k[2], low=k[3], close=k[4],
                         volume=k[5], quote_volume=k[7], trades=int(k[8]), taker_buy_base_volume=k[9],
                         taker_buy_quote_volume=k[10]) for k in body]

        return self._get("/klines", query, kline_weight(self.market, int(query.get("limit", 500))), parse,
                         lambda content: _raw_klines(content, self.columns, fixed, tf.ms))

    def _explain(self, exc: BinanceError, symbol: str, tf: Timeframe, close: str = "") -> SourceError:
        where = f"Binance {self.market}"
        like = "BTCUSD_PERP" if self.market == "coinm" else "BTCUSDT"
        close = close or self._close_match(symbol)
        hint = f"did you mean {close!r}? " if close else ""
        if exc.code == -1121:
            return SourceError(f"unknown symbol {symbol!r} on {where} (Binance: {exc.msg}); "
                               f"{hint}Binance spells pairs like {like}")
        if exc.code == -1100 and "symbol" in exc.msg:
            return SourceError(f"symbol {symbol!r} is not valid on {where}: use upper case letters and "
                               f"digits without separators, like {like}" + (f"; did you mean {close!r}?" if close else ""))
        if exc.code == -1120:
            return SourceError(f"timeframe {tf.name!r} is not offered by {where}; choose one of: "
                               f"{' '.join(self.timeframes)}")
        return SourceError(f"{where} refused the request for {symbol} {tf.name}: {exc.line}")

    def _close_match(self, symbol: str) -> str:
        """The symbol exchangeInfo lists that is closest to ``symbol`` (case and separators
        aside first; a look-alike only from the whole list, not from the run's symbols), or ""."""
        info = self._info
        names = info["symbols"]
        plain = symbol.upper().replace("/", "").replace("-", "")
        if plain != symbol and plain in names:
            return plain
        if not info["complete"]:
            return ""
        found = difflib.get_close_matches(plain, list(names), n=1, cutoff=0.75)
        return found[0] if found else ""

    def integrity(self) -> Any:
        """The exchange side of ``forge verify/repair`` from archive files (:mod:`.integrity`)."""
        from .integrity import ArchiveSide

        return ArchiveSide(self)

    def stats(self) -> dict[str, int]:
        out = self.http.stats.as_dict()
        if self.archive_mode != "rest":
            counts = self.archive.counts
            for key in ("archive_files", "archive_missing", "archive_checksum_failures", "archive_fallbacks"):
                out[key] = counts[key]
            retries = counts["archive_retries"] + self.archive.http.stats.retries
            extra = {"archive_gap_rows": counts["archive_gap_rows"], "archive_errors": counts["archive_errors"],
                     "archive_retries": retries}
            out.update((k, v) for k, v in extra.items() if v)
            out["archive_requests"] = self.archive.http.stats.requests
        return out

    def close(self) -> None:
        if self._probe_pool is not None:
            self._probe_pool.shutdown(wait=False, cancel_futures=True)
        self.archive_fetcher.close()
        self.http.close()
        self.archive.close()


class BinanceError(SourceError):
    """A refused request. ``line`` says it in one line: status, host/path, code and message (or
    a short plain-text reason when the body was not Binance's JSON)."""

    def __init__(self, status: int, code: Any, msg: str, line: str | None = None) -> None:
        self.status, self.code, self.msg = status, code, msg
        self.line = line or f"HTTP {status} {code} {msg}"
        super().__init__(f"Binance {self.line}")


# A kline as Binance writes it, with the digits and dots of its values taken out: open time,
# five strings (open, high, low, close, volume), close time, quote volume, trades, three
# strings (taker buy base and quote volume, ignore). Spot, USD-M and COIN-M alike.
_KLINE_SKELETON = b'[,"","","","","",,"",,"","",""]'
_VALUE_BYTES = b"0123456789."


def _raw_klines(content: bytes, columns: tuple[str, ...], fixed: dict[str, str], ms: int | None = None) -> TextRows | None:
    """A page of klines as rows straight from the body's bytes, without a JSON decode: only
    for a body that is exactly ``[kline,kline,...]`` in Binance's compact form, every value
    made of digits and dots (checked by taking them out and comparing what is left, byte for
    byte, with that form), the three ints canonical. Their strings are then exactly what a
    JSON decoder gives. ``None`` for anything else (decoded as usual).

    A page of ``ms``-millisecond candles without a hole (the usual page) becomes its CSV
    records at once (:func:`_steady_text`); any other is held as columns. Both are made from
    the one cut below."""
    skeleton = content.translate(None, _VALUE_BYTES)
    n, extra = divmod(len(skeleton) - 1, len(_KLINE_SKELETON) + 1)
    if extra or n < 1 or skeleton != b"[" + b",".join([_KLINE_SKELETON] * n) + b"]":
        return None
    # Cut at the quotes: 18 pieces a kline. The odd ones are the nine strings (only value
    # bytes, by the skeleton); the even ones hold the form's commas and brackets, and must
    # hold nothing else but the three ints: a value byte outside a value (`"37000.1"9,` or
    # `],9[` match the skeleton but are not JSON) leaves one of them other than its form.
    p = content.decode("ascii").split('"')
    commas = [","] * n
    if p[2::18] != commas or p[4::18] != commas or p[6::18] != commas or p[8::18] != commas \
            or p[14::18] != commas or p[16::18] != commas:
        return None
    heads = "".join(p[0::18])  # "[[OT," "],[OT," ... "]]"
    closes, counts = "".join(p[10::18]), "".join(p[12::18])  # ",ET," ... and ",TR," ...
    opens, trades = heads[2:-3].split(",],["), _between_commas(counts, n)
    if not (heads.startswith("[[") and heads.endswith(",]]")) or len(opens) != n or trades is None:
        return None
    if ms is not None and columns == _TEXT_COLUMNS and opens[0].isdigit():
        first = int(opens[0])
        stop = first + n * ms  # opens and closes: one comparison each with the run a `%` format
        # writes (canonical, in order); trades: canonical ints (no empty one, no ".", no leading 0)
        if (stop < 1 << 63 and heads == "[[" + ("%d,],[" * (n - 1) + "%d,]]") % tuple(range(first, stop, ms))
                and closes == (",%d," * n) % tuple(range(first + ms - 1, stop, ms))
                and "" not in trades and "." not in counts and counts.count(",0") == trades.count("0")):
            rows = _steady_text(p, opens, fixed, first, ms)
            if rows is not None:
                return rows
    ends = _between_commas(closes, n)
    if ends is None:
        return None  # (the values themselves are checked canonical by from_columns)
    return TextRows.from_columns(columns, {
        "open_ts": opens, "end_ts": ends, "open": p[1::18], "high": p[3::18], "low": p[5::18],
        "close": p[7::18], "volume": p[9::18], "quote_volume": p[11::18], "trades": trades,
        "taker_buy_base_volume": p[13::18], "taker_buy_quote_volume": p[15::18]},
        fixed=fixed, ints=("trades",), plain=True)


def _weight_limit(entry: dict[str, Any]) -> tuple[float, int] | None:
    """``(limit, window seconds)`` of an exchangeInfo REQUEST_WEIGHT entry, or None when it is
    not readable as positive numbers (a malformed answer must not end the run)."""
    interval, num, limit = entry.get("interval", "MINUTE"), entry.get("intervalNum", 1), entry.get("limit")
    if not isinstance(interval, str):
        return None
    if not isinstance(num, int) or isinstance(num, bool) or num < 1:
        return None
    if not isinstance(limit, int | float) or isinstance(limit, bool) or not 0 < limit < float("inf"):
        return None
    return float(limit), _WINDOW_SECONDS.get(interval, 60) * num


_TEXT_COLUMNS = CANDLE_COLUMNS + EXTRA_COLUMNS
_TEXT_INTS = tuple(_TEXT_COLUMNS.index(c) for c in ("open_ts", "end_ts", "trades"))


def _steady_text(p: list[str], opens: list[str], fixed: dict[str, str], first: int, ms: int) -> TextRows | None:
    """The klines :func:`_raw_klines` cut (``p``, 18 pieces a kline) and found one unbroken
    run ``ms`` apart from ``first``, each closing at its candle's last millisecond, as CSV
    records: those pieces in their CSV order, joined once (no string per value, no column,
    no row). ``None`` when a constant would need quoting."""
    prefix = f"{fixed['source']},{fixed['symbol']},{fixed['timeframe']},"
    if prefix.count(",") != 3 or any(c in prefix for c in '"\r\n'):
        return None
    n = len(opens)
    out = ["\r\n" + prefix] * (18 * n)  # a record: the prefix, open, ",close,", the five strings, ...
    out[0] = prefix
    out[1::18] = opens
    out[2::18] = p[10::18]
    for k in range(9):  # open "," high "," low "," close "," volume
        out[3 + k::18] = p[1 + k::18]
    out[12::18] = p[2::18]  # ","
    for k in range(5):  # quote volume ",trades," taker buy base "," taker buy quote
        out[13 + k::18] = p[11 + k::18]
    out.append("\r\n")
    rows = TextRows(_TEXT_COLUMNS, ["".join(out)], [n], ramp(first, n, ms), ramp(first + ms - 1, n, ms),
                    _TEXT_INTS, dict(fixed))
    rows.step = ms  # every open one candle after the previous: checked by the caller
    return rows


def _between_commas(joined: str, n: int) -> list[str] | None:
    """The ``n`` ints of pieces joined that must each be ``,digits,`` (an int between two strings), or None."""
    values = joined[1:-1].split(",,")
    if joined[:1] != "," or joined[-1:] != "," or len(values) != n:
        return None
    return values


def _columns(body: list[Any], columns: tuple[str, ...], fixed: dict[str, str]) -> TextRows | None:
    """A page of klines as rows held in columns (no tuple per kline; the CSV sink joins them
    into records): the rows the per-kline path builds, or ``None`` unless every kline is a
    list of the same length, at least 11, with ints where Binance sends them (the per-kline
    path then builds, or refuses, each one)."""
    if not body or set(map(type, body)) != {list}:
        return None
    widths = set(map(len, body))
    width = widths.pop()
    if widths or width < 11:
        return None
    # one flat list sliced into columns: zip(*body) would make an iterator per kline, and
    # doubled the garbage collector's passes over a run
    flat = list(chain.from_iterable(body))
    return TextRows.from_columns(columns, {
        "open_ts": flat[0::width], "end_ts": flat[6::width], "open": flat[1::width], "high": flat[2::width],
        "low": flat[3::width], "close": flat[4::width], "volume": flat[5::width], "quote_volume": flat[7::width],
        "trades": flat[8::width], "taker_buy_base_volume": flat[9::width], "taker_buy_quote_volume": flat[10::width]},
        fixed=fixed, ints=("trades",))


# -1003's ban message names its end in epoch ms: "IP banned until 1702275878212." (errors.md; the
# 2018 wording "Way too many requests; IP banned until 1515547977300." too)
_BANNED_UNTIL = re.compile(r"banned until (\d{12,16})\b")


def _ban_until(msg: str, retry_after: float | None) -> int | None:
    """When a 418 ban ends (epoch ms): the message's ban-until time (what Binance sends), else
    ``Retry-After`` from now; None when neither says."""
    found = _BANNED_UNTIL.search(msg)
    if found:
        until = int(found.group(1))
        return until // 1000 if until >= 10**15 else until  # microseconds (X-MBX-TIME-UNIT)
    return None if retry_after is None else now_ms() + int(retry_after * 1000)


def _ban_end(until: int | None) -> str:
    """Until when a 418 ban lasts, in words (bans last from 2 minutes to 3 days)."""
    if until is None:
        return "wait before trying again (Binance bans last from 2 minutes to 3 days)"
    left = (until - now_ms()) // 1000
    when = f" (in {left // 60} min {left % 60} s)" if left > 0 else ""
    return f"banned until {display(until)}{when}; try again after that"


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
