"""Partitions from 1, 4 and 8 ``forge run --partition`` processes through one shared rate budget,
against the mock at Binance's real limit (6000 request weight per minute, epoch-aligned windows,
``X-MBX-USED-WEIGHT-1M``, 429 with Retry-After, a 418 ban after more), into one PostgreSQL table.

    python bench/bench_scale.py                  # ~6 minutes: 1/4/8 processes shared, 4/8 without, latency
    python bench/bench_scale.py --quick          # ~1 minute: tiny, for a look
    python bench/bench_scale.py --processes 4 --no-unshared --no-latency

Reports, per case: aggregate candles/s and weight/s against the weight bound (6000 per minute
= 100 weight/s, 50 klines requests/s), 429s and 418s, and whether the table is exact in size.
Spot klines weigh 2 whatever their ``limit``, so the runs ask pages of ``--page`` candles
(default 24): many cheap requests make the weight bound the bottleneck, not this machine's CPU
(``--page 1000`` measures full pages). The same partitions without the shared budget show the
429s and 418s it prevents. Then the acquire latency of the SQLite and PostgreSQL budgets (median,
p95): 1 and 8 processes reserving back to back (never refused), and 8 processes at 200
reservations per second together (twice Binance's request rate at weight 1). Ratios, not timings, are what carries over.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from common import MockProcess, get_json, machine  # noqa: E402

NOW = 1742034030456  # the mock's frozen exchange clock (2025-03-15): candles are deterministic
LIMIT = 6000  # Binance spot request weight per minute
RATE = LIMIT / 60  # weight per second

# the mock in its own process (own core, own GIL), with its weight log on /mock/weights
SERVE = """
import json, sys, time
from forge_mock_exchange.server import MockConfig, MockExchange, Response
mock = MockExchange(MockConfig(**json.loads(sys.argv[1])), port=int(sys.argv[2]), routes=["binance", "okx"])
mock.route("/mock/weights", lambda req: Response.json(list(mock.state.get("weights.spot.log", []))))
mock.start()
print(mock.url, flush=True)
while True:
    time.sleep(3600)
"""

# `forge run` with Binance pages of PAGE candles (the API takes any limit up to 1000)
FORGE_RUN = """
import sys
import forge_binance.source
forge_binance.source.MARKETS["spot"]["page"] = int(sys.argv[1])
from forge_core.cli import main
sys.exit(main(sys.argv[2:]))
"""

# one participant of the latency measurement: N reservations that never wait, each timed
ACQUIRE = """
import json, sys, time
from forge_core import budget
url, n, start_at, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
store = budget.open_store(url)
store.reserve("bench:warm", 1, 1e12, 60)  # connect and create before the clock starts
while time.time() < start_at:
    time.sleep(0.001)
times = []
for _ in range(n):
    began = time.perf_counter()
    store.reserve("bench:latency", 1, 1e12, 60)
    times.append(time.perf_counter() - began)
    if gap:
        time.sleep(gap)
