"""Reading and atomically replacing one partition file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from forge_core import SinkError

from . import layout
from .convert import forge_metadata, read_forge_metadata

# Candle columns are nearly all distinct values: dictionary pages only cost time and memory
# (5x slower, +20 MB per month written); zstd halves the files against snappy for little time.
WRITE_OPTIONS: dict[str, Any] = {"use_dictionary": False, "compression": "zstd"}


def dataset_schema(root: str) -> tuple[pa.Schema, str] | None:
    """The file schema of the dataset at ``root`` and its number type (``"decimal"`` or
    ``"float64"``), from the first file's footer (Forge keeps them all alike); ``None`` when it
    holds no file yet. Every entry of the tree is checked to be Forge's layout first."""
    files = list(layout.dataset_files(root))
    if not files:
        return None
    first = files[0]
    try:
        schema = pq.read_schema(first)
    except (OSError, pa.ArrowException) as exc:
        raise SinkError(f"cannot read {first}: {exc}; it is not a Parquet file Forge wrote") from None
    meta = read_forge_metadata(schema)
    if meta is None:
        raise SinkError(f"parquet root {root} holds {os.path.relpath(first, root)!r}, "
                        "which Forge did not write; give --root an empty or new directory")
    return schema.remove_metadata(), str(meta.get("numbers"))


def read_partition(path: str, schema: pa.Schema | None) -> pa.Table | None:
    """What a partition file holds (``None`` if there is none), checked to be Forge's and, if
    ``schema`` is given, of the dataset's schema (returned in its column order)."""
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException) as exc:
        raise SinkError(f"cannot read {path}: {exc}; move it away to let Forge rewrite the month") from None
    if read_forge_metadata(table.schema) is None:
        raise SinkError(f"{path} was not written by Forge; it is left as it is")
    table = table.replace_schema_metadata(None)
    if schema is None:
        return table
    if set(table.column_names) != set(schema.names) or any(
            table.schema.field(f.name).type != f.type for f in schema):
        raise SinkError(f"{path} has another schema than the rest of the dataset; move it away to let "
                        "Forge rewrite the month")
    return table.select(schema.names)


def write_partition(table: pa.Table, path: str, tmp_dir: str, float64: bool) -> None:
    """Write ``table`` to a temporary file in ``tmp_dir``, fsync it, rename it over ``path``
    and fsync the directory: ``path`` is the old file or the new one, never a part of one."""
    table = table.replace_schema_metadata(forge_metadata(float64))
    try:
        layout.makedirs_durable(os.path.dirname(path))
        fd, tmp = tempfile.mkstemp(dir=tmp_dir, suffix=".tmp")
    except OSError as exc:
        raise SinkError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            pq.write_table(table, f, **WRITE_OPTIONS)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        remove(tmp)
        raise SinkError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        remove(tmp)
        raise
    layout.fsync_dir(os.path.dirname(path))


def upsert(old: pa.Table | None, new: pa.Table) -> pa.Table:
    """``old`` with the rows of ``new`` put in by ``open_ts`` (a row of ``new`` replaces the one
    with its open time), sorted by ``open_ts``."""
    if old is None or old.num_rows == 0:
        return new
    keep = pc.invert(pc.is_in(old["open_ts"], value_set=new["open_ts"].combine_chunks()))
    old = old.filter(keep)
    if old.num_rows == 0:
        return new
    merged = pa.concat_tables([old, new])
    return merged.take(pc.sort_indices(merged["open_ts"]))


def changed_rows(old: pa.Table | None, new: pa.Table) -> int:
    """Rows of ``new`` (unique ``open_ts``) that ``old`` does not hold with equal values: new open
    times, and those whose stored row differs in any column (nulls equal only to nulls)."""
    if old is None or old.num_rows == 0:
        return new.num_rows
    if set(old.column_names) != set(new.column_names):
        return new.num_rows
    held = old.filter(pc.is_in(old["open_ts"], value_set=new["open_ts"].combine_chunks()))
    if held.num_rows == 0:
        return new.num_rows
    ours = new.filter(pc.is_in(new["open_ts"], value_set=held["open_ts"].combine_chunks()))
    held = held.take(pc.sort_indices(held["open_ts"])).select(new.column_names)
    ours = ours.take(pc.sort_indices(ours["open_ts"]))
    inserted = new.num_rows - ours.num_rows
    differs = None
    for name in new.column_names:
        a, b = ours[name], held[name]
        if a.type != b.type:
            return new.num_rows
        same = pc.or_kleene(pc.fill_null(pc.equal(a, b), False), pc.and_(pc.is_null(a), pc.is_null(b)))
        differs = pc.invert(same) if differs is None else pc.or_(differs, pc.invert(same))
    changed = pc.sum(differs).as_py() if differs is not None else 0
    return inserted + (changed or 0)


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
