"""``forge verify`` and ``forge repair`` on a symbol-year of 1m candles in PostgreSQL, against
downloading and re-loading that year, all measured in the same run.

The mock runs in its own process (``--latency`` per response, clock frozen at 2025-03-15), with
the archive warmed by a first pass (a real archive serves static files). PostgreSQL is a
throwaway durable server (``tests/pgserver.py``) unless ``--database-url`` is given.

- ``download``: the year through a :class:`~forge_core.Pipeline` from the archive into a sink
  that drops the rows: what fetching costs;
- ``verify``: ``forge verify`` of the intact year (digests in SQL, the year's archive files
  digested from their bytes, compared), with the bytes the integrity queries returned and the
  table/index blocks the server touched; then again, when the ledger knows the files' sha256;
- ``repair, 1% scattered``: every 100th candle deleted, then ``forge repair`` (the ledger knows
  the months from the verify);
- ``repair, 1% clustered``: the same number of candles deleted as 6 runs, then repair;
- ``full re-load``: the same 1% deleted, then ``forge run`` of the year into the table.

    python bench/bench_verify.py                  # BTCUSDT 2024, 4 workers, 50 ms latency
    python bench/bench_verify.py --latency 0 --database-url postgresql://me@localhost/bench
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from forge_binance import BinanceSource  # noqa: E402
from forge_core import Batch, Pipeline, Sink  # noqa: E402
from forge_core.integrity.engine import Checker  # noqa: E402
from forge_core.times import parse_range  # noqa: E402
from forge_sink_postgres import PostgresSink  # noqa: E402

NOW = 1742034030456
SERVE = """
import sys, time
from forge_mock_exchange import MockConfig, MockExchange
mock = MockExchange(MockConfig(latency=float(sys.argv[1]), now=int(sys.argv[2]))).start()
print(mock.url, flush=True)
time.sleep(7200)
"""


class Drop(Sink):
    name = "drop"

    def write(self, batch: Batch) -> None:
        pass


def timed(fn: Any) -> tuple[float, Any]:
    began = time.monotonic()
    out = fn()
    return time.monotonic() - began, out


def blocks(cur: Any, table: str) -> int:
    cur.execute("SELECT coalesce(heap_blks_read,0) + coalesce(heap_blks_hit,0) + coalesce(idx_blks_read,0) "
                "+ coalesce(idx_blks_hit,0) FROM pg_statio_user_tables WHERE relname = %s", (table,))
    row = cur.fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--year", type=int, default=2024)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--database-url", default=os.environ.get("FORGE_DATABASE_URL"))
    args = parser.parse_args()
    url, server = args.database_url, None
    if not url:
        import pgserver

        server = pgserver.start(durable=True)
        url = server.url
    mock = subprocess.Popen([sys.executable, "-c", SERVE, str(args.latency), str(NOW)], stdout=subprocess.PIPE, text=True)
    table = f"bench_verify_{uuid.uuid4().hex[:8]}"
    symbol, frm, to = "BTCUSDT", f"{args.year}-01-01", f"{args.year}-12-31"
    start, end = parse_range(frm, to)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    cur = conn.cursor()
    try:
        mock_url = mock.stdout.readline().strip()  # type: ignore[union-attr]
        opts = {"base_url": mock_url, "archive_url": mock_url, "archive": "auto"}

        def download() -> int:
            return Pipeline(("binance", opts), [Drop()], workers=args.workers).run([symbol], "1m", frm, to).total

        cold, _ = timed(download)
        t_download, rows = timed(download)
        t_load, _ = timed(lambda: Pipeline(("binance", opts), [("postgres", {"database_url": url, "table": table})],
                                           workers=args.workers).run([symbol], "1m", frm, to))
        cur.execute(f"ANALYZE {table}")

        def checker(repair: bool) -> tuple[Checker, Any]:
            store = PostgresSink(database_url=url, table=table).integrity()
            return Checker(store, lambda: BinanceSource(**opts), repair=repair, workers=args.workers), store

        def check(repair: bool) -> tuple[Any, Any]:
            chk, store = checker(repair)
            try:
                return chk.run(symbol, "1m", start, end), store
            finally:
                store.close()

        b0 = blocks(cur, table)
        t_verify, (report, store) = timed(lambda: check(False))
        touched = blocks(cur, table) - b0
        verify_bytes = store.bytes_received
        assert report.differences == 0, report.as_json()["counts"]
        t_download2, _ = timed(download)
        t_reverify, (again, store2) = timed(lambda: check(False))
        reverify_bytes = store2.bytes_received
        assert again.differences == 0
        digest_store = PostgresSink(database_url=url, table=table).integrity()
        t_digest, _ = timed(lambda: digest_store.partitions("binance", symbol, "1m", start, end))
        digest_bytes = digest_store.bytes_received
        digest_store.close()

        scattered = f"DELETE FROM {table} WHERE (open_ts / 60000) % 100 = 37"
        cur.execute(scattered)
        n_scattered = cur.rowcount
        t_rep_s, (rep_s, _) = timed(lambda: check(True))
        assert rep_s.written == n_scattered, (rep_s.written, n_scattered)

        run_len = n_scattered // 6
        month = 31 * 86_400_000
        for k in range(6):
            lo = start + k * 2 * month + 86_400_000 * 3
            cur.execute(f"DELETE FROM {table} WHERE open_ts >= %s AND open_ts < %s", (lo, lo + run_len * 60_000))
        cur.execute(f"SELECT count(*) FROM {table}")
        t_rep_c, (rep_c, _) = timed(lambda: check(True))
        guided = sum(1 for p in rep_c.partitions if p.status == "repaired")

        cur.execute(scattered)
        t_full, _ = timed(lambda: Pipeline(("binance", opts), [("postgres", {"database_url": url, "table": table})],
                                           workers=args.workers).run([symbol], "1m", frm, to))
        t_verify2, (final, _) = timed(lambda: check(False))
        assert final.differences == 0
    finally:
        cur.execute(f"DROP TABLE IF EXISTS {table}")
        cur.execute("DELETE FROM forge_ledger WHERE target = %s", (table,)) if _has_ledger(cur) else None
        conn.close()
        mock.terminate()
        mock.wait()
        if server is not None:
            server.stop()

    print(f"\nBTCUSDT 1m {args.year} ({rows:,} candles), {args.workers} workers, mock latency "
          f"{args.latency * 1000:.0f} ms (own process), PostgreSQL {'throwaway' if server else 'given'}")
    print(f"archive cold pass (mock building the zips)     {cold:8.2f} s")
    print(f"download the year (archive, warm)              {t_download:8.2f} s")
    print(f"forge run into PostgreSQL (fresh table)        {t_load:8.2f} s")
    print(f"verify intact year, first (no ledger)          {t_verify:8.2f} s   {t_verify / t_download:.2f}x download "
          f"(target <= 1.5x); {verify_bytes:,} bytes from the database")
    print(f"download again                                 {t_download2:8.2f} s")
    print(f"verify again (ledger: .CHECKSUMs unchanged)    {t_reverify:8.2f} s   {t_reverify / t_download2:.2f}x download; "
          f"{reverify_bytes:,} bytes from the database")
    print(f"  of which store digests in SQL                {t_digest:8.2f} s   {digest_bytes:,} bytes returned "
          f"for 12 months; verify touched {touched:,} table+index blocks ({touched * 8192 / 1e6:.0f} MB) in the server")
    print(f"repair 1% scattered ({n_scattered:,} rows)          {t_rep_s:8.2f} s   full re-load / repair = "
          f"{t_full / t_rep_s:.1f}x (target >= 10x)")
    print(f"repair 1% clustered (6 runs of {run_len:,})         {t_rep_c:8.2f} s   full re-load / repair = "
          f"{t_full / t_rep_c:.1f}x; {guided} partitions repaired from the ledger")
    print(f"full re-load of the year after 1% scattered    {t_full:8.2f} s")
    print(f"verify after all that                          {t_verify2:8.2f} s (clean)")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def _has_ledger(cur: Any) -> bool:
    cur.execute("SELECT to_regclass('forge_ledger')")
    return cur.fetchone()[0] is not None


if __name__ == "__main__":
    main()
