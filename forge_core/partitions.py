"""Partitions: the unit of work beyond one process (``forge plan``, ``forge run --partition``,
the Dagster plugin).

A partition is one series (source, market, symbol, timeframe) over one calendar month (UTC),
half-open in time, with a stable key::

    binance:spot:BTCUSDT:1m:2024-03        okx:-:BTC-USDT:1h:2024-03

``market`` is the source's ``market`` option where it has one (Binance: ``spot``, ``usdm``,
``coinm``), else ``-``. Running a partition is an ordinary run of that month, so running
partitions in any order, twice, or concurrently into one idempotent store (PostgreSQL upserts,
Parquet's per-month files) gives exactly the output of one sequential run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .errors import BeforeListing, UsageError
from .timeframes import parse_timeframe

KEY = re.compile(r"^(?P<source>[a-z0-9_-]+):(?P<market>[a-z0-9_-]+):(?P<symbol>[A-Za-z0-9._/-]+):"
                 r"(?P<timeframe>[0-9]+[A-Za-z]+):(?P<month>\d{4}-\d{2})$")
KEY_FORMAT = "SOURCE:MARKET:SYMBOL:TIMEFRAME:YYYY-MM, e.g. binance:spot:BTCUSDT:1m:2024-03 (MARKET - when the source has none)"


def month_start(year: int, month: int) -> int:
    return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp()) * 1000


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


@dataclass(frozen=True, order=True)
class Partition:
    source: str
    market: str
    symbol: str
    timeframe: str
    month: str  # YYYY-MM

    @property
    def key(self) -> str:
        return f"{self.source}:{self.market}:{self.symbol}:{self.timeframe}:{self.month}"

    @property
    def start(self) -> int:
        year, month = map(int, self.month.split("-"))
        return month_start(year, month)

    @property
    def end(self) -> int:
        """Exclusive: the first millisecond of the next month."""
        year, month = map(int, self.month.split("-"))
        return month_start(*_next_month(year, month))

    @property
    def slots(self) -> int:
        """Candle opens in the month (the exchange may have fewer: listing, holes)."""
        return parse_timeframe(self.timeframe).count(self.start, self.end)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "source": self.source, "market": self.market, "symbol": self.symbol,
                "timeframe": self.timeframe, "month": self.month, "start": self.start, "end": self.end}


def parse_key(text: str) -> Partition:
    m = KEY.match(text.strip())
    if m is None:
        raise UsageError(f"bad partition key {text!r}: expected {KEY_FORMAT}")
    try:  # the Forge name only (forge plan writes it), with forge run -t's did-you-mean
        parse_timeframe(m["timeframe"])
    except UsageError as exc:
        raise UsageError(f"bad partition key {text!r}: {exc}") from None
    year, month = map(int, m["month"].split("-"))
    if not 1 <= month <= 12 or year < 2000:
        raise UsageError(f"bad partition key {text!r}: month {m['month']!r} is not a month (YYYY-MM)")
    return Partition(m["source"], m["market"], m["symbol"], m["timeframe"], m["month"])


def read_keys(items: Iterable[str]) -> list[Partition]:
    """Keys given on the command line; ``@FILE`` reads one key per line (``#`` comments)."""
    out: list[Partition] = []
    for item in items:
        if item.startswith("@"):
            try:
                with open(item[1:], encoding="utf-8") as f:
                    lines = [line.split("#")[0].strip() for line in f]
            except OSError as exc:
                raise UsageError(f"cannot read partition keys from {item[1:]}: {exc.strerror}") from None
            out += [parse_key(line) for line in lines if line]
        else:
            out += [parse_key(part) for part in item.split(",") if part.strip()]
    if not out:
        raise UsageError(f"no partition given: pass --partition {KEY_FORMAT.split(', e.g. ')[1].split(' ')[0]}")
    return sorted(set(out))


def plan(source: str, market: str, symbols: Sequence[str], timeframe: str, start: int, end: int) -> list[Partition]:
    """The partitions of a request: every month that ``[start, end)`` touches, per symbol."""
    parse_timeframe(timeframe)
    first = datetime.fromtimestamp(start / 1000, tz=timezone.utc)
    months: list[str] = []
    year, month = first.year, first.month
    while month_start(year, month) < end:
        months.append(f"{year:04d}-{month:02d}")
        year, month = _next_month(year, month)
    return [Partition(source, market, symbol, timeframe, m) for symbol in symbols for m in months]


def groups(partitions: Iterable[Partition]) -> list[tuple[str, str, str, list[str], int, int]]:
    """One pipeline run per (source, market, timeframe) and run of consecutive months holding
    the same symbols: ``(source, market, timeframe, symbols, start, end)``."""
    by_series: dict[tuple[str, str, str], dict[str, list[str]]] = {}
    for p in sorted(partitions):
        by_series.setdefault((p.source, p.market, p.timeframe), {}).setdefault(p.month, []).append(p.symbol)
    out = []
    for (source, market, timeframe), months in by_series.items():
        current: list[Any] | None = None
        for month in sorted(months):
            p = Partition(source, market, "", timeframe, month)
            if current is not None and current[3] == months[month] and current[5] == p.start:
                current[5] = p.end
                continue
            current = [source, market, timeframe, months[month], p.start, p.end]
            out.append(current)
    return [tuple(g) for g in out]  # type: ignore[misc]


def state(p: Partition, held: Any | None, entry: Any | None) -> str:
    """``verified`` (the ledger's check still matches the store), ``complete`` (every slot of
    the month held, unverified), ``partial`` (some rows) or ``missing`` (none)."""
    rows = getattr(held, "rows", 0) if held is not None else 0
    if entry is not None and held is not None and getattr(entry, "store_digest", None) == getattr(held, "digest", ""):
        return "verified"
    if rows >= p.slots:
        return "complete"
    return "partial" if rows else "missing"


_run_cache: dict[Any, Any] | None = None


def run_cache() -> dict[Any, Any] | None:
    """A dict the pipelines of one :func:`run` share (``None`` outside one): sources keep in it
    what every partition group would fetch again, e.g. Binance's exchangeInfo (weight 20).
    ``("symbols", source, market)`` holds every symbol of the run's partitions (a set), so the
    first group can ask about those of the later ones too."""
    return _run_cache


def run(partitions: Sequence[Partition], sinks: Sequence[Any], *, plugins: Any = None,
        transforms: Sequence[Any] = (), source_options: dict[str, Any] | None = None,
        rate_budget: str | None = None, **pipeline: Any) -> list[Any]:
    """Run ``partitions``, one pipeline per :func:`groups` entry (consecutive months of the
    same symbols run as one range); ``sinks`` and ``transforms`` are specs as :class:`~forge_core.Pipeline` takes
    them (names or ``(name, options)``: each run gets fresh instances). Returns the runs'
    :class:`~forge_core.RunResult` s."""
    from .plugins import Plugins

    global _run_cache
    plugins = plugins or Plugins()
    results: list[Any] = []
    outer, _run_cache = _run_cache, {} if _run_cache is None else _run_cache
    for p in partitions:  # every symbol of the run, so a source can ask about all at once
        _run_cache.setdefault(("symbols", p.source, p.market), set()).add(p.symbol)
    try:
        _run_groups(partitions, sinks, plugins, transforms, source_options, rate_budget, pipeline, results)
    finally:
        _run_cache = outer
    return results


def _run_groups(partitions: Sequence[Partition], sinks: Sequence[Any], plugins: Any, transforms: Sequence[Any],
                source_options: dict[str, Any] | None, rate_budget: str | None, pipeline: dict[str, Any],
                results: list[Any]) -> None:
    from .pipeline import Pipeline

    for source, market, timeframe, symbols, start, end in groups(partitions):
        options = dict(source_options or {})
        declared = {o.name for o in getattr(plugins.get("source", source), "options", ())}
        if market != "-":
            if "market" not in declared:
                raise UsageError(f"partition market {market!r}: source {source!r} has no markets; use '-'")
            options["market"] = market
        try:
            results.append(Pipeline((source, options), list(sinks), list(transforms), plugins=plugins,
                                    rate_budget=rate_budget, **pipeline)
                           .run(symbols, timeframe, start, end - 1))
        except BeforeListing as exc:  # the user gave partitions, not --to: name them
            months = [p.month for p in plan(source, market, [exc.symbol], timeframe, start, end)]
            keys = Partition(source, market, exc.symbol, timeframe, months[0]).key
            keys = f"partitions {keys} .. {months[-1]} are" if len(months) > 1 else f"partition {keys} is"
            listed = datetime.fromtimestamp(exc.first_open / 1000, tz=timezone.utc).strftime("%Y-%m")
            raise BeforeListing(exc.where, exc.symbol, exc.first_open, exc.end,
                                span=f"{keys} wholly before it",
                                fix=f"its partitions start at {listed} (forge plan lists them)") from None
