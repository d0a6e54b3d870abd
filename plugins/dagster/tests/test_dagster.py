"""A real Dagster run in-process: single partitions of the Forge asset materialise exactly,
re-materialising is idempotent, and the run's metadata reports rows and holes."""

from __future__ import annotations

import csv

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


def test_the_example_code_location_materialises_through_the_dagster_cli(exchange_env, tmp_path):
    """``dagster asset materialize`` in a process of its own, on a persistent instance (so
    Dagster's multiprocess executor runs the step in yet another process)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import forge_dagster

    example = Path(forge_dagster.__file__).with_name("definitions_example.py")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "home"), "FORGE_DAGSTER_SINK": "csv",
           "FORGE_RATE_BUDGET": f"sqlite:///{tmp_path / 'budget.db'}"}
    (tmp_path / "home").mkdir()
    proc = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-f", str(example),
                           "--select", "binance_klines", "--partition", "2024-02|ETHUSDT"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lo, hi = parse_range("2024-02-01", "2024-02-29")
    want = as_csv_lines(binance_rows("ETHUSDT", "1m", lo, hi, exchange_env.config.now))
    assert rows(tmp_path / "Binance-ETHUSDT-1m-2024-02-01_2024-02-29.csv") == want
