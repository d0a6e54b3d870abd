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
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from forge_core import SinkError

HIVE_KEYS = ("source", "symbol", "timeframe")
RESERVED = ("year", "month")  # Hive keys derived from open_ts
OPEN_TIME = "open_time"
MIN_SCALE = 8
PRECISION = 38
DECIMAL_TEXT = r"^-?[0-9]+(\.[0-9]+)?$"
FORGE_KEY = b"forge"
INT_COLUMNS = ("open_ts", "end_ts")


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


def _scale_needed(strings: pa.Array) -> int:
    dot = pc.find_substring(strings, ".")
    digits = pc.if_else(pc.less(dot, 0), 0, pc.subtract(pc.subtract(pc.utf8_length(strings), dot), 1))
    return int(pc.max(digits).as_py() or 0)


def _is_decimal_text(strings: pa.Array) -> bool:
    if strings.null_count == len(strings):
        return False
    return bool(pc.all(pc.match_substring_regex(strings, DECIMAL_TEXT)).as_py())


def new_column(name: str, values: Sequence[Any], float64: bool) -> pa.Array:
    """An array for a column the dataset does not have yet: its type becomes the dataset's."""
    if name in INT_COLUMNS:
        return pa.array(values, pa.int64())
    if isinstance(_first(values), str):
        strings = pa.array(values, pa.string())
        if _is_decimal_text(strings):
            if float64:
                return strings.cast(pa.float64())
            return strings.cast(pa.decimal128(PRECISION, max(MIN_SCALE, _scale_needed(strings))))
        return strings
    try:
        arr = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
        raise SinkError(f"the parquet sink cannot store column {name!r}: {exc}") from None
    if pa.types.is_decimal(arr.type) and not float64:  # Decimal objects: the dataset's decimal width
        return arr.cast(pa.decimal128(PRECISION, max(MIN_SCALE, arr.type.scale)))
    if pa.types.is_decimal(arr.type):
        return arr.cast(pa.float64())
    return arr


def column(name: str, values: Sequence[Any], target: pa.DataType, where: str) -> pa.Array:
    """An array of the dataset's type ``target`` for the column ``name``."""
    try:
        if pa.types.is_decimal(target) or pa.types.is_floating(target):
            first = _first(values)
            raw = pa.array(values, pa.string()) if isinstance(first, str) or first is None else pa.array(values)
            return raw.cast(target)
        if target == pa.null():
            return pa.array(values)
        return pa.array(values, target)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError):
        pass
    raise SinkError(_mismatch(name, values, target, where))


def _mismatch(name: str, values: Sequence[Any], target: pa.DataType, where: str) -> str:
    if pa.types.is_decimal(target) and isinstance(_first(values), str):
        strings = pa.array(values, pa.string())
        if _is_decimal_text(strings):
            need = _scale_needed(strings)
            if need > target.scale:
                worst = next(v for v in values if v is not None and "." in v and len(v.split(".")[1]) == need)
                return (f"{where}: {name} value {worst} needs {need} decimal places, but the dataset stores "
                        f"{name} as {target}; write to a new --root (or use --parquet-float)")
            return f"{where}: a {name} value has more than {target.precision - target.scale} digits before the point"
    sample = _first(values)
    return (f"{where}: column {name!r} holds {type(sample).__name__} values like {sample!r}, but the dataset "
            f"stores it as {target}; write to a new --root")


def to_table(columns: Sequence[str], rows: list[tuple[Any, ...]], schema: pa.Schema | None, float64: bool,
             where: str) -> pa.Table:
    """The rows as a table with the file columns; of ``schema``'s types and order if given."""
    for name in (*RESERVED, OPEN_TIME):
        if name in columns:
            raise SinkError(f"{where}: the parquet sink derives column {name!r} itself; "
                            f"rename it (e.g. --transform select) or use another sink")
    if "open_ts" not in columns:
        raise SinkError(f"{where}: the parquet sink needs the open_ts column (partitions and upserts use it)")
    data = dict(zip(columns, zip(*rows, strict=True), strict=True)) if rows else {c: () for c in columns}
    names: list[str] = []
    arrays: list[pa.Array] = []
    targets = {f.name: f.type for f in schema} if schema is not None else {}
    for name in columns:
        if name in HIVE_KEYS:
            continue
        values = data[name]
        target = targets.get(name)
        arr = new_column(name, values, float64) if target is None else column(name, values, target, where)
        names.append(name)
        arrays.append(arr)
        if name == "open_ts":
            names.append(OPEN_TIME)
            arrays.append(arr.cast(pa.timestamp("ms", tz="UTC")))
    table = pa.Table.from_arrays(arrays, names=names)
    if schema is None:
        return table
    if set(names) != set(schema.names):
        raise SinkError(f"{where}: the rows have columns {','.join(names)} but the dataset's files have "
                        f"{','.join(schema.names)}; write to a new --root (one root holds one schema)")
    return table.select(schema.names)
