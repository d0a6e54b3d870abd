"""The Binance archive path against its floor, its memory, and missing archive files, one run.

Everything runs against one warm mock in its own process (``--latency`` per response, 50 ms by
default, clock frozen at 2025-03-15 10:20 UTC); every contender is a process of its own, timed
from outside (wall, and user+system CPU from ``wait4``), in interleaved rounds, medians kept.
Forge runs from bytecode, as an installed Forge does (``common.installed_env``: a
``PYTHONDONTWRITEBYTECODE`` in the environment is dropped; the warm-up run compiles it).

1. **Speed, a symbol-year of 1m into CSV** (issue 18: at most 1.5x the floor):

   - ``floor``: polars, in a process of its own: download the 12 monthly zips and their
     ``.CHECKSUM`` with ``--workers`` threads, check the sha256, and turn each zip into the
     CSV ``forge run`` writes (byte-identical; checked), writing it to one file;
   - ``floor, local``: the same from zips already on disk (no download): polars alone;
   - ``forge``: ``forge run -s binance --archive archive`` into CSV (start-up included), the
     archive CSV read in Python (the default);
   - ``forge, pyarrow``: the same with ``FORGE_BINANCE_ARCHIVE_PARSER=pyarrow``;
   - ``forge, before``: the same from another source tree (``--baseline DIR``, e.g. an
     unpacked ``git archive`` of an older commit), for before/after in the same run.

2. **Peak RSS** (VmHWM, ``bench/memory.py``) of ``forge run`` on the archive path for a
   month, a year and three years at ``--rss-workers`` (default 1, 4, 8, 16), into CSV, Parquet
   and PostgreSQL (a throwaway server; skipped when none can start), each into a fresh output
   (not over the previous range's, which would measure a merge). Target: under 120 MiB.
   ``--rss-mode rest`` measures the REST path instead (``--archive rest``). ``--without pandas``
   measures as on an install without pandas (a test extra here; pyarrow imports it on Python
   object conversions, which the Parquet sink no longer makes: it makes no difference now);
   ``--without numpy`` as on a plain install of the Parquet sink (pyarrow>=16 needs no numpy
   and imports it only when it is there: about 11 MiB; the development install has it for pandas).

3. **Missing archive files**: a mock whose archive 404s every file of the year; ``forge run
   --archive auto`` against ``--archive rest`` for the same range: REST requests, archive
   requests and wall (targets: at most 1.01x the requests and 1.1x the wall), and how many
   warnings reach stderr.

    python bench/bench_archive.py                        # all three, BTCUSDT 2024, 4 workers
    python bench/bench_archive.py --only speed --repeat 5 --baseline /tmp/forge-before
    python bench/bench_archive.py --only rss --rss-workers 1,16 --sinks csv
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MockProcess, get_json, installed_env, load  # noqa: E402

from forge_core.pipeline import DEFAULT_WORKERS  # noqa: E402

BENCH = Path(__file__).resolve().parent
NOW = 1742034030456  # 2025-03-15 10:20:30.456 UTC, as in the tests
COLUMNS = ("source,symbol,timeframe,open_ts,end_ts,open,high,low,close,volume,quote_volume,trades,"
           "taker_buy_base_volume,taker_buy_quote_volume")

# The floor: polars turns each verified monthly zip into the rows forge writes.
FLOOR = r'''
import hashlib, io, sys, zipfile
from concurrent.futures import ThreadPoolExecutor
import polars as pl
import requests

url, symbol, year, workers, out, local = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
names = ["open_ts", "open", "high", "low", "close", "volume", "end_ts", "quote_volume", "trades",
         "taker_buy_base_volume", "taker_buy_quote_volume", "ignore"]
order = ["open_ts", "end_ts", "open", "high", "low", "close", "volume", "quote_volume", "trades",
         "taker_buy_base_volume", "taker_buy_quote_volume"]
session = requests.Session()
session.trust_env = False

def get(month):
    name = f"{symbol}-1m-{year}-{month:02d}.zip"
    if local != "-":
        with open(f"{local}/{name}", "rb") as f:
            return f.read()
    path = f"{url}/data/spot/monthly/klines/{symbol}/1m/{name}"
    want = session.get(path + ".CHECKSUM", timeout=60).text.split()[0]
    data = session.get(path, timeout=60).content
    assert hashlib.sha256(data).hexdigest() == want, name
    return data

def csv(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        raw = zf.read(zf.namelist()[0])
    df = pl.read_csv(raw, has_header=False, new_columns=names, schema_overrides={n: pl.Utf8 for n in names})
    df = df.select(pl.lit("binance").alias("source"), pl.lit(symbol).alias("symbol"),
                   pl.lit("1m").alias("timeframe"), *order)
    buf = io.BytesIO()
    df.write_csv(buf, include_header=False, line_terminator="\r\n")
    return buf.getvalue()

with open(out, "wb") as f, ThreadPoolExecutor(workers) as pool:
    f.write((",".join(["source", "symbol", "timeframe"] + order) + "\r\n").encode())
    for data in pool.map(get, range(1, 13)):
        f.write(csv(data))
'''


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1200) -> dict[str, Any]:
    """``cmd`` in a process of its own: wall seconds, CPU seconds, exit code, output."""
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=installed_env({**os.environ, **(env or {})}))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    wall = time.perf_counter() - began
    # the child's own rusage: waited for by communicate(); read the totals of finished children
    usage = _children_cpu()
    return {"wall": wall, "cpu": usage, "code": proc.returncode, "out": out, "err": err}


_cpu_seen = 0.0


def _children_cpu() -> float:
    """CPU seconds of the children reaped since the previous call."""
    global _cpu_seen
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = r.ru_utime + r.ru_stime
    delta, _cpu_seen = total - _cpu_seen, total
    return delta


def forge_cmd(args: list[str], without: tuple[str, ...] = ()) -> list[str]:
    """``forge ARGS`` through bench/memory.py (prints its peak RSS as a JSON last line)."""
    return [sys.executable, str(BENCH / "memory.py"), *(w for m in without for w in ("--without", m)), "--", *args]


def peak(result: dict[str, Any]) -> float:
    """The peak RSS memory.py printed; NaN (and the result's code set) if forge itself failed."""
    for line in reversed(result["out"].strip().splitlines()):
        if line.startswith("{"):
            got = json.loads(line)
            if got.get("exit"):
                result["code"] = result["code"] or got["exit"]
            return float(got["maxrss_mib"])
    return float("nan")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing"


def pythonpath(tree: str) -> str:
    """PYTHONPATH that makes another source tree's packages win over the installed ones."""
    root = Path(tree)
    return os.pathsep.join(str(p) for p in [root, *sorted((root / "plugins").iterdir())] if p.is_dir())


def env_for(url: str) -> dict[str, str]:
    return {"FORGE_BINANCE_URL": url, "FORGE_BINANCE_ARCHIVE_URL": url, "FORGE_BINANCE_FUTURES_URL": url}


def year_args(symbol: str, year: int, workers: int, out: Path, mode: str = "archive",
              start: str | None = None, end: str | None = None) -> list[str]:
    return ["run", "-s", "binance", "--symbol", symbol, "-t", "1m", "--from", start or f"{year}-01-01",
            "--to", end or f"{year}-12-31", "--archive", mode, "--workers", str(workers), "--output", str(out), "-q"]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- 1. speed ------------------------------------------------------------------------------------
def speed(args: argparse.Namespace, tmp: Path) -> None:
    with MockProcess({"latency": args.latency, "now": NOW}) as mock:
        env = env_for(mock.url)
        local = tmp / "zips"
        local.mkdir()
        for month in range(1, 13):  # warm the mock's zip cache, and keep the zips for the local floor
            name = f"{args.symbol}-1m-{args.year}-{month:02d}.zip"
            with open(local / name, "wb") as f:
                import urllib.request

                with urllib.request.urlopen(f"{mock.url}/data/spot/monthly/klines/{args.symbol}/1m/{name}",
                                            timeout=300) as r:
                    f.write(r.read())
        contenders: dict[str, tuple[list[str], dict[str, str]]] = {
            "floor": ([sys.executable, "-c", FLOOR, mock.url, args.symbol, str(args.year), str(args.workers),
                       str(tmp / "floor.csv"), "-"], {}),
            "floor, local": ([sys.executable, "-c", FLOOR, mock.url, args.symbol, str(args.year), str(args.workers),
                              str(tmp / "floor-local.csv"), str(local)], {}),
            "forge": (forge_cmd(year_args(args.symbol, args.year, args.workers, tmp / "forge.csv")),
                      {**env, "FORGE_BINANCE_ARCHIVE_PARSER": "python"}),
            "forge, pyarrow": (forge_cmd(year_args(args.symbol, args.year, args.workers, tmp / "forge-pa.csv")),
                               {**env, "FORGE_BINANCE_ARCHIVE_PARSER": "pyarrow"}),
        }
        if args.baseline:
            contenders["forge, before"] = (forge_cmd(year_args(args.symbol, args.year, args.workers,
                                                               tmp / "before.csv")),
                                           {**env, "PYTHONPATH": pythonpath(args.baseline)})
        times: dict[str, list[dict[str, Any]]] = {k: [] for k in contenders}
        run(contenders["forge"][0], contenders["forge"][1])  # a warm-up: page cache, the mock's REST routes
        _children_cpu()
        for _ in range(args.repeat):
            for name, (cmd, extra) in contenders.items():
                result = run(cmd, extra)
                if result["code"] != 0:
                    raise SystemExit(f"{name} failed ({result['code']}): {result['err'][-2000:]}")
                times[name].append(result)
    outputs = {name: sha(tmp / f) for name, f in (("floor", "floor.csv"), ("floor, local", "floor-local.csv"),
                                                  ("forge", "forge.csv"), ("forge, pyarrow", "forge-pa.csv"),
                                                  ("forge, before", "before.csv"))
               if name in times}
    same = len(set(outputs.values())) == 1
    floor = median([r["wall"] for r in times["floor"]])
    floor_local = median([r["wall"] for r in times["floor, local"]])
    print(f"\n## 1. {args.symbol} {args.year}, 1m, archive into CSV: {args.workers} workers, mock latency "
          f"{args.latency * 1000:.0f} ms, median of {args.repeat} interleaved rounds; load {load()}")
    print(f"{'contender':<16} {'wall s':>8} {'cpu s':>7} {'peak MiB':>9} {'x floor':>8} {'x floor,local':>14}")
    for name, results in times.items():
        wall = median([r["wall"] for r in results])
        cpu = median([r["cpu"] for r in results])
        rss = median([peak(r) for r in results]) if name.startswith("forge") else float("nan")
        print(f"{name:<16} {wall:>8.2f} {cpu:>7.2f} {rss:>9.0f} {wall / floor:>8.2f} {wall / floor_local:>14.2f}")
    if "forge, before" in times:
        print(f"forge before/after (wall): {median([r['wall'] for r in times['forge, before']]) / median([r['wall'] for r in times['forge']]):.2f}x")
    print(f"outputs byte-identical: {same} ({', '.join(f'{k} {v[:12]}' for k, v in outputs.items())})")
    forge = median([r['wall'] for r in times['forge']])
    print("target: forge <= 1.5x floor: " + ("met" if forge <= 1.5 * floor else "MISSED")
          + "; <= 1.5x floor, local (polars from the zips on disk, the issue's own floor): "
          + ("met" if forge <= 1.5 * floor_local else "MISSED"))


# -- 2. memory -----------------------------------------------------------------------------------
RANGES = {"month": ("2024-03-01", "2024-03-31"), "year": ("2024-01-01", "2024-12-31"),
          "3 years": ("2022-01-01", "2024-12-31")}


def rss(args: argparse.Namespace, tmp: Path) -> None:
    workers = [int(w) for w in args.rss_workers.split(",")]
    sinks = args.sinks.split(",")
    server = None
    rows: list[tuple[str, str, int, float, float, int]] = []
    with MockProcess({"latency": args.latency, "now": NOW}) as mock:
        env = env_for(mock.url)
        if "postgres" in sinks:
            try:
                from forge_core.testing import pgserver

                server = pgserver.start()
            except Exception as exc:  # noqa: BLE001 - a benchmark without PostgreSQL still runs
                print(f"(PostgreSQL skipped: {exc})")
                sinks.remove("postgres")
        try:
            for label, (start, end) in RANGES.items():
                if label not in args.ranges.split(","):
                    continue
                for sink in sinks:
                    for w in workers:
                        out = tmp / f"rss-{label.replace(' ', '')}-{sink}-{w}"  # a fresh output each run
                        cmd = year_args(args.symbol, 0, w, out / "x.csv", mode=args.rss_mode, start=start, end=end)
                        cmd = cmd[: cmd.index("--output")] + ["-q"]
                        extra = dict(env)
                        if sink == "csv":
                            cmd += ["--output", str(out / "x.csv")]
                        elif sink == "parquet":
                            cmd += ["--sink", "parquet", "--root", str(out / "pq")]
                        else:
                            assert server is not None
                            cmd += ["--sink", "postgres", "--table", f"rss_{label[0]}_{w}"]
                            extra["FORGE_DATABASE_URL"] = server.url
                        result = run(forge_cmd(cmd, tuple(args.without)),
                                     {**extra, "FORGE_BINANCE_ARCHIVE_PARSER": args.parser})
                        mib = peak(result)
                        rows.append((label, sink, w, mib, result["wall"], result["code"]))
                        if result["code"] != 0:
                            print(f"  {label} {sink} {w}: exit {result['code']}: {result['err'][-500:]}")
        finally:
            if server is not None:
                server.stop()
    without = f", without {', '.join(args.without)}" if args.without else ""
    path = "archive path" if args.rss_mode == "archive" else f"{args.rss_mode} path"
    print(f"\n## 2. Peak RSS of forge run, {path} ({args.symbol} 1m, {args.parser} parser{without}); "
          f"load {load()}")
    print(f"{'range':<8} {'sink':<9} {'workers':>7} {'peak MiB':>9} {'wall s':>7}")
    for label, sink, w, mib, wall, code in rows:
        print(f"{label:<8} {sink:<9} {w:>7} {mib:>9.0f} {wall:>7.1f}" + ("" if code == 0 else f"  exit {code}"))
    worst = max((r[3] for r in rows if r[5] == 0), default=float("nan"))
    failed = sum(1 for r in rows if r[5] != 0)
    print(f"worst {worst:.0f} MiB; target < 120 MiB: " + ("met" if worst < 120 and not failed else "MISSED")
          + (f" ({failed} runs failed)" if failed else ""))


# -- 3. missing archive files ----------------------------------------------------------------------
def missing(args: argparse.Namespace, tmp: Path) -> None:
    names = [f"{args.symbol}-1m-{args.year}-{m:02d}.zip" for m in range(1, 13)]
    from datetime import date, timedelta

    day = date(args.year, 1, 1)
    while day.year == args.year:
        names.append(f"{args.symbol}-1m-{day.isoformat()}.zip")
        day += timedelta(days=1)
    runs = [("auto, files missing", "auto", {}), ("rest", "rest", {})]
    if args.baseline:
        runs.append(("auto, before", "auto", {"PYTHONPATH": pythonpath(args.baseline)}))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in runs}
    stats: dict[str, dict[str, int]] = {}
    with MockProcess({"latency": args.latency, "now": NOW, "extra": {"archive_missing": names}}) as mock:
        env = env_for(mock.url)
        # a warm-up: the mock's first pass over a range is slower than the next ones
        run(forge_cmd(year_args(args.symbol, args.year, args.workers, tmp / "m-warm.csv", mode="rest")), env)
        for _ in range(args.repeat):
            for name, mode, extra in runs:
                mock.reset()
                out = tmp / f"m-{mode}{'-before' if extra else ''}.csv"
                result = run(forge_cmd(year_args(args.symbol, args.year, args.workers, out, mode=mode)),
                             {**env, **extra})
                if result["code"] != 0:
                    raise SystemExit(f"{name} failed: {result['err'][-2000:]}")
                results[name].append(result)
                got = get_json(mock.url + "/mock/stats")
                stats[name] = {"rest": int(got.get("binance.spot.requests", 0)),
                               "archive": int(got.get("archive.404", 0)) + int(got.get("archive.zip", 0))
                               + int(got.get("archive.checksum", 0)),
                               "warnings": result["err"].count("[warning"),
                               "lines": len(result["err"].strip().splitlines())}
    same = sha(tmp / "m-auto.csv") == sha(tmp / "m-rest.csv")
    rest_wall = median([r["wall"] for r in results["rest"]])
    print(f"\n## 3. Missing archive files: every {args.year} file of {args.symbol} 1m 404s; "
          f"{args.workers} workers, median of {args.repeat}; load {load()}")
    print(f"{'run':<20} {'wall s':>7} {'REST req':>9} {'archive req':>12} {'stderr lines':>13}")
    for name, rs in results.items():
        s = stats[name]
        print(f"{name:<20} {median([r['wall'] for r in rs]):>7.2f} {s['rest']:>9} {s['archive']:>12} {s['lines']:>13}")
    auto, rest = stats["auto, files missing"], stats["rest"]
    req = auto["rest"] / rest["rest"]
    total = (auto["rest"] + auto["archive"]) / rest["rest"]
    wall = median([r["wall"] for r in results["auto, files missing"]]) / rest_wall
    print(f"REST requests {req:.3f}x, all requests (archive 404s too) {total:.3f}x, wall {wall:.2f}x of --archive rest; "
          f"outputs byte-identical: {same}")
    print("targets: requests <= 1.01x " + ("met" if req <= 1.01 else "MISSED") + ", wall <= 1.1x "
          + ("met" if wall <= 1.1 else "MISSED"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbol", default="BTCUSDT")
    parser.add_argument("--year", type=int, default=2024)
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="default: Forge's own")
    parser.add_argument("--latency", type=float, default=0.05, help="mock seconds per response")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("speed", "rss", "missing"), action="append")
    parser.add_argument("--baseline", help="another source tree to time as 'forge, before'")
    parser.add_argument("--rss-workers", default="1,4,8,16")
    parser.add_argument("--ranges", default="month,year,3 years")
    parser.add_argument("--rss-mode", default="archive", choices=("archive", "rest", "auto"),
                        help="--archive mode of the RSS runs")
    parser.add_argument("--sinks", default="csv,parquet,postgres")
    parser.add_argument("--parser", default="python", choices=("python", "pyarrow"),
                        help="archive CSV parser for the RSS runs")
    parser.add_argument("--without", action="append", default=[], metavar="MODULE",
                        help="RSS runs as on an install without MODULE (e.g. pandas, which pyarrow imports "
                             "when it is there: the development install has it)")
    args = parser.parse_args()
    parts = args.only or ["speed", "rss", "missing"]
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            {"speed": speed, "rss": rss, "missing": missing}[part](args, Path(tmp))
    print(f"\nload average at the end: {load()} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
