"""``forge status/verify/repair --sink csv --output FILE``: the CSV sink's integrity hooks.

The file is read once (columns found by name in its header). A repair rewrites it to
``FILE.repair`` and renames that into place (the file is complete before or after, never in
between); the ledger is the sidecar ``FILE.ledger.json``, written (atomically too) right
after the file, so an interruption between the two leaves a ledger that no longer matches the
file's digests, which the next run notices and checks again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from forge_core import SinkError, UsageError
from forge_core.integrity import (
    VALUE_FIELDS,
    LedgerEntry,
    PartitionState,
    SeriesHeld,
    StoredRow,
    digest,
    line,
)
from forge_core.integrity.digest import normalized_columns
from forge_core.integrity.digest import partitions as month_ranges
from forge_core.integrity.ledger_file import LedgerFile
from forge_core.records import Row

from .lock import acquire

LEDGER_SUFFIX = ".ledger.json"


def _identity(path: str) -> tuple[int, int, int]:
    """What changes when a file is rewritten or appended to: inode, size, mtime (ns)."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns
NEEDED = ("source", "symbol", "timeframe", "open_ts", "end_ts", *VALUE_FIELDS)


class CsvIntegrity:
    def __init__(self, output: str | None, wait_for_lock: float = 0.0) -> None:
        self.wait_for_lock = wait_for_lock
        if not output:
            raise UsageError("--output FILE is required with --sink csv: the CSV file to check, e.g. --output btc.csv")
        if "{" in output:
            raise UsageError(f"--output {output!r} is a template; name one CSV file here")
        self.label = output
        self.path = os.path.abspath(output)
        if os.path.isdir(self.path):
            raise UsageError(f"--output {output} is a directory; name the CSV file in it, e.g. --output "
                             f"{os.path.join(output, 'btc.csv')}")
        if not os.path.isfile(self.path):
            raise UsageError(f"CSV file {output} does not exist")
        self.ledger_path = self.path + LEDGER_SUFFIX
        self.ledger_file = LedgerFile(self.ledger_path, {"file": os.path.basename(self.path)},
                                      label=self.label + LEDGER_SUFFIX)
        self._load()

    def describe(self) -> str:
        return f"CSV file {self.label}"

    # -- reading ----------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            self.identity = _identity(self.path)  # before reading: a write during the read shows too
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                self.header = next(reader, None) or []
                self.lines = [row for row in reader if row]
        except OSError as exc:
            raise SinkError(f"cannot read CSV {self.label}: {exc.strerror}") from None
        absent = [c for c in NEEDED if c not in self.header]
        if absent:
            raise UsageError(f"CSV file {self.label} has no column {absent[0]!r}; verify needs the columns "
                             f"{', '.join(NEEDED)}")
        self.col = {c: self.header.index(c) for c in NEEDED}
        self.index: dict[tuple[str, str, str], list[int]] = {}
        self.stamps: list[int] = []
        c = self.col
        for n, row in enumerate(self.lines):
            try:
                ts = int(row[c["open_ts"]])
            except (ValueError, IndexError):
                raise SinkError(f"CSV file {self.label} line {n + 2}: open_ts {row[c['open_ts']]!r} is not "
                                "epoch milliseconds") from None
            self.stamps.append(ts)
            self.index.setdefault((row[c["source"]], row[c["symbol"]], row[c["timeframe"]]), []).append(n)

    def _in_range(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> list[int]:
        return [n for n in self.index.get((source, symbol, timeframe), []) if start <= self.stamps[n] < end]

    def _stored(self, ns: list[int]) -> list[StoredRow]:
        """Rows ``ns`` with their values normalized column by column (one pass per column)."""
        lines, c = self.lines, self.col
        values = normalized_columns([[lines[n][c[f]] for n in ns] for f in VALUE_FIELDS])
        out = []
        i_end = c["end_ts"]
        for n, vals in zip(ns, zip(*values, strict=True), strict=True):
            try:
                end_ts = int(lines[n][i_end])
            except ValueError:
                end_ts = -1
            out.append(StoredRow(self.stamps[n], end_ts, vals, n))
        return out

    def series(self, source: str | None, symbol: str | None, timeframe: str | None) -> list[SeriesHeld]:
        out = []
        for (src, sym, tf), lines in self.index.items():
            if (source or src) == src and (symbol or sym) == sym and (timeframe or tf) == tf:
                stamps = [self.stamps[n] for n in lines]
                out.append(SeriesHeld(src, sym, tf, len(lines), min(stamps), max(stamps)))
        return sorted(out, key=lambda s: (s.source, s.symbol, s.timeframe))

    def partitions(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> dict[str, PartitionState]:
        months = month_ranges(start, end)
        starts = [a for _, a, _ in months]
        groups: dict[str, list[tuple[int, str]]] = {}
        for r in self._stored(self._in_range(source, symbol, timeframe, start, end)):
            key = months[bisect_right(starts, r.open_ts) - 1][0]
            groups.setdefault(key, []).append((r.open_ts, line(r.open_ts, r.end_ts, r.values)))
        out = {}
        for key, items in groups.items():
            items.sort()  # by open_ts, then the line itself: the digest's order
            out[key] = PartitionState(key, len(items), items[0][0], items[-1][0],
                                      hashlib.sha256("".join(t for _, t in items).encode()).hexdigest())
        return out

    def rows(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> list[StoredRow]:
        return self._stored(self._in_range(source, symbol, timeframe, start, end))

    # -- the ledger sidecar -----------------------------------------------------------------
    def ledger(self, source: str, symbol: str, timeframe: str) -> dict[str, LedgerEntry]:
        return self.ledger_file.series(source, symbol, timeframe)

    def venue_ledger(self, source: str, timeframe: str) -> list[LedgerEntry]:
        return self.ledger_file.venue(source, timeframe)

    def save_ledger(self, entries: Sequence[LedgerEntry]) -> None:
        self.ledger_file.save(entries)

    @property
    def ledger_unsaved(self) -> str | None:
        """Why a repair's ledger entry could not be written after its rows were (optional hook)."""
        return self.ledger_file.unsaved

    # -- repairing --------------------------------------------------------------------------
    def apply(self, source: str, symbol: str, timeframe: str, columns: tuple[str, ...], upserts: list[Row],
              deletes: list[Any], entry: LedgerEntry) -> str:
        gone = set(deletes)
        if upserts:
            missing = [c for c in self.header if c not in columns]
            if missing:
                raise SinkError(f"CSV file {self.label} has a column {missing[0]!r} the source does not give; "
                                "cannot write repaired rows into it")
            picks = [columns.index(c) for c in self.header]
            replaced = {row[columns.index("open_ts")] for row in upserts}
            gone |= {n for n in self.index.get((source, symbol, timeframe), []) if self.stamps[n] in replaced}
        keep = [(n, self.lines[n]) for n in range(len(self.lines)) if n not in gone]
        new = [["" if row[i] is None else str(row[i]) for i in picks] for row in upserts] if upserts else []
        order = {s: i for i, s in enumerate(self.index)}
        c = self.col
        rows = [row for _, row in keep] + new

        def key(row: list[str]) -> tuple[int, int]:
            series = (row[c["source"]], row[c["symbol"]], row[c["timeframe"]])
            return order.get(series, len(order)), int(row[c["open_ts"]])

        rows.sort(key=key)
        tmp = self.path + ".repair"
        # the lock a forge run writing this file holds: a rewrite under a run's appends would lose them
        held = acquire(os.path.realpath(self.path) + ".lock", self.label, self.label, self.wait_for_lock)
        try:
            if _identity(self.path) != self.identity:
                raise SinkError(f"CSV file {self.label} changed while the repair read it (another forge run "
                                "wrote it); run the repair again")
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(self.header)
                writer.writerows(rows)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise SinkError(f"cannot rewrite CSV {self.label}: {exc.strerror}") from None
        finally:  # interrupted or failed before the rename: no half-written copy left beside the file
            with contextlib.suppress(OSError):
                os.remove(tmp)
            held.release()
        self._load()
        state = self.partitions(source, symbol, timeframe, entry.start, entry.end).get(entry.partition)
        entry.store_digest = state.digest if state else digest([])
        self.ledger_file.save_after_write([entry])  # the rows are written: an unwritable ledger only warns
        return entry.store_digest

    def close(self) -> None:
        pass
