"""Forge backfills as a Dagster partitioned asset: one partition per symbol and calendar month.

::

    from forge_dagster import ForgeBudget, forge_asset

    klines = forge_asset("binance_klines", source="binance", sinks=[("postgres", {})],
                         symbols=["BTCUSDT", "ETHUSDT"], timeframe="1m", start="2024-01-01")
    defs = Definitions(assets=[klines], resources={"forge_budget": ForgeBudget(url="postgresql://...")})

Each materialisation is ``forge run --partition`` of that one partition (idempotent: re-running
replaces it exactly), drawing from the shared rate budget of :mod:`forge_core.budget`, so any
number of run workers on any number of machines stay inside the exchange's limit together.

``forge_verify_check(klines)`` adds an asset check that runs ``forge verify`` on a partition:
it compares the store with the exchange and fails with the missing, extra, duplicated and
changed counts as metadata (the ledger records a clean partition as verified, so
``forge plan`` shows it so).
"""


from collections.abc import Sequence
from typing import Any

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
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
    asset_check,
)

from forge_core.errors import BeforeListing
from forge_core.partitions import Partition
from forge_core.partitions import run as run_partitions
from forge_core.pipeline import DEFAULT_WORKERS
from forge_core.times import display

__all__ = ["ForgeBudget", "forge_asset", "forge_partition", "forge_verify_check"]

_FORGE: dict[str, dict[str, Any]] = {}  # what each forge_asset runs, by asset name (never in metadata: secrets)


class ForgeBudget(ConfigurableResource):  # type: ignore[misc]
    """The rate budget every run worker shares: ``sqlite:///budget.db`` (one host) or the
    ``postgresql://`` database Forge writes to (many hosts); empty: each run on its own."""

    url: str = ""


def forge_partition(context: AssetExecutionContext | AssetCheckExecutionContext, source: str, market: str, timeframe: str) -> Partition:
    """The Forge partition of the run's (symbol, month) Dagster partition key."""
    key = context.partition_key
    keys = getattr(key, "keys_by_dimension", None)
    if keys is None:  # the run's partition tag as text: dimensions in name order, "2024-01|BTCUSDT"
        month, symbol = str(key).split("|", 1)
        keys = {"month": month, "symbol": symbol}
    return Partition(source, market, keys["symbol"], timeframe, keys["month"][:7])


def forge_asset(name: str, *, source: str, sinks: Sequence[Any], symbols: Sequence[str] | None,
                timeframe: str, start: str, end: str | None = None, market: str = "-",
                source_options: dict[str, Any] | None = None, workers: int = DEFAULT_WORKERS,
                max_partitions_per_run: int = 1, group_name: str | None = None) -> AssetsDefinition:
    """A partitioned asset of ``source`` candles written to ``sinks``.

    ``symbols`` fixes the symbol dimension; ``None`` makes it dynamic (add symbols at run time
    with ``instance.add_dynamic_partitions(f"{name}_symbols", [...])``). The backfill policy
    runs ``max_partitions_per_run`` partitions per run (default 1: Dagster's multi-partition
    ranges are not contiguous in both dimensions, see dagster#28861).
    """
    _FORGE[name] = {"source": source, "market": market, "timeframe": timeframe, "sinks": list(sinks),
                    "source_options": dict(source_options or {}), "workers": workers}
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
        try:
            (result,) = run_partitions([partition], sinks, source_options=source_options,
                                       rate_budget=forge_budget.url or None, workers=workers)
        except BeforeListing as exc:
            # the month dimension is shared by every symbol, so it cannot start at each one's
            # listing as forge plan does: such a month holds exactly the exchange's candles, none
            context.log.info(str(exc))
            return MaterializeResult(metadata={
                "forge_partition": partition.key, "rows": 0, "slots": 0, "holes": MetadataValue.json([]),
                "before_listing": f"{exc.where} has no {partition.symbol} candles before {display(exc.first_open)}"})
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


def _sink_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    return (spec, {}) if isinstance(spec, str) else (spec[0], dict(spec[1]))


