"""Batches of Python tuples to Arrow tables with the dataset's one schema.

Types (the file columns; ``source``, ``symbol``, ``timeframe`` are Hive directory keys instead):

* ``open_ts``, ``end_ts``: ``int64`` UTC epoch milliseconds, as Forge passes them; ``open_time``
  (added right after ``open_ts``): the same instant as ``timestamp[ms, tz=UTC]``.
* exchange decimal strings (prices, volumes, and any other column whose strings are all plain
  decimals): ``decimal128(38, s)``, exact. The scale ``s`` of each column is taken from the
  strings when the column first enters the dataset (the most digits after the point in that
  batch, at least 8), and kept: every file of a root has the same schema, so readers that scan
  many files never cast. A later value needing more digits is refused, never rounded.
  With ``float64=True`` these columns are ``float64`` instead.
* anything else (``trades``, columns added by transforms): Arrow's type for the Python values.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Callable, Sequence
from functools import lru_cache
from itertools import accumulate
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from forge_core import SinkError, TextRows
from forge_core.records import ColumnRows

HIVE_KEYS = ("source", "symbol", "timeframe")
RESERVED = ("year", "month")  # Hive keys derived from open_ts
OPEN_TIME = "open_time"
MIN_SCALE = 8
PRECISION = 38
DECIMAL_TEXT = r"^-?[0-9]+(\.[0-9]+)?$"
FORGE_KEY = b"forge"
INT_COLUMNS = ("open_ts", "end_ts")
# The sink's arrays come from the system allocator, not pyarrow's default (mimalloc), which
# keeps freed pages: with it a year's run peaked about 30 MiB higher for the same rows.
POOL = pa.system_memory_pool()


def forge_metadata(float64: bool) -> dict[bytes, bytes]:
    return {FORGE_KEY: json.dumps({"writer": "forge-etl-sink-parquet", "layout": 1,
                                   "numbers": "float64" if float64 else "decimal"}).encode()}


def read_forge_metadata(schema: pa.Schema) -> dict[str, Any] | None:
    raw = (schema.metadata or {}).get(FORGE_KEY)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _first(values: Sequence[Any]) -> Any:
    return next((v for v in values if v is not None), None)


# -- building arrays without pyarrow's Python-object conversion ---------------------------------
# pa.array() and pa.scalar() on Python values make pyarrow import pandas when it is installed
# (about 40 MiB of a process's memory), even for a list of ints. The sink builds its arrays
# from buffers instead: CSV text through pyarrow's C reader, Python values through the array
# module. Only values of other types (Decimal objects, mixed types) fall back to pa.array.

def _buffer(data: bytes | array) -> pa.Buffer:
    return pa.py_buffer(data)


def _validity(values: Sequence[Any]) -> pa.Buffer | None:
    """The validity bitmap of ``values`` (``None`` when nothing is missing)."""
    if None not in values:
        return None
    flags = bytes(v is not None for v in values)
    return pa.Array.from_buffers(pa.uint8(), len(flags), [None, _buffer(flags)]).cast(pa.bool_(), memory_pool=POOL).buffers()[1]


def _strings(values: Sequence[str], valid: pa.Buffer | None) -> pa.Array:
    """Strings joined by newlines into one value and split again by pyarrow (no Python work
    per value; faster than ``pa.array``); values holding a newline are measured one by one."""
    n = len(values)
    text = "\n".join(values)  # TypeError if any is not a str
    data = text.encode("utf-8")
    if len(data) >= 2**31:
        raise OverflowError("batch too large for int32 offsets")
    if n and text.count("\n") == n - 1:
        one = pa.Array.from_buffers(pa.string(), 1, [None, _buffer(array("i", [0, len(data)])), _buffer(data)])
        split = pc.split_pattern(one, "\n", memory_pool=POOL).flatten()
        return pa.Array.from_buffers(pa.string(), n, [valid, *split.buffers()[1:]], offset=split.offset)
    data = "".join(values).encode("utf-8")
    offsets = array("i", [0])
    offsets.extend(accumulate(len(v.encode("utf-8")) for v in values))
    return pa.Array.from_buffers(pa.string(), n, [valid, _buffer(offsets), _buffer(data)])


def _typed(kind: type, values: Sequence[Any], valid: pa.Buffer | None) -> pa.Array:
    """The array of ``values``, all of ``kind`` (``None`` already replaced, ``valid`` saying
    where); TypeError or OverflowError when they are not."""
    n = len(values)
    if kind is str:
        return _strings(values, valid)
    if kind is int:
        try:
            return pa.Array.from_buffers(pa.int64(), n, [valid, _buffer(array("q", values))])
        except TypeError:  # floats among the ints: doubles, as pa.array infers
            kind = float
    if kind is float:
        return pa.Array.from_buffers(pa.float64(), n, [valid, _buffer(array("d", values))])
    if kind is bool:
        if not all(type(v) is bool for v in values):
            raise TypeError("not all bool")
        flags = pa.Array.from_buffers(pa.uint8(), n, [None, _buffer(bytes(values))])
        return pa.Array.from_buffers(pa.bool_(), n, [valid, flags.cast(pa.bool_(), memory_pool=POOL).buffers()[1]])
    raise TypeError(f"no fast path for {kind.__name__}")


def python_array(values: Sequence[Any]) -> pa.Array:
    """An Arrow array of Python values, of the type ``pa.array`` would infer for str, int,
    float and bool values (and ``None``), built without converting object by object."""
    first = _first(values)
    if first is None:
        return pa.nulls(len(values))
    kind = type(first)
    try:
        return _typed(kind, values, None)  # TypeError too when a value is None
    except (TypeError, OverflowError):
        pass
    valid = _validity(values)
    if valid is not None:
        fill = {str: "", bool: False, int: 0, float: 0.0}.get(kind)
        try:
            return _typed(kind, [fill if v is None else v for v in values], valid)
        except (TypeError, OverflowError):
            pass
    return pa.array(values)  # other or mixed types: pyarrow's own conversion


_CSV_PARSE = pcsv.ParseOptions(quote_char=False, double_quote=False, escape_char=False, newlines_in_values=False)


@lru_cache(maxsize=16)
def _csv_convert(columns: tuple[str, ...], ints: tuple[str, ...]) -> pcsv.ConvertOptions:
    wanted = [c for c in columns if c not in HIVE_KEYS]
    return pcsv.ConvertOptions(column_types={c: (pa.int64() if c in ints else pa.string()) for c in wanted},
                               include_columns=wanted, null_values=[], strings_can_be_null=False,
                               quoted_strings_can_be_null=False)


def csv_arrays(columns: Sequence[str], text: str, ints: Sequence[str]) -> dict[str, pa.ChunkedArray]:
    """The columns of CSV records (``\\r\\n`` after each, nothing quoted, as
    :meth:`forge_core.Batch.csv_text` gives them) read by pyarrow's C reader: the ``ints``
    columns as int64, every other one as the strings it holds (Hive keys are skipped)."""
    data = text.encode("utf-8")
    table = pcsv.read_csv(
        pa.BufferReader(data),  # one block: one chunk per column, no block buffer larger than the text
        read_options=pcsv.ReadOptions(column_names=list(columns), use_threads=False,
                                      block_size=max(len(data) + 1, 1 << 12)),
        parse_options=_CSV_PARSE, convert_options=_csv_convert(tuple(columns), tuple(ints)), memory_pool=POOL)
    return {c: table[c] for c in table.column_names}


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if not isinstance(values, pa.ChunkedArray):
        return values
    return values.chunk(0) if values.num_chunks == 1 else pa.concat_arrays(values.chunks, memory_pool=POOL)


def _scale_needed(strings: pa.Array) -> int:
    """The most digits after the point among decimal strings."""
    dotted = strings.filter(pc.match_substring(strings, "."))
    if len(dotted) == 0:
        return 0
    most = pc.max(pc.subtract(pc.utf8_length(dotted), pc.find_substring(dotted, "."))).as_py()
    return int(most) - 1


def _is_decimal_text(strings: pa.Array) -> bool:
    if strings.null_count == len(strings):
        return False
    return bool(pc.all(pc.match_substring_regex(strings, DECIMAL_TEXT)).as_py())


def new_column(name: str, values: pa.Array, float64: bool) -> pa.Array:
    """The array for a column the dataset does not have yet: its type becomes the dataset's."""
    if name in INT_COLUMNS:
        return values if values.type == pa.int64() else values.cast(pa.int64(), memory_pool=POOL)
    if pa.types.is_string(values.type):
        if _is_decimal_text(values):
            if float64:
                return values.cast(pa.float64(), memory_pool=POOL)
            return values.cast(pa.decimal128(PRECISION, max(MIN_SCALE, _scale_needed(values))), memory_pool=POOL)
        return values
    if pa.types.is_decimal(values.type) and not float64:  # Decimal objects: the dataset's decimal width
        return values.cast(pa.decimal128(PRECISION, max(MIN_SCALE, values.type.scale)), memory_pool=POOL)
    if pa.types.is_decimal(values.type):
        return values.cast(pa.float64(), memory_pool=POOL)
    return values


