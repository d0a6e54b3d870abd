"""A real Dagster run in-process: single partitions of the Forge asset materialise exactly,
re-materialising is idempotent, and the run's metadata reports rows and holes."""

from __future__ import annotations

import csv
import os
from typing import Any

import pytest
from dagster import DagsterInstance, MultiPartitionKey, materialize

from forge_core.times import parse_range
from forge_dagster import ForgeBudget, forge_asset
from forge_mock_exchange.expected import as_csv_lines, binance_rows


@pytest.fixture
def asset(tmp_path):
    out = str(tmp_path / "{symbol}-{start}.csv")
    return forge_asset("klines", source="binance", market="spot", sinks=[("csv", {"output": out})],
                       symbols=["BTCUSDT", "ETHUSDT"], timeframe="1h", start="2024-01", end="2024-04")


def rows(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def test_single_partitions_materialise_exactly_and_report_holes(asset, exchange_env, tmp_path):
    instance = DagsterInstance.ephemeral()
    key = MultiPartitionKey({"symbol": "BTCUSDT", "month": "2024-01"})
    result = materialize([asset], partition_key=key, instance=instance,
                         resources={"forge_budget": ForgeBudget(url=f"sqlite:///{tmp_path / 'budget.db'}")})
    assert result.success
    lo, hi = parse_range("2024-01-01", "2024-01-31")
    want = as_csv_lines(binance_rows("BTCUSDT", "1h", lo, hi, exchange_env.config.now))
    path = tmp_path / "BTCUSDT-2024-01-01.csv"
    assert rows(path) == want
    meta = result.asset_materializations_for_node("klines")[0].metadata
    assert meta["forge_partition"].value == "binance:spot:BTCUSDT:1h:2024-01"
    assert meta["rows"].value == len(want) and meta["slots"].value == 744
    assert meta["holes"].value == [[1704855600000, 1704862800000]]  # the mock's maintenance hole, 03:00-05:00
    again = materialize([asset], partition_key=key, instance=instance,
                        resources={"forge_budget": ForgeBudget(url="")})
    assert again.success and rows(path) == want


def test_the_partition_space_is_symbols_by_month(asset):
    keys = asset.partitions_def.get_partition_keys()
    assert "2024-02|ETHUSDT" in keys and len(keys) == 2 * 3


@pytest.mark.slow
def test_the_example_code_location_materialises_through_the_dagster_cli(exchange_env, tmp_path):
    """``dagster asset materialize`` in a process of its own, on a persistent instance (so
    Dagster's multiprocess executor runs the step in yet another process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import forge_dagster

    example = Path(forge_dagster.__file__).with_name("definitions_example.py")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "FORGE_DAGSTER_SINK": "csv", "FORGE_DAGSTER_TIMEFRAME": "1h",
           "FORGE_DAGSTER_VERIFY": "0",  # the check's own step process would add ~10 s; tested in-process above
           "FORGE_RATE_BUDGET": f"sqlite:///{tmp_path / 'budget.db'}"}
    (tmp_path / "home").mkdir()
    proc = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-f", str(example),
                           "--select", "binance_klines", "--partition", "2024-02|ETHUSDT"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lo, hi = parse_range("2024-02-01", "2024-02-29")
    want = as_csv_lines(binance_rows("ETHUSDT", "1h", lo, hi, exchange_env.config.now))
    assert rows(tmp_path / "Binance-ETHUSDT-1h-2024-02-01_2024-02-29.csv") == want


def test_the_verify_check_passes_a_clean_partition_and_fails_one_missing_a_row(exchange_env, pg_url, db, tmp_path):
    """The asset check runs ``forge verify`` on the partition: clean after materialising; a row
    deleted from the table fails it with ``missing`` = 1 in its metadata."""
    from dagster import AssetSelection, Definitions, define_asset_job

    from forge_dagster import forge_verify_check

    table = f"dagster_check_{os.getpid()}"
    db.execute(f'DROP TABLE IF EXISTS "{table}"')
    klines = forge_asset("checked_klines", source="binance", market="spot",
                         sinks=[("postgres", {"database_url": pg_url, "table": table})],
                         symbols=["BTCUSDT"], timeframe="1h", start="2024-01", end="2024-03")
    check = forge_verify_check(klines)
    key = MultiPartitionKey({"symbol": "BTCUSDT", "month": "2024-02"})
    resources = {"forge_budget": ForgeBudget(url="")}
    instance = DagsterInstance.ephemeral()
    assert materialize([klines], partition_key=key, instance=instance, resources=resources).success

    # a run of the check alone on the partition (as the UI launches it: the partition as the run's tag)
    job = define_asset_job("verify_checked_klines", selection=AssetSelection.checks(check))
    defs = Definitions(assets=[klines], asset_checks=[check], jobs=[job], resources=resources)

    def verify() -> Any:
        result = defs.resolve_job_def("verify_checked_klines").execute_in_process(
            instance=instance, tags={"dagster/partition": str(key)}, raise_on_error=False)
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation

    clean = verify()
    assert clean.passed and clean.metadata["missing"].value == 0
    assert clean.metadata["store_rows"].value == 29 * 24 and clean.metadata["forge_partition"].value == (
        "binance:spot:BTCUSDT:1h:2024-02")
    gone = parse_range("2024-02-10 07:00:00", "2024-02-10 07:00:00")[0]
    db.execute(f'DELETE FROM "{table}" WHERE symbol = %s AND open_ts = %s', ("BTCUSDT", gone))
    broken = verify()
    assert not broken.passed and broken.severity.value == "ERROR"
    assert broken.metadata["missing"].value == 1 and broken.metadata["store_rows"].value == 29 * 24 - 1
    assert broken.metadata["issues"].value[0]["from_ms"] == gone
    db.execute(f'DROP TABLE IF EXISTS "{table}"')


def test_the_verify_check_finds_the_csv_file_of_the_partition(asset, exchange_env, tmp_path):
    """A CSV sink's output template names one file per partition's run: the check verifies that
    file (here ``BTCUSDT-2024-03-01.csv``): a line cut from it fails the check."""
    from dagster import AssetSelection, Definitions, define_asset_job

    from forge_dagster import forge_verify_check

    check = forge_verify_check(asset)
    resources = {"forge_budget": ForgeBudget(url="")}
    instance = DagsterInstance.ephemeral()
    key = MultiPartitionKey({"symbol": "BTCUSDT", "month": "2024-03"})
    assert materialize([asset], partition_key=key, instance=instance, resources=resources).success
    job = define_asset_job("verify_klines", selection=AssetSelection.checks(check))
    defs = Definitions(assets=[asset], asset_checks=[check], jobs=[job], resources=resources)

    path = tmp_path / "BTCUSDT-2024-03-01.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:100] + lines[101:]))
    result = defs.resolve_job_def("verify_klines").execute_in_process(
        instance=instance, tags={"dagster/partition": str(key)}, raise_on_error=False)
    (broken,) = result.get_asset_check_evaluations()
    assert not broken.passed and broken.metadata["missing"].value == 1  # the file was found and read
    assert broken.metadata["store_rows"].value == 31 * 24 - 1


def test_a_month_before_the_listing_materialises_empty_and_passes_its_check(exchange_env, tmp_path):
    """The month dimension is every symbol's, so it offers NEWUSDT's months before its listing
    (2024-01-15), which forge plan leaves out: materialising one failed ('... choose --to after
    the listing') and its check failed too. Now an empty result naming the exchange's first
    candle, and a passing check: the store holds exactly the exchange's candles, none."""
    from dagster import AssetSelection, Definitions, define_asset_job

    from forge_dagster import forge_verify_check

    out = str(tmp_path / "{symbol}-{start}.csv")
    klines = forge_asset("klines", source="binance", market="spot", sinks=[("csv", {"output": out})],
                         symbols=["BTCUSDT", "NEWUSDT"], timeframe="1h", start="2023-12", end="2024-02")
    check = forge_verify_check(klines)
    resources = {"forge_budget": ForgeBudget(url="")}
    instance = DagsterInstance.ephemeral()
    key = MultiPartitionKey({"symbol": "NEWUSDT", "month": "2023-12"})
    result = materialize([klines], partition_key=key, instance=instance, resources=resources, raise_on_error=False)
    assert result.success
    meta = result.asset_materializations_for_node("klines")[0].metadata
    assert meta["rows"].value == 0 and meta["forge_partition"].value == "binance:spot:NEWUSDT:1h:2023-12"
    assert meta["before_listing"].value == "Binance spot has no NEWUSDT candles before 2024-01-15 08:00:00 UTC"
    assert not list(tmp_path.glob("NEWUSDT-*.csv"))
    job = define_asset_job("verify_klines", selection=AssetSelection.checks(check))
    defs = Definitions(assets=[klines], asset_checks=[check], jobs=[job], resources=resources)
    checked = defs.resolve_job_def("verify_klines").execute_in_process(
        instance=instance, tags={"dagster/partition": str(key)}, raise_on_error=False)
    (evaluation,) = checked.get_asset_check_evaluations()
    assert evaluation.passed and evaluation.metadata["before_listing"].value == "2024-01-15 08:00:00 UTC"
