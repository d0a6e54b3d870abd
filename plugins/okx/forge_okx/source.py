"""OKX (API v5) candles: spot ``BTC-USDT``, perpetual swaps ``BTC-USDT-SWAP``, dated futures
``BTC-USDT-250328``.

Tasks go forward in time, 300 bars each; inside a task, pages go backwards with ``after``
(exclusive; rows come newest first) until the task's start is covered or the exchange has no
older rows, so a server that returns fewer rows than asked (the legacy maximum of 100) costs
requests, never candles. Bars among the latest 1,400 come from ``/market/candles`` (which keeps
1,440, with its own 40 requests/2 s), older ones from ``/market/history-candles`` (20/2 s); an
empty ``candles`` page (its window moved on during a long run) is asked of history-candles.
Each endpoint has one limiter shared by every worker thread, a little slower than the published
limit; a ``50011`` anyway pauses that endpoint, lowers its rate by a quarter and is retried.
A settled contract's bars are on history-candles only (``candles`` answers ``50047``).

Forge's ``6h`` and longer timeframes use OKX's UTC-aligned bars (``1Dutc``...), so ``1d`` is a
UTC day as everywhere in Forge; ``confirm == "0"`` marks a bar that is still open.

``1s`` bars are kept for a few months only (exchange-apis.md C.2: "It is last 3 months supported
for 1s candlestick"; users report about 20 days): a ``1s`` range reaching further back first
finds OKX's oldest ``1s`` bar (a bisection, about 25 requests), asks nothing below it and names
the part OKX no longer has an unconfirmed hole; a range wholly older is refused in one line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import requests

from forge_core import (
    CANDLE_COLUMNS,
    MINUTE,
    HttpClient,
    Option,
    RateLimiter,
    RetryableError,
    Row,
    RowMaker,
    Source,
    SourceError,
    SymbolInfo,
    Task,
    Timeframe,
    backward_pages,
    get_logger,
    iso,
    now_ms,
)
from forge_core.http import body_reason, error_line
from forge_core.partitions import run_cache

# Forge timeframe -> OKX bar. No 8h (OKX has none) and no 3d (OKX's 3Dutc anchor is undocumented,
# so it could not be promised to match Forge's epoch-aligned 3d; resample 1d instead).
BARS = {"1s": "1s", "1m": "1m", "3m": "3m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "1H",
        "2h": "2H", "4h": "4H", "6h": "6Hutc", "12h": "12Hutc", "1d": "1Dutc", "1w": "1Wutc",
        "1M": "1Mutc"}
HISTORY = "/api/v5/market/history-candles"
RECENT = "/api/v5/market/candles"
INSTRUMENTS = "/api/v5/public/instruments"
TIME = "/api/v5/public/time"
PAGE = 300  # rows per request: the documented maximum (older docs said 100 for history)
RECENT_BARS = 1400  # /market/candles keeps the latest 1,440 bars; the rest is margin
WINDOW = 2.0  # OKX counts "N requests per 2 seconds" per IP
SLACK = 0.25  # seconds added to our window: requests sent in order can arrive bunched (network
# jitter, a loaded client); 0.08 s was too little on a loaded machine (a 50011 from the mock)
# unavailable (503), endpoint timeout (HTTP 400!), endpoint inactive or unavailable (HTTP 410; older
# docs "API is offline or unavailable", ccxt's ExchangeNotAvailable), rate limit, busy, system error (500)
RETRYABLE = {"50001", "50004", "50005", "50011", "50013", "50026"}
BUSY = "50013"  # "Systems are busy. Please try again later."

NO_DATA = "52000"  # HTTP 200 "No market data found.": an answer, not a passing fault
SETTLED = "50047"  # candles of a settled contract: "... please use" history-candles
LEGACY = 100  # history-candles' maximum limit in older docs: a page the oldest-bar search can trust
KEPT_1S = "OKX keeps 1s candles for a few months only (its docs: the last 3 months)"
log = get_logger(__name__)
QUOTES = ("USDT", "USDC", "USD", "BTC", "ETH", "EUR", "DAI")  # for spelling hints, USDT before USD


def inst_type(inst_id: str) -> str:
    """The ``instType`` of an instrument ID: ``-SWAP`` swaps, ``-YYMMDD`` futures, else spot."""
    parts = inst_id.split("-")
    if parts[-1] == "SWAP":
        return "SWAP"
    if len(parts) == 5 and parts[-1] in ("C", "P"):
        return "OPTION"
    if len(parts) == 3 and parts[2].isdigit():
        return "FUTURES"
    return "SPOT"


def suggest(inst_id: str) -> str | None:
    """OKX's spelling of what the user probably meant: ``BTCUSDT`` -> ``BTC-USDT``."""
    text = inst_id.strip().upper().replace("/", "-").replace("_", "-")
    if text.endswith("PERP"):
        text = text[:-4].rstrip("-") + "-SWAP"
    head, tail = (text[:-5], "-SWAP") if text.endswith("-SWAP") else (text, "")
    if "-" not in head:
        for quote in QUOTES:
            if head.endswith(quote) and len(head) > len(quote):
                head = f"{head[: -len(quote)]}-{quote}"
                break
    guess = head.replace("--", "-") + tail
    return guess if guess != inst_id else None