def _castable(source: pa.DataType, target: pa.DataType) -> bool:
    """Casts that keep what the values say: numbers to numbers, decimal strings to numbers,
    missing values to anything (a string is never parsed into an int, an int never printed)."""
    def numeric(t: pa.DataType) -> bool:
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)

    if pa.types.is_null(source) or source == target:
        return True
    if pa.types.is_string(source):
        return pa.types.is_decimal(target) or pa.types.is_floating(target)
    return numeric(source) and numeric(target)


def column(name: str, values: pa.Array, target: pa.DataType, where: str) -> pa.Array:
    """The array ``values`` as the dataset's type ``target`` for the column ``name``."""
    if values.type == target or pa.types.is_null(target):
        return values
    if _castable(values.type, target):
        try:
            return values.cast(target, memory_pool=POOL)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            pass
    raise SinkError(_mismatch(name, values, target, where))


def _mismatch(name: str, values: pa.Array, target: pa.DataType, where: str) -> str:
    if pa.types.is_decimal(target) and pa.types.is_string(values.type) and _is_decimal_text(values):
        need = _scale_needed(values)
        if need > target.scale:
            worst = next(v for v in values.to_pylist() if v is not None and "." in v and len(v.split(".")[1]) == need)
            return (f"{where}: {name} value {worst} needs {need} decimal places, but the dataset stores "
                    f"{name} as {target}; write to a new --root (or use --parquet-float)")
        return f"{where}: a {name} value has more than {target.precision - target.scale} digits before the point"
    sample = _first(values.to_pylist())
    return (f"{where}: column {name!r} holds {type(sample).__name__} values like {sample!r}, but the dataset "
            f"stores it as {target}; write to a new --root")


