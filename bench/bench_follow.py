"""How fast ``forge run --follow`` commits each candle after it closes, and what it costs.

Starts the mock exchange on real time in its own process (``bench/common.py``), runs
``forge run --follow`` for N symbols as users do (a subprocess, CSV sink, JSON logs on stderr)
and timestamps every ``candle_committed`` event as it arrives. The delay of a candle is the
arrival time of the event that committed it minus the candle's close (``open + period``), both
on this machine's clock, which the mock's clock is (it serves real time, no offset): so it is
measured outside Forge and includes the log pipe. The backfill at the start (``--warmup``
seconds) is left out. Requests per closed candle come from the mock's own counters over the
same window.

    python bench/bench_follow.py                          # 50 symbols, 1s candles, 120 s
    python bench/bench_follow.py --symbols 50 --timeframe 1m --seconds 300
    python bench/bench_follow.py --quick                  # 5 symbols, 15 s (a smoke run)

The mock's Binance weight limit is raised to 60,000 a minute by default (``--weight-limit``):
50 symbols polled every second cost 50 x 2 = 100 weight a second, which is the real spot
budget of 6,000 a minute exactly, so on the real exchange 1s candles fit about 47 symbols.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MockProcess  # noqa: E402

PERIOD = {"1s": 1000, "1m": 60_000}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--timeframe", choices=tuple(PERIOD), default="1s")
    ap.add_argument("--seconds", type=float, default=120.0, help="measured window, after the warm-up")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds left out at the start (backfill)")
    ap.add_argument("--latency", type=float, default=0.05, help="mock latency per response, seconds")
    ap.add_argument("--weight-limit", type=int, default=60_000, help="mock Binance spot weight per minute")
    ap.add_argument("--quick", action="store_true", help="5 symbols for 15 s")
    ap.add_argument("--json", dest="json_out", help="also write the numbers to this file")
    args = ap.parse_args()
    if args.quick:
        args.symbols, args.seconds, args.warmup = 5, 15.0, 5.0
    period = PERIOD[args.timeframe]
    symbols = [f"T{i}USDT" for i in range(1, args.symbols + 1)]
    arrivals: list[tuple[float, dict]] = []
    with MockProcess({"now": None, "latency": args.latency, "binance_weight_limit": args.weight_limit}) as mock, \
            tempfile.TemporaryDirectory() as out:
        since = (int(time.time() * 1000) // period - 5) * period
        cmd = ["forge", "-v", "--log-format", "json", "run", "-s", "binance", "--symbol", ",".join(symbols),
               "-t", args.timeframe, "--from", "auto", "--since", str(since), "--follow", "-q",
               "--output", os.path.join(out, "{symbol}.csv")]
        proc = subprocess.Popen(cmd, env={**os.environ, "FORGE_BINANCE_URL": mock.url}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                now = time.time() * 1000
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                arrivals.append((now, event))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        time.sleep(args.warmup)
        before, t0 = mock.stats(), time.time() * 1000
        mark = len(arrivals)
        time.sleep(args.seconds)
        after, t1 = mock.stats(), time.time() * 1000
        end_mark = len(arrivals)
        proc.terminate()
        proc.wait(30)
        reader.join(5)
    last_written: dict[str, int] = {}
    delays: list[float] = []
    self_reported: list[float] = []
    candles = 0
    for i, (arrived, event) in enumerate(arrivals[:end_mark]):
        if event.get("event") != "candle_committed":
            continue
        symbol, written = event["symbol"], event["written"]
        new = written - last_written.get(symbol, 0)
        last_written[symbol] = written
        if i < mark:
            continue
        from datetime import datetime

        open_ms = int(datetime.fromisoformat(event["open"].replace("Z", "+00:00")).timestamp() * 1000)
        for k in range(new):  # every candle this commit made durable, not only the newest
            close = open_ms - k * period + period
            delays.append((arrived - close) / 1000)
            candles += 1
        self_reported.append(event["delay"])
    klines = after.get("binance.spot.requests", 0) - before.get("binance.spot.requests", 0)
    result = {
        "symbols": args.symbols, "timeframe": args.timeframe, "window_s": round((t1 - t0) / 1000, 1),
        "mock_latency_s": args.latency, "candles": candles,
        "delay_p50_s": round(percentile(delays, 50), 3), "delay_p95_s": round(percentile(delays, 95), 3),
        "delay_max_s": round(max(delays), 3) if delays else None,
        "self_reported_p95_s": round(percentile(self_reported, 95), 3),
        "requests": klines, "requests_per_candle": round(klines / candles, 3) if candles else None,
        "target_p95_s": round(1 + args.latency, 3),
        "mean_delay_s": round(statistics.fmean(delays), 3) if delays else None,
    }
    print(json.dumps(result))
    print(f"{args.symbols} symbols x {args.timeframe} for {result['window_s']} s: {candles} candles; "
          f"close -> commit p50 {result['delay_p50_s']} s, p95 {result['delay_p95_s']} s "
          f"(target <= {result['target_p95_s']} s); {result['requests_per_candle']} requests per candle")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0 if candles else 1


if __name__ == "__main__":
    sys.exit(main())
