"""Forge benchmarks: against the exchanges' limits and against the tools users would pick instead.

    python bench/run.py                  # everything, ~5-8 minutes; creates bench/.venvs/ once
    python bench/run.py --quick          # tiny ranges, no streamforge/ccxt: a smoke run of seconds
    python bench/run.py --latency 0.05 --out bench/out --publish

Every ratio is measured in the same run against a bound or a baseline computed or measured in
that run (see docs/benchmarks.md for how each bound is derived). Results go to
``OUT/results.json``, ``OUT/results.md`` and ``OUT/benchmarks.png``; ``--publish`` also writes
the generated part of ``docs/benchmarks.md`` and ``docs/benchmarks.png``.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import json
import math
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import requests  # noqa: E402
from common import (  # noqa: E402
    BENCH,
    ROOT,
    MockProcess,
    bench_month,
    bench_year,
    ensure_venv,
    installed_env,
    load,
    machine,
)

from forge_core import Batch, Pipeline, RunInfo, Sink  # noqa: E402
from forge_core.pipeline import DEFAULT_WORKERS  # noqa: E402
from forge_core.records import CANDLE_COLUMNS, EXTRA_COLUMNS  # noqa: E402
from forge_core.times import parse_range  # noqa: E402

PAGE = 1000  # Binance spot klines per request
WEIGHT = 2  # Binance spot klines weight at limit 1000
OKX_PAGE = 300  # OKX history-candles rows per request (documented maximum)
OKX_RATE, OKX_WINDOW = 20, 2.0  # OKX history-candles: 20 requests per 2 s per IP
WEIGHT_WINDOW = 10  # case 2: the mock's Binance weight window, seconds (real: 60)
WEIGHT_WORKERS = 8  # case 2: enough concurrency for the weight limit, not latency, to bind
STREAMFORGE = ["streamforge==0.1.3", "pyarrow", "greenlet"]  # the last two: imported, not declared
CCXT = ["ccxt", "matplotlib"]  # matplotlib draws the plot from this venv too
FREQTRADE = ["freqtrade==2026.9"]  # the best peer of issue 18
MARK_START, MARK_END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


@dataclass
class Result:
    """One line of the table."""

    case: str
    measured: str
    reference: str
    ratio: float | None
    target: str
    ok: bool | None
    details: str = ""
    data: dict[str, Any] = field(default_factory=dict)


# -- Forge runs -----------------------------------------------------------------------------------
def forge_run(source: str, options: dict[str, Any], symbols: list[str], start: str, end: str,
              workers: int, out: Path) -> Any:
    sink = ("csv", {"output": str(out / "{source}-{symbol}-{timeframe}-{start}_{end}.csv")})
    return Pipeline((source, options), sinks=[sink], workers=workers).run(symbols, "1m", start, end)


def ms_range(start: str, end: str) -> tuple[int, int]:
    return parse_range(start, end)


def raw_fetch(url: str, symbol: str, start: str, end: str, workers: int) -> tuple[float, int]:
    """The ceiling for any Python client against this mock: the same pages with ``workers``
    threads, ``requests`` keep-alive sessions and ``json`` decoding, nothing else."""
    lo, hi = ms_range(start, end)
    pages = [(t, min(t + PAGE * 60_000, hi) - 1) for t in range(lo, hi, PAGE * 60_000)]
    local = threading.local()

    def get(page: tuple[int, int]) -> int:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        r = session.get(url + "/api/v3/klines", params={"symbol": symbol, "interval": "1m", "startTime": page[0],
                                                        "endTime": page[1], "limit": PAGE}, timeout=30)
        r.raise_for_status()
        return len(r.json())

    began = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        rows = sum(pool.map(get, pages))
    return time.perf_counter() - began, rows


def case_single(mock: MockProcess, args: argparse.Namespace, start: str, end: str, tmp: Path) -> list[Result]:
    # warm-up: the mock renders each page once and caches it, so the measured passes time the
    # client and the latency, not the mock's Python page generation on the same 2 cores
    raw_fetch(mock.url, "BTCUSDT", start, end, args.workers)
    # the plugins imported first: the CPU compared is the run's, not this process's first imports
    Pipeline(("binance", {"base_url": mock.url, "archive": "rest"}), sinks=[("csv", {"output": str(tmp / "x.csv")})])
    # 1c: the bare client and Forge into CSV in turn, ``--cpu-pairs`` times; each pair's ratio is
    # taken in the same stretch of the machine's load, and the median pair is the figure
    pairs: list[tuple[float, float]] = []
    result = raw_seconds = raw_rows = None
    for k in range(max(1, min(args.cpu_pairs, 2) if args.quick else args.cpu_pairs)):
        mock.reset()
        cpu = time.process_time()
        seconds, rows_raw = raw_fetch(mock.url, "BTCUSDT", start, end, args.workers)
        raw_cpu = time.process_time() - cpu
        mock.reset()
        out = tmp / f"rest-{k}"  # a fresh file: into the same one, a run would resume and fetch nothing
        cpu = time.process_time()
        got = forge_run("binance", {"base_url": mock.url, "archive": "rest"}, ["BTCUSDT"], start, end,
                        args.workers, out)
        pairs.append((time.process_time() - cpu, raw_cpu))
        shutil.rmtree(out, ignore_errors=True)
        if result is None:  # case 1 is the first pair's run and raw pass
            result, raw_seconds, raw_rows = got, seconds, rows_raw
        elif got.total != result.total:
            raise RuntimeError(f"REST run {k + 1} wrote {got.total:,} candles, the first {result.total:,}")
    assert result is not None and raw_seconds is not None and raw_rows is not None
    mock.reset()
    cpu = time.process_time()  # the same run into a sink that drops every batch: source and core only
    dropped = Pipeline(("binance", {"base_url": mock.url, "archive": "rest"}), sinks=[_Drop()],
                       workers=args.workers).run(["BTCUSDT"], "1m", start, end)
    drop_cpu = time.process_time() - cpu
    stats = result.source_stats
    rows, seconds, reqs = result.total, result.elapsed, stats["requests"]
    bound = math.ceil(reqs / args.workers) * args.latency
    mock_stats = mock.stats()
    ratios = [f / r for f, r in pairs if r]
    cpu_ratio = statistics.median(ratios) if ratios else None
    forge_cpu = statistics.median(f for f, _ in pairs)
    raw_cpu = statistics.median(r for _, r in pairs)
    each = ", ".join(f"{f:.2f}/{r:.2f}" for f, r in pairs)
    return [Result(
        "1. Binance 1m, 1 symbol, 1 year (REST)", f"{rows / seconds:,.0f} candles/s",
        f"{rows / bound:,.0f} candles/s latency bound" if bound else "n/a (latency 0)",
        bound / seconds if bound else None, ">= 0.9", bound / seconds >= 0.9 if bound else None,
        f"{rows:,} candles in {seconds:.2f} s, {reqs} requests, {args.workers} workers; bound "
        f"ceil({reqs}/{args.workers}) x {args.latency * 1000:.0f} ms = {bound:.2f} s; raw requests+json client "
        f"{raw_seconds:.2f} s = {raw_rows / raw_seconds:,.0f} candles/s, Forge/raw {raw_seconds / seconds:.2f}; "
        f"429: {stats['http_429']}, 418: {stats['http_418']}",
        {"rows": rows, "seconds": seconds, "requests": reqs, "bound_seconds": bound, "raw_seconds": raw_seconds,
         "raw_ratio": raw_seconds / seconds, "http_429": stats["http_429"], "http_418": stats["http_418"],
         "mock": mock_stats, "candles_per_s": rows / seconds}),
        Result("1c. REST CPU, Forge / bare requests+json client", f"{forge_cpu:.2f} CPU s", f"{raw_cpu:.2f} CPU s",
               cpu_ratio, "<= 1.3 (issue 18)", cpu_ratio <= 1.3 if cpu_ratio is not None else None,
               f"the same {rows:,} candles: process CPU (user+system, every thread; the mock is another process) "
               f"of the Forge run into CSV vs the bare client fetching and decoding the same pages, in "
               f"{len(pairs)} pairs run back to back (Forge/bare CPU s: {each}; the ratio is the median pair's, "
               f"the CPU s the medians); the same run into a sink that drops every batch (source and core only): "
               f"{drop_cpu:.2f} CPU s = {drop_cpu / raw_cpu if raw_cpu else 0:.2f}x ({dropped.total:,} candles)",
               {"forge_cpu": forge_cpu, "raw_cpu": raw_cpu, "drop_cpu": drop_cpu, "pairs": pairs,
                "ratios": ratios})]


class _Drop(Sink):
    """Keeps nothing: what a run costs before any sink."""

    name = "drop"

    def write(self, batch: Batch) -> None:
        pass


def case_weight(args: argparse.Namespace, symbols: list[str], start: str, end: str, tmp: Path,
                per_minute: int = 6000, label: str = "2.") -> Result:
    """Many symbols against Binance's weight limit, ``per_minute`` weight a minute, kept as a
    rate in a window shortened to ``WEIGHT_WINDOW`` seconds.

    Bound: a client may spend at most ``limit`` weight in any window, so spending the run's total
    weight X takes at least ``(ceil(X / limit) - 1)`` windows (a whole budget at once at the
    start of each window, the last one at the very end) plus one latency. X is counted from
    Forge's requests: klines 2 each, exchangeInfo 20, time 1. For long runs this is
    ``limit / window / 2 x 1000`` candles/s; for short ones it credits the client with the
    bursts a window allows, so a ratio above 1 cannot come from the start-up burst."""
    window = 2 if args.quick else WEIGHT_WINDOW
    limit = per_minute * window // 60
    with MockProcess({"latency": args.latency, "weight_window": window, "binance_weight_limit": limit}) as mock:
        # warm-up pass (pages rendered and cached by the mock), then a fresh weight window
        forge_run("binance", {"base_url": mock.url, "archive": "rest"}, symbols, start, end, WEIGHT_WORKERS, tmp)
        time.sleep(window + 0.5)
        mock.reset()
        result = forge_run("binance", {"base_url": mock.url, "archive": "rest"}, symbols, start, end,
                           WEIGHT_WORKERS, tmp)
        stats = mock.stats()
    rows, seconds, reqs = result.total, result.elapsed, result.source_stats["requests"]
    weight = (reqs - 2) * WEIGHT + 20 + 1  # klines (pages and one probe per symbol), exchangeInfo, time
    bound_seconds = (math.ceil(weight / limit) - 1) * window + args.latency
    steady = limit / window / WEIGHT * PAGE
    e429, e418 = stats.get("binance.429", 0), stats.get("binance.418", 0)
    ratio = bound_seconds / seconds
    title = "real rate 6000/min" if per_minute == 6000 else f"pre-2023 limit {per_minute}/min"
    return Result(
        f"{label} Binance 1m, {len(symbols)} symbols, weight-bound ({title})", f"{rows / seconds:,.0f} candles/s",
        f"{rows / bound_seconds:,.0f} candles/s weight bound for this run ({steady:,.0f}/s steady)", ratio,
        ">= 0.9, 429 = 418 = 0", ratio >= 0.9 and e429 == 0 and e418 == 0,
        f"{rows:,} candles in {seconds:.1f} s, {reqs} requests = {weight} weight, {WEIGHT_WORKERS} workers; "
        f"limit {limit} weight per {window} s window; bound (ceil({weight}/{limit})-1) x {window} s + latency = "
        f"{bound_seconds:.2f} s; busiest window used {stats.get('binance.weight_max', 0)}; 429: {e429}, 418: {e418}",
        {"rows": rows, "seconds": seconds, "bound_seconds": bound_seconds, "steady_bound": steady, "window": window,
         "limit": limit, "weight": weight, "http_429": e429, "http_418": e418, "mock": stats,
         "candles_per_s": rows / seconds})


def case_okx(mock: MockProcess, args: argparse.Namespace, start: str, end: str, tmp: Path) -> Result:
    try:
        Pipeline(("okx", {"base_url": mock.url}), sinks=[("csv", {"output": str(tmp / "probe.csv")})])
    except Exception as exc:  # plugin not installed
        return Result("3. OKX 1m", "not available", "", None, ">= 0.9, no 429", None, f"{exc}")
    mock.reset()
    result = forge_run("okx", {"base_url": mock.url}, ["BTC-USDT"], start, end, args.workers, tmp)
    stats = mock.stats()
    if not stats.get("okx.history.requests"):
        return Result("3. OKX 1m", "not available", "", None, ">= 0.9, no 429", None,
                      "the mock has no OKX history-candles endpoint")
    rows, seconds, n = result.total, result.elapsed, stats["okx.history.requests"]
    # the n-th request may start (n-1)//20 windows after the first; the last then takes a latency
    bound_seconds = (n - 1) // OKX_RATE * OKX_WINDOW + args.latency
    e429, e50011 = stats.get("okx.429", 0), stats.get("okx.50011", 0)
    ratio = bound_seconds / seconds
    return Result(
        "3. OKX 1m, 1 symbol, 1 month", f"{rows / seconds:,.0f} candles/s",
        f"{rows / bound_seconds:,.0f} candles/s rate bound ({OKX_PAGE * OKX_RATE / OKX_WINDOW:,.0f}/s steady)",
        ratio, ">= 0.9, no 429", ratio >= 0.9 and e429 == 0 and e50011 == 0,
        f"{rows:,} candles in {seconds:.2f} s, {n} history requests of {OKX_PAGE}; bound ({n}-1)//20 x 2 s + "
        f"latency = {bound_seconds:.2f} s; 429: {e429}, 50011: {e50011}",
        {"rows": rows, "seconds": seconds, "history_requests": n, "bound_seconds": bound_seconds, "http_429": e429,
         "okx_50011": e50011, "mock": stats, "candles_per_s": rows / seconds})


# -- sinks ----------------------------------------------------------------------------------------
def case_postgres(args: argparse.Namespace) -> list[Result]:
    """bench/bench_postgres.py in its own process (its own throwaway durable server): each
    target is the median of ratios taken pair by pair within a round."""
    script = BENCH / "bench_postgres.py"
    target = "fresh >= 0.8x raw COPY, re-run >= 0.7x stage+join"
    rows, repeat = ("5000", "1") if args.quick else (str(args.pg_rows), str(args.pg_rounds))
    proc = subprocess.run([sys.executable, str(script), "--rows", rows, "--repeat", repeat, "--json"],
                          capture_output=True, text=True, timeout=1800, cwd=ROOT)
    try:
        data = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        data = None
    if proc.returncode != 0 or data is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return [Result("4. PostgreSQL sink", "not available", "", None, target, None,
                       f"bench_postgres.py exit {proc.returncode}: {tail[:200]}")]
    n, sec = data["rows"], data["seconds"]
    out = []
    for phase, base, minimum in (("sink fresh", "raw COPY", 0.8), ("sink re-run", "stage+join floor", 0.7)):
        ratio = data["ratio"][phase]
        spread = ", ".join(f"{x:.2f}" for x in data["pair_ratios"][phase])
        out.append(Result(f"4. PostgreSQL {phase}", f"{n / sec[phase]:,.0f} rows/s",
                          f"{n / sec[base]:,.0f} rows/s {base}", ratio, f">= {minimum}", ratio >= minimum,
                          f"{n:,} rows, download excluded: {sec[phase]:.2f} s vs {base} {sec[base]:.2f} s (medians "
                          f"of {data['repeat']}); pair ratios {spread}", {**data, "phase": phase}))
    changed = data["ratio_changed"]
    out.append(Result("4. PostgreSQL sink re-run, changed", f"{n / sec['sink re-run, changed']:,.0f} rows/s",
                      f"{n / sec['raw COPY']:,.0f} rows/s raw COPY", changed, "", None,
                      f"every close price differs, every row rewritten: {sec['sink re-run, changed']:.2f} s",
                      {"seconds": sec["sink re-run, changed"]}))
    return out


def case_startup(args: argparse.Namespace) -> Result:
    """bench/bench_startup.py: process start to the mock's first request, one-day CSV run."""
    import bench_startup

    runs = 1 if args.quick else 15
    r = bench_startup.measure(runs, warm=not args.quick, imports=not args.quick)
    heavy = ", ".join(sorted(r["heavy_imports"])) or "none"
    return Result("0. Start-up: forge run -s binance --sink csv, to the first request",
                  f"{r['first_request_median']:.3f} s", "", None, f"<= {bench_startup.TARGET} s", r["met"],
                  f"wall from process start, median of {runs} runs (min {r['first_request_min']:.3f}, max "
                  f"{r['first_request_max']:.3f}), load average {r['load']:.1f}; CPU seconds the process had used by "
                  f"then: median {r['cpu_to_first_request_median']}; whole one-day run {r['wall_median']:.3f} s; "
                  f"heavy modules imported: {heavy}", r)


