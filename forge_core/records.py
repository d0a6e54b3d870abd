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

import json
import operator
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any, overload

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

    def csv_text(self) -> str | None:
        """The rows as CSV records in ``columns`` order (``\\r\\n`` after each, no field
        quoted), exactly what ``csv.writer`` writes for them, when the batch holds them as
        :class:`TextRows` that have it; else ``None`` (build the text from the rows)."""
        rows = self.rows
        if isinstance(rows, TextRows) and rows.columns == self.columns:
            return rows.text()
        return None


class TextRows(Sequence[Row]):
    """Rows of one series kept as CSV text instead of a tuple per row: what a source that reads
    CSV (Binance's archive) hands on when the exchange's strings already are the fields.

    It is an ordinary sequence of rows: iterating, indexing or slicing gives the same tuples
    :func:`row_maker` would build (ints where the columns are ints, the exchange's strings
    elsewhere), built chunk by chunk on demand. ``open_ts`` and ``end_ts`` are kept as arrays,
    so the run loop checks, trims and orders the rows without building them, and a CSV sink
    writes :meth:`text` as it is (:meth:`Batch.csv_text`). Build one with :meth:`build`."""

    __slots__ = ("columns", "texts", "sizes", "open_ts", "end_ts", "ints", "fixed", "step", "_steady", "_cache")

    def __init__(self, columns: tuple[str, ...], texts: list[str], sizes: list[int], open_ts: array,
                 end_ts: array, ints: tuple[int, ...], fixed: dict[str, str]) -> None:
        self.columns, self.texts, self.sizes = columns, texts, sizes
        self.open_ts, self.end_ts, self.ints, self.fixed = open_ts, end_ts, ints, fixed
        self.step: int | None = None  # opens are every `step` ms, no gap (set by steady())
        self._steady: tuple[int, int, int] | None = None  # (ms, grid offset, rows) steady() found
        self._cache: tuple[int, list[Row]] | None = None

    def steady(self, timeframe: Timeframe) -> bool:
        """Whether the rows are one unbroken run of ``timeframe``'s grid, every ``end_ts`` the
        last millisecond of its period: checked on the whole arrays at once, and remembered
        (the source's check and the run loop's then cost one pass)."""
        ms, n = timeframe.ms, len(self.open_ts)
        if ms is None or not n:
            return False
        key = (ms, timeframe.floor(0), n)
        if self._steady == key:
            return True
        first, offset = self.open_ts[0], key[1]
        if first < 0 or first + n * ms >= 1 << 63:
            return False
        if (first - offset) % ms or self.open_ts != ramp(first, n, ms) or self.end_ts != ramp(first + ms - 1, n, ms):
            return False
        self.step, self._steady = ms, key
        return True

    def _carry(self, out: TextRows, start: int = 0) -> TextRows:
        """``out`` (a part of these rows from row ``start``) keeps what :meth:`steady` found."""
        out.step = self.step
        if self._steady is not None and len(out.open_ts):
            out._steady = (self._steady[0], self._steady[1], len(out.open_ts))
        return out

    @classmethod
    def build(cls, columns: Sequence[str], fields: Mapping[str, Sequence[str]], *,
              fixed: Mapping[str, str], ints: Sequence[str] = (), plain: bool = False) -> TextRows | None:
        """Rows from one list of strings per column (``fields``) and one value per constant
        column (``fixed``: ``source``, ``symbol``, ``timeframe``). ``open_ts``, ``end_ts`` and
        the ``ints`` columns are ints in the rows: their strings must be canonical decimal
        integers. ``None`` when any field would need CSV quoting or an int is not canonical
        (the caller builds tuples then); :func:`check_rows` checks the rest as for any row.
        ``plain=True`` says the caller has made sure no value holds a comma, quote, CR or LF
        (e.g. it checked the bytes they came from), which saves scanning the text for them."""
        columns = tuple(columns)
        if set(columns) != set(fields) | set(fixed) or set(fields) & set(fixed):
            raise TypeError(f"give every column ({', '.join(columns)}) once, in fields or fixed")
        int_names = ("open_ts", "end_ts", *ints)
        arrays = {}
        for name in ("open_ts", "end_ts"):
            arr = _ints(fields[name])
            if arr is None:
                return None
            arrays[name] = arr
        if not all(_canonical(fields[name]) for name in ints):
            return None
        n = len(arrays["open_ts"])
        if any(len(v) != n for v in fields.values()):
            raise ValueError("every column needs the same number of values")
        if not n:
            return cls(columns, [], [], array("q"), array("q"), (), dict(fixed))
        parts = [repeat(fixed[c], n) if c in fixed else fields[c] for c in columns]
        text = "\r\n".join(map(",".join, zip(*parts, strict=True))) + "\r\n"
        width = len(columns)
        if not plain and ('"' in text or text.count(",") != n * (width - 1) or text.count("\n") != n
                          or text.count("\r") != n):
            return None
        return cls(columns, [text], [n], arrays["open_ts"], arrays["end_ts"],
                   tuple(columns.index(c) for c in int_names), dict(fixed))

    @classmethod
    def from_text(cls, columns: Sequence[str], text: str, open_ts: array, end_ts: array, *,
                  fixed: Mapping[str, str], ints: Sequence[str] = ()) -> TextRows | None:
        """Rows from CSV records a CSV writer made (``\\r\\n`` after each, nothing quoted, the
        ``fixed`` values in their columns) with their ``open_ts`` and ``end_ts`` as int64
        arrays parsed from the same values. Checked cheaply: as many records as opens, and
        the first and last records agree with the arrays and ``fixed``; ``None`` if not."""
        columns = tuple(columns)
        n = len(open_ts)
        if len(end_ts) != n or text.count("\n") != n or (n and not text.endswith("\r\n")):
            return None
        int_names = ("open_ts", "end_ts", *ints)
        out = cls(columns, [text] if n else [], [n] if n else [], open_ts, end_ts,
                  tuple(columns.index(c) for c in int_names), dict(fixed))
        if n:
            cut = text.find("\r\n")
            first = text[:cut].split(",")
            last = text[text.rfind("\n", 0, len(text) - 2) + 1:-2].split(",")
            i_open, i_end = columns.index("open_ts"), columns.index("end_ts")
            for row, at in ((first, 0), (last, n - 1)):
                if (len(row) != len(columns) or row[i_open] != str(open_ts[at]) or row[i_end] != str(end_ts[at])
                        or any(row[columns.index(c)] != v for c, v in fixed.items())):
                    return None
        return out

    @classmethod
    def from_columns(cls, columns: Sequence[str], values: Mapping[str, Sequence[Any]], *,
                     fixed: Mapping[str, str], ints: Sequence[str] = (), plain: bool = False) -> ColumnRows | None:
        """Rows from one sequence per column (``fixed``: one value per constant column), as a
        source that decodes a page has them. ``open_ts``, ``end_ts`` and the ``ints`` columns
        hold ints, or canonical decimal strings (kept for the text; the rows get ints); the
        others any values. Nothing is joined or split here: iterating zips the columns into
        tuples, and the CSV text (:meth:`text`) is joined on first use, or is ``None`` when a
        value is not a string or would need CSV quoting (the sink then writes the tuples;
        ``plain=True``: the caller has made sure no value holds a comma, quote, CR or LF).
        ``None`` when an int column holds anything else (a bool counts as an int) or a value
        beyond 64 bits: the caller builds its tuples then."""
        columns = tuple(columns)
        if set(columns) != set(values) | set(fixed) or set(values) & set(fixed):
            raise TypeError(f"give every column ({', '.join(columns)}) once, in values or fixed")
        n = len(values["open_ts"])
        if any(len(v) != n for v in values.values()):
            raise ValueError("every column needs the same number of values")
        held: list[Any] = [fixed[c] if c in fixed else values[c] for c in columns]
        arrays: dict[int, array] = {}
        try:
            for name in ("open_ts", "end_ts", *ints):
                i, col = columns.index(name), values[name]
                if n and type(col[0]) is str:  # decimal text: kept as it is for the CSV text
                    if name in ("open_ts", "end_ts"):
                        got = _decimal_ints(col)
                        if got is None:
                            return None
                        arrays[i] = got
                    elif not _canonical(col):
                        return None  # else int() when rows are built
                else:
                    held[i] = arrays[i] = array("q", col)
        except (TypeError, OverflowError, AttributeError):  # array() refuses a str, float or None; text mixed with ints
            return None
        if plain and any(c in v for v in fixed.values() for c in ',"\r\n'):
            plain = False
        return ColumnRows(columns, held, arrays, dict(fixed), plain,
                          tuple(columns.index(c) for c in ("open_ts", "end_ts", *ints)))

    @classmethod
    def join(cls, parts: Sequence[TextRows]) -> TextRows:
        """One sequence of the rows of ``parts`` (same columns), in the order given."""
        first = parts[0]
        texts: list[str] = []
        sizes: list[int] = []
        opens, ends = array("q"), array("q")
        step = first.step
        for p in parts:
            if step is not None and (p.step != step or (opens and p and p.open_ts[0] != opens[-1] + step)):
                step = None
            texts += p.texts
            sizes += p.sizes
            opens += p.open_ts
            ends += p.end_ts
        out = cls(first.columns, texts, sizes, opens, ends, first.ints, first.fixed)
        out.step = step
        keys = {p._steady[:2] if p._steady is not None else None for p in parts if p}
        if step is not None and len(keys) == 1 and None not in keys:
            ms, offset = keys.pop()  # type: ignore[misc]
            out._steady = (ms, offset, len(opens))
        return out

    def __len__(self) -> int:
        return len(self.open_ts)

    def __bool__(self) -> bool:
        return len(self.open_ts) > 0

    def text(self) -> str:
        """The rows as CSV records (``\\r\\n`` after each), in ``columns`` order, no header."""
        return "".join(self.texts)

    @property
    def nbytes(self) -> int:
        """About the memory the rows hold (their text and int64 arrays), not counting what
        they share with other rows: what the run loop bounds its read-ahead by."""
        return sum(map(len, self.texts)) + 16 * len(self.open_ts)

    def column(self, name: str) -> Sequence[Any]:
        """One column's values in row order, as the rows hold them (ints in the int columns),
        without building a tuple per row: ``open_ts`` and ``end_ts`` are the arrays kept."""
        i = self.columns.index(name)  # ValueError naming nothing: callers check the name
        if name in ("open_ts", "end_ts"):
            return self.open_ts if name == "open_ts" else self.end_ts
        n = len(self.open_ts)
        if name in self.fixed:
            return [self.fixed[name]] * n
        width, out = len(self.columns), []
        for text in self.texts:
            out += text[:-2].replace("\r\n", ",").split(",")[i::width] if text else []
        return list(map(int, out)) if i in self.ints else out

    def chunks(self) -> Iterator[TextRows]:
        """The rows in pieces as they were read (bounded batches, a few thousand rows each)."""
        if len(self.texts) == 1:
            yield self
            return
        at = 0
        for text, size in zip(self.texts, self.sizes, strict=True):
            part = TextRows(self.columns, [text], [size], self.open_ts[at:at + size],
                            self.end_ts[at:at + size], self.ints, self.fixed)
            at += size
            yield self._carry(part)

    def _rows_of(self, k: int) -> list[Row]:
        cached = self._cache
        if cached is not None and cached[0] == k:
            return cached[1]
        rows = _parse(self.texts[k], self.sizes[k], len(self.columns), self.ints)
        self._cache = (k, rows)
        return rows

    def __iter__(self) -> Iterator[Row]:
        width, ints = len(self.columns), self.ints
        for text, size in zip(self.texts, self.sizes, strict=True):
            yield from _parse(text, size, width, ints)

    @overload
    def __getitem__(self, i: int) -> Row: ...
    @overload
    def __getitem__(self, i: slice) -> TextRows: ...

    def __getitem__(self, i: int | slice) -> Row | TextRows:
        n = len(self.open_ts)
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                raise ValueError("TextRows slices take no step")
            return self._slice(start, max(start, stop))
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("TextRows index out of range")
        at = 0
        for k, size in enumerate(self.sizes):
            if i < at + size:
                return self._rows_of(k)[i - at]
            at += size
        raise IndexError("TextRows index out of range")  # pragma: no cover

    def _slice(self, start: int, stop: int) -> TextRows:
        if start == 0 and stop == len(self.open_ts):
            return self
        texts, sizes, at = [], [], 0
        for text, size in zip(self.texts, self.sizes, strict=True):
            lo, hi = max(start - at, 0), min(stop - at, size)
            if lo < hi:
                if lo == 0 and hi == size:
                    texts.append(text)
                else:
                    lines = text.split("\r\n")
                    texts.append("\r\n".join(lines[lo:hi]) + "\r\n")
                sizes.append(hi - lo)
            at += size
        out = TextRows(self.columns, texts, sizes, self.open_ts[start:stop], self.end_ts[start:stop],
                       self.ints, self.fixed)
        return self._carry(out)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TextRows):
            return self.columns == other.columns and self.text() == other.text()
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TextRows({len(self)} rows of {', '.join(self.columns)})"


