"""``forge status/verify/repair --sink parquet --root DIR``: the Parquet sink's integrity hooks.

A verify partition (a series' UTC month) is exactly one partition file, so ``series`` and
``status`` come from footers alone (row counts and ``open_ts`` statistics) and ``partitions``
reads only the seven digest columns of the months asked for. A repair rewrites the month's
file like a run does (temporary file, fsync, rename) and then the ledger, ``ledger.json`` in
the bookkeeping directory beside the root: an interruption between the two leaves an entry
whose ``store_digest`` no longer matches, and the month is simply checked again.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc

from forge_core import SinkError, UsageError
from forge_core.integrity import (
    EMPTY_DIGEST,
    VALUE_FIELDS,
    LedgerEntry,
    PartitionState,
    SeriesHeld,
    StoredRow,
    digest,
    line,
    normalize,
    partition_key,
)
from forge_core.integrity.ledger_file import LedgerFile
from forge_core.records import Row

from . import layout
from .convert import python_array, to_table
from .files import dataset_schema, footer, read_columns, read_partition, upsert, write_partition

LEDGER = "ledger.json"


class ParquetIntegrity:
    def __init__(self, root: str | None) -> None:
        if not root:
            raise UsageError("--root DIR is required with --sink parquet: the dataset to check")
        self.label = root
        self.root = os.path.abspath(root)
        if not os.path.isdir(self.root):
            raise UsageError(f"parquet root {root} does not exist")
        found = dataset_schema(self.root)  # refuses a tree Forge did not write
        self.schema, self.float64 = (found[0], found[1] == "float64") if found else (None, False)
        self.state = layout.state_dir(self.root)
        self.ledger_path = os.path.join(self.state, LEDGER)
        self.ledger_file = LedgerFile(self.ledger_path, {"root": self.root}, tmp_dir=os.path.join(self.state, "tmp"))
        self._lock: IO[str] | None = None

    def describe(self) -> str:
        return f"Parquet dataset {self.label}"

    # -- reading ----------------------------------------------------------------------------
    def _series_dirs(self) -> list[tuple[str, str, str]]:
        out = []
        for src in _values(self.root, "source"):
            for sym in _values(os.path.join(self.root, f"source={src}"), "symbol"):
                for tf in _values(os.path.join(self.root, f"source={src}", f"symbol={sym}"), "timeframe"):
                    out.append((src, sym, tf))
        return out

    def _files(self, source: str, symbol: str, timeframe: str) -> list[tuple[int, int, str]]:
        """``(year, month, path)`` of the series' partition files, oldest first."""
        base = layout.series_dir(self.root, source, symbol, timeframe)
        out = []
        for year in _values(base, "year"):
            for month in _values(os.path.join(base, f"year={year}"), "month"):
                path = os.path.join(base, f"year={year}", f"month={month}", layout.PART)
                if os.path.isfile(path):
                    out.append((int(year), int(month), path))
        return sorted(out)

    def series(self, source: str | None, symbol: str | None, timeframe: str | None) -> list[SeriesHeld]:
        out = []
        for src, sym, tf in self._series_dirs():
            if (source or src) != src or (symbol or sym) != sym or (timeframe or tf) != tf:
                continue
            rows, lo, hi = 0, None, None
            for _, _, path in self._files(src, sym, tf):
                n, first, last = footer(path)
                if n:
                    rows += n
                    lo = first if lo is None else min(lo, first)
                    hi = last if hi is None else max(hi, last)
            if rows and lo is not None and hi is not None:
                out.append(SeriesHeld(src, sym, tf, rows, lo, hi))
        return sorted(out, key=lambda s: (s.source, s.symbol, s.timeframe))

    def _month_rows(self, path: str, start: int, end: int) -> list[StoredRow]:
        try:
            table = read_columns(path, ["open_ts", "end_ts", *VALUE_FIELDS])
        except (OSError, pa.ArrowException) as exc:
            raise SinkError(f"cannot read {path}: {exc}") from None
        ts = table["open_ts"]
        inside = pc.and_(pc.greater_equal(ts, start), pc.less(ts, end))
        positions = pc.indices_nonzero(inside.combine_chunks()).to_pylist()
        table = table.filter(inside)
        values = [_texts(table[f]) for f in VALUE_FIELDS]
        opens, ends = table["open_ts"].to_pylist(), table["end_ts"].to_pylist()
        # ref: the row's position in its file, so a repair deletes exactly one of two copies
        return [StoredRow(o, -1 if e is None else e, tuple(normalize(v[i]) for v in values), (path, positions[i]))
                for i, (o, e) in enumerate(zip(opens, ends, strict=True))]

    def _months(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> list[str]:
        lo, hi = layout.month_of(start), layout.month_of(end - 1)
        return [p for y, m, p in self._files(source, symbol, timeframe) if lo <= (y, m) <= hi]

    def partitions(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> dict[str, PartitionState]:
        out = {}
        for path in self._months(source, symbol, timeframe, start, end):
            rows = self._month_rows(path, start, end)
            if rows:
                key = partition_key(rows[0].open_ts)
                out[key] = PartitionState(key, len(rows), rows[0].open_ts, rows[-1].open_ts,
                                          digest(line(r.open_ts, r.end_ts, r.values) for r in rows))
        return out

    def rows(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> list[StoredRow]:
        return [r for path in self._months(source, symbol, timeframe, start, end)
                for r in self._month_rows(path, start, end)]

    # -- the ledger -------------------------------------------------------------------------
    def ledger(self, source: str, symbol: str, timeframe: str) -> dict[str, LedgerEntry]:
        return self.ledger_file.series(source, symbol, timeframe)

    def venue_ledger(self, source: str, timeframe: str) -> list[LedgerEntry]:
        return self.ledger_file.venue(source, timeframe)

    def save_ledger(self, entries: Sequence[LedgerEntry]) -> None:
        self._locked()
        self.ledger_file.save(entries)

    @property
    def ledger_unsaved(self) -> str | None:
        """Why a repair's ledger entry could not be written after its rows were (optional hook)."""
        return self.ledger_file.unsaved

    # -- repairing --------------------------------------------------------------------------
    def apply(self, source: str, symbol: str, timeframe: str, columns: tuple[str, ...], upserts: list[Row],
              deletes: list[Any], entry: LedgerEntry) -> str:
        self._locked()
        year, month = (int(x) for x in entry.partition.split("-"))
        path = layout.partition_path(self.root, source, symbol, timeframe, year, month)
        where = f"{symbol} {timeframe} {entry.partition}"
        old = read_partition(path, self.schema)
        gone = [pos for ref_path, pos in deletes if ref_path == path]
        if old is not None and gone:
            dropped = set(gone)
            old = old.filter(python_array([i not in dropped for i in range(old.num_rows)]))
        table = old
        if upserts:
            new = to_table(columns, sorted(upserts, key=lambda r: r[columns.index("open_ts")]), self.schema,
                           self.float64, where)
            if self.schema is None:
                self.schema = new.schema
            table = upsert(old, new)
        if table is not None and (table.num_rows or os.path.exists(path)):
            if table.num_rows:
                write_partition(table, path, os.path.join(self.state, "tmp"), self.float64)
            else:
                os.remove(path)  # every row deleted: no empty files in the dataset
                layout.fsync_dir(os.path.dirname(path))
        state = self.partitions(source, symbol, timeframe, entry.start, entry.end).get(entry.partition)
        entry.store_digest = state.digest if state else EMPTY_DIGEST
        self.ledger_file.save_after_write([entry])  # the rows are written: an unwritable ledger only warns
        return entry.store_digest

    def _locked(self) -> None:
        """Writes take the root's lock, as runs do: never beside a running ``forge run``."""
        if self._lock is not None:
            return
        try:
            layout.makedirs_durable(os.path.join(self.state, "tmp"))
            self._lock = open(os.path.join(self.state, "lock"), "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise SinkError(f"another forge run is writing the parquet dataset at {self.root}; "
                            "wait for it to finish") from None

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _values(path: str, key: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(n[len(key) + 1:] for n in names if n.startswith(key + "="))


def _texts(column: pa.ChunkedArray) -> list[str | None]:
    """Values as text for :func:`normalize`: decimals exactly, floats by their shortest repr."""
    if pa.types.is_decimal(column.type) or pa.types.is_string(column.type):
        return column.cast(pa.string()).to_pylist()
    return [None if v is None else repr(v) for v in column.to_pylist()]
