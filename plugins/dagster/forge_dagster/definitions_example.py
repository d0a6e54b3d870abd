"""A runnable Dagster code location: ``dagster dev -f definitions_example.py`` (or
``dagster asset materialize -f definitions_example.py --select binance_klines
--partition '2024-01|BTCUSDT'``). Set FORGE_DATABASE_URL for the PostgreSQL sink and
FORGE_RATE_BUDGET (or edit the resource) so every run worker shares one budget. The asset check
``forge_verify`` runs ``forge verify`` on the partition after each materialisation (or alone,
from the UI's checks tab)."""

import os

from dagster import Definitions

from forge_dagster import ForgeBudget, forge_asset, forge_verify_check

binance_klines = forge_asset(
    "binance_klines",
    source="binance",
    market="spot",
    sinks=[os.environ.get("FORGE_DAGSTER_SINK", "postgres")],
    symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
    timeframe=os.environ.get("FORGE_DAGSTER_TIMEFRAME", "1m"),
    start="2024-01",
)

defs = Definitions(
    assets=[binance_klines],
    # forge verify on a partition, after each materialisation (FORGE_DAGSTER_VERIFY=0: without)
    asset_checks=[forge_verify_check(binance_klines)] if os.environ.get("FORGE_DAGSTER_VERIFY") != "0" else [],
    resources={"forge_budget": ForgeBudget(url=os.environ.get("FORGE_RATE_BUDGET", ""))},
)
