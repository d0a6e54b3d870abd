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
- ``pyarrow from text``: the same rows as CSV text (what Binance's archive hands on as
  :class:`~forge_core.TextRows`), read by ``pyarrow.csv`` (ints as int64, the rest as strings),
  strings cast to ``decimal128(38, 8)``, one ``pq.write_table`` with the sink's options.
- ``sink fresh``: :class:`ParquetSink` into an empty root (12 month files, fsynced, renamed).
- ``sink fresh, rows as text``: the same with the batches as ``TextRows``.
- ``sink re-run``: the same rows again into the full root (every month read, upserted, rewritten).

Peak RSS (``VmHWM``) of the sink is measured in child processes that generate the rows batch by
batch (as the pipeline streams them), for a month and for the year, as tuples and as text: it
must stay flat. Targets: sink fresh >= 0.7x ``pyarrow from rows`` (and the text path >= 0.7x
``pyarrow from text``); peak RSS < 120 MiB.
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import forge_sink_parquet  # noqa: F401 - before pyarrow, as in a forge run: it picks the allocator
import pyarrow as pa
import pyarrow.parquet as pq
from forge_sink_parquet import ParquetSink
from forge_sink_parquet.files import WRITE_OPTIONS

from forge_core import Batch, RunInfo, TextRows

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


