"""The record that flows from a source through transforms to sinks: a :class:`Batch`.

A batch is a page of candles of one ``(source, symbol, timeframe)``, ascending by open time,
held as a list of plain tuples in the column order ``columns`` declares. Tuples are compact,
and feed ``csv.writer`` and a PostgreSQL ``COPY`` buffer without conversion; hooks fire per
batch, never per row.

The first ten columns are always the canonical candle (:data:`CANDLE_COLUMNS`):

=============  ======  ==========================================================
column         type    meaning
=============  ======  ==========================================================
source         str     the source plugin's name, e.g. ``binance``
symbol         str     the symbol as the user typed it for that exchange
timeframe      str     the timeframe in Forge's notation, e.g. ``1m``, ``1M``
open_ts        int     open time, UTC epoch milliseconds
end_ts         int     last millisecond of the period: ``open_ts + period - 1``
open .. close  str     prices as the exchange's exact decimal strings
volume         str     base-asset volume as the exchange's exact decimal string
=============  ======  ==========================================================

Prices and volumes stay the exchange's decimal strings: nothing is lost to float rounding,
CSV writes them verbatim and PostgreSQL parses them into whatever column type the table has.
A source may append extra columns after these (:data:`EXTRA_COLUMNS` names the usual ones);
sinks take the columns they know and ignore or store the rest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

CANDLE_COLUMNS: tuple[str, ...] = (
    "source",
    "symbol",
    "timeframe",
    "open_ts",
    "end_ts",
    "open",
    "high",
    "low",
    "close",
    "volume",
)
EXTRA_COLUMNS: tuple[str, ...] = (
    "quote_volume",
    "trades",
    "taker_buy_base_volume",
    "taker_buy_quote_volume",
)
OPEN_TS = CANDLE_COLUMNS.index("open_ts")
END_TS = CANDLE_COLUMNS.index("end_ts")
NUMERIC_COLUMNS = frozenset({"open", "high", "low", "close", "volume", *EXTRA_COLUMNS} - {"trades"})

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Batch:
    """Candles of one series, ascending and unique by ``open_ts``.

    ``origin`` says where the rows came from (``"rest"``, ``"archive"``, ...), for summaries.
    """

    source: str
    symbol: str
    timeframe: str
    columns: tuple[str, ...]
    rows: list[Row]
    origin: str = "rest"
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def first_open(self) -> int | None:
        return self.rows[0][OPEN_TS] if self.rows else None

    @property
    def last_open(self) -> int | None:
        return self.rows[-1][OPEN_TS] if self.rows else None

    def with_rows(self, rows: list[Row], columns: Sequence[str] | None = None) -> Batch:
        return replace(self, rows=rows, columns=tuple(columns or self.columns))

    def dicts(self) -> Iterator[dict[str, Any]]:
        """A dict per row, for user functions; slow, never used on the hot path."""
        cols = self.columns
        for row in self.rows:
            yield dict(zip(cols, row, strict=True))
