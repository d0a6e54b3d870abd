"""``forge_progress``: where an interrupted run's committed rows end, so the same run resumes.

One row per series while a run is incomplete, written in the same transaction as the candles it
describes and deleted when the run completes. A run is identified by the target table, source,
symbol, the timeframe of the rows stored (the output timeframe, after transforms such as
``resample``), the range start and the transform chain; not by the end of the range, which may
move (``--to now``). A row is trusted only while the table still holds the row it points at,
so a table dropped or truncated since makes the run start over.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg2.errors
from psycopg2 import sql

from forge_core import RunInfo, UsageError, parse_timeframe
from forge_core.logs import get_logger

from .sql import DDL_LOCK
from .target import TableInfo

log = get_logger(__name__)
TABLE = "forge_progress"
DDL = """CREATE TABLE IF NOT EXISTS {} (
    target text NOT NULL, source text NOT NULL, symbol text NOT NULL, timeframe text NOT NULL,
    range_start bigint NOT NULL, transforms text NOT NULL, committed_end bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, source, symbol, timeframe, range_start, transforms))"""

Series = tuple[str, str, str]  # source, symbol, timeframe (of the rows stored)


class Progress:
    """The ``forge_progress`` rows of one target table (kept in the table's schema)."""

    def __init__(self, schema: str | None, target: str) -> None:
        self.target = target
        self.ident = sql.Identifier(schema, TABLE) if schema else sql.Identifier(TABLE)

    def prepare(self, cur: Any, where: str, reason: Any) -> bool:
        """Create the table if missing; ``False`` (resume off, with a warning) without the rights
        to use it: a re-run then fetches everything again."""
        cur.execute("SAVEPOINT forge_progress")
        try:
            cur.execute(DDL_LOCK)
            cur.execute(sql.SQL(DDL).format(self.ident))
            cur.execute(sql.SQL("SELECT committed_end FROM {} WHERE false FOR UPDATE").format(self.ident))
        except psycopg2.errors.InsufficientPrivilege as exc:
            cur.execute("ROLLBACK TO SAVEPOINT forge_progress")
            log.warning("postgres_resume_off", where=where, reason=reason(exc))
            return False
        cur.execute("RELEASE SAVEPOINT forge_progress")
        return True

    def record(self, cur: Any, run: RunInfo, ends: dict[Series, int]) -> None:
        """Upsert where each series' committed rows end (inside the rows' transaction)."""
        cur.executemany(sql.SQL(
            "INSERT INTO {} (target, source, symbol, timeframe, range_start, transforms, committed_end) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (target, source, symbol, timeframe, range_start, transforms) "
            "DO UPDATE SET committed_end = EXCLUDED.committed_end, updated_at = now()"
        ).format(self.ident), [(self.target, source, symbol, timeframe, run.start, run.transforms, end)
                               for (source, symbol, timeframe), end in ends.items()])

    def lookup(self, cur: Any, run: RunInfo, series: Series, table: TableInfo | None) -> int | None:
        """The committed end of an interrupted run of ``series``, if ``table`` still holds the
        row it points at."""
        source, symbol, timeframe = series
        cur.execute(sql.SQL("SELECT committed_end FROM {} WHERE target = %s AND source = %s AND symbol = %s "
                            "AND timeframe = %s AND range_start = %s AND transforms = %s").format(self.ident),
                    (self.target, source, symbol, timeframe, run.start, run.transforms))
        found = cur.fetchone()
        if found is None:
            return None
        end = int(found[0])
        if table is None or not _holds(cur, table, series, end):
            log.warning("postgres_progress_stale", table=table.label if table else self.target,
                        symbol=symbol, reason="the table no longer holds the rows it records; starting over")
            return None
        return end

    def forget(self, cur: Any, run: RunInfo, timeframes: set[str]) -> None:
        """The run completed: a re-run fetches the whole range anew."""
        cur.execute(sql.SQL("DELETE FROM {} WHERE target = %s AND source = %s AND timeframe = ANY(%s) "
                            "AND range_start = %s AND transforms = %s AND symbol = ANY(%s)").format(self.ident),
                    (self.target, run.source, sorted(timeframes), run.start, run.transforms, list(run.symbols)))


def _holds(cur: Any, table: TableInfo, series: Series, end: int) -> bool:
    """Whether ``table`` has the candle of ``series`` ending at ``end`` (by its key columns:
    ``open_ts`` is found through the index)."""
    source, symbol, timeframe = series
    where: list[tuple[str, Any]] = [(c, v) for c, v in (("source", source), ("symbol", symbol),
                                                         ("timeframe", timeframe)) if c in table.columns]
    if "open_ts" in table.columns:
        with contextlib.suppress(UsageError, ValueError):  # a timeframe Forge does not know: by end_ts alone
            where.append(("open_ts", parse_timeframe(timeframe).floor(end)))
    if "end_ts" in table.columns:
        where.append(("end_ts", end))
    if not any(c in ("open_ts", "end_ts") for c, _ in where):
        return False  # nothing to find the row by: do not trust
    cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(
        table.ident, sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c, _ in where)),
        [v for _, v in where])
    return bool(cur.fetchone()[0])