def synthetic_rows(n: int) -> list[tuple[Any, ...]]:
    """``n`` canonical Binance rows (14 columns, decimal strings) as the source produces them."""
    rows = []
    base = 1_700_000_000_000 - 1_700_000_000_000 % 60_000
    for i in range(n):
        ts = base + i * 60_000
        p = 3_000_000 + (i * 7919) % 40_000
        rows.append(("binance", "BTCUSDT", "1m", ts, ts + 59_999, f"{p // 100}.{p % 100:02d}000000",
                     f"{p // 100 + 3}.{p % 100:02d}000000", f"{p // 100 - 2}.{p % 100:02d}000000",
                     f"{p // 100 + 1}.{p % 100:02d}000000", f"{i % 50}.{i % 97:08d}", f"{i * 31}.12345678",
                     i % 2000, f"{i % 20}.{i % 89:08d}", f"{i * 13}.87654321"))
    return rows


def case_csv(args: argparse.Namespace, tmp: Path) -> Result:
    from forge_sink_csv import CsvSink

    n = 20_000 if args.quick else 300_000
    rows = synthetic_rows(n)
    columns = CANDLE_COLUMNS + EXTRA_COLUMNS
    batches = [rows[i:i + PAGE] for i in range(0, n, PAGE)]

    def sink() -> None:
        s = CsvSink(output=str(tmp / "sink.csv"))
        s.open(RunInfo("binance", "Binance", ("BTCUSDT",), "1m", rows[0][3], rows[-1][3] + 60_000, columns))
        done = 0
        for b in batches:
            s.write(Batch("binance", "BTCUSDT", "1m", columns, b))
            done += len(b)
            if done % 50_000 == 0:
                s.commit()
        s.commit()
        s.close(True)

    def plain() -> None:
        with open(tmp / "plain.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for b in batches:
                w.writerows(b)

    t_sink, t_plain = [], []
    for _ in range(3):
        t_plain.append(timed(plain))
        t_sink.append(timed(sink))
    sink_s, plain_s = statistics.median(t_sink), statistics.median(t_plain)
    same = (tmp / "sink.csv").read_bytes() == (tmp / "plain.csv").read_bytes()
    ratio = plain_s / sink_s
    return Result("5. CSV sink", f"{n / sink_s:,.0f} rows/s", f"{n / plain_s:,.0f} rows/s csv.writer", ratio,
                  ">= 0.7", ratio >= 0.7,
                  f"{n:,} rows in 1000-row batches, median of 3: sink {sink_s:.3f} s (commit/fsync every 50k, "
                  f"atomic rename) vs csv.writer.writerows {plain_s:.3f} s; identical bytes: {same}",
                  {"sink_seconds": sink_s, "plain_seconds": plain_s, "identical": same})


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


# -- memory and profile ---------------------------------------------------------------------------
def peak_rss(url: str, start: str, end: str, tmp: Path, idle: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "memory.py")]
    if idle:
        cmd.append("--idle")
    else:
        cmd += ["--", "run", "-s", "binance", "--archive", "rest", "--base-url", url, "--symbol", "BTCUSDT",
                "--from", start, "--to", end, "-q", "--output", str(tmp / f"mem-{start}_{end}.csv")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"memory run failed: {proc.stderr.strip()[-300:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def case_memory(mock: MockProcess, year: tuple[str, str], month: tuple[str, str], tmp: Path) -> Result:
    idle = peak_rss(mock.url, *month, tmp, idle=True)
    m = peak_rss(mock.url, *month, tmp)
    y = peak_rss(mock.url, *year, tmp)
    growth = y["maxrss_mib"] / m["maxrss_mib"]
    ok = y["maxrss_mib"] < 200 and growth <= 1.2 and m["exit"] == 0 and y["exit"] == 0
    return Result("6. Peak RSS, 1 year vs 1 month", f"{y['maxrss_mib']:.0f} MiB (year)",
                  f"{m['maxrss_mib']:.0f} MiB (month)", growth, "< 200 MiB, year/month <= 1.2", ok,
                  f"forge run in its own process (VmHWM): idle import {idle['maxrss_mib']:.0f} MiB, "
                  f"month {m['maxrss_mib']:.0f} MiB, year {y['maxrss_mib']:.0f} MiB",
                  {"idle": idle, "month": m, "year": y})


def profile(mock: MockProcess, start: str, end: str, tmp: Path, out: Path) -> dict[str, Any]:
    """cProfile of the run loop (main thread: clean, transform, write) on a zero-latency mock,
    plus each hot-path stage timed alone on real pages (the fetch threads are not profiled by
    cProfile, so parsing is measured separately)."""
    prof = cProfile.Profile()
    prof.enable()
    result = forge_run("binance", {"base_url": mock.url, "archive": "rest"}, ["BTCUSDT"], start, end, 4, tmp)
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(15)
    (out / "profile.txt").write_text(text.getvalue())
    top = []
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]:  # type: ignore[attr-defined]
        top.append({"function": f"{Path(file).name}:{line}({fn})", "calls": nc, "tottime": tt, "cumtime": ct})
    stages = stage_costs(mock.url, start)
    return {"rows": result.total, "seconds": result.elapsed, "top": top, "stages_ms_per_1000": stages}


