"""Driver for streamforge 0.1.3, run by ``bench/run.py`` with the python of ``bench/.venvs/streamforge``.

    python compare_streamforge.py --base-url http://127.0.0.1:PORT --symbol BTCUSDT \\
        --timeframe 1m --from 2025-10-01 --to 2026-09-30 --out DIR

What streamforge 0.1.3 does for ``BinanceBackfilling(...).run()`` (read from its source,
``streamforge/ingestion/binance/backfilling.py``): it never uses the REST klines endpoint for
history. It builds data.binance.vision URLs from the instance attribute ``_url``
(``https://data.binance.vision/data``) for every month from ``from_date`` up to the month
before the current one (``to_date`` only matters for daily files and "today"), reads each zip
with ``pandas.read_csv(url, engine="pyarrow")`` (pyarrow is needed but not declared as a
dependency), turns every row into a pydantic ``Kline`` via ``DataFrame.iterrows`` and writes
1000-row batches with ``DataFrame.to_csv``. REST (``/api/v3/klines``) is used only when
``to_date`` is today or "now".

So the only change needed to point it at the mock is ``backfiller._url = BASE + "/data"``, set
after construction; in the first days of a month (before Binance publishes the previous month)
its URL list also loses the months after ``--to``, which it would otherwise ask for and fail on.
Prints one JSON line: rows written, seconds, the CSV written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--timeframe", default="1m")
    parser.add_argument("--from", dest="start", required=True)
    parser.add_argument("--to", dest="end", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    began = time.perf_counter()
    import streamforge as sf

    imported = time.perf_counter()
    path = os.path.join(args.out, f"streamforge-{args.symbol}-{args.timeframe}.csv")
    if os.path.exists(path):
        os.remove(path)  # its CSV emitter appends
    backfiller = sf.BinanceBackfilling(symbol=args.symbol, timeframe=args.timeframe, from_date=args.start,
                                       to_date=args.end, file_path=path)
    backfiller._url = args.base_url.rstrip("/") + "/data"  # the only hook: an instance attribute
    urls = backfiller._get_urls()
    # It asks for every month up to the previous one whatever to_date says; in the days before
    # Binance publishes that month (the first Monday after it) that zip is a 404 and run() fails.
    # Then (only then) the months after --to are dropped, so it does the others' work exactly.
    last = args.end[:7]
    months = [re.search(r"/monthly/.*-(\d{4}-\d{2})\.zip$", u) for u in urls]
    kept = [u for u, m in zip(urls, months, strict=True) if m is None or m.group(1) <= last]
    if len(kept) != len(urls):
        urls = kept
        backfiller._get_urls = lambda: list(kept)
    started = time.perf_counter()
    try:
        backfiller.run()
    except Exception as exc:  # report, do not hide
        print(json.dumps({"error": f"{type(exc).__name__}: {str(exc)[:300]}", "urls": len(urls)}))
        sys.exit(1)
    done = time.perf_counter()
    with open(path, "rb") as f:
        rows = sum(1 for _ in f) - 1  # header
    print(json.dumps({"rows": rows, "seconds": done - started, "import_seconds": imported - began, "csv": path,
                      "files": len(urls), "first_url": urls[0] if urls else None,
                      "last_url": urls[-1] if urls else None}))


if __name__ == "__main__":
    main()
