"""Benchmark of the PostgreSQL sink against raw ``COPY``, measured in the same run.

    python bench/bench_postgres.py                     # throwaway durable server (fsync on)
    python bench/bench_postgres.py --rows 500000 --repeat 3
    FORGE_DATABASE_URL=postgresql://me@localhost/bench python bench/bench_postgres.py

Every phase gets the same 500k candles as Binance rows (14 columns, prices as decimal strings),
in 1000-row batches, committed every 50k rows as ``forge run`` does, into a table of the
default schema (numeric prices, primary key ``source, symbol, timeframe, open_ts``):

- ``raw COPY``: encode each 50k rows to COPY text (plain ``"\\t".join``) and ``COPY`` them
  straight into an empty table: the ceiling for any loader, no conflict handling at all.
- ``sink fresh``: :class:`PostgresSink` upserting into an empty table.
- ``sink re-run``: the same rows again: every row conflicts, values unchanged.
- ``sink re-run, changed``: every row conflicts and every close price differs (full rewrite).

Each phase runs ``--repeat`` times on a freshly emptied table (after a ``CHECKPOINT``) and the
median is reported. The targets are fresh >= 0.7x and re-run >= 0.4x raw COPY.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from forge_core import Batch, RunInfo  # noqa: E402
from forge_sink_postgres import PostgresSink  # noqa: E402

COLUMNS = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume",
           "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume")
BATCH = 1000
COMMIT_EVERY = 50_000


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


def reset(url: str, table: str) -> None:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute(f"""CREATE TABLE {table} (source text NOT NULL, symbol text NOT NULL,
            timeframe text NOT NULL, open_ts bigint NOT NULL, end_ts bigint NOT NULL,
            open numeric NOT NULL, high numeric NOT NULL, low numeric NOT NULL,
            close numeric NOT NULL, volume numeric NOT NULL,
            PRIMARY KEY (source, symbol, timeframe, open_ts))""")
    checkpoint(url)


def checkpoint(url: str) -> None:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
        cur.execute("CHECKPOINT")
    conn.close()


def raw_copy(url: str, rows: list[tuple], table: str) -> None:
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        for i in range(0, len(rows), COMMIT_EVERY):
            text = "".join("\t".join(map(str, r[:10])) + "\n" for r in rows[i:i + COMMIT_EVERY])
            cur.copy_expert(f"COPY {table} FROM STDIN", io.BytesIO(text.encode()), size=1 << 20)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=os.environ.get("FORGE_DATABASE_URL"))
    args = parser.parse_args()

    server = None
    url = args.database_url
    if not url:
        import pgserver

        server = pgserver.start(durable=True)
        url = server.url
    try:
        rows = make_rows(args.rows)
        changed = make_rows(args.rows, bump=1)
        times: dict[str, list[float]] = {"raw COPY": [], "sink fresh": [], "sink re-run": [],
                                         "sink re-run, changed": []}
        for _ in range(args.repeat):
            reset(url, "bench_raw")
            times["raw COPY"].append(timed(lambda: raw_copy(url, rows, "bench_raw")))
            assert count(url, "bench_raw") == len(rows)
            reset(url, "bench_sink")
            times["sink fresh"].append(timed(lambda: sink_run(url, rows, "bench_sink")))
            assert count(url, "bench_sink") == len(rows)
            checkpoint(url)
            times["sink re-run"].append(timed(lambda: sink_run(url, rows, "bench_sink")))
            checkpoint(url)
            times["sink re-run, changed"].append(timed(lambda: sink_run(url, changed, "bench_sink")))
            assert count(url, "bench_sink") == len(rows)
        base = statistics.median(times["raw COPY"])
        where = "throwaway server, fsync on" if server else "FORGE_DATABASE_URL"
        print(f"{args.rows} candles, {BATCH}-row batches, commit every {COMMIT_EVERY}, "
              f"median of {args.repeat} ({where})")
        print(f"{'phase':<24} {'seconds':>8} {'rows/s':>10} {'x raw COPY':>11}")
        for phase, values in times.items():
            t = statistics.median(values)
            print(f"{phase:<24} {t:8.2f} {args.rows / t:10,.0f} {base / t:11.2f}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