_UNJOINED: Any = object()


class ColumnRows(TextRows):
    """:class:`TextRows` held as columns (:meth:`TextRows.from_columns`): iterating zips the
    columns into tuples; :meth:`text` joins the CSV records once, on first use."""

    __slots__ = ("_values", "_arrays", "_plain", "_text")

    def __init__(self, columns: tuple[str, ...], values: list[Any], arrays: dict[int, array], fixed: dict[str, str],
                 plain: bool, ints: tuple[int, ...]) -> None:
        # values: per column, its sequence (what the text is joined from), or its one value if
        # it is in `fixed`; arrays: int columns' values by column index (what rows get); an
        # int column (`ints`) without one holds decimal strings, int() when rows are built
        self.columns, self.fixed, self._values, self._arrays, self._plain = columns, fixed, values, arrays, plain
        self.open_ts, self.end_ts = arrays[columns.index("open_ts")], arrays[columns.index("end_ts")]
        self.ints = ints
        self.sizes = [len(self.open_ts)] if self.open_ts else []
        self.step, self._steady, self._cache, self._text = None, None, None, _UNJOINED

    def text(self) -> str | None:  # type: ignore[override]
        """The CSV records ``csv.writer`` writes for the rows, or ``None`` if a value is not
        a string or needs quoting (then the rows are written as tuples)."""
        if self._text is _UNJOINED:
            self._text = self._join()
        return self._text  # type: ignore[no-any-return]

    def _join(self) -> str | None:
        n, width = len(self.open_ts), len(self.columns)
        if not n:
            return ""
        parts: list[Iterable[Any]] = []
        run: list[str] = []
        for c, v in zip(self.columns, self._values, strict=True):
            if c in self.fixed:
                run.append(v)  # constant columns side by side become one constant
                continue
            if run:
                parts.append(repeat(",".join(run), n))
                run = []
            parts.append(map(str, v) if isinstance(v, array) else v)
        if run:
            parts.append(repeat(",".join(run), n))
        try:
            text = "\r\n".join(map(",".join, zip(*parts, strict=True))) + "\r\n"
        except TypeError:  # a value that is not a string
            return None
        if not self._plain and ('"' in text or text.count(",") != n * (width - 1) or text.count("\n") != n
                                or text.count("\r") != n):
            return None
        return text

    @property
    def nbytes(self) -> int:
        n, total = len(self.open_ts), 0
        for c, v in zip(self.columns, self._values, strict=True):
            if c not in self.fixed and n:
                total += v.itemsize * n if isinstance(v, array) else n * (8 + sys.getsizeof(v[0]))
        total += sum(a.itemsize * n for i, a in self._arrays.items() if a is not self._values[i])
        return total + (len(self._text) if isinstance(self._text, str) else 0)

    def column(self, name: str) -> Sequence[Any]:
        i = self.columns.index(name)
        if name in self.fixed:
            return [self.fixed[name]] * len(self.open_ts)
        if i in self._arrays:
            return self._arrays[i]
        values = self._values[i]
        return list(map(int, values)) if i in self.ints else values

    @property  # type: ignore[override]
    def texts(self) -> list[str]:
        text = self.text()
        if text is None:
            raise TypeError("these rows have no plain CSV text: iterate them")
        return [text] if text else []

    def __iter__(self) -> Iterator[Row]:
        n, arrays, ints = len(self.open_ts), self._arrays, self.ints
        return zip(*[repeat(v, n) if c in self.fixed else arrays[i] if i in arrays else map(int, v) if i in ints else v
                     for i, (c, v) in enumerate(zip(self.columns, self._values, strict=True))], strict=True)

    def _rows_of(self, k: int) -> list[Row]:
        if self._cache is None:
            self._cache = (0, list(self))
        return self._cache[1]

    def chunks(self) -> Iterator[TextRows]:
        yield self

    def _slice(self, start: int, stop: int) -> TextRows:
        if start == 0 and stop == len(self.open_ts):
            return self
        values = [v if c in self.fixed else v[start:stop] for c, v in zip(self.columns, self._values, strict=True)]
        arrays = {i: a[start:stop] for i, a in self._arrays.items()}
        return self._carry(ColumnRows(self.columns, values, arrays, self.fixed, self._plain, self.ints))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return self.columns == getattr(other, "columns", self.columns) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


