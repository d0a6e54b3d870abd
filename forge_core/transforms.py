"""The transform contract, and the adapter for the seed's per-row ``set_transformer`` functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from .errors import TransformError
from .options import Option, settings
from .records import NUMERIC_COLUMNS, Batch
from .times import iso


class Transform:
    """Maps batches to batches. Runs only when the user names it.

    :meth:`apply` gets each batch of a series in time order; :meth:`end_series` is called when a
    series (symbol) is complete and may return a last batch (e.g. a resampler's final period).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.settings = settings("transform", self.name, self.options, options)

    def bind_source(self, source: Any) -> None:
        """The pipeline's source, given once before any run: a transform whose options name
        something in the exchange's vocabulary (a timeframe in OKX's ``4H``) reads them here."""

    def output_timeframe(self, timeframe: str) -> str:
        """The timeframe of the candles this transform emits, given the ones it receives."""
        return timeframe

    def start_series(self, symbol: str, start: int, end: int) -> None:
        """A new series begins; its candles open in ``[start, end)``."""

    def apply(self, batch: Batch) -> Batch:
        """The abstract method every transform overrides."""
        raise NotImplementedError(f"transform {self.name!r} does not implement apply()")

    def end_series(self) -> Batch | None:
        return None

    @property
    def label(self) -> str:
        return self.name or type(self).__name__


class RowFunction(Transform):
    """Wraps ``fn(dict) -> dict``: the seed's ``set_transformer``.

    ``fn`` receives one candle as a dict by column name: prices and volumes as ``float`` (so
    ``data["close"] > data["open"]`` and ``data["close"] * 1.01`` work, as in streamforge),
    ``open_ts``/``end_ts``/``trades`` as ``int``, the rest as ``str``. It returns a dict; the
    columns of the result follow the keys of the first row it returns. A value ``fn`` passes
    through unchanged keeps the exchange's exact decimal string (``2145.58000000`` stays so);
    a value it computes is written as what it returned (round it if you want fewer digits).
    """

    name = "function"

    def __init__(self, fn: Callable[[dict[str, Any]], dict[str, Any]], label: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self._label = label or getattr(fn, "__qualname__", repr(fn))

    @property
    def label(self) -> str:
        return self._label

    def apply(self, batch: Batch) -> Batch:
        cols = batch.columns
        numeric = [i for i, c in enumerate(cols) if c in NUMERIC_COLUMNS]
        i_open = cols.index("open_ts") if "open_ts" in cols else None
        out_cols: tuple[str, ...] | None = None
        exact: list[int | None] = []  # per output column: the input column it may pass through
        rows = []
        for row in batch.rows:
            values = list(row)
            for i in numeric:
                if values[i] is not None:
                    values[i] = float(values[i])
            try:
                result = self.fn(dict(zip(cols, values, strict=True)))
            except Exception as exc:
                raise TransformError(
                    f"transform {self.label} failed on {batch.symbol} candle {_when(row, i_open)}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(result, dict):
                raise TransformError(
                    f"transform {self.label} returned {type(result).__name__}, expected a dict "
                    f"(candle {_when(row, i_open)})"
                )
            if out_cols is None:
                out_cols = tuple(result)
                exact = [cols.index(c) if c in cols and cols.index(c) in numeric else None for c in out_cols]
            out = []
            for c, src in zip(out_cols, exact, strict=True):
                value = result.get(c)
                if src is not None and value is values[src]:
                    value = row[src]  # passed through untouched: the exchange's exact string
                out.append(value)
            rows.append(tuple(out))
        return batch.with_rows(rows, out_cols or cols)


def _when(row: tuple[Any, ...], i_open: int | None) -> str:
    ts = row[i_open] if i_open is not None else None
    return iso(ts) if isinstance(ts, int) else "?"