class OkxSource(Source):
    name = "okx"
    label = "Okx"
    description = "OKX spot, swap and futures candles (REST, UTC-aligned bars)"
    timeframes = tuple(BARS)
    # OKX's own names for the bars Forge fetches: -t 1H is 1h. Not the plain 6H 12H 1D 1W, which
    # open on Hong Kong time (a "did you mean 1d?" instead); 1M is Forge's month (OKX's 1Mutc).
    timeframe_aliases = {bar: name for name, bar in BARS.items() if bar != name}
    # quote_volume = volCcyQuote; vol and vol_ccy are OKX's fields verbatim (spot: base and
    # quote currency; derivatives: contracts and base currency). volume is always base currency.
    columns = CANDLE_COLUMNS + ("quote_volume", "vol", "vol_ccy")
    _open_index = columns.index("open_ts")
    options = (
        Option("base_url", "Exchange host root, e.g. https://www.okx.com (paths are the plugin's).",
               envvar="FORGE_OKX_URL", metavar="URL"),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        base_url = self.settings["base_url"] or "https://www.okx.com"
        self._nominal: dict[str, int] = {}
        self.clients = {  # one limiter per OKX rate-limit rule, shared by all worker threads
            HISTORY: self._client(base_url, 20, "history"),
            RECENT: self._client(base_url, 40, "candles"),
            TIME: self._client(base_url, 10, "public"),  # instruments allow 20, time 10
        }
        self.clients[INSTRUMENTS] = self.clients[TIME]
        self._now = now_ms()
        self._lock = threading.Lock()
        self._changed: dict[str, float] = {}  # limiter name -> when its rate last changed
        self.rate_limited = 0
        self._known: dict[tuple[str, str], int] = {}  # (symbol, timeframe) -> a bar OKX has
        self._settled: set[str] = set()  # expired contracts: /market/candles answers 50047
        # symbol -> (OKX's oldest 1s bar, monotonic time it was found) for 1s ranges reaching below it
        self._kept_1s: dict[str, tuple[int, float]] = {}
        self._first: dict[tuple[str, str], int] = {}  # (symbol, timeframe) -> OKX's first bar, once found
        self._warned: set[tuple[tuple[str, str], int, int]] = set()  # okx_first_candle_after_listing said

    def _client(self, base_url: str, per_window: int, name: str) -> HttpClient:
        limiter = RateLimiter(per_window, WINDOW + SLACK, name=f"okx-{name}")
        self._nominal[limiter.name] = per_window
        return HttpClient(base_url, limiter=limiter, envvar="FORGE_OKX_URL",
                          check=lambda response, body: self._check(response, body, limiter))

    # -- HTTP plumbing ----------------------------------------------------------------------
    def _check(self, response: requests.Response, body: Any, limiter: RateLimiter) -> None:
        status = response.status_code
        code = str(body.get("code")) if isinstance(body, dict) else None
        # not OKX's envelope (a WAF, CDN or proxy page, maybe kilobytes of HTML): a short reason only
        msg = str(body.get("msg", "")) if isinstance(body, dict) else body_reason(response.content)
        if code == "50011" or status == 429:
            with self._lock:
                self.rate_limited += 1
            self._adapt(limiter, -1)
            raise RetryableError(f"OKX rate limit: HTTP {status} {code} {msg}", WINDOW)
        if code in RETRYABLE or status >= 500:  # 50013 "Systems are busy": every worker backs off together
            raise RetryableError(" ".join(x for x in ("OKX", f"HTTP {status}", code, msg) if x), busy=code == BUSY)
        if code == "0" and status < 300:
            if limiter.capacity < self._nominal[limiter.name]:
                self._adapt(limiter, +1)
            return
        if code is None and status < 300:
            return  # not an envelope: the parser rejects it and the request is retried
        hint = " (is the base URL the host root, like https://www.okx.com?)" if status == 404 else ""
        line = error_line(response, f"{code} {msg}" if isinstance(body, dict) else msg)
        raise OkxError(status, code, msg + hint, line + hint)

    def _adapt(self, limiter: RateLimiter, direction: int) -> None:
        """A 50011 means someone else spends our budget (another process on this IP): take a
        quarter off our rate, once per window however many requests were refused together.
        After two quiet windows, creep back by one request per window."""
        with self._lock:
            now = time.monotonic()
            since = now - self._changed.get(limiter.name, 0.0)
            if direction < 0 and since > limiter.window:
                capacity = max(1.0, limiter.capacity * 0.75)
            elif direction > 0 and since > 2 * limiter.window:
                capacity = min(self._nominal[limiter.name], limiter.capacity + 1)
            else:
                return
            self._changed[limiter.name] = now
            limiter.reconfigure(capacity, limiter.window)
            log.info("okx_rate", limiter=limiter.name, per_window=capacity)

    def _get(self, path: str, params: dict[str, Any], parse: Any) -> Any:
        return self.clients[path].get_json(path, params, parse=parse)

    # -- the Source contract ----------------------------------------------------------------
    def describe(self) -> str:
        return "OKX"  # the instrument id says the market (BTC-USDT, BTC-USDT-SWAP, BTC-USD-250328)

    def server_time(self) -> int:
        self._now = int(self._get(TIME, {}, lambda body: body["data"][0]["ts"]))
        return self._now

    def prepare(self, symbol: str, timeframe: Timeframe) -> SymbolInfo:
        """Validate the instrument and find its first bar from ``listTime``. listTime is when
        continuous trading started, which need not be OKX's first bar either way: bars before
        it (skipping them would lose candles) or none for months after it (OKX keeps ``1m``
        bars of BTC-USDT from 2018-01-11 but ``1D`` from 2017-10-10, exchange-apis.md C.2). One
        page of the 100 bars from one before the listing tells both; when it is empty, a
        bisection finds the first bar (a walk believed the listing's bar to exist, and an empty
        answer above it failed the run after 7 s of re-asking)."""
        kind = inst_type(symbol)
        params = {"instType": kind, "instId": symbol}
        if kind == "OPTION":  # required for options: BTC-USD-250328-90000-C is of family BTC-USD
            params["instFamily"] = "-".join(symbol.split("-")[:2])
        try:
            try:
                found = self._get(INSTRUMENTS, params, _data)
            except OkxError as exc:
                if exc.code != "51001":
                    raise
                found = []
            match = [i for i in found if isinstance(i, dict) and i.get("instId") == symbol]
            if not match:  # expired and delisted instruments leave the list but keep their candles
                self._page(HISTORY, symbol, timeframe, self._now, limit=1)  # 51001 if OKX never had it
                return SymbolInfo(symbol)
            listed = match[0].get("listTime")
            if not listed:
                return SymbolInfo(symbol)
            first = timeframe.floor(int(listed))
            if timeframe.name == "1s":  # 1s bars as old as the listing are long gone: see plan
                _, older = self._page(HISTORY, symbol, timeframe, first, limit=1)
                return SymbolInfo(symbol, None if older is not None else first)
            # 99 bars from the listing and the one before it: the page holds a bar before the
            # listing if there is one, and else the first bar, whatever the server's cap (100)
            window = timeframe.next_open(first, LEGACY - 1)
            _, oldest = self._page(HISTORY, symbol, timeframe, window, limit=LEGACY)
            seen = None
            if oldest is None and window <= self._now:
                oldest, seen = self._oldest(symbol, timeframe, window)
        except OkxError as exc:
            raise self._explain(exc, symbol, timeframe) from None
        key = (symbol, timeframe.name)
        if oldest is not None and oldest < first:  # bars before the listing: it is not the first
            self._known[key] = oldest  # a bar known to exist: an empty answer above it is never believed
            return SymbolInfo(symbol)
        if oldest is None:  # no bar yet (a listing to come), or a search misled (seen: a bar)
            if seen is not None:
                self._known[key] = seen
            return SymbolInfo(symbol, first)
        self._known[key] = self._first[key] = oldest
        # once a run: a verify prepares the series, then its fetch (a pipeline on this source)
        # again, and each group of a --partition run (a source each) too
        cache = run_cache()
        warned = self._warned if cache is None else cache.setdefault("okx.warned_first", set())
        if oldest > first and (key, first, oldest) not in warned:
            warned.add((key, first, oldest))
            log.warning("okx_first_candle_after_listing", symbol=symbol, timeframe=timeframe.name,
                        listed=iso(first), first_candle=iso(oldest))
        return SymbolInfo(symbol, oldest)

    def page_size(self, timeframe: Timeframe) -> int:
        return PAGE

    def plan(self, symbol: str, timeframe: Timeframe, start: int, end: int) -> Any:
        if timeframe.name == "1s" and start < end:
            self._find_kept_1s(symbol, timeframe, start, end)
        elif start < end:
            start = self._find_first(symbol, timeframe, start, end)
        return super().plan(symbol, timeframe, start, end)

    def _find_first(self, symbol: str, tf: Timeframe, start: int, end: int) -> int:
        """Where to start asking: ``start``, or OKX's first bar when none is before ``start``
        and the first is not known yet (an expired contract, no longer listed; a listTime after
        OKX's first bar). Before, a walk believed every empty answer below a bar it knew of:
        a range before the first bar was 0 rows, exit 0, or a leading hole 'affirmed' by the
        exchange with no candle on its near side."""
        key = (symbol, tf.name)
        first = self._first.get(key)
        if first is None:
            oldest = self._search_oldest(symbol, tf, start,
                                         f"OKX has no {symbol} {tf.name} candle at all before {iso(self._now)}")
            if oldest is None:
                return start
            first = self._known[key] = self._first[key] = oldest
            if start < first < end:
                log.warning("okx_first_candle", symbol=symbol, timeframe=tf.name, first_candle=iso(first),
                            not_asked=f"{iso(start)}..{iso(first - 1)}")
        if first >= end:
            raise SourceError(f"OKX has no {symbol} {tf.name} candle before {iso(end)}, where the range ends "
                              f"(its first opens {iso(first)}); choose a later range")
        return max(start, first)

    def _search_oldest(self, symbol: str, tf: Timeframe, start: int, none_at_all: str) -> int | None:
        """OKX's oldest bar of the series when it has none before ``start``: found by
        :meth:`_oldest` (a SourceError ``none_at_all`` if it has no bar at all). None when no
        search is needed (a bar before ``start`` is known, or one probe finds one) or when a
        wrong empty answer misled it: then the series is walked as before, from a bar seen."""
        key = (symbol, tf.name)
        known = self._known.get(key)
        if known is not None and known <= start:
            return None
        try:
            _, below = self._page(HISTORY, symbol, tf, start, limit=1)
            if below is not None:
                self._known[key] = below
                return None
            oldest, seen = self._oldest(symbol, tf, start, known)
        except OkxError as exc:
            raise self._explain(exc, symbol, tf) from None
        if oldest is None and seen is not None:  # a wrong empty answer misled the search
            log.info("okx_search_unsure", symbol=symbol, timeframe=tf.name)
            self._known[key] = min(seen, known) if known is not None else seen
            return None
        if oldest is None:
            raise SourceError(none_at_all)
        return oldest

    def _find_kept_1s(self, symbol: str, tf: Timeframe, start: int, end: int) -> None:
        """Where OKX's ``1s`` history of ``symbol`` begins, if ``[start, end)`` reaches below it.

        ``after=T&limit=1`` answers a bar iff OKX has one before ``T``: one probe at ``start``
        (a bar: the whole range is kept, and that bar is known to exist), else a bisection of
        ``[start, now]`` down to 100 bars and one page of them, whose oldest is OKX's first.
        Asked again below it, the answer must stay empty, or the search believed a wrong empty
        answer and is not used. Walking 300-bar pages through the months OKX no longer keeps
        took 580 requests (63 s) for one day of nothing."""
        kept = self._kept_1s.get(symbol)
        if kept is None:
            oldest = self._search_oldest(symbol, tf, start, f"{KEPT_1S}: OKX serves no {symbol} 1s candle at all")
            if oldest is None:
                return
            kept = self._kept_1s[symbol] = (oldest, time.monotonic())
            if start < oldest < end:
                log.warning("okx_1s_not_kept", symbol=symbol, not_available=f"{iso(start)}..{iso(oldest - 1)}",
                            oldest_1s=iso(oldest))
        if kept[0] >= end:
            raise SourceError(f"{KEPT_1S}: OKX serves no {symbol} 1s candle before {iso(end)}, where the "
                              f"range ends (its oldest opens {iso(kept[0])}); choose --from {iso(kept[0])} "
                              "or later, or a longer timeframe (1m goes back years)")

    def _oldest(self, symbol: str, tf: Timeframe, start: int, known: int | None = None) -> tuple[int | None, int | None]:
        """OKX's oldest bar, known to have none before ``start`` (a bar at ``known``, if given):
        ``(oldest, None)``; ``(None, None)`` when it has no bar at all (asked twice); ``(None,
        bar)`` when a probe found ``bar`` below what the search found: a wrong empty answer
        misled it (``bar`` is one known to exist)."""
        if known is None:
            known = self._probe(symbol, tf, tf.next_open(tf.floor(self._now)))
            if known is None:
                return None, None
        for _ in range(2):  # a second search, below the bar the first missed, if it was misled
            lo, hi = start, tf.next_open(known)  # no bar before lo; known, before hi
            while tf.count(lo, hi) > LEGACY:
                mid = tf.floor((lo + hi) // 2)
                bar = self._probe(symbol, tf, mid)
                if bar is None:
                    lo = mid
                else:
                    hi, known = mid, bar
            _, oldest = self._page(HISTORY, symbol, tf, hi, limit=LEGACY)  # every bar of [lo, hi)
            below = None if oldest is None else self._probe(symbol, tf, oldest)
            if oldest is not None and below is None:
                return oldest, None
            known = min(known, below) if below is not None else known
        return None, known

    def _probe(self, symbol: str, tf: Timeframe, after: int) -> int | None:
        """A bar before ``after``, or None after two empty answers (one may be wrong)."""
        for _ in range(2):
            bar = self._page(HISTORY, symbol, tf, after, limit=1)[1]
            if bar is not None:
                return bar
        return None

    def holes_unconfirmed(self, symbol: str) -> str | None:
        kept = self._kept_1s.get(symbol)
        return None if kept is None else f"{KEPT_1S}; none served before {iso(kept[0])}"

    def fetch(self, task: Task) -> Iterable[Row]:
        tf = task.timeframe
        recent = tf.name != "1s" and tf.count(task.start, self._now) <= RECENT_BARS
        path = RECENT if recent and task.symbol not in self._settled else HISTORY
        make = self.row_maker(task)
        known = self._known.get((task.symbol, tf.name))
        kept = self._kept_1s.get(task.symbol) if tf.name == "1s" else None
        if kept is not None:
            if task.end <= kept[0]:
                return []  # OKX no longer has these bars: holes_unconfirmed says so
            # the oldest bars leave as time passes (a second a second): an empty answer within a
            # minute of where the oldest is now is believed, above it re-asked as anywhere
            known = kept[0] + int((time.monotonic() - kept[1]) * 1000) + MINUTE

        def request(before: int) -> list[Row]:
            nonlocal path
            try:
                try:
                    rows = self._page(path, task.symbol, tf, before, make=make)[0]
                except OkxError as exc:
                    if exc.code != SETTLED or path != RECENT:
                        raise
                    # a settled contract's recent bars are on history-candles only (OKX says so)
                    self._settled.add(task.symbol)
                    path = HISTORY
                    return self._page(path, task.symbol, tf, before, make=make)[0]
                if not rows and path == RECENT:
                    # candles keeps the latest 1,440 bars of the exchange's clock *now*: bars that
                    # left it since the run read that clock (a long run) are on history-candles
                    path = HISTORY
                    rows = self._page(path, task.symbol, tf, before, make=make)[0]
                return rows
            except OkxError as exc:
                raise self._explain(exc, task.symbol, tf) from None

        # after= is exclusive and unbounded below: a walk from the task's end back to its start
        return backward_pages(request, tf, task.start, task.end, open_index=self._open_index,
                              known_first=known)

    def _page(self, path: str, symbol: str, tf: Timeframe, after: int, limit: int = PAGE,
              make: RowMaker | None = None) -> tuple[list[Row], int | None]:
        """Closed bars older than ``after`` (newest first) and the oldest ``ts`` served."""
        params = {"instId": symbol, "bar": BARS[tf.name], "after": after, "limit": limit}
        make = make or self.row_maker(Task(symbol, tf, 0, 0))
        volume = 5 if inst_type(symbol) == "SPOT" else 6  # vol (spot) or volCcy: base currency

        def parse(body: Any) -> tuple[list[Row], int | None]:
            rows, oldest = [], None
            for k in _data(body):
                ts = int(k[0])
                oldest = ts if oldest is None else min(oldest, ts)
                if k[8] != "0":  # "0": the bar is still open
                    rows.append(make(open_ts=ts, open=k[1], high=k[2], low=k[3], close=k[4],
                                     volume=k[volume], quote_volume=k[7], vol=k[5], vol_ccy=k[6]))
            return rows, oldest

        return self._get(path, params, parse)

    def _explain(self, exc: OkxError, symbol: str, tf: Timeframe) -> SourceError:
        if exc.code == "51001":
            guess = suggest(symbol)
            hint = f"; did you mean {guess!r}?" if guess else ""
            return SourceError(f"unknown instrument {symbol!r} on OKX (OKX {exc.code}: {exc.msg}){hint} "
                               "OKX spells instruments like BTC-USDT (spot), BTC-USDT-SWAP (perpetual), "
                               "BTC-USDT-250328 (futures)")
        if exc.code == NO_DATA:
            return SourceError(f"OKX has no market data for {symbol} {tf.name} (OKX {exc.code}: {exc.msg}); "
                               f"not retried: it is an answer, not a passing fault ({symbol} reads as "
                               f"{inst_type(symbol)}: OKX spells BTC-USDT spot, BTC-USDT-SWAP perpetual)")
        if exc.code == "51000" and "bar" in exc.msg:
            return SourceError(f"OKX rejected bar {BARS[tf.name]!r} for timeframe {tf.name!r}: {exc.msg}")
        return SourceError(f"OKX refused the request for {symbol} {tf.name}: {exc.line}")

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for client in {id(c): c for c in self.clients.values()}.values():
            for key, value in client.stats.as_dict().items():
                total[key] = total.get(key, 0) + value
        total["okx_50011"] = self.rate_limited
        return total

    def close(self) -> None:
        for client in self.clients.values():
            client.close()


class OkxError(SourceError):
    """A refused request. ``line`` says it in one line: status, host/path, code and message (or
    a short plain-text reason when the body was not OKX's envelope)."""

    def __init__(self, status: int, code: str | None, msg: str, line: str | None = None) -> None:
        self.status, self.code, self.msg = status, code, msg
        self.line = line or f"HTTP {status} {code} {msg}"
        super().__init__(f"OKX {self.line}")


def _data(body: Any) -> list[Any]:
    data = body["data"]
    if not isinstance(data, list):
        raise TypeError(f"expected a list in data, got {type(data).__name__}")
    return data
