"""A symbol-year of 1m candles from the Binance archive path against the REST path, same run.

The mock runs in a separate process (50 ms latency per response, clock frozen at
2025-03-15 10:20 UTC); Forge runs here. For each path two timings:

- ``fetch``: plan + download (+ verify + parse) of every task with ``--workers`` threads, rows
  counted and dropped: what the source costs;
- ``pipeline``: the whole pipeline through the ``Pipeline`` API into a sink that only counts
  rows (what Forge costs before any sink);
- ``forge run``: the same into the CSV sink (writing 527k rows with ``csv.writer`` is a cost
  both paths share).

The mock builds each zip on first request and caches it (a real archive serves static files),
so the archive is timed warm after a first, cold pass whose time is printed too. The REST
path cannot be warmed: the mock renders every page as it would on the exchange.

    python bench/bench_archive.py                  # BTCUSDT 2024, 4 workers
    python bench/bench_archive.py --symbols 3 --workers 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from forge_binance import BinanceSource
from forge_core import Batch, Pipeline, Sink, parse_timeframe
from forge_core.times import parse_range

NOW = 1742034030456  # 2025-03-15 10:20:30.456 UTC, as in the tests
SERVE = """
import sys, time
from forge_mock_exchange import MockConfig, MockExchange
mock = MockExchange(MockConfig(latency=float(sys.argv[1]), now=int(sys.argv[2]))).start()
print(mock.url, flush=True)
time.sleep(3600)
"""


def options(url: str, mode: str) -> dict[str, str]:
    return {"base_url": url, "archive_url": url, "archive": mode}


def fetch_only(url: str, mode: str, symbols: list[str], year: int, workers: int) -> tuple[float, int, dict]:
    source = BinanceSource(**options(url, mode))
    tf = parse_timeframe("1m")
    start, end = parse_range(f"{year}-01-01", f"{year}-12-31")
    began = time.monotonic()
    now = source.server_time()
    tasks = []
    for symbol in symbols:
        info = source.prepare(symbol, tf)
        tasks += list(source.plan(symbol, tf, max(start, tf.floor(info.first_open or start)), min(end, now)))
    with ThreadPoolExecutor(workers) as pool:
        rows = sum(len(list(r)) for r in pool.map(source.fetch, tasks))
    elapsed = time.monotonic() - began
    stats = source.stats()
    source.close()
    return elapsed, rows, stats


class CountingSink(Sink):
    name = "count"

    def write(self, batch: Batch) -> None:
        pass


def forge_run(url: str, mode: str, symbols: list[str], year: int, workers: int,
              csv: bool = True) -> tuple[float, int, str]:
    with tempfile.TemporaryDirectory() as tmp:
        sink = ("csv", {"output": f"{tmp}/{{symbol}}.csv"}) if csv else CountingSink()
        began = time.monotonic()
        result = Pipeline(("binance", options(url, mode)), [sink],
                          workers=workers).run(symbols, "1m", f"{year}-01-01", f"{year}-12-31")
        return time.monotonic() - began, result.total, result.summary()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=1, help="how many symbols (BTCUSDT, ETHUSDT, T1USDT, ...)")
    parser.add_argument("--year", type=int, default=2024)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.05, help="mock seconds per response")
    args = parser.parse_args()
    symbols = (["BTCUSDT", "ETHUSDT"] + [f"T{i}USDT" for i in range(1, args.symbols)])[: args.symbols]

    server = subprocess.Popen([sys.executable, "-c", SERVE, str(args.latency), str(NOW)],
                              stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        cold, _, _ = fetch_only(url, "archive", symbols, args.year, args.workers)
        results = {}
        for mode in ("archive", "rest"):
            results[mode] = (fetch_only(url, mode, symbols, args.year, args.workers),
                             forge_run(url, mode, symbols, args.year, args.workers, csv=False),
                             forge_run(url, mode, symbols, args.year, args.workers))
        mock_stats = requests.get(f"{url}/mock/stats", timeout=5).json()
    finally:
        server.terminate()
        server.wait()

    n = len(symbols)
    print(f"\n{n} symbol-year(s) of 1m candles ({args.year}), {args.workers} workers, mock latency "
          f"{args.latency * 1000:.0f} ms, mock in its own process")
    print(f"{'path':<10} {'stage':<10} {'candles':>9} {'seconds':>8} {'s/symbol-year':>14} {'candles/s':>10}")
    stages = ("fetch", "pipeline", "forge run")
    for mode, timings in results.items():
        for stage, (secs, rows, *_) in zip(stages, timings, strict=True):
            print(f"{mode:<10} {stage:<10} {rows:>9} {secs:>8.2f} {secs / n:>14.2f} {rows / secs:>10.0f}")
    print(f"archive cold fetch (mock building the zips): {cold:.2f}s")
    print("REST / archive: " + ", ".join(
        f"{stage} {results['rest'][i][0] / results['archive'][i][0]:.1f}x" for i, stage in enumerate(stages)))
    print(f"archive: {results['archive'][0][2]}")
    print(f"rest:    requests {results['rest'][0][2]['requests']}; "
          f"mock served {mock_stats.get('archive.zip', 0)} zips, {mock_stats.get('binance.spot.requests', 0)} REST requests")
    print(f"\narchive run: {results['archive'][2][2]}\nrest run:    {results['rest'][2][2]}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
