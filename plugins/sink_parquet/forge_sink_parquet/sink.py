"""Write candles to a Hive-partitioned Parquet dataset, one file per series and month:
``<root>/source=binance/symbol=BTCUSDT/timeframe=1m/year=2024/month=1/part-0.parquet``.

One partition (a month of one series) is buffered at a time, as Arrow arrays. It is written on
``commit()`` and when the rows move on to the next month or series: merged with what the file
already holds (an upsert by ``open_ts``: a row of this run replaces the stored row with the same
open time, stored rows of other times are kept), sorted, written to a temporary file beside the
root, fsynced and renamed over the old file. A reader sees the previous file or the new one,
never a half-written one, and a crash leaves the previous version.

Resume: after each commit, a small state file (``runs/<id>.json`` in the bookkeeping directory,
written atomically) records the ``end_ts`` of the last committed row of each series of the run;
``resume_after`` reports it to the core when the same run (source, output timeframe, start,
transforms; not the end) is started again, and a run that finishes deletes it.
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc

from forge_core import (
    Batch,
    Option,
    RunInfo,
    Sink,
    SinkError,
    TextRows,
    UsageError,
    parse_timeframe,
)

from . import files, layout
from .convert import HIVE_KEYS, python_array, to_table
from .files import (
    PartitionWriter,
    StoredRows,
    changed_rows,
    dataset_schema,
    remove,
    stored_rows,
    upsert,
)


@dataclass
class _Partition:
    """The month being written: ``out`` the file being written (``None`` until rows come, after
    a commit wrote it, and while ``clean``), ``stored`` what the partition file held when the
    rows began, not merged yet, ``last`` the newest ``open_ts`` taken."""

    key: tuple[str, str, str, int, int]
    path: str
    out: PartitionWriter | None = None
    stored: StoredRows | None = None
    last: int | None = None
    pending: list[pa.Table] = field(default_factory=list)  # new rows not merged yet (< a row group)
    pending_rows: int = 0
    clean: bool = False  # every row so far equals the stored file's: nothing is written (yet)


class ParquetSink(Sink):
    name = "parquet"
    description = "a Hive-partitioned Parquet dataset (pyarrow, polars, DuckDB), one file per month"
    options = (
        Option("root", "Directory of the Parquet dataset (created if missing).", metavar="DIR"),
        Option("parquet_float", "Store prices and volumes as float64 instead of exact decimal128.",
               default=False, is_flag=True),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.root = ""
        self.float64 = bool(self.settings["parquet_float"])
        self.run: RunInfo | None = None
        self.schema: pa.Schema | None = None  # the dataset's file schema, once known
        self.current: _Partition | None = None
        self.committed: dict[str, int] = {}  # symbol -> end_ts of its last committed row, this run
        self.appended: dict[str, int] = {}  # symbol -> end_ts of its last row handed to write()
        self.resume: dict[str, int] = {}  # symbol -> end_ts, from an interrupted run of the same identity
        self.written: set[str] = set()  # the month files this run wrote (a month committed twice is one)
        self.changed = 0  # rows inserted or stored with other values, this run
        self._lock: IO[str] | None = None
        self._lock_path = ""
        self._made: list[str] = []  # directories this run created
        self._state_path = ""
        self._tmp = ""

    # -- lifecycle --------------------------------------------------------------------------
    def open(self, run: RunInfo) -> None:
        root = self.settings["root"]
        if not root:
            raise UsageError("the parquet sink needs --root DIR, the directory of the dataset")
        self.run = run
        self.root = os.path.abspath(str(root))
        self.current, self.committed, self.appended, self.written = None, {}, {}, set()
        self.changed = 0
        layout.check_value("source", run.source)
        for symbol in run.symbols:
            layout.check_value("symbol", symbol)
        layout.check_value("timeframe", self._timeframe(run))
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise SinkError(f"parquet root {self.root} is a file, not a directory")
        state = layout.state_dir(self.root)
        self._tmp = os.path.join(state, "tmp")
        self._lock_path = os.path.join(state, "lock")
        self._made = []
        while True:
            self._lock_dirs(state)
            try:
                # a run that removed what it made as this one opened the lock: lock the new one
                if os.fstat(self._lock.fileno()).st_ino == os.stat(self._lock_path).st_ino:
                    break
            except FileNotFoundError:
                pass
            self._release()
        try:
            if os.stat(self.root).st_dev != os.stat(self._tmp).st_dev:
                raise SinkError(f"parquet root {self.root} is on another filesystem than {state}, so files "
                                "cannot be renamed into it atomically; use a --root that is not a mount point")
            for name in os.listdir(self._tmp):  # left by a killed run; we hold the lock
                os.remove(os.path.join(self._tmp, name))
            self.schema = self._dataset_schema()
            self._check_run_columns(run)
            self._state_path = os.path.join(state, "runs", _run_id(run, self._timeframe(run)) + ".json")
            self.resume = self._read_state()
        except BaseException:
            self._remove_made()
            self._release()
            raise

    def _lock_dirs(self, state: str) -> None:
        """Create the root and the bookkeeping directories (noting those this run made) and
        take the dataset's lock, or one line saying why not."""
        try:
            for path in (self.root, self._tmp, os.path.join(state, "runs")):
                self._made += layout.makedirs_durable(path)
            if not os.access(self.root, os.W_OK):
                raise PermissionError(13, "Permission denied")
            self._lock = open(self._lock_path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            self._remove_made()
            raise SinkError(f"cannot write the parquet dataset at {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._release()
            self._made = []  # the run holding the lock uses them now (it may have made them as this one looked)
            raise SinkError(f"another forge run is writing the parquet dataset at {self.root}; "
                            "wait for it to finish or use another --root") from None

    def _remove_made(self) -> None:
        """A run that wrote nothing removes the directories it created (the root, the
        bookkeeping directory beside it, their parents), as they were before it; called while it
        holds the lock, so the lock file goes with the bookkeeping directory it made."""
        if not self._made or self.written or (self._state_path and os.path.exists(self._state_path)):
            return
        if layout.state_dir(self.root) in self._made:
            remove(self._lock_path)
        for folder in sorted(self._made, key=lambda f: f.count(os.sep), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self._made = []

    def _dataset_schema(self) -> pa.Schema | None:
        """The schema of the files already in the root (all have the same), checked to be Forge's
        and of the number type asked for."""
        found = dataset_schema(self.root)  # also checks the whole tree for foreign files
        if found is None:
            return None
        schema, stored = found
        if stored == "float64" and not self.float64:
            raise SinkError(f"the parquet dataset at {self.root} stores prices and volumes as float64; "
                            "add --parquet-float to add to it, or use a new --root for exact decimals")
        if stored == "decimal" and self.float64:
            raise SinkError(f"the parquet dataset at {self.root} stores prices and volumes as exact decimals; "
                            "drop --parquet-float to add to it, or use a new --root for float64")
        return schema

    def _check_run_columns(self, run: RunInfo) -> None:
        """Without transforms the rows have the source's columns: check them against the
        dataset now, before any exchange request (with transforms, at the first batch)."""
        if self.schema is None or run.transforms:
            return
        names = [c for c in run.columns if c not in HIVE_KEYS]
        if "open_ts" in names:
            names.insert(names.index("open_ts") + 1, "open_time")
        if set(names) != set(self.schema.names):
            raise SinkError(f"{run.source} rows have columns {','.join(names)} but the parquet dataset at "
                            f"{self.root} holds {','.join(self.schema.names)}; use a new --root "
                            "(one root holds one schema)")

    def resume_after(self, source: str, symbol: str, timeframe: str) -> int | None:
        run = self.run
        if run is None or source != run.source or timeframe not in (self._timeframe(run), run.timeframe):
            return None
        return self.resume.get(symbol)

    def last_open(self, source: str, symbol: str, timeframe: str) -> int | None:
        """From the newest partition's footer statistics: no row is read."""
        path = layout.newest_partition(self.root, source, symbol, timeframe)
        if path is None:
            return None
        best = files.footer(path)[2]
        return int(best) if best is not None else None

    def write(self, batch: Batch) -> None:
        rows = batch.rows
        if not rows:
            return
        i_open = batch.columns.index("open_ts") if "open_ts" in batch.columns else -1
        if i_open < 0:
            raise SinkError(f"{batch.symbol}: the parquet sink needs the open_ts column (partitions and upserts use it)")
        # rows held as text keep their open times as an array: read them without building rows
        opens: Sequence[int] | None = rows.open_ts if isinstance(rows, TextRows) else None
        start = 0
        while start < len(rows):
            first = opens[start] if opens is not None else rows[start][i_open]
            year, month = layout.month_of(first)
            boundary = layout.next_month_start(year, month)
            if opens is not None:
                stop = bisect.bisect_left(opens, boundary, lo=start)
            else:
                stop = bisect.bisect_left(rows, boundary, lo=start, key=lambda r: r[i_open])
            self._append(batch, rows[start:stop], year, month)
            start = stop

    def _append(self, batch: Batch, rows: Sequence[tuple[Any, ...]], year: int, month: int) -> None:
        # the run's output timeframe, not batch.timeframe: resample hands on its input's Batch.timeframe
        assert self.run is not None
        timeframe = self._timeframe(self.run)
        key = (batch.source, batch.symbol, timeframe, year, month)
        if self.current is None or self.current.key != key:
            self._flush(finished=True)
            path = layout.partition_path(self.root, *key)
            self.current = _Partition(key, path)
        where = f"{batch.symbol} {timeframe} {year}-{month:02d}"
        table = to_table(batch.columns, rows, self.schema, self.float64, where)
        if self.schema is None:
            self.schema = table.schema
        self._add(self.current, _unique_by_open(table))
        self.appended[batch.symbol] = self._end_ts(batch, rows)

    def commit(self) -> None:
        """Write the buffered month (earlier months were written when the rows left them), then
        record every series' last row as committed."""
        self._flush(finished=False)
        if self.appended != self.committed:
            self.committed = dict(self.appended)
            self._write_state()

    def close(self, ok: bool) -> None:
        try:
            if ok:
                self.commit()
                self._clear_state()
        finally:
            self._abort()  # not ok: what was not committed is dropped
            if not ok:
                self._remove_made()
            self._release()

    def describe(self) -> str:
        where = os.path.relpath(self.root) if self.root else "parquet"
        n = len(self.written)
        return f"{where} ({n} parquet {'file' if n == 1 else 'files'} written)"

    @property
    def files_written(self) -> int:
        return len(self.written)

    def rows_changed(self) -> int | None:
        """Rows written that the month files did not hold with equal values (by ``open_ts``)."""
        return self.changed

    def integrity(self) -> Any:
        """Hooks of ``forge status/verify/repair`` on the dataset at ``--root`` (integrity.py)."""
        from .integrity import ParquetIntegrity

        return ParquetIntegrity(self.settings["root"])

    # -- partitions -------------------------------------------------------------------------
    def _add(self, part: _Partition, new: pa.Table) -> None:
        """Take ``new`` (rows of ``part``, unique and ascending by ``open_ts``); they are merged
        a row group at a time (fewer, larger merges), so at most about a row group waits."""
        if not new.num_rows:
            return
        ts = new["open_ts"]
        lo = ts[0].as_py()
        if part.last is not None and lo <= part.last:  # rows before ones taken (a transform's)
            self._flush(finished=False)  # finish the file; these merge with it
        part.pending.append(new)
        part.pending_rows += new.num_rows
        part.last = ts[len(ts) - 1].as_py()
        if part.pending_rows >= files.ROW_GROUP:
            self._merge(part)

    def _merge(self, part: _Partition) -> None:
        """Put the pending rows into the file being written: the stored rows before them go
        first, stored rows with their open times are replaced (an upsert), later stored rows
        wait for later rows or the end. While every row equals the stored one (a re-run),
        nothing is written: the file is kept as it is unless a row differs."""
        if not part.pending:
            return
        new = pa.concat_tables(part.pending) if len(part.pending) > 1 else part.pending[0]
        part.pending, part.pending_rows = [], 0
        ts = new["open_ts"]
        lo, hi = ts[0].as_py(), ts[len(ts) - 1].as_py()
        assert self.schema is not None
        if part.out is None and not part.clean:  # the partition's rows begin
            part.stored = stored_rows(part.path, self.schema)
            part.clean = part.stored is not None and lo <= part.stored.last  # over stored rows: compare first
            if not part.clean:
                part.out = PartitionWriter(part.path, self._tmp, self.schema, self.float64)
        stored = part.stored
        if stored is None:
            assert part.out is not None
            self.changed += new.num_rows
            part.out.add(new)
            return
        for rows in stored.below(lo):
            if part.out is not None:
                part.out.add(rows)  # (while clean, the file keeps them)
        held = stored.upto(hi)
        if held is not None and held.num_rows == new.num_rows and held.equals(new):
            if part.out is not None:
                part.out.add(held)
            return
        self.changed += changed_rows(held, new)
        merged = upsert(held, new)
        if part.clean:  # the first row that differs: write the unchanged rows before it, then go on
            part.clean = False
            part.out = PartitionWriter(part.path, self._tmp, self.schema, self.float64)
            before = stored_rows(part.path, self.schema)
            assert before is not None
            try:
                for rows in before.below(lo):
                    part.out.add(rows)
            finally:
                before.close()
        assert part.out is not None
        part.out.add(merged)

    def _flush(self, finished: bool) -> None:
        """Finish the partition's file, if rows were written to it since it was last finished
        (the stored rows not merged yet go after ours); forget the partition if ``finished``."""
        part = self.current
        if part is None:
            return
        self._merge(part)
        if part.clean:  # no row differed from the file's: it stays as it is
            assert part.stored is not None
            part.stored.close()
            part.stored = part.last = None
            part.clean = False
        elif part.out is not None:
            out, stored = part.out, part.stored
            try:
                if stored is not None:
                    for rows in stored.rest():
                        out.add(rows)
                out.finish()
            except BaseException:
                out.abort()
                raise
            finally:
                if stored is not None:
                    stored.close()
                part.out = part.stored = part.last = None
            self.written.add(part.path)
        if finished:
            self.current = None
            pa.default_memory_pool().release_unused()

    def _abort(self) -> None:
        """Drop what was written of the current partition since its last finish."""
        part = self.current
        if part is not None:
            if part.out is not None:
                part.out.abort()
            if part.stored is not None:
                part.stored.close()
        self.current = None

    # -- resume state -----------------------------------------------------------------------
    def _end_ts(self, batch: Batch, rows: Sequence[tuple[Any, ...]]) -> int:
        if isinstance(rows, TextRows):
            return int(rows.end_ts[-1])
        if "end_ts" in batch.columns:
            return int(rows[-1][batch.columns.index("end_ts")])
        assert self.run is not None
        return parse_timeframe(self._timeframe(self.run)).end_ts(rows[-1][batch.columns.index("open_ts")])

    def _read_state(self) -> dict[str, int]:
        try:
            with open(self._state_path, encoding="utf-8") as f:
                state = json.load(f)
            return {str(k): int(v) for k, v in state["committed"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def _write_state(self) -> None:
        assert self.run is not None
        state = {"identity": _identity(self.run, self._timeframe(self.run)),
                 "committed": {**self.resume, **self.committed}}
        fd, tmp = tempfile.mkstemp(dir=self._tmp, suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._state_path)
        layout.fsync_dir(os.path.dirname(self._state_path))

    def _clear_state(self) -> None:
        """The run finished: its series need no resume (other symbols' entries stay)."""
        assert self.run is not None
        left = {s: t for s, t in self._read_state().items() if s not in self.run.symbols}
        if left:
            self.resume, self.committed = left, {}
            self._write_state()
        else:
            remove(self._state_path)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # also releases the flock
            self._lock = None

    @staticmethod
    def _timeframe(run: RunInfo) -> str:
        return run.output_timeframe or run.timeframe


def _identity(run: RunInfo, timeframe: str) -> dict[str, Any]:
    """What makes a run the same run for resume; not its end, which may move (``--to now``)."""
    return {"source": run.source, "timeframe": timeframe, "start": run.start, "transforms": run.transforms}


def _run_id(run: RunInfo, timeframe: str) -> str:
    return hashlib.sha256(json.dumps(_identity(run, timeframe), sort_keys=True).encode()).hexdigest()[:20]


def _unique_by_open(table: pa.Table) -> pa.Table:
    """Rows strictly ascending by ``open_ts`` (the core's order); a later duplicate wins."""
    ts = table["open_ts"].combine_chunks()
    if len(ts) < 2 or pc.all(pc.greater(ts.slice(1), ts.slice(0, len(ts) - 1))).as_py():
        return table
    values = ts.to_pylist()
    last = {v: i for i, v in enumerate(values)}
    keep = sorted(last.values(), key=lambda i: values[i])
    return table.take(python_array(keep))
