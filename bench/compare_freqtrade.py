"""Driver for ``freqtrade download-data``, run by ``bench/run.py`` with the python of
``bench/.venvs/freqtrade`` (``pip install freqtrade``): the best peer measured in issue 18.

    python compare_freqtrade.py --base-url http://127.0.0.1:PORT --symbol BTC/USDT --timeframe 1m \\
        --from 2025-11-01 --to 2026-10-31 --out DIR --path rest|archive

freqtrade runs in this process, exactly as its console script does (``freqtrade.main.main``
with the ``download-data`` arguments), with a config file written here:

- ``--path rest``: ``exchange.only_from_ccxt`` is set, so freqtrade pages ``/api/v3/klines``
  through ccxt; the mock's URLs reach ccxt through ``exchange.ccxt_config.urls`` (and
  ``ccxt_async_config``, which freqtrade's downloads use), its documented way to do so.
- ``--path archive``: freqtrade's default for Binance spot 1m: daily zips from
  data.binance.vision (``freqtrade/exchange/binance_public_data.py``), then REST for what the
  archive lacks. That host is hard-coded, in one function; the driver replaces exactly that
  function, ``binance_vision_ohlcv_zip_url``, by one that builds the same path on the mock
  (the one patch, nothing else of freqtrade is changed).

Then, outside the timing, freqtrade's stored candles (feather, its default) are written as
``open_ts,open,high,low,close,volume`` to ``DIR/freqtrade-PATH.csv`` for ``run.py`` to check
against Forge's (only the candles of the range: freqtrade's REST path stores up to a page more).
Prints one JSON line: rows in the range, rows stored, seconds (the ``download-data`` call),
import seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--symbol", default="BTC/USDT")
    parser.add_argument("--timeframe", default="1m")
    parser.add_argument("--from", dest="start", required=True)
    parser.add_argument("--to", dest="end", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--path", choices=("rest", "archive"), default="rest")
    args = parser.parse_args()
    base = args.base_url.rstrip("/")

    began = time.perf_counter()
    import ccxt
    from freqtrade.exchange import binance_public_data
    from freqtrade.main import main as freqtrade

    imported = time.perf_counter()

    # ccxt's Binance spot endpoints, each pointed at the mock (the keys ccxt's binance defines)
    urls = {key: base + urlsplit(url).path for key, url in ccxt.binance().urls["api"].items()
            if isinstance(url, str) and "binance" in urlsplit(url).netloc}
    ccxt_config = {"urls": {"api": urls}, "options": {"fetchMarkets": ["spot"]}}
    user_dir = os.path.join(args.out, f"freqtrade-{args.path}")
    shutil.rmtree(user_dir, ignore_errors=True)
    os.makedirs(user_dir)
    config = {
        "exchange": {"name": "binance", "key": "", "secret": "", "pair_whitelist": [args.symbol],
                     "ccxt_config": ccxt_config, "ccxt_async_config": ccxt_config,
                     "only_from_ccxt": args.path == "rest"},
        "stake_currency": "USDT", "dry_run": True, "trading_mode": "spot", "datadir": os.path.join(user_dir, "data"),
        "user_data_dir": user_dir,
    }
    config_path = os.path.join(user_dir, "config.json")
    with open(config_path, "w") as f:
        json.dump(config, f)

    if args.path == "archive":
        def zip_url(symbol: str, timeframe: str, candle_type: object, date: object) -> str:
            # freqtrade's own function with the host replaced: same path, same file name
            segment = binance_public_data.candle_type_to_url_segment(candle_type)
            name = binance_public_data.binance_vision_zip_name(symbol, timeframe, date)
            return f"{base}/data/{segment}/daily/klines/{symbol}/{timeframe}/{name}"

        binance_public_data.binance_vision_ohlcv_zip_url = zip_url

    # --timerange: start inclusive, stop exclusive: the day after --to
    stop = datetime.strptime(args.end, "%Y-%m-%d").replace(tzinfo=timezone.utc) + timedelta(days=1)
    timerange = f"{args.start.replace('-', '')}-{stop.strftime('%Y%m%d')}"
    started = time.perf_counter()
    try:
        freqtrade(["download-data", "-c", config_path, "--userdir", user_dir, "--pairs", args.symbol,
                   "-t", args.timeframe, "--timerange", timerange, "--no-color"])
    except SystemExit as exc:
        if exc.code not in (0, None):
            print(json.dumps({"error": f"freqtrade download-data exited {exc.code}"}))
            sys.exit(1)
    done = time.perf_counter()

    from freqtrade.data.history import get_datahandler

    handler = get_datahandler(Path(config["datadir"]) / "binance", "feather")
    df = handler.ohlcv_load(args.symbol, args.timeframe, candle_type="spot")
    stored = len(df)
    lo, hi = (int(d.timestamp() * 1000) for d in (datetime.strptime(args.start, "%Y-%m-%d").replace(tzinfo=timezone.utc),
                                                  stop))
    import pandas as pd

    stamps_all = (df["date"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)  # whatever the unit
    df = df[(stamps_all >= lo) & (stamps_all < hi)]
    stamps = stamps_all[(stamps_all >= lo) & (stamps_all < hi)].tolist()
    path = os.path.join(args.out, f"freqtrade-{args.path}.csv")
    with open(path, "w") as f:
        f.write("open_ts,open,high,low,close,volume\n")
        for ts, o, h, low, c, v in zip(stamps, df["open"].tolist(), df["high"].tolist(), df["low"].tolist(),
                                       df["close"].tolist(), df["volume"].tolist(), strict=True):
            f.write(f"{ts},{o!r},{h!r},{low!r},{c!r},{v!r}\n")
    print(json.dumps({"rows": len(df), "stored": stored, "seconds": done - started, "import_seconds": imported - began,
                      "path": args.path, "freqtrade": _version(), "ccxt": ccxt.__version__, "csv": path}))


def _version() -> str:
    from importlib.metadata import version

    return version("freqtrade")


if __name__ == "__main__":
    main()