def verify_partition(partition: Partition, sink: Any, *, source_options: dict[str, Any] | None = None,
                     workers: int = DEFAULT_WORKERS) -> Any:
    """``forge verify`` of one partition against one sink (a name or ``(name, options)``):
    the :class:`~forge_core.integrity.engine.SeriesReport`."""
    from forge_core.integrity.commands import open_store
    from forge_core.integrity.engine import Checker
    from forge_core.plugins import Plugins

    plugins = Plugins()
    name, options = _sink_spec(sink)
    source_cls = plugins.get("source", partition.source)
    source_opts = dict(source_options or {})
    if partition.market != "-":
        source_opts["market"] = partition.market
    sink_cls = plugins.get("sink", name)
    if hasattr(sink_cls, "path_for"):  # a file per run (CSV): the one this partition's run wrote
        from forge_core.sinks import RunInfo

        src = source_cls(**source_opts)
        try:
            info = RunInfo(src.source_value, src.label or src.name.title(), (partition.symbol,),
                           partition.timeframe, partition.start, partition.end, src.columns)
        finally:
            src.close()
        options["output"] = sink_cls(**options).path_for(info, partition.symbol)
    store = open_store(plugins, name, options)
    try:
        checker = Checker(store, lambda: source_cls(**source_opts), workers=workers)
        return checker.run(partition.symbol, partition.timeframe, partition.start, partition.end)
    finally:
        store.close()


def _listing_after(partition: Partition, source_options: dict[str, Any] | None) -> int | None:
    """The series' first candle when the exchange says it comes after the partition's month."""
    from forge_core.errors import ForgeError
    from forge_core.plugins import Plugins
    from forge_core.timeframes import source_timeframe

    options = dict(source_options or {})
    if partition.market != "-":
        options["market"] = partition.market
    src = Plugins().get("source", partition.source)(**options)
    try:
        tf = source_timeframe(src, partition.timeframe)
        src.server_time()
        src.prepare_symbols([partition.symbol], tf)
        first = src.prepare(partition.symbol, tf).first_open
    except ForgeError:
        return None
    finally:
        src.close()
    return first if first is not None and tf.floor(first) >= partition.end else None


def forge_verify_check(asset_def: AssetsDefinition, *, sink: Any = None, name: str = "forge_verify",
                       blocking: bool = False) -> AssetChecksDefinition:
    """An asset check of a :func:`forge_asset` that runs ``forge verify`` on the checked
    partition: passes when the store holds exactly the exchange's candles (holes the exchange
    has are not missing), fails (severity ERROR) with the counts otherwise. ``sink``: the store
    to verify, default the asset's first sink that has integrity hooks (csv, postgres)."""
    asset_name = asset_def.key.path[-1]
    forge = _FORGE.get(asset_name)
    if forge is None:
        raise ValueError(f"asset {asset_name!r} was not made by forge_asset")
    sinks = [sink] if sink is not None else forge["sinks"]

    @asset_check(asset=asset_def, name=name, blocking=blocking, partitions_def=asset_def.partitions_def,
                 description="forge verify on the partition: the store against the exchange")
    def _check(context: AssetCheckExecutionContext) -> AssetCheckResult:
        from forge_core.errors import ForgeError
        from forge_core.plugins import Plugins

        partition = forge_partition(context, forge["source"], forge["market"], forge["timeframe"])
        plugins = Plugins()
        able = [s for s in sinks if hasattr(plugins.get("sink", _sink_spec(s)[0]), "integrity")]
        if not able:
            raise ValueError(f"no sink of {asset_name!r} can be verified (csv and postgres can)")
        meta: dict[str, Any] = {"forge_partition": partition.key}
        try:
            report = verify_partition(partition, able[0], source_options=forge["source_options"],
                                      workers=forge["workers"])
        except ForgeError as exc:  # e.g. the store holds nothing of the partition yet
            first = _listing_after(partition, forge["source_options"])
            if first is not None:  # a month before the listing: nothing held is exactly right
                return AssetCheckResult(passed=True, metadata={**meta, "before_listing": display(first)})
            return AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR,
                                    metadata={**meta, "error": str(exc)})
        counts = {k: report.count(k) for k in ("missing", "extra", "duplicate", "changed")}
        failed = [p.partition for p in report.partitions if p.status == "failed"]
        meta.update(counts, holes=len(report.holes),
                    store_rows=sum(p.store_rows for p in report.partitions),
                    exchange_rows=sum(p.exchange_rows or 0 for p in report.partitions),
                    issues=MetadataValue.json([i.as_json() for i in report.issues][:50]))
        if failed:
            meta["failed"] = MetadataValue.json(failed)
        return AssetCheckResult(passed=not failed and not report.differences, severity=AssetCheckSeverity.ERROR,
                                metadata=meta)

    return _check