store.close()
print(json.dumps(times))
"""


class Mock(MockProcess):
    """The mock in its own process with its weight log (SERVE)."""

    def weights(self) -> list[tuple[float, int]]:
        return sorted((t, w) for t, w in get_json(self.url + "/mock/weights"))


def beyond_the_rate(log: list[tuple[float, int]], rate: float) -> float:
    """The most weight any interval holds beyond ``rate`` x its length."""
    best, spent, lowest = 0.0, 0.0, float("inf")
    for t, w in log:
        lowest = min(lowest, spent - rate * t)
        spent += w
        best = max(best, spent - rate * t - lowest)
    return best


def busiest_minute(log: list[tuple[float, int]]) -> int:
    """The most weight in one epoch-aligned minute (what Binance counts)."""
    per: dict[int, int] = {}
    for t, w in log:
        per[int(t // 60)] = per.get(int(t // 60), 0) + w
    return max(per.values(), default=0)


def expected_rows(symbols: list[str], timeframe: str, months: list[str], exchange: str = "binance") -> int:
    from forge_core.partitions import Partition
    from forge_mock_exchange.expected import binance_rows
    from forge_mock_exchange.expected_okx import okx_rows

    lo = Partition("binance", "spot", "", timeframe, months[0]).start
    hi = Partition("binance", "spot", "", timeframe, months[-1]).end
    rows = binance_rows if exchange == "binance" else okx_rows
    return sum(len(rows(s, timeframe, lo, hi, NOW)) for s in symbols)


def run_case(args: argparse.Namespace, pg_url: str, processes: int, shared: bool, symbols: list[str],
             months: list[str], want: int, tmp: Path, exchange: str = "binance") -> dict[str, Any]:
    import psycopg2

    label = (f"{'OKX ' if exchange == 'okx' else ''}{processes} process{'es' if processes > 1 else ''}, "
             f"{'shared budget' if shared else 'no shared budget'}")
    table = f"bench_scale_{exchange}_{processes}_{'shared' if shared else 'alone'}"
    timeframe, market = (args.timeframe, "spot") if exchange == "binance" else ("15m", "-")
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS "{table}"')
    # whole symbols per process, else months: every process gets a share
    keys_all = [f"{exchange}:{market}:{s}:{timeframe}:{m}" for s in symbols for m in months]
    shares = ([[k for k in keys_all if k.split(":")[2] in symbols[i::processes]] for i in range(processes)]
              if processes <= len(symbols) else [keys_all[i::processes] for i in range(processes)])
    env = {**os.environ, "FORGE_EGRESS": f"bench-{time.time_ns()}"}  # a fresh budget key per case
    with Mock({"now": NOW, "latency": args.latency}, SERVE) as mock:
        env["FORGE_BINANCE_URL"] = env["FORGE_OKX_URL"] = mock.url
        procs = []
        began = time.monotonic()
        for i, share in enumerate(shares):
            keys = tmp / f"{table}-{i}.txt"
            keys.write_text("".join(k + "\n" for k in share))
            cmd = [sys.executable, "-c", FORGE_RUN, str(args.page), "run", "--partition", f"@{keys}",
                   "--sink", "postgres", "--database-url", pg_url, "--table", table, "--workers", str(args.workers),
                   "-q", *(["--rate-budget", pg_url] if shared else [])]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        errors = []
        for proc in procs:
            _, err = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
        wall = time.monotonic() - began
        stats, log = mock.stats(), mock.weights()
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        rows = 0
        if cur.fetchone()[0]:
            cur.execute(f'SELECT count(*) FROM "{table}"')
            rows = cur.fetchone()[0]
            cur.execute(f'DROP TABLE "{table}"')
    if exchange == "okx":
        return {"case": label, "processes": processes, "shared": shared, "rows": rows, "expected_rows": want,
                "exact_count": rows == want, "failed_processes": len(errors), "errors": sorted(set(errors))[:3],
                "wall_s": round(wall, 2), "requests": stats.get("okx.requests", 0),
                "http_429": stats.get("okx.429", 0) + stats.get("okx.50011", 0), "http_418": 0}
    span = log[-1][0] - log[0][0] if len(log) > 1 else wall
    weight = sum(w for _, w in log)
    candles = stats.get("binance.spot.candles", 0)
    bound_candles = RATE / 2 * args.page  # every request a full page of weight 2
    out = {
        "case": label, "processes": processes, "shared": shared, "rows": rows, "expected_rows": want,
        "exact_count": rows == want, "failed_processes": len(errors), "errors": sorted(set(errors))[:3],
        "wall_s": round(wall, 2), "span_s": round(span, 2), "weight": weight,
        "weight_per_s": round(weight / span, 1), "weight_ratio": round(weight / span / RATE, 3),
        "candles_per_s": round(candles / span, 1), "bound_candles_per_s": bound_candles,
        "candle_ratio": round(candles / span / bound_candles, 3),
        "requests": stats.get("binance.spot.requests", 0), "exchangeInfo": stats.get("binance.spot.exchangeInfo", 0),
        "http_429": stats.get("binance.429", 0), "http_418": stats.get("binance.418", 0),
        "busiest_minute": busiest_minute(log), "beyond_rate": round(beyond_the_rate(log, RATE), 1),
    }
    return out


def latency(url: str, processes: int, n: int, rate: float = 0.0) -> dict[str, Any]:
    """``processes`` participants reserving ``n`` times each, back to back (``rate`` 0: the
    worst contention) or at ``rate`` reservations per second together."""
    start_at = time.time() + 3.0  # every participant connected and warm by then
    gap = processes / rate if rate else 0.0
    procs = [subprocess.Popen([sys.executable, "-c", ACQUIRE, url, str(n), str(start_at), str(gap)],
                              stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    times: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"acquire participant failed on {url.split(':')[0]}")
        times += json.loads(out)
    times.sort()
    return {"processes": processes, "acquires": len(times),
            "median_ms": round(statistics.median(times) * 1000, 3),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 3),
            "max_ms": round(times[-1] * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", default="1,4,8", help="process counts with the shared budget")
    parser.add_argument("--unshared", default="4,8", help="process counts without it")
    parser.add_argument("--no-unshared", action="store_true")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--no-okx", action="store_true", help="skip OKX (no used-weight header) with and without")
    parser.add_argument("--symbols", type=int, default=8, help="test symbols T1USDT..TnUSDT")
    parser.add_argument("--months", type=int, default=12, help="months of 2023")
    parser.add_argument("--timeframe", default="1h")
    parser.add_argument("--page", type=int, default=24, help="candles per request (1..1000; weight 2 each)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.05, help="mock latency per response, s")
    parser.add_argument("--acquires", type=int, default=2000, help="per process, latency measurement")
    parser.add_argument("--latency-processes", default="1,8", help="participants of the latency measurement")
    parser.add_argument("--database-url", default=os.environ.get("FORGE_DATABASE_URL"))
    parser.add_argument("--quick", action="store_true", help="2 symbols x 3 months, 1 and 4 processes")
    parser.add_argument("--out", help="also write the results as JSON to this file")
    args = parser.parse_args()
    if args.quick:
        args.symbols, args.months, args.processes, args.unshared, args.acquires = 2, 3, "1,4", "4", 200

    symbols = [f"T{i}USDT" for i in range(1, args.symbols + 1)]
    months = [f"2023-{m:02d}" for m in range(1, args.months + 1)]
    want = expected_rows(symbols, args.timeframe, months)
    server = None
    pg_url = args.database_url
    if not pg_url:
        from forge_core.testing import pgserver

        server = pgserver.start(durable=True)
        pg_url = server.url
    results: dict[str, Any] = {"machine": machine(), "load": os.getloadavg(), "runs": [], "latency": {},
                               "setup": {"symbols": len(symbols), "months": len(months), "partitions":
                                         len(symbols) * len(months), "timeframe": args.timeframe,
                                         "page": args.page, "workers": args.workers, "mock_latency": args.latency,
                                         "limit": f"{LIMIT} weight/min"}}
    print(f"{len(symbols) * len(months)} partitions ({len(symbols)} symbols x {len(months)} months of "
          f"{args.timeframe}, pages of {args.page}, {want:,} candles); Binance's limit {LIMIT} weight/min "
          f"= {RATE:.0f} weight/s = {RATE / 2 * args.page:,.0f} candles/s; load {os.getloadavg()[0]:.1f}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cases = [(int(p), True) for p in args.processes.split(",") if p]
            if not args.no_unshared:
                cases += [(int(p), False) for p in args.unshared.split(",") if p]
            for processes, shared in cases:
                r = run_case(args, pg_url, processes, shared, symbols, months, want, Path(tmp))
                results["runs"].append(r)
                print(f"{r['case']:>36}: {r['candles_per_s']:>9,.0f} candles/s = {r['candle_ratio']:.2f} of the "
                      f"bound ({r['weight_per_s']:.1f} weight/s = {r['weight_ratio']:.2f} of {RATE:.0f}); "
                      f"429: {r['http_429']}, 418: {r['http_418']}; rows {r['rows']:,}/{want:,}; "
                      f"failed processes {r['failed_processes']}; {r['span_s']:.1f} s of requests "
                      f"({r['wall_s']:.1f} s wall); busiest minute {r['busiest_minute']} weight"
                      + (f"; {r['errors'][0][:100]}" if r["errors"] else ""))
            if not args.no_okx:  # OKX reports no count: each process only knows its own requests
                okx_symbols, okx_months = ["BTC-USDT", "ETH-USDT"], [f"2023-{m:02d}" for m in range(1, 5)]
                okx_want = expected_rows(okx_symbols, "15m", okx_months, "okx")
                for shared in (True, False):
                    r = run_case(args, pg_url, 4, shared, okx_symbols, okx_months, okx_want, Path(tmp), "okx")
                    results["runs"].append(r)
                    print(f"{r['case']:>36}: {r['requests']} requests of OKX history (20 per 2 s per IP), "
                          f"429: {r['http_429']}; rows {r['rows']:,}/{okx_want:,}; failed processes "
                          f"{r['failed_processes']}; {r['wall_s']:.1f} s wall"
                          + (f"; {r['errors'][0][:100]}" if r["errors"] else ""))
        if not args.no_latency:
            for name in ("sqlite", "postgresql"):
                for n, rate in [(int(p), 0.0) for p in args.latency_processes.split(",") if p] + [(8, 2 * RATE)]:
                    url = f"sqlite:///{tempfile.mkdtemp()}/budget.db" if name == "sqlite" else pg_url
                    lat = latency(url, n, args.acquires if not rate else min(args.acquires, 250), rate)
                    how = f"{n} process{'es' if n > 1 else ''}" + (f" at {rate:.0f}/s" if rate else ", back to back")
                    results["latency"][f"{name}, {how}"] = lat
                    print(f"{name:>10} budget, {how}, {lat['acquires']} acquires: median {lat['median_ms']:.3f} ms, "
                          f"p95 {lat['p95_ms']:.3f} ms, max {lat['max_ms']:.1f} ms")
    finally:
        if server is not None:
            server.stop()
    results["load_end"] = os.getloadavg()
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
