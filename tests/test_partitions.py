"""Partitions (series x month): stable keys, plans, and many processes running them into one
PostgreSQL table through one shared rate budget, with the exact result of one sequential run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from forge_core import UsageError
from forge_core.partitions import Partition, parse_key, plan, read_keys
from forge_core.times import parse_range
from forge_mock_exchange import MockConfig, MockExchange
from forge_mock_exchange.expected import binance_rows

NOW = 1742034030456


def test_keys_are_stable_and_bad_keys_are_one_clear_line(tmp_path):
    p = parse_key("binance:spot:BTCUSDT:1m:2024-03")
    assert p == Partition("binance", "spot", "BTCUSDT", "1m", "2024-03") and p.key == "binance:spot:BTCUSDT:1m:2024-03"
    assert (p.start, p.end) == (1709251200000, 1711929600000) and p.slots == 31 * 1440
    for bad in ("binance:spot:BTCUSDT:1m:2024-13", "binance:BTCUSDT:1m:2024-03", "binance:spot:BTCUSDT:7m:2024-03"):
        with pytest.raises(UsageError, match="bad partition key"):
            parse_key(bad)
    (tmp_path / "keys.txt").write_text("# the first quarter\nokx:-:BTC-USDT:1h:2024-01\nokx:-:BTC-USDT:1h:2024-02\n")
    assert [k.key for k in read_keys([f"@{tmp_path / 'keys.txt'}", "okx:-:BTC-USDT:1h:2024-01"])] == [
        "okx:-:BTC-USDT:1h:2024-01", "okx:-:BTC-USDT:1h:2024-02"]


def test_a_plan_covers_every_month_the_range_touches():
    start, end = parse_range("2023-12-15", "2024-02-01")
    keys = [p.key for p in plan("binance", "usdm", ["BTCUSDT", "ETHUSDT"], "1h", start, end)]
    assert keys == [f"binance:usdm:{s}:1h:{m}" for s in ("BTCUSDT", "ETHUSDT") for m in ("2023-12", "2024-01", "2024-02")]


WORKER = """
import sys
from forge_core.partitions import read_keys, run
keys = read_keys(sys.argv[3].split(","))
run(keys, [("postgres", {"database_url": sys.argv[1], "table": sys.argv[2]})], rate_budget=sys.argv[1], workers=4)
"""


def test_24_partitions_from_four_processes_share_one_budget_and_give_the_exact_table(pg_url, db):
    table = "partitioned_" + str(os.getpid())
    db.execute(f'DROP TABLE IF EXISTS "{table}"')
    keys = [f"binance:spot:{s}:1h:2023-{m:02d}" for s in ("BTCUSDT", "ETHUSDT") for m in range(1, 13)]
    # 60 weight per 10 s: the four processes need ~150, so they must pace themselves together
    config = MockConfig(now=NOW, binance_weight_limit=60, weight_window=10)
    with MockExchange(config) as mock:
        env = {**os.environ, "FORGE_BINANCE_URL": mock.url}
        shares = [keys[i * 6:(i + 1) * 6] for i in range(4)]  # six months of one symbol each
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, pg_url, table, ",".join(share)], env=env,
                                  stderr=subprocess.PIPE, text=True) for share in shares]
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        stats = mock.stats
        assert stats["binance.418"] == 0
        assert stats["binance.429"] <= 3
    lo, hi = parse_range("2023-01-01", "2023-12-31")
    db.execute(f'SELECT symbol, open_ts, close::text FROM "{table}" ORDER BY symbol, open_ts')
    got = db.fetchall()
    want = [(s, r[3], r[8]) for s in ("BTCUSDT", "ETHUSDT") for r in binance_rows(s, "1h", lo, hi, NOW)]
    assert len(got) == len(want) and [(s, t) for s, t, _ in got] == [(s, t) for s, t, _ in want]
    assert [float(c) for *_, c in got] == [float(c) for *_, c in want]
    db.execute(f'DROP TABLE "{table}"')


def test_consecutive_months_of_the_same_symbols_run_as_one_range():
    from forge_core.partitions import groups

    keys = read_keys(["binance:spot:A:1h:2024-01,binance:spot:A:1h:2024-02,binance:spot:B:1h:2024-02",
                      "binance:spot:A:1h:2024-04"])
    got = [(g[3], g[4], g[5]) for g in groups(keys)]
    jan, feb, mar, apr, may = (parse_key(f"x:-:A:1h:2024-{m:02d}").start for m in (1, 2, 3, 4, 5))
    assert got == [(["A"], jan, feb), (["A", "B"], feb, mar), (["A"], apr, may)]