def stage_costs(url: str, start: str) -> dict[str, float]:
    """Milliseconds per 1000-candle page for each stage of the hot path, timed alone."""
    from forge_binance.source import BinanceSource
    from forge_core.pipeline import _clean
    from forge_core.records import check_rows

    cols = BinanceSource.columns
    from forge_core.sources import Task
    from forge_core.timeframes import parse_timeframe

    lo, _ = ms_range(start, start)
    session = requests.Session()
    params = {"symbol": "BTCUSDT", "interval": "1m", "startTime": lo, "endTime": lo + PAGE * 60_000 - 1, "limit": PAGE}
    response = session.get(url + "/api/v3/klines", params=params, timeout=30)
    body = response.json()
    tf = parse_timeframe("1m")
    task = Task("BTCUSDT", tf, lo, lo + PAGE * 60_000)

    make = BinanceSource(market="spot").row_maker(task)

    def parse() -> list[tuple[Any, ...]]:
        return [make(open_ts=int(k[0]), end_ts=int(k[6]), open=k[1], high=k[2], low=k[3], close=k[4], volume=k[5],
                     quote_volume=k[7], trades=int(k[8]), taker_buy_base_volume=k[9],
                     taker_buy_quote_volume=k[10]) for k in body]

    rows = parse()
    sink_file = io.StringIO()
    writer = csv.writer(sink_file)
    n = 30
    out = {
        "http GET (mock, latency 0)": per_call(lambda: session.get(url + "/api/v3/klines", params=params, timeout=30), 10),
        "json decode": per_call(lambda: response.json(), n),
        "parse to tuples": per_call(parse, n),
        "check rows (row contract)": per_call(lambda: check_rows(rows, BinanceSource.columns, tf, "binance",
                                                                source="binance", symbol="BTCUSDT"), n),
        "clean (order, dedupe, closed)": per_call(lambda: _clean(rows, task, 1 << 62, cols.index("open_ts"), cols.index("end_ts")), n),
        "csv.writer.writerows": per_call(lambda: writer.writerows(rows), n),
    }
    # the parse above is a copy of BinanceSource._klines.parse
    return out


