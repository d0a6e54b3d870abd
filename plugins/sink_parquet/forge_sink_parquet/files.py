"""Reading and atomically replacing one partition file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from array import array
from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from forge_core import SinkError

from . import layout
from .convert import POOL, forge_metadata, read_forge_metadata

# Candle columns are nearly all distinct values: dictionary pages only cost time and memory
# (5x slower, +20 MB per month written); zstd halves the files against snappy for little time.
WRITE_OPTIONS: dict[str, Any] = {"use_dictionary": False, "compression": "zstd"}
# Rows per row group: what a partition writer holds at most (about 1.3 MB of Binance 1m
# candles), and what a reader decodes at a time.
ROW_GROUP = 8_192


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


def read_columns(path: str, columns: list[str] | None = None) -> pa.Table:
    """Columns of a file (all by default), the file closed after (not pq.read_table: its
    dataset path imports pandas)."""
    with pq.ParquetFile(path, pre_buffer=False) as f:
        return f.read(columns=columns, use_threads=False)


def footer(path: str) -> tuple[int, int | None, int | None]:
    """Rows and min/max ``open_ts`` of a file, from its footer (the column if no statistics)."""
    with pq.ParquetFile(path) as f:
        meta = f.metadata
    col = meta.schema.names.index("open_ts")
    lo = hi = None
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max:
            ts = read_columns(path, ["open_ts"])["open_ts"]
            return meta.num_rows, pc.min(ts).as_py(), pc.max(ts).as_py()
        lo = stats.min if lo is None else min(lo, stats.min)
        hi = stats.max if hi is None else max(hi, stats.max)
    return meta.num_rows, lo, hi


def read_partition(path: str, schema: pa.Schema | None) -> pa.Table | None:
    """What a partition file holds (``None`` if there is none), checked to be Forge's and, if
    ``schema`` is given, of the dataset's schema (returned in its column order)."""
    try:
        table = read_columns(path)
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
    """Write ``table`` (ascending by ``open_ts``) over ``path`` atomically, exactly as a run
    writes the partition (:class:`PartitionWriter`)."""
    out = PartitionWriter(path, tmp_dir, table.schema, float64)
    out.add(table)
    out.finish()


def int64_scalar(value: int) -> pa.Scalar:
    """An int64 scalar built from a buffer: ``pa.scalar()`` would import pandas (convert.py)."""
    return pa.Array.from_buffers(pa.int64(), 1, [None, pa.py_buffer(array("q", [value]))])[0]


def _count_below(table: pa.Table, ts: int) -> int:
    """Rows of ``table`` (ascending by ``open_ts``) with ``open_ts < ts``."""
    return int(pc.sum(pc.less(table["open_ts"], int64_scalar(ts))).as_py() or 0)


class PartitionWriter:
    """One partition file being written, its rows handed in ascending by ``open_ts``.

    Rows are written as they come, in row groups of exactly :data:`ROW_GROUP` rows (the last
    may be shorter), to a temporary file in ``tmp_dir``; at most about a row group is held in
    memory. The row groups depend only on the rows, not on how they were handed in, so the
    same rows always make the same bytes. :meth:`finish` fsyncs the file and renames it over
    ``path`` (``path`` is the old file or the new one, never a part of one); :meth:`abort`
    removes it."""

    def __init__(self, path: str, tmp_dir: str, schema: pa.Schema, float64: bool) -> None:
        self.path, self.tmp_dir = path, tmp_dir
        self.schema = schema.with_metadata(forge_metadata(float64))
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.tmp = ""
        self._file: IO[bytes] | None = None
        self._writer: pq.ParquetWriter | None = None

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        while self.buffered >= ROW_GROUP:
            rows = pa.concat_tables(self.buffer, memory_pool=POOL) if len(self.buffer) > 1 else self.buffer[0]
            self._write(rows.slice(0, ROW_GROUP))
            rest = rows.slice(ROW_GROUP)
            self.buffer, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows

    def _write(self, rows: pa.Table) -> None:
        """One row group; its arrays made contiguous so pages never depend on the batches."""
        try:
            if self._writer is None:
                fd, self.tmp = tempfile.mkstemp(dir=self.tmp_dir, suffix=".tmp")
                self._file = os.fdopen(fd, "wb")
                self._writer = pq.ParquetWriter(self._file, self.schema, memory_pool=POOL, **WRITE_OPTIONS)
            self._writer.write_table(rows.combine_chunks(POOL).replace_schema_metadata(self.schema.metadata),
                                     row_group_size=ROW_GROUP)
        except OSError as exc:
            self.abort()
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            self.abort()
            raise

    def finish(self) -> None:
        """Write what is buffered, fsync, rename over ``path``, fsync the directory."""
        if self.buffered:
            self._write(pa.concat_tables(self.buffer, memory_pool=POOL) if len(self.buffer) > 1 else self.buffer[0])
            self.buffer, self.buffered = [], 0
        if self._writer is None:
            return  # no row at all: the partition keeps what it has
        assert self._file is not None
        try:
            self._writer.close()
            self._writer = None
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            layout.makedirs_durable(os.path.dirname(self.path))
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise SinkError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        except BaseException:
            self.abort()
            raise
        self.tmp = ""
        layout.fsync_dir(os.path.dirname(self.path))

    def abort(self) -> None:
        """Drop the file being written (nothing at ``path`` changes)."""
        writer, file, self._writer, self._file = self._writer, self._file, None, None
        self.buffer, self.buffered = [], 0
        with contextlib.suppress(Exception):
            if writer is not None:
                writer.close()
        with contextlib.suppress(Exception):
            if file is not None:
                file.close()
        if self.tmp:
            remove(self.tmp)
            self.tmp = ""


