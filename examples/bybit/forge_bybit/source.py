"""Bybit v5 klines (``GET /v5/market/kline``) as a Forge source.

The whole contract in one small class: class attributes say what the source offers,
``prepare`` checks a symbol, the default ``plan`` cuts the range into tasks of ``page_size``
candles, and ``fetch`` returns one task's candles as canonical tuples. The run loop does the
rest (threads, order, dropping duplicates and the still-open candle, writing, committing).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import requests

from forge_core import (
    CANDLE_COLUMNS,
    HttpClient,
    Option,
    RateLimiter,
    RetryableError,
    Row,
    Source,
    SourceError,
    SymbolInfo,
    Task,
    Timeframe,
    backward_pages,
    default_check,
)

# Forge timeframe -> Bybit interval. Forge's 1w opens Monday 00:00 UTC and 1M on the 1st, as
# Bybit's W and M do; timeframes Bybit lacks (1s, 8h, 3d) are left out, so Forge rejects them.
INTERVALS = {"1m": "1", "3m": "3", "5m": "5", "15m": "15", "30m": "30", "1h": "60", "2h": "120",
             "4h": "240", "6h": "360", "12h": "720", "1d": "D", "1w": "W", "1M": "M"}
PAGE = 1000  # Bybit's maximum rows per request


class BybitSource(Source):
    name = "bybit"  # what users type after --source; also the "source" column
    label = "Bybit"  # file names: Bybit-BTCUSDT-1h-2024-01-01_2024-01-31.csv
    description = "Bybit v5 spot, linear and inverse klines (example third-party plugin)"
    timeframes = tuple(INTERVALS)
    columns = CANDLE_COLUMNS + ("quote_volume",)  # the ten canonical columns, then extras
    options = (  # keyword arguments of __init__, and CLI options (--base-url, --category)
        Option("base_url", "Exchange host root, e.g. https://api.bybit.com (paths are the plugin's).",
               envvar="FORGE_BYBIT_URL", metavar="URL"),
        Option("category", "Bybit market: spot, linear (USDT perpetuals) or inverse.", default="spot",
               choices=("spot", "linear", "inverse")),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)  # validates the options into self.settings
        self.category = self.settings["category"]  # the core checked it is one of the choices
        # The core resolved the option, else its envvar (how tests and mocks redirect us); else production.
        base_url = self.settings["base_url"] or "https://api.bybit.com"
        # One limiter for all worker threads. Bybit allows 600 requests per 5 s per IP and answers
        # more with a 10-minute ban, so stay well under, with a margin for clock jitter.
        self.http = HttpClient(base_url, limiter=RateLimiter(500, 5.5, name="bybit"), check=self._check,
                               envvar="FORGE_BYBIT_URL")

    @property
    def source_value(self) -> str:
        """The "source" column: spot and linear both list BTCUSDT, so the category is part of it
        (else their candles would overwrite each other in one table)."""
        return "bybit" if self.category == "spot" else f"bybit-{self.category}"

    def _check(self, response: requests.Response, body: Any) -> None:
        """Map Bybit's answers to retry (RetryableError) or fail with one clear line (SourceError)."""
        if response.status_code == 403:  # the IP ban: retrying would only extend it
            raise SourceError("Bybit refused this IP (HTTP 403, access too frequent); wait 10 minutes")
        code = body.get("retCode") if isinstance(body, dict) else None
        if code == 10006:  # "Too many visits!"
            raise RetryableError("Bybit rate limit (retCode 10006)", 1.0)
        if code not in (0, None):
            raise SourceError(f"Bybit refused the request: retCode {code} {body.get('retMsg', '')}")
        default_check(response, body)  # 429 and 5xx are retried, other 4xx fail

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        # A body without "result" raises KeyError in the parser: HttpClient retries it as malformed.
        return self.http.get_json(path, params, parse=lambda body: body["result"])

    # -- the Source contract ----------------------------------------------------------------
    def server_time(self) -> int:
        """The exchange's clock decides which candles have closed (ours may be off)."""
        return int(self._get("/v5/market/time", {})["timeNano"]) // 1_000_000

    def prepare(self, symbol: str, timeframe: Timeframe) -> SymbolInfo:
        found = self._get("/v5/market/instruments-info", {"category": self.category, "symbol": symbol})["list"]
        if not found:  # an unknown symbol: an empty list (or a retCode error, raised by _check)
            raise SourceError(f"unknown symbol {symbol!r} on Bybit {self.category}; Bybit spells "
                              f"pairs like BTCUSDT (try --category spot, linear or inverse)")
        launch = found[0].get("launchTime")  # derivatives only: lets the run skip empty history
        return SymbolInfo(symbol, int(launch) if launch else None)

    def page_size(self, timeframe: Timeframe) -> int:
        return PAGE  # the default plan() makes one task per PAGE candles

    def fetch(self, task: Task) -> Iterable[Row]:
        make = self.row_maker(task)  # fills source, symbol, timeframe and end_ts; columns by name
        base, quote = (6, 5) if self.category == "inverse" else (5, 6)  # volume must be base asset

        def rows(body: Any) -> list[Row]:  # in parse: a body of the wrong shape is retried as malformed
            # [startTime, open, high, low, close, volume, turnover], newest first
            return [make(open_ts=int(k[0]), open=k[1], high=k[2], low=k[3], close=k[4], volume=k[base],
                         quote_volume=k[quote]) for k in body["result"]["list"]]

        def request(before: int) -> list[Row]:  # both ends inclusive
            return self.http.get_json("/v5/market/kline", {
                "category": self.category, "symbol": task.symbol, "interval": INTERVALS[task.timeframe.name],
                "start": task.start, "end": before - 1, "limit": PAGE,
            }, parse=rows)

        # the core's backward walk: continues below a short page, re-asks an empty one
        return backward_pages(request, task.timeframe, task.start, task.end,
                              open_index=self.columns.index("open_ts"), bounded=True)

    def stats(self) -> dict[str, int]:
        return self.http.stats.as_dict()  # requests, retries, 429s: shown in the run summary

    def close(self) -> None:
        self.http.close()
