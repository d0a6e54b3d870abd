"""Driver for a plain ccxt ``fetch_ohlcv`` loop, run by ``bench/run.py`` with the python of
``bench/.venvs/ccxt``: what a user writes without Forge.

    python compare_ccxt.py --base-url http://127.0.0.1:PORT --symbol BTC/USDT --timeframe 1m \\
        --from 2025-10-01 --to 2026-09-30 --out DIR

``enableRateLimit=True`` (ccxt's own limiter: binance ``rateLimit`` 50 ms between requests),
``limit=1000`` per call, pages one after the other, rows to ``csv.writer``. Every entry of
``exchange.urls["api"]`` that is a Binance host is pointed at the mock; only spot markets are
loaded (the mock serves spot ``exchangeInfo``). Prints one JSON line: rows, seconds, requests,
import seconds, the CSV written.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from datetime import datetime, timedelta, timezone


def ms(day: str) -> int:
    return int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--timeframe", default="1m")
    parser.add_argument("--from", dest="start", required=True)
    parser.add_argument("--to", dest="end", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    began = time.perf_counter()
    import ccxt

    imported = time.perf_counter()
    exchange = ccxt.binance({"enableRateLimit": True, "options": {"fetchMarkets": ["spot"]}})
    base = args.base_url.rstrip("/")
    for key, url in list(exchange.urls["api"].items()):
        if isinstance(url, str) and "binance" in url and "/api/v3" in url:
            exchange.urls["api"][key] = base + "/api/v3"
        elif isinstance(url, str) and "binance" in url and "/api" in url:
            exchange.urls["api"][key] = base + url[url.index("/api"):]
    started = time.perf_counter()
    since = ms(args.start)
    until = ms(args.end) + int(timedelta(days=1).total_seconds() * 1000)  # --to is inclusive
    step = exchange.parse_timeframe(args.timeframe) * 1000
    rows = requests = 0
    path = os.path.join(args.out, "ccxt.csv")
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["timestamp", "open", "high", "low", "close", "volume"])
        while since < until:
            page = exchange.fetch_ohlcv(args.symbol, args.timeframe, since=since, limit=1000)
            requests += 1
            page = [c for c in page if c[0] < until]
            if not page:
                break
            writer.writerows(page)
            rows += len(page)
            since = page[-1][0] + step
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started, "requests": requests,
                      "import_seconds": imported - began, "ccxt": ccxt.__version__, "csv": path}))


if __name__ == "__main__":
    main()
