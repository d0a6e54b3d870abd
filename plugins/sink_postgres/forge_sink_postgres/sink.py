"""Write candles to PostgreSQL: ``forge run --sink postgres``.

``write`` encodes each batch to ``COPY`` text and keeps it; ``commit`` sends everything kept as
one transaction: ``COPY`` into a session-local staging table (temporary, so no WAL and no
index), then one ``INSERT ... SELECT ... ON CONFLICT (key) DO UPDATE`` into the target, then
``COMMIT``. Rows whose stored values already equal the new ones are not rewritten. The kept
text is dropped only after the commit succeeded, so a dropped connection or a server restart
is retried (reconnect, backoff) by sending the whole transaction again; upserts make a
repeated send harmless.

Plain inserts (``on_conflict="none"``) ``COPY`` straight into the target, as the seed's
emitter without ``on_conflict`` did: re-runs then duplicate rows, or fail on a primary key.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import operator
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from forge_core import Batch, Option, RunInfo, Sink, SinkError, UsageError
from forge_core.logs import get_logger
from forge_core.records import Row

from .connection import ConnectionSpec
from .copytext import encode
from .target import (
    TableInfo,
    check_model,
    default_table_ddl,
    inspect,
    load_model,
    split_name,
)

log = get_logger(__name__)
T = TypeVar("T")
MAX_PROBES = 64
PLAIN = ("none", "no", "false", "off", "insert")
# Python-API keyword arguments of the seed's PostgresEmitter; not CLI options (a password on
# the command line is visible in the process list: use the URL from the environment, PGPASSWORD,
# ~/.pgpass or --password-file there).
CONNECTION_KWARGS = ("host", "port", "dbname", "user", "password")
PROGRESS_TABLE = "forge_progress"
# One row per series and run start while a run is incomplete: where its committed rows end.
PROGRESS_DDL = """CREATE TABLE IF NOT EXISTS {} (
    target text NOT NULL, source text NOT NULL, symbol text NOT NULL, timeframe text NOT NULL,
    range_start bigint NOT NULL, transforms text NOT NULL, committed_end bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, source, symbol, timeframe, range_start, transforms))"""


class PostgresSink(Sink):
    name = "postgres"
    description = "PostgreSQL table, idempotent upserts (COPY + INSERT ... ON CONFLICT)"
    options = (
        Option("database_url", "PostgreSQL URL, e.g. postgresql://user@localhost:5432/crypto "
               "(password better from PGPASSWORD, ~/.pgpass or --password-file).",
               envvar="FORGE_DATABASE_URL", secret=True, metavar="URL"),
        Option("table", "Table to write when no --model is given; created if missing "
               "(schema.table accepted).", default="klines", metavar="NAME"),
        Option("model", "SQLAlchemy declarative model to write into, as package.module:Class; "
               "its table is created if missing.", metavar="MODULE:CLASS"),
        Option("on_conflict", "Upsert key columns, comma-separated (default: the table's primary key), "
               "or 'none' for plain inserts (re-runs then duplicate or fail).", metavar="COLUMNS|none"),
        Option("password_file", "File holding the database password (first line).", metavar="PATH"),
    )

    supports_follow = True  # every commit is a transaction in the target table
    compat_defaults = {"on_conflict": "none"}  # sf.PostgresEmitter inserts unless on_conflict() is called

    # Retrying a lost connection: backoff from RETRY_FIRST doubling to RETRY_MAX seconds,
    # giving up RETRY_FOR seconds after the first failure of a commit.
    RETRY_FIRST = 0.25
    RETRY_MAX = 5.0
    RETRY_FOR = 120.0
    # Commit early when this many rows are kept (bounds memory whatever --commit-every says).
    MAX_PENDING_ROWS = 250_000

    def __init__(self, **options: Any) -> None:
        kwargs = {k: options.pop(k) for k in CONNECTION_KWARGS if k in options}
        super().__init__(**options)
        url = self.settings["database_url"] or os.environ.get("FORGE_DATABASE_URL") or None
        self.spec = ConnectionSpec.build(url, password_file=self.settings["password_file"], **kwargs)
        model = self.settings["model"]
        self.model = load_model(model) if model is not None else None
        if self.model is None:
            self.schema, self.table_name = split_name(self.settings["table"] or "klines")
        else:
            if options.get("table") not in (None, "klines", self.model.name):
                raise UsageError(f"give either a table ({options['table']!r}) or a model "
                                 f"({self.model.name!r} has its own table), not both")
            self.schema, self.table_name = self.model.schema, self.model.name
        self.conflict = _conflict_columns(self.settings["on_conflict"])  # None = primary key, () = plain
        self.conn: psycopg2.extensions.connection | None = None
        self.table: TableInfo | None = None
        self.pending: dict[tuple[str, ...], _Pending] = {}  # by target columns
        self.pending_rows = 0
        self._mappings: dict[tuple[str, ...], _Mapping] = {}
        self._stages: dict[tuple[str, ...], sql.Composable] = {}  # per connection
        self.run: RunInfo | None = None
        self.resumable = False
        self.resumed: dict[tuple[str, str], int] = {}  # (source, symbol) -> where this run resumed
        self.progress: dict[tuple[str, str], int] = {}  # (source, symbol) -> last end_ts kept, uncommitted
        self.sent = 0
        self.changed = 0
        self.retries = 0

    # -- API for the streamforge-style emitter ------------------------------------------------
    def set_model(self, model: Any) -> PostgresSink:
        """Write into ``model``'s table (a declarative class, ``Table`` or ``module:Class``)."""
        self.model = load_model(model)
        self.schema, self.table_name = self.model.schema, self.model.name
        return self

    def on_conflict(self, columns: Sequence[str] | str | None) -> PostgresSink:
        """Upsert on ``columns``; ``None`` = the primary key; ``[]`` or ``"none"`` = plain inserts."""
        self.conflict = _conflict_columns(columns)
        return self

    # -- the sink contract --------------------------------------------------------------------
    def open(self, run: RunInfo) -> None:
        if self.model is not None:  # before creating its table
            check_model(self.model, run.columns, f"source {run.source}")
        self.sent = self.changed = self.retries = 0
        self.run = run
        self.progress.clear()
        self.resumed.clear()
        self.conn = self.spec.connect_or_fail()
        try:
            self.table = self._prepare_table()
            self.resumable = self._prepare_progress()
            self._check(run.columns, f"source {run.source}")
            self._mappings.clear()
            self._stages.clear()
            self.conn.commit()
        except psycopg2.Error as exc:
            self._drop_connection()
            raise SinkError(f"PostgreSQL {self.spec.where} table {self._label}: {self.spec.reason(exc)}") from None
        except BaseException:
            self._drop_connection()
            raise
        log.info("postgres_open", where=self.spec.safe_url, table=self._label,
                 conflict=",".join(self._key) or "none (plain inserts)")

    def write(self, batch: Batch) -> None:
        done = self.resumed.get((batch.source, batch.symbol))
        if done is not None and "end_ts" in batch.columns:  # another sink resumed from further back
            i = batch.columns.index("end_ts")
            batch = batch.with_rows([r for r in batch.rows if r[i] > done])
        if not batch.rows:
            return
        mapping = self._mapping(batch.columns)
        pending = self.pending.get(mapping.columns)
        if pending is None:
            pending = self.pending[mapping.columns] = _Pending()
        pending.add(mapping, batch.rows)
        self.pending_rows += len(batch.rows)
        if "end_ts" in batch.columns:
            self.progress[(batch.source, batch.symbol)] = batch.rows[-1][batch.columns.index("end_ts")]
        if self.pending_rows >= self.MAX_PENDING_ROWS:
            self.commit()

    def commit(self) -> None:
        if not self.pending:
            return
        attempts = 0

        def send(cur: Any) -> int:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and self._committed_already(cur):
                return 0  # the connection died after the server committed: sending again would duplicate
            return self._send_with_progress(cur)

        changed = self._retrying(send, "commit")
        self.sent += self.pending_rows
        self.changed += changed
        self.pending.clear()
        self.pending_rows = 0
        self.progress.clear()

    def last_open(self, source: str, symbol: str, timeframe: str) -> int | None:
        table = self.table
        if table is None or "open_ts" not in table.columns:
            return None
        where = [(c, v) for c, v in (("source", source), ("symbol", symbol), ("timeframe", timeframe))
                 if c in table.columns]
        query = sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier("open_ts"), table.ident)
        if where:
            query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(
                sql.SQL("{} = %s").format(sql.Identifier(c)) for c, _ in where)

        def run(cur: Any) -> int | None:
            cur.execute(query, [v for _, v in where])
            value = cur.fetchone()[0]
            return None if value is None else int(value)

        return self._retrying(run, "last_open")

    def resume_after(self, source: str, symbol: str, timeframe: str) -> int | None:
        """Where an interrupted run with the same start committed up to, from ``forge_progress``."""
        run_info = self.run
        if run_info is None or not self.resumable:
            return None
        query = sql.SQL("SELECT committed_end FROM {} WHERE target = %s AND source = %s AND symbol = %s "
                        "AND timeframe = %s AND range_start = %s AND transforms = %s").format(self._progress_table)

        def run(cur: Any) -> int | None:
            cur.execute(query, (self._label, source, symbol, timeframe, run_info.start, run_info.transforms))
            found = cur.fetchone()
            return None if found is None else int(found[0])

        done = self._retrying(run, "resume_after")
        if done is not None:
            self.resumed[(source, symbol)] = done
        return done

    def close(self, ok: bool) -> None:
        try:
            if ok:
                self.commit()
                if self.resumable:
                    self._retrying(self._forget_progress, "close")  # complete: a re-run fetches anew
        finally:
            self.pending.clear()
            self.pending_rows = 0
            self.progress.clear()
            self._drop_connection()

    def integrity(self) -> Any:
        """Hooks of ``forge status/verify/repair`` on this sink's table (integrity.py)."""
        from .integrity import PostgresIntegrity

        return PostgresIntegrity(self.spec, self.schema, self.table_name)

    # -- progress, committed in the same transaction as the rows ----------------------------------
    def _prepare_progress(self) -> bool:
        """Create ``forge_progress`` if missing; without the rights to use it, resuming is off
        (a re-run then fetches everything again, which upserts make harmless)."""
        assert self.conn is not None
        with self.conn.cursor() as cur:
            cur.execute("SAVEPOINT forge_progress")
            try:
                cur.execute(sql.SQL(PROGRESS_DDL).format(self._progress_table))
                cur.execute(sql.SQL("SELECT committed_end FROM {} WHERE false FOR UPDATE").format(self._progress_table))
            except psycopg2.errors.InsufficientPrivilege as exc:
                cur.execute("ROLLBACK TO SAVEPOINT forge_progress")
                log.warning("postgres_resume_off", where=self.spec.where, reason=self.spec.reason(exc))
                return False
            cur.execute("RELEASE SAVEPOINT forge_progress")
        return True

    @property
    def _progress_table(self) -> sql.Composable:
        return sql.Identifier(self.schema, PROGRESS_TABLE) if self.schema else sql.Identifier(PROGRESS_TABLE)

    def _send_with_progress(self, cur: Any) -> int:
        changed = self._send(cur)
        if self.run is not None and self.progress and self.resumable:
            cur.executemany(sql.SQL(
                "INSERT INTO {} (target, source, symbol, timeframe, range_start, transforms, committed_end) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (target, source, symbol, timeframe, range_start, transforms) "
                "DO UPDATE SET committed_end = EXCLUDED.committed_end, updated_at = now()"
            ).format(self._progress_table), [
                (self._label, source, symbol, self.run.timeframe, self.run.start, self.run.transforms, end)
                for (source, symbol), end in self.progress.items()])
        return changed

    def _committed_already(self, cur: Any) -> bool:
        """Did the previous attempt of this commit reach the server? Its progress rows tell."""
        if self.run is None or not self.resumable or not self.progress:
            return False
        cur.execute(sql.SQL("SELECT source, symbol, committed_end FROM {} WHERE target = %s AND timeframe = %s "
                            "AND range_start = %s AND transforms = %s").format(self._progress_table),
                    (self._label, self.run.timeframe, self.run.start, self.run.transforms))
        stored = {(source, symbol): end for source, symbol, end in cur.fetchall()}
        return all(stored.get(key) == end for key, end in self.progress.items())

    def _forget_progress(self, cur: Any) -> None:
        assert self.run is not None
        cur.execute(sql.SQL("DELETE FROM {} WHERE target = %s AND source = %s AND timeframe = %s "
                            "AND range_start = %s AND transforms = %s AND symbol = ANY(%s)").format(self._progress_table),
                    (self._label, self.run.source, self.run.timeframe, self.run.start, self.run.transforms,
                     list(self.run.symbols)))

    def describe(self) -> str:
        key = self._key
        mode = (f"upsert on {','.join(key)}" if key else "plain inserts" if self.conflict is not None
                else "upsert on the primary key")
        return (f"{self.spec.safe_url} table {self._label} ({mode}; {self.sent} rows sent, "
                f"{self.changed} inserted or changed)")

    # -- setup ----------------------------------------------------------------------------------
    @property
    def _label(self) -> str:
        return f"{self.schema}.{self.table_name}" if self.schema else self.table_name

    @property
    def _key(self) -> tuple[str, ...]:
        if self.conflict is not None:
            return self.conflict
        return self.table.primary_key if self.table is not None else ()

    def _prepare_table(self) -> TableInfo:
        assert self.conn is not None
        with self.conn.cursor() as cur:
            table = inspect(cur, self.schema, self.table_name)
            if table is None:
                if self.model is not None:
                    self._create_model_table()
                else:
                    cur.execute(default_table_ddl(self.schema, self.table_name))
                table = inspect(cur, self.schema, self.table_name)
                if table is None:
                    raise SinkError(f"table {self._label} does not exist after creating it "
                                    f"in {self.spec.where}; check the search_path")
        if self.model is not None:
            missing = [c.name for c in self.model.columns if c.name not in table.columns]
            if missing:
                raise SinkError(f"table {table.label} in {self.spec.where} has no column {missing[0]!r} "
                                "that the model declares; migrate the table or fix the model")
        return table

    def _create_model_table(self) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import StaticPool

        assert self.conn is not None and self.model is not None
        self.conn.commit()
        engine = create_engine("postgresql+psycopg2://", creator=self.spec.connect, poolclass=StaticPool)
        try:
            self.model.create(engine, checkfirst=True)
        finally:
            engine.dispose()

    def _check(self, available: Sequence[str], what: str) -> None:
        """Refuse a column set that cannot fill the table or the conflict key."""
        assert self.table is not None
        if self.model is not None:
            check_model(self.model, available, what)
        self.table.check_fillable(available, what)
        key = self._key
        if self.conflict is None and not key:
            raise SinkError(f"table {self._label} has no primary key to upsert on; pass --on-conflict "
                            "COLUMNS naming a unique index, or --on-conflict none for plain inserts")
        if key:
            unknown = [c for c in key if c not in self.table.columns]
            if unknown:
                raise UsageError(f"--on-conflict column {unknown[0]!r} is not in table {self._label}; "
                                 f"it has: {', '.join(self.table.columns)}")
            if frozenset(key) not in self.table.unique:
                raise SinkError(f"--on-conflict {','.join(key)}: table {self._label} has no unique index or "
                                "primary key on exactly these columns")
            unfilled = [c for c in key if c not in available]
            if unfilled:
                raise SinkError(f"conflict column {unfilled[0]!r} of table {self._label} is not among the "
                                f"columns of {what}: {', '.join(available)}")

    def _mapping(self, columns: tuple[str, ...]) -> _Mapping:
        """Target columns a batch with ``columns`` fills, and where each comes from in a row."""
        found = self._mappings.get(columns)
        if found is None:
            if self.table is None:
                raise SinkError("postgres sink: write() before open()")
            self._check(columns, "the batch")
            target = self.table.writable(columns)
            key = self._key
            ranged = "open_ts" in key  # then a commit can check cheaply whether any key exists
            found = _Mapping(target, tuple(columns.index(c) for c in target),
                             tuple(c for c in key if c != "open_ts") if ranged else (),
                             tuple(columns.index(c) for c in key if c != "open_ts") if ranged else (),
                             columns.index("open_ts") if ranged else None)
            self._mappings[columns] = found
        return found

    # -- sending ----------------------------------------------------------------------------------
    def _send(self, cur: Any) -> int:
        """One transaction's statements (the caller commits); returns rows inserted or changed.

        Upserts whose kept rows are known to have unique keys (one series per batch, ascending
        ``open_ts``, the key includes ``open_ts``) take one of two shortcuts:

        - none of their keys exists yet (a fresh range, one index probe per series): ``COPY``
          straight into the table, in a savepoint; a unique violation there (a concurrent
          writer) rolls back to it and takes the staging path;
        - otherwise, after the staging ``COPY``, rows equal to the stored ones are deleted from
          the stage by one hash join over the table's key range, so an unchanged re-run neither
          locks nor rewrites anything; the rest is upserted.

        Anything else is staged and upserted with ``DISTINCT ON`` the key (the last row wins).
        """
        assert self.table is not None
        changed = 0
        for columns, pending in self.pending.items():
            data = "".join(pending.texts).encode("utf-8")
            into_table = sql.SQL("COPY {} ({}) FROM STDIN").format(
                self.table.ident, sql.SQL(", ").join(map(sql.Identifier, columns)))
            if not self._key:
                changed += self._copy(cur, into_table, data)
                continue
            unique = pending.ranges is not None
            if unique and not self._any_exists(cur, pending):
                cur.execute("SAVEPOINT forge_copy")
                try:
                    changed += self._copy(cur, into_table, data)
                    cur.execute("RELEASE SAVEPOINT forge_copy")
                    continue
                except psycopg2.errors.UniqueViolation:
                    cur.execute("ROLLBACK TO SAVEPOINT forge_copy")
            stage = self._stage(cur, columns)
            self._copy(cur, sql.SQL("COPY {} FROM STDIN").format(stage), data)
            if unique and self._drop_unchanged(cur, pending, columns, stage) == pending.rows:
                continue
            cur.execute(self._upsert_sql(columns, stage, dedupe=not unique))
            changed += max(cur.rowcount, 0)
        return changed

    @staticmethod
    def _copy(cur: Any, statement: sql.Composable, data: bytes) -> int:
        cur.copy_expert(statement, io.BytesIO(data), size=1 << 20)
        return max(cur.rowcount, 0)

    def _range_filter(self, pending: _Pending, alias: str) -> tuple[sql.Composable, list[Any]]:
        """``alias.k = %s AND ... AND alias.open_ts BETWEEN %s AND %s``, OR-ed over the series kept."""
        assert pending.ranges is not None and pending.mapping is not None
        others = pending.mapping.key_others
        clauses, params = [], []
        for values, (lo, hi) in pending.ranges.items():
            where = [sql.SQL("{}.{} = %s").format(sql.Identifier(alias), sql.Identifier(c)) for c in others]
            where.append(sql.SQL("{}.{} BETWEEN %s AND %s").format(sql.Identifier(alias),
                                                                   sql.Identifier("open_ts")))
            clauses.append(sql.SQL("(") + sql.SQL(" AND ").join(where) + sql.SQL(")"))
            params += [*values, lo, hi]
        return sql.SQL("(") + sql.SQL(" OR ").join(clauses) + sql.SQL(")"), params

    def _any_exists(self, cur: Any, pending: _Pending) -> bool:
        """Whether the table holds any row whose key falls in the open_ts ranges kept."""
        assert self.table is not None
        where, params = self._range_filter(pending, "t")
        cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE {})").format(self.table.ident, where),
                    params)
        return bool(cur.fetchone()[0])

    def _drop_unchanged(self, cur: Any, pending: _Pending, columns: tuple[str, ...],
                        stage: sql.Composable) -> int:
        """Delete from the stage the rows the table already holds with equal values; returns how
        many. A hash join over the key range: one index range scan instead of a probe per row."""
        assert self.table is not None
        where, params = self._range_filter(pending, "t")
        key = self._key
        rest = [c for c in columns if c not in key]
        match = [sql.SQL("s.{0} = t.{0}").format(sql.Identifier(c)) for c in key]
        if rest:
            match.append(sql.SQL("({}) IS NOT DISTINCT FROM ({})").format(
                sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in rest),
                sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in rest)))
        cur.execute("SET LOCAL enable_nestloop = off")  # the stage has no statistics; ends at commit
        cur.execute(sql.SQL("DELETE FROM {} AS s USING {} AS t WHERE {} AND {}").format(
            stage, self.table.ident, where, sql.SQL(" AND ").join(match)), params)
        return max(cur.rowcount, 0)

    def _stage(self, cur: Any, columns: tuple[str, ...]) -> sql.Composable:
        """A temporary table of the target's types for ``columns``, emptied at every commit."""
        stage = self._stages.get(columns)
        if stage is None:
            assert self.table is not None
            digest = hashlib.sha1("\x00".join((self.table.label, *columns)).encode()).hexdigest()[:12]
            stage = sql.Identifier(f"forge_stage_{digest}")
            cur.execute(sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
                                "SELECT {} FROM {} WITH NO DATA")
                        .format(stage, sql.SQL(", ").join(map(sql.Identifier, columns)), self.table.ident))
            self._stages[columns] = stage
        return stage

    def _upsert_sql(self, columns: tuple[str, ...], stage: sql.Composable, dedupe: bool) -> sql.Composable:
        assert self.table is not None
        key = self._key
        names = sql.SQL(", ").join(map(sql.Identifier, columns))
        source: sql.Composable = sql.SQL("SELECT {} FROM {}").format(names, stage)
        if dedupe:  # the same key may come twice in one commit: the last row sent wins
            keys = sql.SQL(", ").join(map(sql.Identifier, key))
            source = sql.SQL("SELECT DISTINCT ON ({}) {} FROM {} ORDER BY {}, ctid DESC").format(
                keys, names, stage, keys)
        query = sql.SQL("INSERT INTO {} AS t ({}) {} ON CONFLICT ({}) ").format(
            self.table.ident, names, source, sql.SQL(", ").join(map(sql.Identifier, key)))
        rest = [c for c in columns if c not in key]
        if not rest:
            return query + sql.SQL("DO NOTHING")
        return query + sql.SQL("DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                               for c in rest),
            sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in rest),
            sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in rest))

    def _retrying(self, work: Callable[[Any], T], what: str) -> T:
        """Run ``work`` in one transaction and commit; on a lost connection (or a serialization
        failure) reconnect and run it again, with backoff, for up to RETRY_FOR seconds."""
        delay = self.RETRY_FIRST
        deadline: float | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                conn = self._connection()
                with conn.cursor() as cur:
                    result = work(cur)
                conn.commit()
                return result
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                self._drop_connection()
                now = time.monotonic()
                deadline = deadline or now + self.RETRY_FOR
                reason = self.spec.reason(exc)
                if now + delay > deadline:
                    raise SinkError(f"PostgreSQL {self.spec.where} table {self._label}: {what} failed "
                                    f"{attempt} times over {self.RETRY_FOR:.0f}s, giving up: {reason}") from None
                self.retries += 1
                log.warning("postgres_retry", what=what, attempt=attempt, wait=round(delay, 2),
                            where=self.spec.where, error=reason)
                time.sleep(delay)
                delay = min(delay * 2, self.RETRY_MAX)
            except psycopg2.Error as exc:
                self._rollback()
                raise SinkError(f"PostgreSQL {self.spec.where} table {self._label}: {what} failed: "
                                f"{self.spec.reason(exc)}") from None

    def _connection(self) -> psycopg2.extensions.connection:
        if self.conn is None or self.conn.closed:
            self._drop_connection()
            self.conn = self.spec.connect()
            self._stages.clear()  # temporary tables died with the old session
            log.info("postgres_connected", where=self.spec.where)
        return self.conn

    def _rollback(self) -> None:
        self._stages.clear()  # a stage created in the rolled back transaction is gone
        if self.conn is not None and not self.conn.closed:
            try:
                self.conn.rollback()
            except psycopg2.Error:
                self._drop_connection()

    def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        self._stages.clear()
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.close()


