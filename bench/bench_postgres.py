"""Benchmark of the PostgreSQL sink against its floors, measured in the same run.

    python bench/bench_postgres.py                     # throwaway durable server (fsync on)
    python bench/bench_postgres.py --rows 500000 --repeat 3
    FORGE_DATABASE_URL=postgresql://me@localhost/bench python bench/bench_postgres.py

Every phase gets the same candles as Binance rows (14 columns, prices as decimal strings), in
1000-row batches, committed every 50k rows as ``forge run`` does, into the sink's default table
(all 14 columns, numeric prices, primary key ``source, symbol, timeframe, open_ts``). Rows are
made in memory beforehand: no download, no parsing.

- ``raw COPY``: encode each 50k rows to COPY text (with the sink's own encoder, the fastest
  we have) and ``COPY`` them straight into an empty table, committing each: the floor of a
  fresh load.
- ``stage+join floor``: the same rows again into the loaded table the cheapest way to find
  that nothing changed: encode, ``COPY`` into a temporary stage, delete from it the rows equal
  to the table's (one join over the key range), commit; per 50k rows. The floor of an
  unchanged re-run.
- ``sink fresh``: :class:`PostgresSink` into an empty table (x raw COPY).
- ``sink re-run``: the same rows again, every row conflicting, values unchanged (x stage+join floor).
- ``sink re-run, changed``: every close price differs, every row rewritten (x raw COPY; first
  round only, it has no target).

Each of ``--repeat`` rounds times the two fresh loads back to back (each into an empty database,
after a ``CHECKPOINT``), then the two unchanged passes over the table the sink loaded, the order
of each pair alternating between rounds; a pair's ratio is taken within its round (the machine's
speed drifts between rounds) and the median of those ratios is judged. Targets (issue 18):
fresh >= 0.8x raw COPY, re-run >= 0.7x the stage+join floor.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from forge_core import Batch, RunInfo  # noqa: E402
from forge_sink_postgres import PostgresSink, copytext  # noqa: E402
from forge_sink_postgres.target import KNOWN_TYPES, default_table_ddl  # noqa: E402

COLUMNS = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume",
           "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume")
BATCH = 1000
COMMIT_EVERY = 50_000
PHASES = ("raw COPY", "stage+join floor", "sink fresh", "sink re-run", "sink re-run, changed")
TARGETS = {"sink fresh": ("raw COPY", 0.8), "sink re-run": ("stage+join floor", 0.7),
           "sink re-run, changed": ("raw COPY", None)}


def make_rows(n: int, symbol: str = "BTCUSDT", bump: int = 0) -> list[tuple]:
    """``n`` 1m candles with realistic decimal strings; ``bump`` shifts every close price."""
    rows = []
    start = 1_600_000_000_000 - 1_600_000_000_000 % 60_000
    price = 3_000_000  # cents
    for i in range(n):
        ts = start + i * 60_000
        price += (i * 7919) % 41 - 20
        o, c = price, price + (i * 104729) % 31 - 15 + bump
        h, lo = max(o, c) + i % 13, min(o, c) - i % 11
        v = (i * 2654435761) % 10_000_000_000
        rows.append(("binance", symbol, "1m", ts, ts + 59_999, f"{o / 100:.8f}", f"{h / 100:.8f}",
                     f"{lo / 100:.8f}", f"{c / 100:.8f}", f"{v / 1e8:.8f}", f"{v * 300 / 1e8:.8f}",
                     i % 5000, f"{v / 2e8:.8f}", f"{v * 150 / 1e8:.8f}"))
    return rows


def connect(url: str, autocommit: bool = False):  # noqa: ANN201
    conn = psycopg2.connect(url)
    conn.autocommit = autocommit
    return conn


def reset(url: str, table: str) -> None:
    """The sink's default table, exactly as it creates it."""
    conn = connect(url, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in default_table_ddl(None, table, {c: KNOWN_TYPES[c] for c in COLUMNS}):
            cur.execute(statement)
    conn.close()
    checkpoint(url)


def checkpoint(url: str) -> None:
    conn = connect(url, autocommit=True)
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
        cur.execute("CHECKPOINT")
    conn.close()


def encode(rows: list[tuple]) -> bytes:
    """The sink's own (fastest) COPY encoder, so the floors differ from the sink only in SQL."""
    return copytext.encode(rows, range(len(COLUMNS))).encode()


def raw_copy(url: str, rows: list[tuple], table: str) -> None:
    conn = connect(url)
    with conn.cursor() as cur:
        for i in range(0, len(rows), COMMIT_EVERY):
            cur.copy_expert(f"COPY {table} FROM STDIN", io.BytesIO(encode(rows[i:i + COMMIT_EVERY])), size=1 << 20)
            conn.commit()
    conn.close()


def stage_join(url: str, rows: list[tuple], table: str) -> None:
    """COPY into a temporary stage and delete what the table holds already, equal: the least an
    unchanged re-run must do to find out that nothing changed."""
    rest = [c for c in COLUMNS if c not in ("source", "symbol", "timeframe", "open_ts")]
    equal = " AND ".join(f"s.{c} = t.{c}" for c in ("source", "symbol", "timeframe", "open_ts"))
    same = f"({', '.join('s.' + c for c in rest)}) IS NOT DISTINCT FROM ({', '.join('t.' + c for c in rest)})"
    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute(f"CREATE TEMP TABLE stage ON COMMIT DELETE ROWS AS SELECT * FROM {table} WITH NO DATA")
        conn.commit()
        for i in range(0, len(rows), COMMIT_EVERY):
            chunk = rows[i:i + COMMIT_EVERY]
            cur.copy_expert("COPY stage FROM STDIN", io.BytesIO(encode(chunk)), size=1 << 20)
            cur.execute("SET LOCAL enable_nestloop = off")
            cur.execute(f"DELETE FROM stage s USING {table} t WHERE t.symbol = %s AND t.open_ts BETWEEN %s AND %s "
                        f"AND {equal} AND {same}", (chunk[0][1], chunk[0][3], chunk[-1][3]))
            assert cur.rowcount == len(chunk)
            conn.commit()
    conn.close()


def sink_run(url: str, rows: list[tuple], table: str) -> PostgresSink:
    sink = PostgresSink(database_url=url, table=table)
    run = RunInfo("binance", "Binance", ("BTCUSDT",), "1m", rows[0][3], rows[-1][3] + 60_000, COLUMNS)
    sink.open(run)
    uncommitted = 0
    for i in range(0, len(rows), BATCH):
        chunk = rows[i:i + BATCH]
        sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, chunk))
        uncommitted += len(chunk)
        if uncommitted >= COMMIT_EVERY:
            sink.commit()
            uncommitted = 0
    sink.commit()
    sink.close(True)
    return sink