def _ints(values: Sequence[str]) -> array | None:
    """``values`` as int64s if each is a canonical decimal integer (what ``str(int(v))`` gives
    back), else None."""
    if not _canonical(values):
        return None
    try:
        return array("q", list(map(int, values)))
    except OverflowError:
        return None


def _decimal_ints(values: Sequence[str]) -> array | None:
    """``values`` as int64s if each is a canonical decimal integer, else None, without an
    ``int`` per value: an evenly spaced run (a page's open times) is compared as one string
    with the run its first two values start (one ``%`` format), then laid out by :func:`ramp`;
    anything else is read by the JSON decoder in one call (it refuses leading zeros and empty
    values)."""
    n, head = len(values), values[0]
    if n > 1 and head.isdigit() and values[1].isdigit():
        first = int(head)
        step = int(values[1]) - first
        stop = first + n * step
        if step > 0 and stop < 1 << 63 and ",".join(values) == ("%d," * (n - 1) + "%d") % tuple(range(first, stop, step)):
            return ramp(first, n, step)
    if not "".join(values).isdigit():  # no sign, space, dot or "_" (JSON refuses non-ASCII digits)
        return None
    try:
        return array("q", json.loads("[" + ",".join(values) + "]"))
    except (ValueError, TypeError, OverflowError):
        return None


