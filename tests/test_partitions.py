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
from forge_mock_exchange.market import DELISTED

NOW = 1742034030456


def test_keys_are_stable_and_bad_keys_are_one_clear_line(tmp_path):
    p = parse_key("binance:spot:BTCUSDT:1m:2024-03")
    assert p == Partition("binance", "spot", "BTCUSDT", "1m", "2024-03") and p.key == "binance:spot:BTCUSDT:1m:2024-03"
    assert (p.start, p.end) == (1709251200000, 1711929600000) and p.slots == 31 * 1440
    for bad in ("binance:spot:BTCUSDT:1m:2024-13", "binance:BTCUSDT:1m:2024-03", "binance:spot:BTCUSDT:7m:2024-03"):
        with pytest.raises(UsageError, match="bad partition key"):
            parse_key(bad)
    with pytest.raises(UsageError) as caught:  # the key is canonical; a spelling gets run -t's hint
        parse_key("okx:-:BTC-USDT:1H:2024-01")
    assert str(caught.value) == ("bad partition key 'okx:-:BTC-USDT:1H:2024-01': unsupported timeframe '1H'; choose "
                                 "one of: 1s 1m 3m 5m 15m 30m 1h 2h 4h 6h 8h 12h 1d 3d 1w 1M; did you mean 1h?")
    (tmp_path / "keys.txt").write_text("# the first quarter\nokx:-:BTC-USDT:1h:2024-01\nokx:-:BTC-USDT:1h:2024-02\n")
    assert [k.key for k in read_keys([f"@{tmp_path / 'keys.txt'}", "okx:-:BTC-USDT:1h:2024-01"])] == [
        "okx:-:BTC-USDT:1h:2024-01", "okx:-:BTC-USDT:1h:2024-02"]


def test_a_plan_covers_every_month_the_range_touches():
    start, end = parse_range("2023-12-15", "2024-02-01")
    keys = [p.key for p in plan("binance", "usdm", ["BTCUSDT", "ETHUSDT"], "1h", start, end)]
    assert keys == [f"binance:usdm:{s}:1h:{m}" for s in ("BTCUSDT", "ETHUSDT") for m in ("2023-12", "2024-01", "2024-02")]


# `forge run` with Binance pages of 24 candles (the API takes any limit up to 1000; spot klines
# weigh 2 whatever the limit): many cheap requests, so Binance's real limit binds within seconds
FORGE_RUN = """
import sys
import forge_binance.source
forge_binance.source.MARKETS["spot"]["page"] = int(sys.argv[1])
from forge_core.cli import main
sys.exit(main(sys.argv[2:]))
"""


def beyond_the_rate(log: list[tuple[float, int]], rate: float) -> float:
    """The most weight any interval of the log holds beyond ``rate`` x its length (the burst
    the shared budget allowed): max over i <= j of sum(w[i..j]) - rate * (t[j] - t[i])."""
    best, spent, lowest = 0.0, 0.0, float("inf")
    for t, w in log:
        lowest = min(lowest, spent - rate * t)  # the interval may start at this request
        spent += w
        best = max(best, spent - rate * t - lowest)
    return best


