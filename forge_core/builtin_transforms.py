"""Transforms that ship with the core, registered like any plugin's.

* ``resample``: build coarser candles from finer ones (1h from 1m) with exact decimal OHLCV
  aggregation, emitting only periods the requested range covers completely.
* ``select``: keep, reorder and rename columns: ``open_ts,close:price,volume``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Context, Decimal
from typing import Any

from .errors import UsageError
from .hookspecs import hookimpl
from .options import Option
from .records import CANDLE_COLUMNS, Batch, Row
from .timeframes import DAY, NAMES, Timeframe, parse_timeframe
from .transforms import Transform

_EXACT = Context(prec=100)  # sums of many 20-digit volumes: no rounding at the default 28 digits


def _pads(number: Any) -> bool:
    """Whether the source writes decimals padded to a fixed scale (Binance's ``42000.01000000``)
    rather than without trailing zeros (OKX's ``42000.01``)."""
    return isinstance(number, str) and "." in number and number.endswith("0")


_SUMMED = ("volume", "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume")
"""Extra columns that add up over a period; others are dropped by ``resample``."""


class Resample(Transform):
    name = "resample"
    description = "Aggregate candles into a coarser timeframe (exact sums; complete periods only)"
    options = (Option("resample_to", "Target timeframe of the resample transform, e.g. 1h.", metavar="TF"),)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not self.settings["resample_to"]:
            raise UsageError("the resample transform needs a target timeframe: --resample-to 1h")
        self._target: Timeframe | None = None
        self._range: tuple[int, int] | None = None
        self._open: int | None = None
        self._acc: list[Any] | None = None
        self._template: Batch | None = None
        self._folds: list[tuple[int, Callable[[Any, Any], Any]]] = []

    @property
    def target(self) -> Timeframe:
        if self._target is None:
            self._target = parse_timeframe(str(self.settings["resample_to"]))
        return self._target

    def bind_source(self, source: Any) -> None:
        """The target in the spellings ``-t`` takes with this source (OKX's ``4H``), with its
        errors; stored as Forge's name, so ``4H`` and ``4h`` are one run identity."""
        self._target = parse_timeframe(str(self.settings["resample_to"]), NAMES,
                                       getattr(source, "timeframe_aliases", None), source=source.name or None)
        self.settings["resample_to"] = self._target.name

    def output_timeframe(self, timeframe: str) -> str:
        return self.target.name

    def start_series(self, symbol: str, start: int, end: int) -> None:
        self._range = (start, end)
        self._open, self._acc = None, None

    def _prepare(self, batch: Batch) -> None:
        source_tf = parse_timeframe(batch.timeframe)
        month_target = self.target.ms is None
        if source_tf.ms is None or (month_target and DAY % source_tf.ms) or (
            not month_target and (self.target.ms <= source_tf.ms or self.target.ms % source_tf.ms)
        ):
            raise UsageError(f"cannot resample {batch.timeframe} candles to {self.target.name}: "
                             "the target must be a coarser multiple")
        # keep the canonical columns and the additive extras; drop extras that cannot be aggregated
        needed = [c for c in ("open_ts", "end_ts", "timeframe", "open", "high", "low", "close") if c not in batch.columns]
        if needed:
            raise UsageError(f"resample needs the columns {', '.join(needed)}, which the rows lack "
                             f"(columns: {', '.join(batch.columns)}); put resample before select")
        self._keep = [i for i, c in enumerate(batch.columns) if c in CANDLE_COLUMNS or c in _SUMMED]
        cols = tuple(batch.columns[i] for i in self._keep)
        self._idx = {c: i for i, c in enumerate(cols)}
        self._folds = []
        for column in _SUMMED:
            if column in self._idx:
                add = (lambda a, b: a + b) if column == "trades" else (lambda a, b: _EXACT.add(a, Decimal(b)))
                self._folds.append((self._idx[column], add))
        self._padded = False
        self._numbers = [self._idx[c] for c in ("open", "high", "low", "close", *_SUMMED) if c in self._idx]
        self._template = replace(batch.with_rows([], cols), timeframe=self.target.name)

    def apply(self, batch: Batch) -> Batch:
        if self._template is None or self._template.symbol != batch.symbol:
            self._prepare(batch)
        i = self._idx
        h_, l_, c_, o_ = i["high"], i["low"], i["close"], i["open_ts"]
        out: list[Row] = []
        keep = self._keep
        for row in batch.rows:
            if len(keep) != len(row):
                row = tuple(row[k] for k in keep)
            if not self._padded:
                self._padded = any(_pads(row[k]) for k in self._numbers)
            period = self.target.floor(row[o_])
            if period != self._open:
                if self._acc is not None:
                    self._finish(out)
                self._open = period
                acc = list(row)
                acc[h_], acc[l_] = Decimal(row[h_]), Decimal(row[l_])
                for idx, _ in self._folds:
                    acc[idx] = Decimal(row[idx]) if isinstance(row[idx], str) else row[idx]
                self._acc = acc
                continue
            acc = self._acc
            assert acc is not None
            high, low = Decimal(row[h_]), Decimal(row[l_])
            if high > acc[h_]:
                acc[h_] = high
            if low < acc[l_]:
                acc[l_] = low
            acc[c_] = row[c_]
            for idx, add in self._folds:
                acc[idx] = add(acc[idx], row[idx])
        return self._template.with_rows(out) if self._template is not None else batch.with_rows(out)

    def _finish(self, out: list[Row]) -> None:
        acc, period = self._acc, self._open
        assert acc is not None and period is not None
        self._acc = None
        start, end = self._range or (period, self.target.next_open(period))
        if period < start or self.target.next_open(period) > end:
            return  # the range covers only part of this period
        i = self._idx
        acc[i["timeframe"]] = self.target.name
        acc[i["end_ts"]] = self.target.end_ts(period)
        acc[i["open_ts"]] = period
        for idx, _ in self._folds:  # a sum as the source writes numbers: 8 decimals, or none padded
            if isinstance(acc[idx], Decimal) and not self._padded:
                acc[idx] = acc[idx].normalize(_EXACT)
        out.append(tuple(format(v, "f") if isinstance(v, Decimal) else v for v in acc))

    def end_series(self) -> Batch | None:
        if self._acc is None or self._template is None:
            return None
        out: list[Row] = []
        self._finish(out)
        return self._template.with_rows(out) if out else None


class Select(Transform):
    name = "select"
    description = "Keep, reorder and rename columns: --columns open_ts,close:price,volume"
    options = (Option("columns", "Columns for the select transform, comma-separated, old:new to rename.",
                      metavar="LIST"),)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        spec = self.settings["columns"]
        if not spec:
            raise UsageError("the select transform needs --columns, e.g. open_ts,close:price,volume")
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        self.pairs = [(p.split(":")[0].strip(), (p.split(":") + [p])[1].strip()) for p in items if p.strip()]
        self._index: list[int] | None = None

    def apply(self, batch: Batch) -> Batch:
        if self._index is None:
            missing = [old for old, _ in self.pairs if old not in batch.columns]
            if missing:
                raise UsageError(f"select: no column {missing[0]!r}; columns are {', '.join(batch.columns)}")
            self._index = [batch.columns.index(old) for old, _ in self.pairs]
        idx = self._index
        return batch.with_rows([tuple(row[i] for i in idx) for row in batch.rows], [new for _, new in self.pairs])


@hookimpl
def forge_register_transforms(register: Callable[[type], None]) -> None:
    register(Resample)
    register(Select)