class StoredRows:
    """The rows a partition file holds, read a row group at a time in ``open_ts`` order, for
    merging with new rows without holding the whole file (:func:`stored_rows` opens one)."""

    def __init__(self, path: str, file: pq.ParquetFile | None, schema: pa.Schema, whole: pa.Table | None,
                 last: int) -> None:
        self.path, self.schema = path, schema
        self.last = last  # the newest open_ts the file holds
        self._file = file
        self._batches = iter(file.iter_batches(batch_size=ROW_GROUP, use_threads=False)) if file is not None else None
        self._head: pa.Table | None = whole  # rows read and not yet handed on

    def _next(self) -> bool:
        """Read the next batch of rows into the head; False at the end of the file."""
        if self._batches is None:
            return False
        try:
            batch = next(self._batches)
        except StopIteration:
            self.close()
            return False
        except (OSError, pa.ArrowException) as exc:
            raise SinkError(f"cannot read {self.path}: {exc}; move it away to let Forge rewrite the month") from None
        table = pa.Table.from_batches([batch]).replace_schema_metadata(None).select(self.schema.names)
        self._head = table if self._head is None or not self._head.num_rows else pa.concat_tables([self._head, table], memory_pool=POOL)
        return True

    def _current(self) -> pa.Table | None:
        """The stored rows not handed on yet, from the row group at hand (the next one read when
        it is used up), or None when the file is."""
        while self._head is None or not self._head.num_rows:
            self._head = None
            if not self._next():
                return None
        return self._head

    def below(self, ts: int) -> Iterator[pa.Table]:
        """Hand on the stored rows with ``open_ts < ts``, a row group at a time."""
        while (head := self._current()) is not None:
            n = _count_below(head, ts)
            if n < head.num_rows:
                if n:
                    yield head.slice(0, n)
                self._head = head.slice(n)
                return
            yield head
            self._head = None

    def upto(self, ts: int) -> pa.Table | None:
        """Take the stored rows with ``open_ts <= ts`` (call after :meth:`below`)."""
        taken: list[pa.Table] = []
        while (head := self._current()) is not None:
            n = _count_below(head, ts + 1)
            taken.append(head.slice(0, n))
            self._head = head.slice(n)
            if self._head.num_rows:
                break
        taken = [t for t in taken if t.num_rows]
        return (pa.concat_tables(taken, memory_pool=POOL) if len(taken) > 1 else taken[0]) if taken else None

    def rest(self) -> Iterator[pa.Table]:
        """Hand on every stored row not taken yet."""
        while True:
            if self._head is not None and self._head.num_rows:
                yield self._head
            self._head = None
            if not self._next():
                return

    def close(self) -> None:
        self._batches = None
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None


def stored_rows(path: str, schema: pa.Schema) -> StoredRows | None:
    """The rows of the partition file at ``path`` (``None`` if there is none), checked to be
    Forge's and of the dataset's ``schema``. A file whose rows are not in ``open_ts`` order
    (rows someone else added) is read whole and sorted."""
    try:
        file = pq.ParquetFile(path, pre_buffer=False)  # no IO threads
        found = file.schema_arrow
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException) as exc:
        raise SinkError(f"cannot read {path}: {exc}; move it away to let Forge rewrite the month") from None
    if read_forge_metadata(found) is None:
        file.close()
        raise SinkError(f"{path} was not written by Forge; it is left as it is")
    if set(found.names) != set(schema.names) or any(found.field(f.name).type != f.type for f in schema):
        file.close()
        raise SinkError(f"{path} has another schema than the rest of the dataset; move it away to let "
                        "Forge rewrite the month")
    try:
        ts = file.read(columns=["open_ts"], use_threads=False)["open_ts"]
    except (OSError, pa.ArrowException) as exc:
        file.close()
        raise SinkError(f"cannot read {path}: {exc}; move it away to let Forge rewrite the month") from None
    last = int(pc.max(ts).as_py() or 0) if len(ts) else -1
    if len(ts) < 2 or pc.all(pc.greater_equal(ts.slice(1), ts.slice(0, len(ts) - 1))).as_py():
        return StoredRows(path, file, schema, None, last)
    whole = file.read(use_threads=False).replace_schema_metadata(None).select(schema.names)
    file.close()
    return StoredRows(path, None, schema, whole.take(pc.sort_indices(whole["open_ts"])), last)


def upsert(old: pa.Table | None, new: pa.Table) -> pa.Table:
    """``old`` with the rows of ``new`` put in by ``open_ts`` (a row of ``new`` replaces the one
    with its open time), sorted by ``open_ts``."""
    if old is None or old.num_rows == 0:
        return new
    keep = pc.invert(pc.is_in(old["open_ts"], value_set=new["open_ts"].combine_chunks(POOL), memory_pool=POOL))
    old = pc.filter(old, keep, memory_pool=POOL)
    if old.num_rows == 0:
        return new
    merged = pa.concat_tables([old, new], memory_pool=POOL)
    return pc.take(merged, pc.sort_indices(merged["open_ts"], memory_pool=POOL), memory_pool=POOL)


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
        eq = pc.equal(a, b)
        same = pc.or_(pc.and_kleene(pc.is_valid(eq), eq), pc.and_(pc.is_null(a), pc.is_null(b)))
        differs = pc.invert(same) if differs is None else pc.or_(differs, pc.invert(same))
    changed = pc.sum(differs).as_py() if differs is not None else 0
    return inserted + (changed or 0)


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