@dataclass(frozen=True)
class _Mapping:
    """How rows of one batch column layout fill the target."""

    columns: tuple[str, ...]  # target columns filled, in table order
    indexes: tuple[int, ...]  # where each comes from in a row
    key_others: tuple[str, ...]  # conflict key columns other than open_ts
    key_other_indexes: tuple[int, ...]
    open_ts_index: int | None  # None: the key has no open_ts, no existence shortcut


@dataclass
class _Pending:
    """COPY text kept for one target column set until its commit succeeds.

    ``ranges`` maps the values of the key columns other than ``open_ts`` (a series) to the
    ``open_ts`` range kept for it, while every batch is one series, ascending, after what was
    kept before: that proves the keys kept are unique. ``None`` once that is not so."""

    texts: list[str] = field(default_factory=list)
    rows: int = 0
    mapping: _Mapping | None = None
    ranges: dict[tuple[Any, ...], tuple[int, int]] | None = field(default_factory=dict)

    def add(self, mapping: _Mapping, rows: list[Row]) -> None:
        self.texts.append(encode(rows, mapping.indexes))
        self.rows += len(rows)
        self.mapping = mapping
        if self.ranges is not None:
            self.ranges = self._track(self.ranges, mapping, rows)

    @staticmethod
    def _track(ranges: dict[tuple[Any, ...], tuple[int, int]], mapping: _Mapping,
               rows: list[Row]) -> dict[tuple[Any, ...], tuple[int, int]] | None:
        if mapping.open_ts_index is None:
            return None
        stamps = list(map(itemgetter(mapping.open_ts_index), rows))
        idx = mapping.key_other_indexes
        try:
            ascending = all(map(operator.lt, stamps, islice(stamps, 1, None)))
        except TypeError:  # not comparable
            return None
        if not ascending:
            return None
        if not idx:
            series: set[tuple[Any, ...]] = {()}
        elif len(idx) == 1:
            series = {(v,) for v in map(itemgetter(idx[0]), rows)}
        else:
            series = set(map(itemgetter(*idx), rows))
        if len(series) != 1:
            return None
        (values,) = series
        old = ranges.get(values)
        if old is not None and stamps[0] <= old[1]:
            return None
        ranges[values] = (stamps[0] if old is None else old[0], stamps[-1])
        return ranges if len(ranges) <= MAX_PROBES else None


def _conflict_columns(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """``None`` (primary key), ``()`` (plain inserts) or the named columns."""
    if value is None or value is True:
        return None
    if value is False:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in PLAIN:
            return ()
        if text.lower() in ("", "pk", "primary", "primary_key", "primary-key"):
            return None
        parts = [p.strip() for p in text.split(",")]
    else:
        parts = [str(p).strip() for p in value]
    if any(not p for p in parts):
        raise UsageError(f"bad --on-conflict {value!r}; expected comma-separated column names such as "
                         "source,symbol,timeframe,open_ts, or 'none' for plain inserts")
    return tuple(dict.fromkeys(parts))
