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

import io
import json
from array import array
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from forge_core import SinkError, TextRows

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
    text = "".join(values)  # TypeError if any is not a str
    data = text.encode("utf-8")
    sizes: Iterable[int] = map(len, values) if len(data) == len(text) else (len(v.encode("utf-8")) for v in values)
    if len(data) >= 2**31:
        raise OverflowError("batch too large for int32 offsets")
    offsets = array("i", [0])
    offsets.extend(accumulate(sizes))
    return pa.Array.from_buffers(pa.string(), len(values), [valid, _buffer(offsets), _buffer(data)])


def python_array(values: Sequence[Any]) -> pa.Array:
    """An Arrow array of Python values, of the type ``pa.array`` would infer for str, int,
    float and bool values (and ``None``), built without converting object by object."""
    first = _first(values)
    kind = type(first)
    valid = _validity(values)
    if valid is not None:
        fill = {str: "", bool: False, int: 0, float: 0.0}.get(kind)
        filled: Sequence[Any] = [fill if v is None else v for v in values]
    else:
        filled = values
    n = len(values)
    try:
        if first is None:
            return pa.nulls(n)
        if kind is str:
            return _strings(filled, valid)
        if kind is bool:
            if not all(type(v) is bool for v in filled):
                raise TypeError("not all bool")
            flags = bytes(filled)
            bits = pa.Array.from_buffers(pa.uint8(), n, [None, _buffer(flags)]).cast(pa.bool_(), memory_pool=POOL).buffers()[1]
            return pa.Array.from_buffers(pa.bool_(), n, [valid, bits])
        if kind is int:
            try:
                return pa.Array.from_buffers(pa.int64(), n, [valid, _buffer(array("q", filled))])
            except TypeError:  # floats among the ints: doubles, as pa.array infers
                kind = float
        if kind is float:
            return pa.Array.from_buffers(pa.float64(), n, [valid, _buffer(array("d", filled))])
    except (TypeError, OverflowError):
        pass
    return pa.array(values)  # other or mixed types: pyarrow's own conversion


def csv_arrays(columns: Sequence[str], text: str, ints: Sequence[str]) -> dict[str, pa.ChunkedArray]:
    """The columns of CSV records (``\r\n`` after each, nothing quoted, as
    :meth:`forge_core.Batch.csv_text` gives them) read by pyarrow's C reader: the ``ints``
    columns as int64, every other one as the strings it holds (Hive keys are skipped)."""
    wanted = [c for c in columns if c not in HIVE_KEYS]
    table = pcsv.read_csv(
        io.BytesIO(text.encode("utf-8")),
        read_options=pcsv.ReadOptions(column_names=list(columns), use_threads=False, block_size=1 << 24),
        parse_options=pcsv.ParseOptions(quote_char=False, double_quote=False, escape_char=False,
                                        newlines_in_values=False),
        convert_options=pcsv.ConvertOptions(
            column_types={c: (pa.int64() if c in ints else pa.string()) for c in wanted},
            include_columns=wanted, null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False),
        memory_pool=POOL)
    return {c: table[c] for c in wanted}


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return pa.concat_arrays(values.chunks, memory_pool=POOL) if isinstance(values, pa.ChunkedArray) else values


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


def column_arrays(columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> dict[str, pa.Array | pa.ChunkedArray]:
    """One array per column (Hive keys skipped) of the rows: rows held as CSV text
    (:class:`forge_core.TextRows`) are read by pyarrow's CSV reader, others column by column."""
    if isinstance(rows, TextRows) and rows.columns == tuple(columns):
        return csv_arrays(columns, rows.text(), [rows.columns[i] for i in rows.ints])
    if not rows:
        return {c: pa.nulls(0) for c in columns if c not in HIVE_KEYS}
    return {c: python_array(v) for c, v in zip(columns, zip(*rows, strict=True), strict=True) if c not in HIVE_KEYS}


def to_table(columns: Sequence[str], rows: Sequence[tuple[Any, ...]], schema: pa.Schema | None, float64: bool,
             where: str) -> pa.Table:
    """The rows as a table with the file columns; of ``schema``'s types and order if given."""
    for name in (*RESERVED, OPEN_TIME):
        if name in columns:
            raise SinkError(f"{where}: the parquet sink derives column {name!r} itself; "
                            f"rename it (e.g. --transform select) or use another sink")
    if "open_ts" not in columns:
        raise SinkError(f"{where}: the parquet sink needs the open_ts column (partitions and upserts use it)")
    data = column_arrays(columns, rows)
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