def per_call(fn: Callable[[], object], n: int) -> float:
    began = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - began) / n * 1000


# -- the tools users come from -------------------------------------------------------------------
def run_driver(python: Path, script: str, url: str, symbol: str, start: str, end: str, tmp: Path,
               extra: list[str] | None = None) -> dict[str, Any]:
    proc = subprocess.run([str(python), str(BENCH / script), "--base-url", url, "--symbol", symbol,
                           "--from", start, "--to", end, "--out", str(tmp), *(extra or [])],
                          capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1])
    except (IndexError, ValueError):
        data = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    if proc.returncode != 0 and "error" not in data:
        data["error"] = f"exit {proc.returncode}"
    return data


def expected_candles(start: str, end: str) -> list[tuple[Any, ...]]:
    """The mock's BTCUSDT 1m candles opening in the range, computed from its synthetic market
    (not by any client): what every tool's output is checked against."""
    from forge_binance.mock import binance_rows

    lo, hi = ms_range(start, end)
    return binance_rows("BTCUSDT", "1m", lo, hi, int(time.time() * 1000))


def check_forge_csv(path: Path, expected: list[tuple[Any, ...]]) -> str | None:
    """``None`` when the CSV holds exactly ``expected`` (every column, as the CSV sink writes
    it), else the first difference."""
    columns = CANDLE_COLUMNS + EXTRA_COLUMNS
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        n = 0
        for n, (got, want) in enumerate(zip(reader, expected), 1):  # noqa: B905 - lengths checked below
            for i, name in enumerate(columns):
                if got[name] != str(want[i]):
                    return f"row {n} ({want[3]}): {name} {got[name]!r}, expected {str(want[i])!r}"
        rest = sum(1 for _ in reader)
    if n + rest != len(expected):
        return f"{n + rest} rows, expected {len(expected)}"
    return None