FIXED = {"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}


def as_text(rows: list[tuple]) -> TextRows:
    """The rows as CSV text, as Binance's archive hands them on."""
    fields = {c: [str(r[i]) for r in rows] for i, c in enumerate(COLUMNS) if c not in FIXED}
    text = TextRows.build(COLUMNS, fields, fixed=FIXED, ints=("trades",))
    assert text is not None
    return text


def run_info() -> RunInfo:
    return RunInfo("binance", "Binance", ("BTCUSDT",), "1m", START, START + 366 * 86_400_000, COLUMNS,
                   output_timeframe="1m")


def sink_write(root: str, pages: Iterator[Sequence[tuple]] | list[Sequence[tuple]]) -> int:
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
    dec = pa.decimal128(38, 8)

    def array(name: str, values: tuple) -> pa.Array:
        if name in ("open_ts", "end_ts", "trades"):
            return pa.array(values, pa.int64())
        if name in ("source", "symbol", "timeframe"):
            return pa.array(values, pa.string())
        return pa.array(values, pa.string()).cast(dec)

    return with_open_time((name, array(name, values)) for name, values in zip(COLUMNS, zip(*rows, strict=True),
                                                                               strict=True))


def with_open_time(columns: Iterable[tuple[str, Any]]) -> pa.Table:
    """The sink's table from ``(name, array)`` pairs: ``open_time`` (a UTC timestamp) after ``open_ts``."""
    arrays, names = [], []
    for name, arr in columns:
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


def child(n: int, text: bool) -> None:
    """Write ``n`` streamed rows with the sink (as text if ``text``) and print the peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        pages = (as_text(rows) for rows in batches(n)) if text else batches(n)
        sink_write(os.path.join(tmp, "data"), pages)
        print(json.dumps({"rows": n, "peak_rss_mib": round(vm_hwm_mib(), 1), "pandas": "pandas" in sys.modules,
                          "seconds": round(time.perf_counter() - began, 3)}))


def peak_rss(n: int, text: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", str(n), *(["--text"] if text else [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table_from_text(texts: list[TextRows]) -> pa.Table:
    """pyarrow's own reading of the rows' CSV text: ints as int64, strings cast to decimals."""
    import pyarrow.csv as pcsv

    data = "".join(t.text() for t in texts).encode()
    ints = ("open_ts", "end_ts", "trades")
    table = pcsv.read_csv(pa.py_buffer(data), read_options=pcsv.ReadOptions(column_names=list(COLUMNS)),
                          convert_options=pcsv.ConvertOptions(
                              column_types={c: pa.int64() if c in ints else pa.string() for c in COLUMNS},
                              include_columns=[c for c in COLUMNS if c not in FIXED]))
    dec = pa.decimal128(38, 8)
    return with_open_time((name, table[name] if name in ints else table[name].cast(dec)) for name in table.column_names)


CPU: dict[Callable[[str], None], float] = {}  # median CPU seconds of each timed phase


def timed(repeat: int, fn: Callable[[str], None], prepare: Callable[[str], None] | None = None) -> float:
    """Median wall seconds of ``fn`` (into a fresh directory each time); its median CPU seconds
    (user + system of the whole process, all threads: pyarrow's reader and writer use both
    cores, the sink one) go into :data:`CPU`. On a shared machine judge by CPU."""
    times, cpus = [], []
    for _ in range(repeat):
        tmp = tempfile.mkdtemp()
        try:
            if prepare is not None:
                prepare(tmp)
            began, cpu = time.perf_counter(), time.process_time()
            fn(tmp)
            times.append(time.perf_counter() - began)
            cpus.append(time.process_time() - cpu)
        finally:
            shutil.rmtree(tmp)
    CPU[fn] = statistics.median(cpus)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=YEAR)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--text", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.text)
        return
    pages = list(batches(args.rows))
    texts = [as_text(p) for p in pages]
    rows = [r for page in pages for r in page]
    table = table_from_rows(rows)

    def from_rows(tmp: str) -> None:
        pq.write_table(table_from_rows(rows), os.path.join(tmp, "year.parquet"))

    def from_rows_same_options(tmp: str) -> None:
        pq.write_table(table_from_rows(rows), os.path.join(tmp, "year.parquet"), **WRITE_OPTIONS)

    def write_only(tmp: str) -> None:
        pq.write_table(table, os.path.join(tmp, "year.parquet"))

    def from_text(tmp: str) -> None:
        pq.write_table(table_from_text(texts), os.path.join(tmp, "year.parquet"), **WRITE_OPTIONS)

    def fresh(tmp: str) -> None:
        sink_write(os.path.join(tmp, "data"), pages)

    def fresh_text(tmp: str) -> None:
        sink_write(os.path.join(tmp, "data"), texts)

    n = args.rows
    phases = {"pyarrow_from_rows": (from_rows, None), "pyarrow_from_rows_sink_options": (from_rows_same_options, None),
              "pyarrow_write_table": (write_only, None), "pyarrow_from_text": (from_text, None),
              "sink_fresh": (fresh, None), "sink_fresh_text": (fresh_text, None), "sink_rerun": (fresh, fresh)}
    result: dict = {"rows": n}
    for name, (fn, prepare) in phases.items():
        result[f"{name}_s"] = timed(args.repeat, fn, prepare)
        result[f"{name}_cpu_s"] = CPU[fn]
    result.update({
        "peak_rss_month": peak_rss(MONTH),
        "peak_rss_year": peak_rss(YEAR),
        "peak_rss_month_text": peak_rss(MONTH, text=True),
        "peak_rss_year_text": peak_rss(YEAR, text=True),
        "pyarrow": pa.__version__,
    })
    with tempfile.TemporaryDirectory() as tmp:
        fresh(tmp)
        result["dataset_mib"] = round(sum(p.stat().st_size for p in Path(tmp).rglob("*.parquet")) / 2**20, 1)
    result["ratio_vs_from_rows"] = round(result["pyarrow_from_rows_s"] / result["sink_fresh_s"], 2)
    result["ratio_vs_from_rows_sink_options"] = round(result["pyarrow_from_rows_sink_options_s"] / result["sink_fresh_s"], 2)
    result["ratio_vs_write_table"] = round(result["pyarrow_write_table_s"] / result["sink_fresh_s"], 2)
    result["ratio_text_vs_from_text"] = round(result["pyarrow_from_text_s"] / result["sink_fresh_text_s"], 2)
    for ours, theirs in (("sink_fresh", "pyarrow_from_rows"), ("sink_fresh", "pyarrow_from_rows_sink_options"),
                         ("sink_fresh_text", "pyarrow_from_text")):
        result[f"cpu_ratio_{ours}_vs_{theirs}"] = round(result[f"{theirs}_cpu_s"] / result[f"{ours}_cpu_s"], 2)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{n} rows of 1m candles, 1000-row batches, commit every {COMMIT_EVERY} (pyarrow {pa.__version__}); "
          f"median of {args.repeat}")
    for label, key in (("pyarrow from rows (tuples -> table -> write_table)", "pyarrow_from_rows_s"),
                       ("  the same, with the sink's zstd, no dictionary", "pyarrow_from_rows_sink_options_s"),
                       ("pyarrow write_table of the built table", "pyarrow_write_table_s"),
                       ("pyarrow from CSV text (read_csv -> table -> write_table)", "pyarrow_from_text_s"),
                       ("sink fresh", "sink_fresh_s"), ("sink fresh, rows as text", "sink_fresh_text_s"),
                       ("sink re-run (upsert every month)", "sink_rerun_s")):
        cpu = result[key[: -len("_s")] + "_cpu_s"]
        print(f"  {label:58} {result[key]:6.2f} s  {n / result[key]:>10,.0f} rows/s  cpu {cpu:6.2f} s")
    print(f"  sink fresh vs pyarrow from rows: {result['ratio_vs_from_rows']}x (target >= 0.7x), with the same "
          f"options {result['ratio_vs_from_rows_sink_options']}x; "
          f"vs write_table alone: {result['ratio_vs_write_table']}x")
    print(f"  sink fresh, rows as text, vs pyarrow from text: {result['ratio_text_vs_from_text']}x (target >= 0.7x)")
    print("  by CPU seconds (pyarrow's phases use both cores): sink fresh vs pyarrow from rows "
          f"{result['cpu_ratio_sink_fresh_vs_pyarrow_from_rows']}x, with the same options "
          f"{result['cpu_ratio_sink_fresh_vs_pyarrow_from_rows_sink_options']}x; rows as text vs pyarrow from text "
          f"{result['cpu_ratio_sink_fresh_text_vs_pyarrow_from_text']}x")
    rss = {k: result[f"peak_rss_{k}"]["peak_rss_mib"] for k in ("month", "year", "month_text", "year_text")}
    pandas = any(result[f"peak_rss_{k}"]["pandas"] for k in rss)
    print(f"  peak RSS, sink: month {rss['month']} MiB, year {rss['year']} MiB; rows as text: month "
          f"{rss['month_text']} MiB, year {rss['year_text']} MiB (target < 120: "
          f"{'met' if max(rss.values()) < 120 else 'MISSED'}); pandas imported: {pandas}; "
          f"dataset {result['dataset_mib']} MiB")
    print(f"  load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
