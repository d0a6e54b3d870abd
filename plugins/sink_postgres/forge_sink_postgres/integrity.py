"""``forge status/verify/repair --sink postgres``: the PostgreSQL sink's integrity hooks.

Partition digests are computed by the server (``string_agg`` of the canonical lines, then
``sha256``; see ``docs/verify.md``), so checking an intact month sends one short row back,
never the candles. Only a month whose digest differs is read, as canonical text. A repair
deletes and upserts that month's differing rows and records its ``forge_ledger`` row in one
transaction. ``forge_ledger`` lives in the data table's schema, one row per partition.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql
from psycopg2.extras import execute_values

from forge_core import SinkError, UsageError
from forge_core.integrity import VALUE_FIELDS, LedgerEntry, PartitionState, SeriesHeld, StoredRow
from forge_core.integrity.digest import EMPTY_DIGEST
from forge_core.integrity.digest import partitions as month_ranges
from forge_core.logs import get_logger
from forge_core.records import Row

from .connection import ConnectionSpec
from .sql import DDL_LOCK
from .target import TableInfo, inspect, qualified

LEDGER_TABLE = "forge_ledger"

log = get_logger(__name__)
LEDGER_DDL = """CREATE TABLE IF NOT EXISTS {} (
    target text NOT NULL, source text NOT NULL, symbol text NOT NULL, timeframe text NOT NULL,
    partition text NOT NULL, range_start bigint NOT NULL, range_end bigint NOT NULL,
    entry jsonb NOT NULL, store_digest text NOT NULL, verified_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, source, symbol, timeframe, partition))"""
SERIES = ("source", "symbol", "timeframe")
KEY = (*SERIES, "open_ts")


class PostgresIntegrity:
    DIGEST_CONNECTIONS = 3  # months digested (or repaired) at once, each on its own connection
    concurrent_apply = DIGEST_CONNECTIONS  # apply() may be called from this many threads at once

    def __init__(self, spec: ConnectionSpec, schema: str | None, table: str) -> None:
        self.spec = spec
        self.schema, self.name = schema, table
        self.conn: psycopg2.extensions.connection | None = None
        self.extra: list[psycopg2.extensions.connection] = []  # for digests (and repairs) of months at once
        self._free: list[psycopg2.extensions.connection] = []
        self._free_cond = threading.Condition()
        self.label = f"{schema}.{table}" if schema else table
        self.ledger_unsaved: str | None = None  # why a repair's ledger entry was not written (see apply)
        self.conn = spec.connect_or_fail()
        self._free.append(self.conn)
        try:
            with self.conn.cursor() as cur:
                info = inspect(cur, schema, table)
            self.conn.commit()
        except psycopg2.Error as exc:
            self.close()
            raise SinkError(f"PostgreSQL {spec.where} table {self.label}: {spec.reason(exc)}") from None
        if info is None:
            self.close()
            raise UsageError(f"PostgreSQL {spec.where} has no table {self.label}; name the table with --table")
        absent = [c for c in (*KEY, "end_ts", *VALUE_FIELDS) if c not in info.columns]
        if absent:
            self.close()
            raise UsageError(f"table {self.label} has no column {absent[0]!r}; verify needs the candle columns "
                             f"{', '.join((*KEY, 'end_ts', *VALUE_FIELDS))}")
        self.table: TableInfo = info
        self.ledger_ident = qualified(schema, LEDGER_TABLE)
        self._ledger_warned = False  # ledger_unreadable said
        self._ledger_ready = False  # forge_ledger is known to exist: not asked again
        self.bytes_received = 0  # result bytes the integrity queries brought back, for the benchmark

    def describe(self) -> str:
        return f"PostgreSQL {self.spec.where} table {self.label}"

    # -- plumbing ---------------------------------------------------------------------------
    def _run(self, what: str, work: Any, conn: psycopg2.extensions.connection | None = None) -> Any:
        conn = conn or self.conn
        assert conn is not None
        try:
            with conn.cursor() as cur:
                result = work(cur)
            conn.commit()
            return result
        except psycopg2.Error as exc:
            with contextlib.suppress(psycopg2.Error):
                conn.rollback()
            raise SinkError(f"PostgreSQL {self.spec.where} table {self.label}: {what} failed: "
                            f"{self.spec.reason(exc)}") from None

    def _fetch(self, cur: Any) -> list[tuple[Any, ...]]:
        """All rows of ``cur``, counting their text size (roughly what came over the wire)."""
        rows = cur.fetchall()
        if rows:
            self.bytes_received += len(rows) * sum(len(str(v)) for v in rows[0])
        return rows

    @staticmethod
    def _canon(alias: str = "") -> sql.Composable:
        """The canonical line of a row, as SQL text (docs/verify.md)."""
        def col(name: str) -> sql.Composable:
            return sql.SQL(alias + ".{}").format(sql.Identifier(name)) if alias else sql.Identifier(name)

        parts: list[sql.Composable] = [sql.SQL("{}::text").format(col("open_ts")),
                                       sql.SQL("{}::text").format(col("end_ts"))]
        parts += [sql.SQL("coalesce(trim_scale({}::numeric)::text, '')").format(col(c)) for c in VALUE_FIELDS]
        return sql.SQL(" || ',' || ").join(parts) + sql.SQL(" || E'\\n'")

    def _where(self) -> sql.Composable:
        return sql.SQL("{} = %s AND {} = %s AND {} = %s AND {} >= %s AND {} < %s").format(
            *map(sql.Identifier, SERIES), sql.Identifier("open_ts"), sql.Identifier("open_ts"))

    # -- reading ----------------------------------------------------------------------------
    def series(self, source: str | None, symbol: str | None, timeframe: str | None) -> list[SeriesHeld]:
        filters = [(c, v) for c, v in zip(SERIES, (source, symbol, timeframe), strict=True) if v]
        where = sql.SQL("")
        if filters:
            where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(
                sql.SQL("{} = %s").format(sql.Identifier(c)) for c, _ in filters)
        query = sql.SQL("SELECT {}, {}, {}, count(*), min({}), max({}) FROM {}{} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3").format(
            *map(sql.Identifier, SERIES), sql.Identifier("open_ts"), sql.Identifier("open_ts"), self.table.ident, where)

        def work(cur: Any) -> list[SeriesHeld]:
            cur.execute(query, [v for _, v in filters])
            return [SeriesHeld(r[0], r[1], r[2], int(r[3]), int(r[4]), int(r[5])) for r in self._fetch(cur)]

        return self._run("status", work)

    def _partitions_sql(self) -> sql.Composable:
        # with a unique key on the series and open_ts no two lines share an open_ts: the tie-break
        # by line (for tables without one) is not needed, and sorting by open_ts alone is ~40% cheaper
        order = "open_ts" if frozenset(KEY) in self.table.unique else 'open_ts, line COLLATE "C"'
        return sql.SQL(
            "SELECT to_char(to_timestamp(open_ts / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM') AS part, count(*), "
            "min(open_ts), max(open_ts), "
            "encode(sha256(convert_to(string_agg(line, '' ORDER BY " + order + "), 'UTF8')), 'hex') "
            "FROM (SELECT {} AS open_ts, {} AS line FROM {} WHERE {}) AS s GROUP BY 1"
        ).format(sql.Identifier("open_ts"), self._canon(), self.table.ident, self._where())

    def _month_sql(self) -> sql.Composable:
        """One partition's count, first/last open and digest (the rows of one month's range)."""
        order = "open_ts" if frozenset(KEY) in self.table.unique else 'open_ts, line COLLATE "C"'
        return sql.SQL(
            "SELECT count(*), min(open_ts), max(open_ts), "
            "encode(sha256(convert_to(string_agg(line, '' ORDER BY " + order + "), 'UTF8')), 'hex') "
            "FROM (SELECT {} AS open_ts, {} AS line FROM {} WHERE {}) AS s"
        ).format(sql.Identifier("open_ts"), self._canon(), self.table.ident, self._where())

    def partitions(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> dict[str, PartitionState]:
        """Per month, computed by the server: one query per month, up to :attr:`DIGEST_CONNECTIONS`
        months at once on their own connections (a digest is CPU in the server: one core each)."""
        months = month_ranges(start, end)
        if len(months) <= 1 or self.DIGEST_CONNECTIONS <= 1:
            query = self._partitions_sql()

            def work(cur: Any) -> dict[str, PartitionState]:
                cur.execute(query, (source, symbol, timeframe, start, end))
                return {r[0]: PartitionState(r[0], int(r[1]), int(r[2]), int(r[3]), r[4]) for r in self._fetch(cur)}

            return self._run("digest", work)
        found = self._months_at_once(self._month_sql(), "digest", (source, symbol, timeframe), months)
        return {key: PartitionState(key, int(r[0]), int(r[1]), int(r[2]), r[3]) for key, r in found if r[0]}

    def _months_at_once(self, query: Any, what: str, series: tuple[str, str, str],
                        months: list[tuple[str, int, int]]) -> list[tuple[str, Any]]:
        """``query`` (one row) for each month ``(key, start, end)``, on up to
        :attr:`DIGEST_CONNECTIONS` connections at once."""

        def one(month: tuple[str, int, int]) -> tuple[str, Any]:
            key, a, b = month

            def work(cur: Any) -> Any:
                cur.execute(query, (*series, a, b))
                return self._fetch(cur)[0]

            with self._borrow() as conn:
                return key, self._run(what, work, conn)

        with ThreadPoolExecutor(max_workers=max(1, min(self.DIGEST_CONNECTIONS, len(months))),
                                thread_name_prefix=f"forge-pg-{what}") as pool:
            return list(pool.map(one, months))

    @contextlib.contextmanager
    def _borrow(self) -> Iterator[psycopg2.extensions.connection]:
        """A connection no other thread uses meanwhile: the main one or one of up to
        :attr:`DIGEST_CONNECTIONS` - 1 more, opened when first needed."""
        with self._free_cond:
            while not self._free:
                if 1 + len(self.extra) < self.DIGEST_CONNECTIONS:
                    self.extra.append(self.spec.connect_or_fail())
                    self._free.append(self.extra[-1])
                else:
                    self._free_cond.wait()
            conn = self._free.pop()
        try:
            yield conn
        finally:
            with self._free_cond:
                self._free.append(conn)
                self._free_cond.notify()

    def rows(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> list[StoredRow]:
        query = sql.SQL("SELECT ctid::text, {} FROM {} WHERE {} ORDER BY open_ts, ctid").format(
            self._canon(), self.table.ident, self._where())

        def work(cur: Any) -> list[StoredRow]:
            cur.execute(query, (source, symbol, timeframe, start, end))
            out = []
            for ref, text in self._fetch(cur):
                fields = text.rstrip("\n").split(",")
                out.append(StoredRow(int(fields[0]), int(fields[1]), tuple(fields[2:]), ref))
            return out

        return self._run("read", work)

    def counts(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> dict[str, PartitionState]:
        """Per month: count and first/last open only (optional hook: an index-only scan, no
        digest; ``digest`` is left empty). Months at once, as :meth:`partitions`."""
        query = sql.SQL("SELECT count(*), min(open_ts), max(open_ts) FROM {} WHERE {}").format(
            self.table.ident, self._where())
        found = self._months_at_once(query, "count", (source, symbol, timeframe), month_ranges(start, end))
        return {key: PartitionState(key, int(r[0]), int(r[1]), int(r[2]), "") for key, r in found if r[0]}

    def holds(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> bool:
        """Whether any row of the series opens in ``[start, end)`` (optional hook: one index probe)."""
        query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {})").format(self.table.ident, self._where())

        def work(cur: Any) -> bool:
            cur.execute(query, (source, symbol, timeframe, start, end))
            return bool(cur.fetchone()[0])

        return self._run("read", work)

    def opens(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> list[int]:
        """Just the open times held (optional hook): an index-only scan, 8 bytes a row."""
        query = sql.SQL("SELECT open_ts FROM {} WHERE {} ORDER BY open_ts").format(self.table.ident, self._where())

        def work(cur: Any) -> list[int]:
            cur.execute(query, (source, symbol, timeframe, start, end))
            rows = cur.fetchall()
            self.bytes_received += 8 * len(rows)
            return [int(r[0]) for r in rows]

        return self._run("read", work)

    # -- the ledger -------------------------------------------------------------------------
    def _ledger_exists(self, cur: Any) -> bool:
        if not self._ledger_ready:
            cur.execute("SELECT to_regclass(%s)", (self.ledger_ident.as_string(cur),))
            self._ledger_ready = cur.fetchone()[0] is not None
        return self._ledger_ready

    def _ensure_ledger(self, cur: Any) -> None:
        # created only when missing: CREATE ... IF NOT EXISTS needs CREATE on the schema even when the
        # table is there, which a role granted only the ledger's rows lacks. Not marked ready here: the
        # transaction creating it may still roll back
        if not self._ledger_exists(cur):
            cur.execute(DDL_LOCK)
            cur.execute(sql.SQL(LEDGER_DDL).format(self.ledger_ident))

    def ledger(self, source: str, symbol: str, timeframe: str) -> dict[str, LedgerEntry]:
        def work(cur: Any) -> dict[str, LedgerEntry]:
            if not self._ledger_exists(cur):
                return {}
            cur.execute(sql.SQL("SELECT entry FROM {} WHERE target = %s AND source = %s AND symbol = %s "
                                "AND timeframe = %s").format(self.ledger_ident), (self.label, source, symbol, timeframe))
            return {e.partition: e for e in self._entries(cur.fetchall())}

        return self._run("ledger", work)

    def venue_ledger(self, source: str, timeframe: str) -> list[LedgerEntry]:
        """Every symbol's entries of one source and timeframe (optional hook: shared holes)."""
        def work(cur: Any) -> list[LedgerEntry]:
            if not self._ledger_exists(cur):
                return []
            cur.execute(sql.SQL("SELECT entry FROM {} WHERE target = %s AND source = %s AND timeframe = %s").format(
                self.ledger_ident), (self.label, source, timeframe))
            return self._entries(cur.fetchall())

        return self._run("ledger", work)

    def _entries(self, rows: list[tuple[Any, ...]]) -> list[LedgerEntry]:
        """The ledger rows' entries; one edited or damaged (``entry`` of another shape) is one
        warning and absent: its partition is checked against the exchange, and its next entry
        replaces the row (docs/verify.md)."""
        out, bad = [], []
        for (data,) in rows:
            try:
                out.append(LedgerEntry.from_json(data))
            except ValueError as exc:
                bad.append(str(exc))
        if bad and not self._ledger_warned:
            self._ledger_warned = True
            where = f"{self.schema}.{LEDGER_TABLE}" if self.schema else LEDGER_TABLE
            log.warning("ledger_unreadable", ledger=f"PostgreSQL {self.spec.where} table {where} (rows of {self.label})",
                        rows=len(bad), error=bad[0], meaning="those partitions are checked as if there were no "
                        "entry (against the exchange); the next entry of each replaces its row")
        return out

    def _save(self, cur: Any, entries: Sequence[LedgerEntry]) -> None:
        self._ensure_ledger(cur)
        execute_values(cur, sql.SQL(
            "INSERT INTO {} (target, source, symbol, timeframe, partition, range_start, range_end, entry, "
            "store_digest, verified_at) VALUES %s ON CONFLICT (target, source, symbol, timeframe, partition) DO UPDATE "
            "SET range_start = EXCLUDED.range_start, range_end = EXCLUDED.range_end, entry = EXCLUDED.entry, "
            "store_digest = EXCLUDED.store_digest, verified_at = EXCLUDED.verified_at").format(self.ledger_ident).as_string(cur),
            [(self.label, e.source, e.symbol, e.timeframe, e.partition, e.start, e.end, json.dumps(e.as_json()),
              e.store_digest, e.verified_at) for e in entries])

    def save_ledger(self, entries: Sequence[LedgerEntry]) -> None:
        self._run("ledger", lambda cur: self._save(cur, entries))

    def _save_after_write(self, cur: Any, entry: LedgerEntry) -> None:
        """A repair's ledger entry, in its transaction but in a savepoint: a role that may write the
        data table and not the ledger (no CREATE on the schema, no INSERT on ``forge_ledger``)
        still gets the repaired rows committed; why is kept in :attr:`ledger_unsaved`, which the
        command warns about once, and the partition is only checked again next time."""
        cur.execute("SAVEPOINT forge_ledger")
        try:
            self._save(cur, [entry])
        except psycopg2.Error as exc:
            cur.execute("ROLLBACK TO SAVEPOINT forge_ledger")
            self.ledger_unsaved = (f"PostgreSQL {self.spec.where} table {self.label}: ledger not written: "
                                   f"{self.spec.reason(exc)}")
        else:
            cur.execute("RELEASE SAVEPOINT forge_ledger")

    # -- repairing --------------------------------------------------------------------------
    def apply(self, source: str, symbol: str, timeframe: str, columns: tuple[str, ...], upserts: list[Row],
              deletes: list[Any], entry: LedgerEntry, proven: str | None = None) -> str:
        """See :class:`~forge_core.integrity.IntegrityStore`. ``proven``: the digest the caller has
        proven the partition will have after this write (only candles the store lacks are
        inserted, and the store's digest equals the exchange's at the open times it holds); the
        partition is then only counted, not digested again, and digested after all if the count
        is not ``entry.rows``."""
        target = self.table.writable(columns)
        if upserts:
            self.table.check_fillable(columns, f"source {source}")
        picks = [columns.index(c) for c in target]
        keyed = frozenset(KEY) in self.table.unique
        rest = [c for c in target if c not in KEY]

        def work(cur: Any) -> str:
            if deletes:
                cur.execute(sql.SQL("DELETE FROM {} WHERE ctid = ANY(%s::tid[])").format(self.table.ident),
                            (list(deletes),))
            if upserts:
                if not keyed:  # no unique key to upsert on: replace the series' rows at these open times
                    cur.execute(sql.SQL("DELETE FROM {} WHERE {} = %s AND {} = %s AND {} = %s AND {} = ANY(%s)").format(
                        self.table.ident, *map(sql.Identifier, KEY)),
                        (source, symbol, timeframe, [r[columns.index("open_ts")] for r in upserts]))
                statement = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
                    self.table.ident, sql.SQL(", ").join(map(sql.Identifier, target)))
                if keyed:
                    statement += sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
                        sql.SQL(", ").join(map(sql.Identifier, KEY)),
                        sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in rest))
                execute_values(cur, statement.as_string(cur), [tuple(r[i] for i in picks) for r in upserts],
                               page_size=1000)
            if proven is not None:
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self.table.ident, self._where()),
                            (source, symbol, timeframe, entry.start, entry.end))
                if int(cur.fetchone()[0]) == entry.rows:
                    entry.store_digest = proven
                    self._save_after_write(cur, entry)
                    return entry.store_digest
            cur.execute(self._partitions_sql(), (source, symbol, timeframe, entry.start, entry.end))
            found = self._fetch(cur)
            entry.store_digest = found[0][4] if found else EMPTY_DIGEST
            self._save_after_write(cur, entry)
            return entry.store_digest

        with self._borrow() as conn:  # applies of several partitions may run at once (concurrent_apply)
            return self._run("repair", work, conn)

    def close(self) -> None:
        for extra in self.extra:
            with contextlib.suppress(psycopg2.Error):
                extra.close()
        self.extra, self._free = [], []
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