def check_peer_csv(path: Path, expected: list[tuple[Any, ...]], ts: str, names: tuple[str, ...],
                   per_ms: int = 1) -> str | None:
    """The same for a peer's OHLCV file (floats): ``ts`` is its open-time column (in units of
    ``per_ms`` milliseconds), ``names`` its open, high, low, close and volume columns; values
    compare as floats, since every peer here stores floats."""
    index = {"open": 5, "high": 6, "low": 7, "close": 8, "volume": 9}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        n = 0
        for n, (got, want) in enumerate(zip(reader, expected), 1):  # noqa: B905
            if int(float(got[ts])) * per_ms != want[3]:
                return f"row {n}: open time {got[ts]}, expected {want[3]}"
            for field_name, name in zip(("open", "high", "low", "close", "volume"), names, strict=True):
                if float(got[name]) != float(want[index[field_name]]):
                    return f"row {n} ({want[3]}): {field_name} {got[name]}, expected {want[index[field_name]]}"
        rest = sum(1 for _ in reader)
    if n + rest != len(expected):
        return f"{n + rest} rows, expected {len(expected)}"
    return None


def warm_archive(url: str, start: str, end: str) -> None:
    """Ask the mock once for every zip of the range, monthly (Forge, streamforge) and daily
    (freqtrade), with their checksums: it builds each on first request and caches it, as a real
    archive serves static files, so no tool is timed building them (the first to ask would be)."""
    from datetime import date, timedelta

    base = f"{url}/data/spot/{{}}/klines/BTCUSDT/1m/BTCUSDT-1m-{{}}.zip"
    day, last = date.fromisoformat(start), date.fromisoformat(end)
    names = []
    while day <= last:
        names.append(base.format("daily", day.isoformat()))
        if day.day == 1:
            names.append(base.format("monthly", day.isoformat()[:7]))
        day += timedelta(days=1)
    session = requests.Session()

    def get(u: str) -> None:
        for suffix in ("", ".CHECKSUM"):
            session.get(u + suffix, timeout=120).raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(get, names))