def _canonical(values: Sequence[str]) -> bool:
    """Whether every value is a decimal integer as ``str(int(v))`` writes it."""
    if not values:
        return True
    joined = "".join(values)
    if joined.isascii() and joined.isdigit() and "" not in values:  # only the digits 0-9: no sign, space or "_"
        # a value starting with "0" must be "0" itself (no leading zeros)
        return ("," + ",".join(values)).count(",0") == values.count("0")
    try:
        return list(map(str, map(int, values))) == list(values)
    except (ValueError, TypeError):
        return False


def ramp(first: int, n: int, step: int) -> array:
    """``array("q", range(first, first + n * step, step))`` about four times faster: the int64s
    are laid side by side in one big integer, doubled in place (``log2(n)`` big-integer
    operations instead of a Python int per element), then copied out as bytes. Every value
    must be in ``[0, 2**63)``."""
    if n <= 0:
        return array("q")
    if first < 0 or first + (n - 1) * step >= 1 << 63 or step < 0:
        raise ValueError("ramp values must be in [0, 2**63)")
    value, ones, m = first, 1, 1  # value = sum(first + k*step << 64k for k < m), ones = sum(1 << 64k)
    while m < n:
        shift = 64 * m
        value |= (value + m * step * ones) << shift
        ones |= ones << shift
        m *= 2
    out = array("q")
    out.frombytes(value.to_bytes(8 * m, "little")[: 8 * n])
    if sys.byteorder != "little":
        out.byteswap()
    return out