def timed(fn: Callable[[], object]) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def count(url: str, table: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table}")
        return cur.fetchone()[0]


def drop_all(url: str) -> None:
    """No bench table left: each timed load starts from the same empty database (a table left
    from the other phase would hold shared buffers and bias whichever phase runs second)."""
    conn = connect(url, autocommit=True)
    with conn.cursor() as cur:
        for table in ("bench_raw", "bench_sink"):
            cur.execute(f"DROP TABLE IF EXISTS {table}")
    conn.close()


def measure(url: str, n: int, repeat: int) -> dict[str, Any]:
    """``repeat`` rounds; each times the fresh pair (raw COPY, sink fresh) and the unchanged pair
    (stage+join floor, sink re-run) back to back, in alternating order, and the ratio of each
    pair is taken within its round: the median of those pair ratios is what the targets judge."""
    rows = make_rows(n)
    changed = make_rows(n, bump=1)
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    pairs: dict[str, list[float]] = {phase: [] for phase, (_, minimum) in TARGETS.items() if minimum is not None}
    for r in range(repeat):
        fresh = [("raw COPY", lambda: raw_copy(url, rows, "bench_raw")),
                 ("sink fresh", lambda: sink_run(url, rows, "bench_sink"))]
        for phase, fn in fresh if r % 2 == 0 else fresh[::-1]:
            drop_all(url)
            table = "bench_raw" if phase == "raw COPY" else "bench_sink"
            reset(url, table)
            times[phase].append(timed(fn))
            assert count(url, table) == n, phase
        # bench_sink holds the rows (loaded by the sink): both unchanged passes read it, neither changes it
        again: list[tuple[str, Callable[[], object]]] = [
            ("stage+join floor", lambda: stage_join(url, rows, "bench_sink")),
            ("sink re-run", lambda: _unchanged(url, rows))]
        reset(url, "bench_sink")
        sink_run(url, rows, "bench_sink")
        for phase, fn in again if r % 2 == 0 else again[::-1]:
            checkpoint(url)
            times[phase].append(timed(fn))
        if r == 0:  # informative only (no target): once
            checkpoint(url)
            times["sink re-run, changed"].append(timed(lambda: sink_run(url, changed, "bench_sink")))
            assert count(url, "bench_sink") == n
        for phase in pairs:
            base = TARGETS[phase][0]
            pairs[phase].append(times[base][-1] / times[phase][-1])
    medians = {phase: statistics.median(values) for phase, values in times.items()}
    ratios = {phase: statistics.median(values) for phase, values in pairs.items()}
    return {"rows": n, "repeat": repeat, "seconds": medians, "times": times, "pair_ratios": pairs,
            "ratio": ratios, "ratio_changed": medians["raw COPY"] / medians["sink re-run, changed"],
            "targets": {phase: minimum for phase, (_, minimum) in TARGETS.items() if minimum is not None},
            "met": {phase: ratios[phase] >= TARGETS[phase][1] for phase in ratios}}


def _unchanged(url: str, rows: list[tuple]) -> None:
    sink = sink_run(url, rows, "bench_sink")
    assert sink.changed == 0, sink.changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get("FORGE_DATABASE_URL"))
    parser.add_argument("--json", action="store_true", help="also print every number as one JSON line (last)")
    args = parser.parse_args()

    server = None
    url = args.database_url
    if not url:
        import pgserver

        server = pgserver.start(durable=True)
        url = server.url
    try:
        load = os.getloadavg()[0]
        r = measure(url, args.rows, args.repeat)
        where = "throwaway server, fsync on" if server else "FORGE_DATABASE_URL"
        print(f"{args.rows} candles, {BATCH}-row batches, commit every {COMMIT_EVERY}, median of {args.repeat} "
              f"rounds ({where}); load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
        print(f"{'phase':<24} {'seconds':>8} {'rows/s':>10} {'x baseline':>11}")
        for phase, t in r["seconds"].items():
            base, _ = TARGETS.get(phase, (phase, None))
            ratio = r["ratio"].get(phase, r["seconds"][base] / t)
            print(f"{phase:<24} {t:8.2f} {args.rows / t:10,.0f} {ratio:11.2f}")
        for phase, minimum in r["targets"].items():
            base = TARGETS[phase][0]
            spread = ", ".join(f"{x:.2f}" for x in r["pair_ratios"][phase])
            print(f"target: {phase} >= {minimum}x {base}: {r['ratio'][phase]:.2f}x (median of the pair ratios "
                  f"{spread}), {'met' if r['met'][phase] else 'missed'}")
        if args.json:
            print(json.dumps(r))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