def forge_cli(url: str, start: str, end: str, workers: int, out: Path, archive: bool) -> dict[str, Any]:
    """``forge run`` in its own process, timed from outside (start-up included, as for every peer)."""
    path = out / f"forge-{'archive' if archive else 'rest'}.csv"
    path.unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).parent / "forge"), "run", "-s", "binance", "--base-url", url, "--symbol", "BTCUSDT",
           "--from", start, "--to", end, "--workers", str(workers), "-q", "--output", str(path)]
    cmd += ["--archive", "auto", "--archive-url", url] if archive else ["--archive", "rest"]
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=installed_env())  # from bytecode
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        return {"error": f"forge run exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    return {"seconds": seconds, "csv": str(path), "summary": proc.stdout.strip().splitlines()[-1]}


def _peer(name: str, venv: str, packages: list[str], script: str, mock: MockProcess, symbol: str, start: str,
          end: str, tmp: Path, extra: list[str] | None = None) -> dict[str, Any]:
    try:
        python = ensure_venv(venv, packages)
    except (subprocess.CalledProcessError, OSError) as exc:
        return {"error": f"could not install {name} from PyPI into bench/.venvs/{venv}: {exc}"}
    mock.reset()
    began = time.perf_counter()
    data = run_driver(python, script, mock.url, symbol, start, end, tmp, extra)
    data["process_seconds"] = time.perf_counter() - began
    return data


def case_tools(mock: MockProcess, args: argparse.Namespace, start: str, end: str, tmp: Path,
               forge_rest: Result) -> list[Result]:
    """Forge (``forge run``, whole process) and the tools users come from, REST and archive,
    on the same symbol-year; every output checked candle by candle against the mock's market.

    freqtrade, the target's peer, runs in ``--tool-pairs`` pairs with Forge on the same path,
    in turn (Forge, freqtrade, Forge, freqtrade...): the ratio is the median pair's, so a
    machine whose speed drifts moves both sides of a pair alike. ccxt and streamforge run once."""
    out: list[Result] = []
    expected = expected_candles(start, end)
    warm_archive(mock.url, start, end)
    pairs = max(1, 1 if args.quick else args.tool_pairs)
    forge: dict[str, list[dict[str, Any]]] = {"rest": [], "archive": []}
    trade: dict[str, list[dict[str, Any]]] = {"rest": [], "archive": []}

    def forge_once(path: str) -> None:
        mock.reset()
        run = forge_cli(mock.url, start, end, args.workers, tmp, archive=path == "archive")
        if "error" not in run:
            run["exact"] = check_forge_csv(Path(run["csv"]), expected)
        forge[path].append(run)

    for path in ("rest", "archive"):
        for _ in range(pairs):
            forge_once(path)
            data = _peer("freqtrade", "freqtrade", FREQTRADE, "compare_freqtrade.py", mock, "BTC/USDT", start, end,
                         tmp, ["--path", path])
            if "error" not in data:
                columns, per_ms = PEER_COLUMNS["freqtrade"]
                data["exact"] = check_peer_csv(Path(data["csv"]), expected, columns[0], columns[1:], per_ms)
                data["whole_seconds"] = data["seconds"] + data.get("import_seconds", 0.0)
            trade[path].append(data)
            if "error" in data:
                break

    base: dict[str, dict[str, Any]] = {}
    for path in ("rest", "archive"):
        runs = forge[path]
        label = f"7{'a' if path == 'rest' else 'b'}. Forge forge run, {path}"
        bad = next((r for r in runs if "error" in r), None)
        if bad is not None:
            out.append(Result(label, "not available", "", None, "", None, bad["error"], bad))
            continue
        seconds = statistics.median(r["seconds"] for r in runs)
        inexact = next((r["exact"] for r in runs if r["exact"] is not None), None)
        run = {**runs[-1], "seconds": seconds, "runs": [round(r["seconds"], 3) for r in runs], "exact": inexact,
               "candles_per_s": len(expected) / seconds, "plot": f"Forge {path}"}
        base[path] = run
        exact = "exact" if inexact is None else f"**not exact: {inexact}**"
        out.append(Result(label, f"{run['candles_per_s']:,.0f} candles/s", "", None, "output exact", inexact is None,
                          f"{len(expected):,} candles in {seconds:.2f} s (median of {len(runs)}: "
                          f"{', '.join(f'{x:.2f}' for x in run['runs'])} s; whole process, {args.workers} workers), "
                          f"{exact}; {run['summary'][:160]}", run))

    for path, label in (("rest", "7c. freqtrade download-data, rest"),
                        ("archive", "7d. freqtrade download-data, archive (daily zips)")):
        runs = trade[path]
        bad = next((r for r in runs if "error" in r), None)
        if bad is not None or path not in base:
            why = bad["error"] if bad is not None else "Forge's run failed"
            out.append(Result(label, "not available", "", None, "", None, why, bad or {}))
            continue
        ratios = [t["whole_seconds"] / f["seconds"] for t, f in zip(runs, forge[path], strict=False)]
        ratio = statistics.median(ratios)
        seconds = statistics.median(t["whole_seconds"] for t in runs)
        inexact = next((t["exact"] for t in runs if t["exact"] is not None), None)
        exact = "exact" if inexact is None else f"**not exact: {inexact}**"
        data = {**runs[-1], "exact": inexact, "candles_per_s": len(expected) / seconds, "plot": PLOT_LABELS[label[:3]],
                "whole_seconds": seconds, "pair_ratios": [round(r, 2) for r in ratios]}
        stored = data.get("stored", data["rows"])
        out.append(Result(
            label, f"{data['candles_per_s']:,.0f} candles/s",
            f"Forge {path} {base[path]['candles_per_s']:,.0f} candles/s", ratio, "Forge / freqtrade >= 3 (issue 18)",
            ratio >= 3, f"{data['rows']:,} candles in {seconds:.2f} s (median of {len(runs)} runs, each in turn with "
            f"Forge's; pair ratios {', '.join(f'{r:.2f}' for r in ratios)}; last run: import "
            f"{runs[-1].get('import_seconds', 0):.2f} s + work {runs[-1]['seconds']:.2f} s), {exact}"
            + (f"; it stored {stored:,} rows (a page past the range)" if stored != data["rows"] else ""), data))

    peers = [
        ("ccxt", "ccxt", CCXT, "compare_ccxt.py", "BTC/USDT", [], "rest", "7e. ccxt fetch_ohlcv loop, rest"),
        ("streamforge", "streamforge", STREAMFORGE, "compare_streamforge.py", "BTCUSDT", [], "archive",
         "7f. streamforge 0.1.3, archive (monthly zips)"),
    ]
    for name, venv, packages, script, symbol, extra, path, label in peers:
        data = _peer(name, venv, packages, script, mock, symbol, start, end, tmp, extra)
        if "error" in data:
            out.append(Result(label, "not available", "", None, "", None, data["error"], data))
            continue
        seconds = data["seconds"] + data.get("import_seconds", 0.0)
        columns, per_ms = PEER_COLUMNS[name]
        data["exact"] = check_peer_csv(Path(data["csv"]), expected, columns[0], columns[1:], per_ms)
        rate = len(expected) / seconds
        ref = base.get(path, {})
        ratio = seconds / ref["seconds"] if "seconds" in ref else None
        exact = "exact" if data["exact"] is None else f"**not exact: {data['exact']}**"
        out.append(Result(
            label, f"{rate:,.0f} candles/s", f"Forge {path} {ref['candles_per_s']:,.0f} candles/s" if ref else "",
            ratio, f"Forge / {name}", None,
            f"{data['rows']:,} candles in {seconds:.2f} s (import {data.get('import_seconds', 0):.2f} s + work "
            f"{data['seconds']:.2f} s), {exact}" + (f"; it stored {data['stored']:,} rows (a page past the range)"
                                                     if data.get("stored", data["rows"]) != data["rows"] else ""),
            {**data, "candles_per_s": rate, "plot": PLOT_LABELS[label[:3]], "whole_seconds": seconds}))
    return out


PEER_COLUMNS = {  # (open time, open, high, low, close, volume), milliseconds per open-time unit
    "freqtrade": (("open_ts", "open", "high", "low", "close", "volume"), 1),
    "ccxt": (("timestamp", "open", "high", "low", "close", "volume"), 1),
    "streamforge": (("open_ts", "open", "high", "low", "close", "volume"), 1000),  # it writes seconds
}
PLOT_LABELS = {"7c.": "freqtrade rest", "7d.": "freqtrade archive", "7e.": "ccxt loop", "7f.": "streamforge 0.1.3"}


# -- output ---------------------------------------------------------------------------------------
def table(results: list[Result]) -> str:
    lines = ["| case | measured | bound / baseline | ratio | target | met | details |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        met = "" if r.ok is None else ("yes" if r.ok else "**no**")
        lines.append(f"| {r.case} | {r.measured} | {r.reference} | {ratio} | {r.target} | {met} | {r.details} |")
    return "\n".join(lines)


def plot(results: list[Result], out: Path, latency: float) -> Path | None:
    """candles/s of Forge (REST and archive), streamforge and ccxt, drawn by matplotlib in the ccxt venv."""
    bars = []
    for r in results:
        rate = r.data.get("candles_per_s")
        if rate and r.data.get("plot"):
            bars.append((r.data["plot"], rate))
    if len(bars) < 2:
        return None
    python = ensure_venv("ccxt", CCXT)
    png = out / "benchmarks.png"
    code = (
        "import json,sys\nimport matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "bars,title,png=json.loads(sys.argv[1]),sys.argv[2],sys.argv[3]\n"
        "fig,ax=plt.subplots(figsize=(7,3.6),dpi=120)\n"
        "names=[b[0] for b in bars]; vals=[b[1] for b in bars]\n"
        "colors=['#1f77b4' if n.startswith('Forge') else '#999999' for n in names]\n"
        "ax.barh(names,vals,color=colors); ax.invert_yaxis()\n"
        "[ax.text(v,i,f' {v:,.0f}',va='center',fontsize=9) for i,v in enumerate(vals)]\n"
        "ax.set_xlabel('candles per second (higher is better)'); ax.set_title(title,fontsize=10)\n"
        "ax.set_xlim(0,max(vals)*1.25); fig.tight_layout(); fig.savefig(png)\n"
    )
    title = f"BTCUSDT 1m, one year, whole process, same mock exchange ({latency * 1000:.0f} ms latency)"
    subprocess.run([str(python), "-c", code, json.dumps(bars), title, str(png)], check=True)
    return png


def publish(text: str, png: Path | None) -> None:
    doc = ROOT / "docs" / "benchmarks.md"
    current = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{MARK_START}\n{MARK_END}\n"
    head, _, rest = current.partition(MARK_START)
    _, _, tail = rest.partition(MARK_END)
    doc.write_text(f"{head}{MARK_START}\n{text}\n{MARK_END}{tail}")
    if png is not None:
        shutil.copyfile(png, ROOT / "docs" / "benchmarks.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny ranges, no streamforge/ccxt (smoke test)")
    parser.add_argument("--latency", type=float, default=0.05, help="mock latency per response, seconds")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help="Forge workers for cases 1, 3 and 7 (default: Forge's own)")
    parser.add_argument("--out", default=str(BENCH / "out"))
    parser.add_argument("--no-compare", action="store_true", help="skip case 7 (forge run vs freqtrade, ccxt, streamforge)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--pg-rows", type=int, default=500_000, help="rows of the PostgreSQL case")
    parser.add_argument("--tool-pairs", type=int, default=3,
                        help="case 7: Forge / freqtrade pairs run in turn on each path (the median pair's ratio)")
    parser.add_argument("--cpu-pairs", type=int, default=5,
                        help="case 1c: bare client / Forge pairs run in turn (the median pair's ratio)")
    parser.add_argument("--pg-rounds", type=int, default=3, help="rounds of the PostgreSQL case (pairs per target)")
    parser.add_argument("--publish", action="store_true", help="write docs/benchmarks.md and .png")
    parser.add_argument("--only", choices=["rest", "tools"],
                        help="rest: only cases 1 and 1c (Binance REST symbol-year, CPU vs the bare client), a "
                        "minute; tools: only case 7 (forge run vs freqtrade, ccxt, streamforge); prints their "
                        "rows, writes nothing")
    args = parser.parse_args(argv)
    if args.only:
        return _only(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    year, month = bench_year(), bench_month()
    if args.quick:
        year = (month[0], month[0][:8] + "03")  # three days
        month = (month[0], month[0])  # one day
    weight_symbols = [f"T{i}USDT" for i in range(1, 3 if args.quick else 5)]
    weight_range = year if args.quick else (year[0], _months_later(year[0], 6))
    slow_symbols = [f"T{i}USDT" for i in range(11, 14)]
    slow_range = (year[0], _months_later(year[0], 3))
    results: list[Result] = []
    info = machine()
    began = time.monotonic()
    extra: dict[str, Any] = {}

    def step(name: str) -> None:
        print(f"[{time.monotonic() - began:6.1f}s] {name}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with MockProcess({"latency": args.latency}) as mock:
            step(f"1. Binance REST, one symbol, {year[0]}..{year[1]}")
            single, cpu = case_single(mock, args, *year, tmp)
            results += [single, cpu]
            step("3. OKX")
            results.append(case_okx(mock, args, *month, tmp))
            if not (args.quick or args.no_compare):
                step("7. forge run and freqtrade, ccxt, streamforge, REST and archive, outputs checked")
                results += case_tools(mock, args, *year, tmp, single)
        step(f"2. weight-bound, {len(weight_symbols)} symbols {weight_range[0]}..{weight_range[1]}")
        results.append(case_weight(args, weight_symbols, *weight_range, tmp))
        if not args.quick:  # the same code path as case 2
            step(f"2b. weight-bound at 1200/min, {len(slow_symbols)} symbols {slow_range[0]}..{slow_range[1]}")
            results.append(case_weight(args, slow_symbols, *slow_range, tmp, per_minute=1200, label="2b."))
        step("0. start-up")
        results.append(case_startup(args))
        step("4. PostgreSQL")
        results += case_postgres(args)
        step("5. CSV")
        results.append(case_csv(args, tmp))
        with MockProcess({"latency": 0}) as fast:
            step("6. memory")
            results.append(case_memory(fast, year, month, tmp))
            if not args.no_profile:
                step("profile")
                extra["profile"] = profile(fast, *year, tmp, out)
    results.sort(key=lambda r: r.case)
    info["load_end"] = load()
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(results, info, command.strip(), args, year, extra)
    print(text)
    png = None
    try:
        png = plot(results, out, args.latency) if not args.quick else None
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"plot not drawn: {exc}", file=sys.stderr)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"machine": info, "command": command, "year": year,
                                                  "latency": args.latency, "quick": args.quick,
                                                  "results": [asdict(r) for r in results], **extra},
                                                 indent=2, default=str))
    if args.publish:
        publish(text, png)
    step("done")
    return 0


