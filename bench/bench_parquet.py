"""Benchmark of the Parquet sink against pyarrow's own ``write_table``, measured in the same run.

    python bench/bench_parquet.py                       # a symbol-year of 1m, 3 repeats
    python bench/bench_parquet.py --rows 44640 --repeat 5
    python bench/bench_parquet.py --json

The rows are a year of 1m Binance candles generated in-process (14 columns, prices and volumes
as 8-decimal strings), handed over in 1000-row batches and committed every 50k rows, as
``forge run`` does. Phases, each the median of ``--repeat`` runs into a fresh directory:

- ``pyarrow from rows``: the same Python tuples to columns, ``pa.array`` per column, strings cast
  to ``decimal128(38, 8)``, one ``pq.write_table`` of the year: what a hand-written loader does.
- the same with the sink's write options (zstd, no dictionary pages).
- ``pyarrow write_table``: ``pq.write_table`` of that already-built table alone (no conversion).
- ``sink fresh``: :class:`ParquetSink` into an empty root (12 month files, fsynced, renamed).
- ``sink re-run``: the same rows again into the full root (every month read, upserted, rewritten).

Peak RSS (``VmHWM``) of the sink is measured in child processes that generate the rows batch by
batch (as the pipeline streams them), for a month and for the year: it must stay flat.
Targets: sink fresh >= 0.7x ``pyarrow from rows``; peak RSS < 200 MB for the year.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from forge_sink_parquet import ParquetSink
from forge_sink_parquet.files import WRITE_OPTIONS

from forge_core import Batch, RunInfo

COLUMNS = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume",
           "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume")
YEAR = 525_600
MONTH = 44_640
BATCH = 1000
COMMIT_EVERY = 50_000
START = 1_704_067_200_000  # 2024-01-01 00:00 UTC


def batches(n: int) -> Iterator[list[tuple]]:
    """``n`` 1m candles from 2024-01-01 with realistic decimal strings, ``BATCH`` at a time."""
    price = 4_200_000  # cents
    for first in range(0, n, BATCH):
        rows = []
        for i in range(first, min(n, first + BATCH)):
            ts = START + i * 60_000
            price += (i * 7919) % 41 - 20
            o, c = price, price + (i * 104729) % 31 - 15
            h, lo = max(o, c) + i % 13, min(o, c) - i % 11
            v = (i * 2654435761) % 10_000_000_000
            rows.append(("binance", "BTCUSDT", "1m", ts, ts + 59_999, f"{o / 100:.8f}", f"{h / 100:.8f}",
                         f"{lo / 100:.8f}", f"{c / 100:.8f}", f"{v / 1e8:.8f}", f"{v * 300 / 1e8:.8f}",
                         i % 5000, f"{v / 2e8:.8f}", f"{v * 150 / 1e8:.8f}"))
        yield rows


def run_info() -> RunInfo:
    return RunInfo("binance", "Binance", ("BTCUSDT",), "1m", START, START + 366 * 86_400_000, COLUMNS,
                   output_timeframe="1m")


def sink_write(root: str, pages: Iterator[list[tuple]] | list[list[tuple]]) -> int:
    sink = ParquetSink(root=root)
    sink.open(run_info())
    done = uncommitted = 0
    for rows in pages:
        sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows))
        done += len(rows)
        uncommitted += len(rows)
        if uncommitted >= COMMIT_EVERY:
            sink.commit()
            uncommitted = 0
    sink.close(True)
    return done


def table_from_rows(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows, strict=True))
    dec = pa.decimal128(38, 8)
    arrays, names = [], []
    for name, values in zip(COLUMNS, cols, strict=True):
        if name in ("open_ts", "end_ts", "trades"):
            arr = pa.array(values, pa.int64())
        elif name in ("source", "symbol", "timeframe"):
            arr = pa.array(values, pa.string())
        else:
            arr = pa.array(values, pa.string()).cast(dec)
        arrays.append(arr)
        names.append(name)
        if name == "open_ts":
            arrays.append(arr.cast(pa.timestamp("ms", tz="UTC")))
            names.append("open_time")
    return pa.Table.from_arrays(arrays, names=names)


def vm_hwm_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(n: int) -> None:
    """Write ``n`` streamed rows with the sink and print the peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        sink_write(os.path.join(tmp, "data"), batches(n))
        print(json.dumps({"rows": n, "peak_rss_mib": round(vm_hwm_mib(), 1),
                          "seconds": round(time.perf_counter() - began, 3)}))


