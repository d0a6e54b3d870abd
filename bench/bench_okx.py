"""How close an OKX 1m backfill gets to OKX's rate bound, and how many 50011s it provokes.

The mock runs in a separate process (real clock, 50 ms latency per response, OKX's real
20 requests / 2 s per-IP limit on history-candles); the backfill runs here through the
``Pipeline`` API into a CSV file. The bound is ``limit x 20 / 2 s`` candles per second:
3,000/s with the 300-row pages of today's API, 1,000/s with the legacy maximum of 100.

    python bench/bench_okx.py                   # one month with limit 300, ten days legacy
    python bench/bench_okx.py --days 365        # the full year (about three minutes)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta

import requests

from forge_core import Pipeline

SERVE = """
import sys, time
from forge_mock_exchange import MockConfig, MockExchange
mock = MockExchange(MockConfig(latency=0.05, okx_history_limit=int(sys.argv[1]))).start()
print(mock.url, flush=True)
time.sleep(3600)
"""


def measure(page: int, days: int, workers: int) -> dict[str, float]:
    server = subprocess.Popen([sys.executable, "-c", SERVE, str(page)], stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        start = date(2024, 1, 1)
        end = start + timedelta(days=days - 1)
        with tempfile.TemporaryDirectory() as tmp:
            began = time.monotonic()
            result = Pipeline(("okx", {"base_url": url}), [("csv", {"output": f"{tmp}/out.csv"})],
                              workers=workers).run("BTC-USDT", "1m", start.isoformat(), end.isoformat())
            elapsed = time.monotonic() - began
        stats = requests.get(f"{url}/mock/stats", timeout=5).json()
    finally:
        server.terminate()
        server.wait()
    bound = page * 20 / 2.0
    rate = result.total / elapsed
    return {"page": page, "days": days, "candles": result.total, "seconds": elapsed, "rate": rate,
            "bound": bound, "ratio": rate / bound, "history_requests": stats.get("okx.history.requests", 0),
            "okx_50011": stats.get("okx.50011", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=31, help="days of 1m candles with limit 300")
    parser.add_argument("--legacy-days", type=int, default=10, help="days with the legacy limit 100 (0: skip)")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    runs = [(300, args.days)] + ([(100, args.legacy_days)] if args.legacy_days else [])
    print(f"{'limit':>5} {'days':>4} {'candles':>8} {'seconds':>8} {'candles/s':>9} {'bound/s':>7} "
          f"{'ratio':>6} {'requests':>8} {'50011':>5}")
    for page, days in runs:
        m = measure(page, days, args.workers)
        print(f"{page:>5} {days:>4} {m['candles']:>8} {m['seconds']:>8.1f} {m['rate']:>9.0f} {m['bound']:>7.0f} "
              f"{m['ratio']:>6.2f} {m['history_requests']:>8} {m['okx_50011']:>5}")


if __name__ == "__main__":
    main()