def _parse(text: str, size: int, width: int, ints: tuple[int, ...]) -> list[Row]:
    """The tuples of ``size`` CSV records of ``width`` plain fields."""
    flat = text[:-2].replace("\r\n", ",").split(",")
    cols: list[Iterable[Any]] = [flat[i::width] for i in range(width)]
    for i in ints:
        cols[i] = map(int, cols[i])
    return list(zip(*cols, strict=True))


@dataclass(frozen=True)
class Fetched:
    """What :meth:`forge_core.Source.fetch` may return instead of bare rows, to say where they
    came from (``origin``: ``"rest"``, ``"archive"``, ``"archive+rest"``...). Bare rows count as
    the task's ``kind``. ``rows`` may be :class:`TextRows`."""

    rows: Sequence[Row]
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
    if isinstance(rows, TextRows):
        return _check_text_rows(rows, tuple(columns), timeframe, plugin, source=source, symbol=symbol)
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


def _check_text_rows(rows: TextRows, columns: tuple[str, ...], timeframe: Timeframe, plugin: str, *,
                     source: str, symbol: str) -> None:
    """:func:`check_rows` for :class:`TextRows`: its width and constant columns hold by
    construction; ``open_ts`` and ``end_ts`` are checked as whole arrays when the opens are
    one unbroken run of the grid (the usual case), row by row otherwise."""
    def fail(n: int, problem: str) -> None:
        raise ValueError(f"source {plugin!r} broke the row contract: row {n} {problem}")

    if rows.columns != columns:
        fail(0, f"has columns ({', '.join(rows.columns)}) for ({', '.join(columns)})")
    if not {"source", "symbol", "timeframe"} <= rows.fixed.keys():
        return check_rows(list(rows), columns, timeframe, plugin, source=source, symbol=symbol)
    got = (rows.fixed["source"], rows.fixed["symbol"], rows.fixed["timeframe"])
    if got != (source, symbol, timeframe.name):
        fail(0, f"says source={got[0]!r} symbol={got[1]!r} timeframe={got[2]!r}, "
                f"expected {source!r} {symbol!r} {timeframe.name!r}")
    n = len(rows)
    if not n:
        return
    opens, ends, ms, tfname = rows.open_ts, rows.end_ts, timeframe.ms, timeframe.name
    if ms is not None:
        if rows.steady(timeframe):
            return
        offset = timeframe.floor(0)
        for k, (ts, end) in enumerate(zip(opens, ends, strict=True)):
            if (ts - offset) % ms:
                fail(k, f"opens at {ts}, not on the {tfname} grid")
            if end != ts + ms - 1:
                fail(k, f"opening {ts} has end_ts {end}, expected {ts + ms - 1}")
        return
    for k, (ts, end) in enumerate(zip(opens, ends, strict=True)):
        if timeframe.floor(ts) != ts or end != timeframe.end_ts(ts):
            fail(k, f"opening {ts} (end_ts {end}) is not a {tfname} candle")


def ascending(opens: Sequence[int]) -> bool:
    """Whether ``opens`` rise strictly."""
    return all(map(operator.lt, opens, islice(opens, 1, None)))


def after_point(ends: Sequence[int], point: int) -> int:
    """Index of the first row whose (ascending) ``end_ts`` is after ``point``."""
    return bisect_right(ends, point)