def _only(args: argparse.Namespace) -> int:
    """Cases 1 and 1c alone (``rest``), to iterate on the REST path's CPU, or case 7 (``tools``)."""
    year = bench_year()
    if args.quick:
        year = (year[0], year[0][:8] + "03")
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp, MockProcess({"latency": args.latency}) as mock:
        began_load = load()
        results = case_single(mock, args, *year, Path(tmp))
        if args.only == "tools":
            results = case_tools(mock, args, *year, Path(tmp), results[0])
    print(f"load average {began_load} at the start, {load()} at the end (1/5/15 min); {year[0]} .. {year[1]}")
    for r in results:
        ratio = "" if r.ratio is None else f" = {r.ratio:.2f}"
        print(f"{r.case}: {r.measured} vs {r.reference}{ratio} (target {r.target})\n  {r.details}")
    return 0


def _months_later(day: str, months: int) -> str:
    """The day before ``day`` + ``months`` months (an inclusive end)."""
    from datetime import date, timedelta

    d = date.fromisoformat(day)
    y, m = divmod(d.month - 1 + months, 12)
    return (date(d.year + y, m + 1, 1) - timedelta(days=1)).isoformat()


def targets(results: list[Result]) -> str:
    """Issue 18's targets that this run measures: each with its number, met or missed."""
    by = {r.case: r for r in results}
    rows = ["| target (issue 18) | measured | met |", "| --- | --- | --- |"]

    def add(label: str, prefix: str, number: Callable[[Result], str], ok: Callable[[Result], bool] | None = None) -> None:
        r = by.get(prefix) or next((r for case, r in by.items() if case.startswith(prefix)), None)
        if r is None or r.measured == "not available":
            rows.append(f"| {label} | not measured in this run{': ' + r.details[:120] if r else ''} | |")
            return
        good = ok(r) if ok is not None else r.ok
        rows.append(f"| {label} | {number(r)} | {'' if good is None else 'met' if good else '**missed**'} |")

    add("start-up: at most 0.35 s to the first request", "0. ",
        lambda r: f"{r.measured} median wall (load {r.data['load']:.1f}); "
                  f"{r.data['cpu_to_first_request_median']} CPU s used by then")
    add("REST: CPU per year at most 1.3x the bare client's", "1c. ", lambda r: f"{r.ratio:.2f}x")
    add("PostgreSQL: fresh load at least 0.8x raw COPY, download excluded", "4. PostgreSQL sink fresh",
        lambda r: f"{r.ratio:.2f}x")
    add("PostgreSQL: unchanged re-run at least 0.7x the stage+join floor", "4. PostgreSQL sink re-run",
        lambda r: f"{r.ratio:.2f}x")
    add("REST symbol-year: at least 3x freqtrade", "7c. ", lambda r: f"{r.ratio:.2f}x")
    add("archive symbol-year: at least 3x freqtrade's data.binance.vision path", "7d. ", lambda r: f"{r.ratio:.2f}x")
    add("peak RSS under 120 MiB (measured here: REST into CSV, one symbol-year, Forge's default workers)", "6. ",
        lambda r: f"{r.data['year']['maxrss_mib']:.0f} MiB", lambda r: r.data["year"]["maxrss_mib"] < 120)
    exact = [r for r in results if r.case.startswith("7") and "exact" in r.data]
    if exact:
        bad = [r.case for r in exact if r.data["exact"] is not None]
        rows.append(f"| every output in the benchmark checked exact | {len(exact) - len(bad)} of {len(exact)} outputs "
                    f"exact{': not ' + ', '.join(bad) if bad else ''} | {'met' if not bad else '**missed**'} |")
    return "\n".join(rows)