def peak_rss(n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(repeat: int, fn: Callable[[str], None], prepare: Callable[[str], None] | None = None) -> float:
    times = []
    for _ in range(repeat):
        tmp = tempfile.mkdtemp()
        try:
            if prepare is not None:
                prepare(tmp)
            began = time.perf_counter()
            fn(tmp)
            times.append(time.perf_counter() - began)
        finally:
            shutil.rmtree(tmp)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=YEAR)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    pages = list(batches(args.rows))
    rows = [r for page in pages for r in page]
    table = table_from_rows(rows)

    def from_rows(tmp: str) -> None:
        pq.write_table(table_from_rows(rows), os.path.join(tmp, "year.parquet"))

    def from_rows_same_options(tmp: str) -> None:
        pq.write_table(table_from_rows(rows), os.path.join(tmp, "year.parquet"), **WRITE_OPTIONS)

    def write_only(tmp: str) -> None:
        pq.write_table(table, os.path.join(tmp, "year.parquet"))

    def fresh(tmp: str) -> None:
        sink_write(os.path.join(tmp, "data"), pages)

    n = args.rows
    result = {
        "rows": n,
        "pyarrow_from_rows_s": timed(args.repeat, from_rows),
        "pyarrow_from_rows_sink_options_s": timed(args.repeat, from_rows_same_options),
        "pyarrow_write_table_s": timed(args.repeat, write_only),
        "sink_fresh_s": timed(args.repeat, fresh),
        "sink_rerun_s": timed(args.repeat, fresh, prepare=fresh),
        "peak_rss_month": peak_rss(MONTH),
        "peak_rss_year": peak_rss(YEAR),
        "pyarrow": pa.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        fresh(tmp)
        result["dataset_mib"] = round(sum(p.stat().st_size for p in Path(tmp).rglob("*.parquet")) / 2**20, 1)
    result["ratio_vs_from_rows"] = round(result["pyarrow_from_rows_s"] / result["sink_fresh_s"], 2)
    result["ratio_vs_from_rows_sink_options"] = round(result["pyarrow_from_rows_sink_options_s"] / result["sink_fresh_s"], 2)
    result["ratio_vs_write_table"] = round(result["pyarrow_write_table_s"] / result["sink_fresh_s"], 2)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{n} rows of 1m candles, 1000-row batches, commit every {COMMIT_EVERY} (pyarrow {pa.__version__}); "
          f"median of {args.repeat}")
    for label, key in (("pyarrow from rows (tuples -> table -> write_table)", "pyarrow_from_rows_s"),
                       ("  the same, with the sink's zstd, no dictionary", "pyarrow_from_rows_sink_options_s"),
                       ("pyarrow write_table of the built table", "pyarrow_write_table_s"),
                       ("sink fresh", "sink_fresh_s"), ("sink re-run (upsert every month)", "sink_rerun_s")):
        print(f"  {label:52} {result[key]:6.2f} s  {n / result[key]:>10,.0f} rows/s")
    print(f"  sink fresh vs pyarrow from rows: {result['ratio_vs_from_rows']}x (target >= 0.7x), with the same "
          f"options {result['ratio_vs_from_rows_sink_options']}x; "
          f"vs write_table alone: {result['ratio_vs_write_table']}x")
    print(f"  peak RSS, sink: month {result['peak_rss_month']['peak_rss_mib']} MiB, "
          f"year {result['peak_rss_year']['peak_rss_mib']} MiB (target < 200); dataset {result['dataset_mib']} MiB")


if __name__ == "__main__":
    main()
