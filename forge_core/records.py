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

Columns are always found by name (:meth:`Batch.index`), never by position: a transform such as
``select`` may reorder, rename or drop them. Sources build rows with :func:`row_maker` (or
:meth:`forge_core.Source.row`), which fills ``source``, ``symbol``, ``timeframe`` and ``end_ts``
and puts every field where the declared columns say; the run loop checks every row a source
returns against that contract (:func:`check_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .timeframes import Timeframe

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

    def index(self, column: str) -> int:
        """Position of ``column`` in every row; a clear error naming the columns if absent."""
        try:
            return self.columns.index(column)
        except ValueError:
            raise KeyError(f"batch has no column {column!r}; columns are {', '.join(self.columns)}") from None

    def values(self, column: str) -> list[Any]:
        """One column's values, in row order."""
        i = self.index(column)
        return [row[i] for row in self.rows]

    @property
    def first_open(self) -> int | None:
        return self.rows[0][self.index("open_ts")] if self.rows else None

    @property
    def last_open(self) -> int | None:
        return self.rows[-1][self.index("open_ts")] if self.rows else None

    def with_rows(self, rows: list[Row], columns: Sequence[str] | None = None) -> Batch:
        return replace(self, rows=rows, columns=tuple(columns or self.columns))

    def dicts(self) -> Iterator[dict[str, Any]]:
        """A dict per row, for user functions; slow, never used on the hot path."""
        cols = self.columns
        for row in self.rows:
            yield dict(zip(cols, row, strict=True))


@dataclass(frozen=True)
class Fetched:
    """What :meth:`forge_core.Source.fetch` may return instead of bare rows, to say where they
    came from (``origin``: ``"rest"``, ``"archive"``, ``"archive+rest"``...). Bare rows count as
    the task's ``kind``."""

    rows: list[Row]
    origin: str


RowMaker = Callable[..., Row]


def row_maker(columns: Sequence[str], timeframe: Timeframe, **fixed: Any) -> RowMaker:
    """A fast function building rows in ``columns`` order from keyword fields.

    ``fixed`` values (``source``, ``symbol``, ``timeframe``) are filled in; ``end_ts`` defaults
    to the last millisecond of the period (pass the exchange's own close time to have the run
    loop check it). Every other column of ``columns`` is a required keyword::

        make = row_maker(columns, tf, source="binance", symbol="BTCUSDT", timeframe="1m")
        make(open_ts=ts, open="1.0", high="2.0", low="0.5", close="1.5", volume="10")

    The function is generated once (like :func:`collections.namedtuple`), so a call costs
    about what building the tuple by hand does.
    """
    missing = [c for c in CANDLE_COLUMNS if c not in columns]
    if missing:
        raise TypeError(f"columns lack the canonical {', '.join(missing)}: start them with CANDLE_COLUMNS")
    if len(set(columns)) != len(columns) or not all(c.isidentifier() for c in columns):
        raise TypeError(f"column names must be unique identifiers: {', '.join(columns)}")
    fixed.setdefault("timeframe", timeframe.name)
    params = [c for c in columns if c not in fixed and c != "end_ts"]
    env: dict[str, Any] = {f"_fixed_{k}": v for k, v in fixed.items()}
    if timeframe.ms is not None:
        env["_ms"] = timeframe.ms - 1
        end = "open_ts + _ms if end_ts is None else end_ts"
    else:
        env["_end"] = timeframe.end_ts
        end = "_end(open_ts) if end_ts is None else end_ts"
    values = [f"_fixed_{c}" if c in fixed else f"({end})" if c == "end_ts" else c for c in columns]
    code = f"def make(*, {', '.join(params)}, end_ts=None):\n    return ({', '.join(values)},)\n"
    exec(code, env)  # noqa: S102 - names are checked identifiers, values are passed by reference
    return env["make"]  # type: ignore[no-any-return]


def check_rows(rows: Iterable[Row], columns: Sequence[str], timeframe: Timeframe, plugin: str, *,
               source: str, symbol: str) -> None:
    """Raise ``ValueError`` naming the first row that breaks the row contract: wrong width,
    another series' ``source``/``symbol``/``timeframe``, an ``open_ts`` off the timeframe's grid
    or an ``end_ts`` that is not the period's last millisecond."""
    width = len(columns)
    i_src, i_sym, i_tf = columns.index("source"), columns.index("symbol"), columns.index("timeframe")
    i_open, i_end = columns.index("open_ts"), columns.index("end_ts")
    tfname, ms = timeframe.name, timeframe.ms
    offset = timeframe.floor(0) if ms is not None else 0  # 1w opens on Mondays
    for n, row in enumerate(rows):
        problem = None
        if len(row) != width:
            problem = f"has {len(row)} fields for {width} columns ({', '.join(columns)})"
        elif row[i_src] != source or row[i_sym] != symbol or row[i_tf] != tfname:
            problem = (f"says source={row[i_src]!r} symbol={row[i_sym]!r} timeframe={row[i_tf]!r}, "
                       f"expected {source!r} {symbol!r} {tfname!r}")
        else:
            ts, end = row[i_open], row[i_end]
            if type(ts) is not int or type(end) is not int:
                problem = f"has open_ts {ts!r} and end_ts {end!r}; both must be int epoch milliseconds"
            elif ms is not None:
                if (ts - offset) % ms:
                    problem = f"opens at {ts}, not on the {tfname} grid"
                elif end != ts + ms - 1:
                    problem = f"opening {ts} has end_ts {end}, expected {ts + ms - 1}"
            elif timeframe.floor(ts) != ts or end != timeframe.end_ts(ts):
                problem = f"opening {ts} (end_ts {end}) is not a {tfname} candle"
        if problem is not None:
            raise ValueError(f"source {plugin!r} broke the row contract: row {n} {problem}")
