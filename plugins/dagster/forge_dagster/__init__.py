"""Forge backfills as a Dagster partitioned asset: one partition per symbol and calendar month.

::

    from forge_dagster import ForgeBudget, forge_asset

    klines = forge_asset("binance_klines", source="binance", sinks=[("postgres", {})],
                         symbols=["BTCUSDT", "ETHUSDT"], timeframe="1m", start="2024-01-01")
    defs = Definitions(assets=[klines], resources={"forge_budget": ForgeBudget(url="postgresql://...")})

Each materialisation is ``forge run --partition`` of that one partition (idempotent: re-running
replaces it exactly), drawing from the shared rate budget of :mod:`forge_core.budget`, so any
number of run workers on any number of machines stay inside the exchange's limit together.
"""


from collections.abc import Sequence
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
    ConfigurableResource,
    DynamicPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    MonthlyPartitionsDefinition,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
    asset,
)

from forge_core.partitions import Partition
from forge_core.partitions import run as run_partitions

__all__ = ["ForgeBudget", "forge_asset", "forge_partition"]


class ForgeBudget(ConfigurableResource):  # type: ignore[misc]
    """The rate budget every run worker shares: ``sqlite:///budget.db`` (one host) or the
    ``postgresql://`` database Forge writes to (many hosts); empty: each run on its own."""

    url: str = ""


def forge_partition(context: AssetExecutionContext, source: str, market: str, timeframe: str) -> Partition:
    """The Forge partition of the run's (symbol, month) Dagster partition key."""
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    return Partition(source, market, keys["symbol"], timeframe, keys["month"][:7])


def forge_asset(name: str, *, source: str, sinks: Sequence[Any], symbols: Sequence[str] | None,
                timeframe: str, start: str, end: str | None = None, market: str = "-",
                source_options: dict[str, Any] | None = None, workers: int = 4,
                max_partitions_per_run: int = 1, group_name: str | None = None) -> AssetsDefinition:
    """A partitioned asset of ``source`` candles written to ``sinks``.

    ``symbols`` fixes the symbol dimension; ``None`` makes it dynamic (add symbols at run time
    with ``instance.add_dynamic_partitions(f"{name}_symbols", [...])``). The backfill policy
    runs ``max_partitions_per_run`` partitions per run (default 1: Dagster's multi-partition
    ranges are not contiguous in both dimensions, see dagster#28861).
    """
    symbol_dim = (StaticPartitionsDefinition(list(symbols)) if symbols is not None
                  else DynamicPartitionsDefinition(name=f"{name}_symbols"))
    # end_offset=1: the current month is a partition too (its closed candles so far)
    months = MonthlyPartitionsDefinition(start_date=start, end_date=end, fmt="%Y-%m", end_offset=1)
    partitions_def = MultiPartitionsDefinition({"month": months, "symbol": symbol_dim})

    @asset(name=name, partitions_def=partitions_def, group_name=group_name,
           backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run),
           description=f"{source} {timeframe} candles, one partition per symbol and month (Forge)")
    def _asset(context: AssetExecutionContext, forge_budget: ForgeBudget) -> MaterializeResult:
        partition = forge_partition(context, source, market, timeframe)
        (result,) = run_partitions([partition], sinks, source_options=source_options,
                                   rate_budget=forge_budget.url or None, workers=workers)
        holes = [[a, b] for a, b in result.holes.get(partition.symbol, [])]
        context.log.info(result.summary())
        return MaterializeResult(metadata={
            "forge_partition": partition.key,
            "rows": result.rows.get(partition.symbol, 0),
            "slots": result.slots.get(partition.symbol, 0),
            "holes": MetadataValue.json(holes),
            "origins": MetadataValue.json(result.origins),
            "requests": result.source_stats.get("requests", 0),
            "destinations": ", ".join(result.destinations),
        })

    return _asset