def render(results: list[Result], info: dict[str, str], command: str, args: argparse.Namespace,
           year: tuple[str, str], extra: dict[str, Any]) -> str:
    lines = [f"Measured {info['date']} with `{command}` on {info['nproc']} cores ({info['cpu']}), "
             f"Python {info['python']}, {info['platform']}, load average {info['load']} at the start and {info['load_end']} at the end (1/5/15 min); mock latency {args.latency * 1000:.0f} ms; "
             f"range {year[0]} .. {year[1]}.", "", "```", info["free -g"], "```", "", table(results)]
    lines += ["", "Issue 18's targets measured in this run:", "", targets(results)]
    prof = extra.get("profile")
    if prof:
        lines += ["", f"Hot path, one year against a zero-latency mock ({prof['rows']:,} candles in "
                  f"{prof['seconds']:.1f} s under cProfile). Each stage timed alone, ms per 1000-candle page:", "",
                  "| stage | ms / page |", "| --- | --- |"]
        lines += [f"| {k} | {v:.2f} |" for k, v in prof["stages_ms_per_1000"].items()]
        lines += ["", "Run loop (main thread) by own time under cProfile:", "", "| function | calls | own s | cum s |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| `{t['function']}` | {t['calls']} | {t['tottime']:.2f} | {t['cumtime']:.2f} |" for t in prof["top"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