@pytest.mark.slow
def test_24_partitions_from_six_forge_runs_hold_binances_real_limit_and_give_the_exact_table(pg_url, db, tmp_path):
    """Six ``forge run --partition`` processes, 24 partitions in 24 groups, one PostgreSQL
    table and the PostgreSQL budget, against the mock at Binance's real limit: 6000 weight per
    (epoch-aligned) minute, ``X-MBX-USED-WEIGHT-1M`` on every answer, 429 with Retry-After past
    it, a 418 ban for a client that keeps going. The processes could send ~1,700 weight in a few
    seconds; together they must keep to the limit's rate (95% of it, a 5% burst), which holds
    any minute however the windows fall, and still give exactly one sequential run's table."""
    table = "partitioned_" + str(os.getpid())
    db.execute(f'DROP TABLE IF EXISTS "{table}"')
    symbols = ("BTCUSDT", "ETHUSDT")
    # process i: BTCUSDT months i+1, i+7 and ETHUSDT months 12-i, 6-i: four groups each, no two consecutive
    shares = [[f"binance:spot:BTCUSDT:1h:2023-{m:02d}" for m in (i + 1, i + 7)] +
              [f"binance:spot:ETHUSDT:1h:2023-{m:02d}" for m in (12 - i, 6 - i)] for i in range(6)]
    assert len({k for share in shares for k in share}) == 24
    with MockExchange(MockConfig(now=NOW)) as mock:  # Binance's own limits: 6000 per minute
        env = {**os.environ, "FORGE_BINANCE_URL": mock.url}
        procs = []
        for i, share in enumerate(shares):
            keys = tmp_path / f"keys{i}.txt"
            keys.write_text("\n".join(share) + "\n")
            procs.append(subprocess.Popen(
                [sys.executable, "-c", FORGE_RUN, "24", "run", "--partition", f"@{keys}", "--sink", "postgres",
                 "--database-url", pg_url, "--table", table, "--rate-budget", pg_url, "-q"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            assert "4 partitions done in 4 runs" in out
        stats, log = mock.stats, sorted(mock.state["weights.spot.log"])
    assert stats["binance.418"] == 0 and stats["binance.429"] <= 3
    assert stats["binance.spot.exchangeInfo"] == 6  # one per process, not one per group
    weight = sum(w for _, w in log)
    assert weight > 1500  # ~750 pages of 24 candles: the limit binds, the 5% burst alone is 300
    # never faster than 95% of 6000 per 61.2 s beyond the 5% burst (+ what was reserved but not
    # yet sent: 24 workers' pages and one exchangeInfo): so no minute, wherever Binance's window
    # falls, holds more than ~5,950
    assert beyond_the_rate(log, 0.95 * 6000 / 61.2) <= 0.05 * 6000 + 24 * 2 + 20
    lo, hi = parse_range("2023-01-01", "2023-12-31")
    db.execute(f'SELECT symbol, open_ts, close::text FROM "{table}" ORDER BY symbol, open_ts')
    got = db.fetchall()
    want = [(s, r[3], r[8]) for s in symbols for r in binance_rows(s, "1h", lo, hi, NOW)]
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
    (in_tmp / "empty.txt").write_text("# nothing yet\n")
    empty = forge("run", "--partition", "@empty.txt", "-q")
    assert empty.code == 2 and "no partition given" in empty.err and len(empty.err.strip().splitlines()) == 1
    mixed = forge("run", "--partition", planned[0]["key"], "--symbol", "ETHUSDT", "-q")
    assert mixed.code == 2 and "drop --symbol" in mixed.err


def test_partition_groups_of_one_run_share_one_exchange_info(forge, fresh_mock, monkeypatch, in_tmp):
    """Each partition group builds a new source; within one run they ask exchangeInfo (weight
    20) once, not once per group. ``--partition @FILE`` alone names the source."""
    monkeypatch.setenv("FORGE_BINANCE_URL", fresh_mock.url)
    (in_tmp / "keys.txt").write_text("binance:spot:BTCUSDT:1h:2024-01\nbinance:spot:BTCUSDT:1h:2024-03\n"
                                     "binance:spot:ETHUSDT:1h:2024-05\n")
    out = forge("run", "--partition", "@keys.txt", "--output", "{symbol}-{start}.csv", "-q")
    assert out.code == 0, out
    assert "3 partitions done in 3 runs" in out.out
    assert fresh_mock.stats["binance.spot.exchangeInfo"] == 1
    lo, hi = parse_range("2024-05-01", "2024-05-31")
    from conftest import read_csv
    from forge_mock_exchange.expected import as_csv_lines

    assert read_csv(in_tmp / "ETHUSDT-2024-05-01.csv")[1] == as_csv_lines(binance_rows("ETHUSDT", "1h", lo, hi, NOW))
    # outside a partition run nothing is kept: a later run asks again (the limits may change)
    again = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01",
                  "--to", "2024-01-01", "--output", "again.csv", "-q")
    assert again.code == 0, again
    assert fresh_mock.stats["binance.spot.exchangeInfo"] == 2


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


def test_forge_plan_stops_where_the_run_stops_at_a_delisted_symbols_last_candle(forge, exchange_env, in_tmp):
    """It listed OLDUSDT's months after its delisting (the archive has no file for them, the run
    asks for nothing there): the plan now ends with the month of its last candle and says why."""
    import json as jsonlib

    out = forge("plan", "-s", "binance", "--symbol", "BTCUSDT,OLDUSDT", "-t", "1h", "--from", "2023-12-01",
                "--to", "2024-03-31")
    assert out.code == 0, out
    keys = [line.split()[0] for line in out.out.splitlines() if line.startswith("binance:")]
    assert keys == [f"binance:spot:BTCUSDT:1h:{m}" for m in ("2023-12", "2024-01", "2024-02", "2024-03")] + [
        "binance:spot:OLDUSDT:1h:2023-12", "binance:spot:OLDUSDT:1h:2024-01"]
    assert out.out.rstrip().endswith("OLDUSDT delisted (Binance exchangeInfo status BREAK): last candle "
                                     "2024-01-22 23:00:00 UTC, no partition after 2024-01")
    after = forge("plan", "-s", "binance", "--symbol", "OLDUSDT", "-t", "1d", "--from", "2024-03-01", "--json")
    assert after.code == 0, after
    planned = jsonlib.loads(after.out)
    assert planned["partitions"] == [] and planned["ended"] == {"OLDUSDT": {
        "reason": "delisted (Binance exchangeInfo status BREAK)", "last_open": DELISTED - 86_400_000,
        "last_candle": "2024-01-22 00:00:00 UTC"}}
    before = forge("plan", "-s", "binance", "--symbol", "OLDUSDT", "-t", "1h", "--from", "2023-12-01",
                   "--to", "2024-01-22", "--json")  # a range ending before the last candle: nothing to say
    assert jsonlib.loads(before.out)["ended"] == {} and len(jsonlib.loads(before.out)["partitions"]) == 2


def test_forge_plan_stops_at_the_exchanges_now(forge, exchange_env, in_tmp):
    """It listed months after the exchange's now as 'missing' (--to 2025-06-30), and a range wholly
    in the future, which forge run refuses, as partitions to run."""
    out = forge("plan", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2025-02-01", "--to", "2025-06-30")
    assert out.code == 0, out
    keys = [line.split()[0] for line in out.out.splitlines() if line.startswith("binance:")]
    assert keys == ["binance:spot:BTCUSDT:1h:2025-02", "binance:spot:BTCUSDT:1h:2025-03"]  # the mock's now: 03-15
    future = forge("plan", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2030-01-01", "--to", "2030-02-01")
    assert future.code == 2 and "from date 2030-01-01T00:00:00Z is in the future (exchange time" in future.err


def test_forge_plan_refuses_a_store_option_without_its_sink(forge, exchange_env, in_tmp):
    """--output btc.csv without --sink csv was ignored: every partition 'unknown', exit 0, as if
    the file held nothing. An option of a plugin the command does not use is one line."""
    args = ("plan", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01", "--to", "2024-01-31")
    out = forge(*args, "--output", "btc.csv")
    assert out.code == 2 and out.err == ("forge: error: option --output belongs to sink csv, not to this command's "
                                         "source or sink; add --sink csv to read the partitions' state from it\n")
    other = forge(*args, "--sink", "csv", "--output", "btc.csv", "--root", "pq")
    assert other.code == 2 and "option --root belongs to sink parquet, not to this command's source or sink\n" in other.err


def test_forge_plan_starts_where_the_run_starts_at_a_listing(forge, exchange_env, in_tmp):
    """It listed the months before a symbol's listing, which `forge run --partition` then
    refuses (exit 1, 'no NEWUSDT candles before ...'): an orchestrator's every such task failed.
    The plan now starts at the month of the first candle and says why, as it stops at a delisting."""
    import json as jsonlib

    out = forge("plan", "-s", "binance", "--symbol", "NEWUSDT,BTCUSDT", "-t", "1h", "--from", "2023-11-01",
                "--to", "2024-01-31")
    assert out.code == 0, out
    keys = [line.split()[0] for line in out.out.splitlines() if line.startswith("binance:")]
    assert keys == ["binance:spot:NEWUSDT:1h:2024-01"] + [
        f"binance:spot:BTCUSDT:1h:{m}" for m in ("2023-11", "2023-12", "2024-01")]
    assert out.out.rstrip().endswith("NEWUSDT first candle 2024-01-15 08:00:00 UTC (its listing): no partition "
                                     "before 2024-01")
    assert forge("run", "--partition", keys[0], "-q").code == 0
    soon = forge("plan", "-s", "binance", "--market", "usdm", "--symbol", "SOONUSDT", "-t", "1d",
                 "--from", "2024-01-01", "--to", "2024-03-31", "--json")
    assert soon.code == 0, soon
    assert jsonlib.loads(soon.out) == {"partitions": [], "ended": {}, "listed": {"SOONUSDT": {
        "first_open": 1748822400000, "first_candle": "2025-06-02 00:00:00 UTC"}}}
    within = forge("plan", "-s", "binance", "--symbol", "NEWUSDT", "-t", "1h", "--from", "2024-01-02", "--to",
                   "2024-01-31", "--json")  # the listing inside the first month: nothing left out, nothing said
    assert jsonlib.loads(within.out)["listed"] == {} and len(jsonlib.loads(within.out)["partitions"]) == 1


def test_a_partition_before_the_listing_is_refused_naming_the_market_and_the_partition(forge, exchange_env, in_tmp):
    """The refusal named `binance` for every market and said 'choose --to after the listing'
    to a user who gave --partition, not --to: now the market, the partitions and where they start."""
    one = forge("run", "--partition", "binance:usdm:SOONUSDT:1d:2025-01", "-q")
    assert one.code == 1 and one.err == (
        "forge: error: Binance USD-M futures has no SOONUSDT candles before 2025-06-02T00:00:00Z (its first); "
        "partition binance:usdm:SOONUSDT:1d:2025-01 is wholly before it: its partitions start at 2025-06 "
        "(forge plan lists them)\n")
    two = forge("run", "--partition", "binance:spot:NEWUSDT:1h:2023-11", "--partition", "binance:spot:NEWUSDT:1h:2023-12")
    assert two.code == 1 and two.err == (
        "forge: error: Binance spot has no NEWUSDT candles before 2024-01-15T08:00:00Z (its first); partitions "
        "binance:spot:NEWUSDT:1h:2023-11 .. 2023-12 are wholly before it: its partitions start at 2024-01 "
        "(forge plan lists them)\n")
    okx = forge("run", "--partition", "okx:-:NEW-USDT:1h:2023-12", "-q")
    assert okx.code == 1 and okx.err.startswith("forge: error: OKX has no NEW-USDT candles before 2024-01-15"), okx
    ranged = forge("run", "-s", "binance", "--market", "coinm", "--symbol", "BTCUSD_240329", "-t", "1d",
                   "--from", "2023-08-01", "--to", "2023-08-31", "-q")
    assert ranged.code == 1 and ranged.err == (
        "forge: error: Binance COIN-M futures has no BTCUSD_240329 candles before 2023-09-29T00:00:00Z (its first); "
        "the range ends 2023-09-01T00:00:00Z: choose --to after the listing\n")