def held_array(values: Sequence[Any]) -> pa.Array:
    """The array of one column's values: an int64 ``array`` is taken as it is (no copy), other
    values through :func:`python_array`."""
    if isinstance(values, array) and values.typecode == "q":
        return pa.Array.from_buffers(pa.int64(), len(values), [None, _buffer(values)])
    return python_array(values)


def column_arrays(columns: Sequence[str], rows: Sequence[tuple[Any, ...]],
                  where: str) -> dict[str, pa.Array | pa.ChunkedArray]:
    """One array per column (Hive keys skipped) of the rows: rows held as CSV text
    (:class:`forge_core.TextRows`) are read by pyarrow's CSV reader, rows held as columns
    (:class:`~forge_core.records.ColumnRows`, a decoded REST page) from their columns, others
    column by column from the tuples."""
    columns = tuple(columns)
    if isinstance(rows, ColumnRows) and rows.columns == columns:
        return _arrays(columns, rows.column, where)
    if isinstance(rows, TextRows) and rows.columns == columns:
        text = rows.text()  # what Batch.csv_text() gives: None when the rows have no plain text
        if text is not None:
            return csv_arrays(columns, text, [rows.columns[i] for i in rows.ints])
    if not rows:
        return {c: pa.nulls(0) for c in columns if c not in HIVE_KEYS}
    by_name = dict(zip(columns, zip(*rows, strict=True), strict=True))
    return _arrays(columns, by_name.__getitem__, where)


def _arrays(columns: Sequence[str], values: Callable[[str], Sequence[Any]],
            where: str) -> dict[str, pa.Array | pa.ChunkedArray]:
    out: dict[str, pa.Array | pa.ChunkedArray] = {}
    for name in columns:
        if name in HIVE_KEYS:
            continue
        try:
            out[name] = held_array(values(name))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError) as exc:
            raise SinkError(f"{where}: the parquet sink cannot store column {name!r}: {exc}") from None
    return out


def to_table(columns: Sequence[str], rows: Sequence[tuple[Any, ...]], schema: pa.Schema | None, float64: bool,
             where: str) -> pa.Table:
    """The rows as a table with the file columns; of ``schema``'s types and order if given."""
    for name in (*RESERVED, OPEN_TIME):
        if name in columns:
            raise SinkError(f"{where}: the parquet sink derives column {name!r} itself; "
                            f"rename it (e.g. --transform select) or use another sink")
    if "open_ts" not in columns:
        raise SinkError(f"{where}: the parquet sink needs the open_ts column (partitions and upserts use it)")
    data = column_arrays(columns, rows, where)
    names: list[str] = []
    arrays: list[pa.Array] = []
    targets = {f.name: f.type for f in schema} if schema is not None else {}
    for name in columns:
        if name in HIVE_KEYS:
            continue
        values = _plain(data[name])
        target = targets.get(name)
        arr = new_column(name, values, float64) if target is None else column(name, values, target, where)
        names.append(name)
        arrays.append(arr)
        if name == "open_ts":
            names.append(OPEN_TIME)
            arrays.append(arr.cast(pa.timestamp("ms", tz="UTC"), memory_pool=POOL))
    table = pa.Table.from_arrays(arrays, names=names)
    if schema is None:
        return table
    if set(names) != set(schema.names):
        raise SinkError(f"{where}: the rows have columns {','.join(names)} but the dataset's files have "
                        f"{','.join(schema.names)}; write to a new --root (one root holds one schema)")
    return table.select(schema.names)
