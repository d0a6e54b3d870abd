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


def test_forge_plan_and_forge_run_partition_through_the_cli(forge, exchange_env, in_tmp):
    import json as jsonlib

    from conftest import read_csv
    from forge_mock_exchange.expected import as_csv_lines

    out = forge("plan", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-15",
                "--to", "2024-02-10", "--json")
    assert out.code == 0, out
    planned = jsonlib.loads(out.out)["partitions"]
    assert [(p["key"], p["state"], p["slots"]) for p in planned] == [
        ("binance:spot:BTCUSDT:1h:2024-01", "unknown", 744), ("binance:spot:BTCUSDT:1h:2024-02", "unknown", 696)]
    run = forge("run", "--partition", planned[0]["key"], "--output", "jan.csv", "-q")
    assert run.code == 0, run
    lo, hi = parse_range("2024-01-01", "2024-01-31")
    assert read_csv(in_tmp / "jan.csv")[1] == as_csv_lines(binance_rows("BTCUSDT", "1h", lo, hi, NOW))
    bad = forge("run", "--partition", "binance:spot:BTCUSDT:1h:2024-1", "-q")
    assert bad.code == 2 and "bad partition key" in bad.err and len(bad.err.strip().splitlines()) == 1
    mixed = forge("run", "--partition", planned[0]["key"], "--symbol", "ETHUSDT", "-q")
    assert mixed.code == 2 and "drop --symbol" in mixed.err


def test_since_gives_series_the_store_lacks_a_start_in_a_daily_auto_run(forge, exchange_env, in_tmp):
    from conftest import read_csv

    first = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01",
                  "--to", "2024-01-02", "--output", "{symbol}.csv", "-q")
    assert first.code == 0, first
    again = forge("run", "-s", "binance", "--symbol", "BTCUSDT,ETHUSDT", "-t", "1h", "--from", "auto",
                  "--since", "2024-01-02", "--to", "2024-01-03", "--output", "{symbol}.csv", "-q")
    assert again.code == 0, again
    _, eth = read_csv(in_tmp / "ETHUSDT.csv")
    assert eth[0][3] == str(parse_range("2024-01-02", "2024-01-02")[0]) and len(eth) == 48
