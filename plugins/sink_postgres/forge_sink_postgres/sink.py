"""Write candles to PostgreSQL: ``forge run --sink postgres``. This module is the sink contract;
the parts live beside it:

- ``connection``: where the database is, the password kept out of sight, and the session that
  retries dropped connections, bounds every transaction with a deadline and knows the fate of
  a COMMIT whose answer was lost;
- ``target``: the table (the default one or a model), its catalog description and new columns' types;
- ``pending`` and ``copytext``: the ``COPY`` text kept until a commit;
- ``load`` and ``sql``: one commit's statements;
- ``progress``: ``forge_progress``, where an interrupted run resumes;
- ``compat``: what streamforge's ``PostgresEmitter`` adds.

``write`` encodes each batch to ``COPY`` text and keeps it; ``commit`` sends everything kept as
one transaction (see ``load``). The kept text is dropped only after the commit succeeded.
"""

from __future__ import annotations

import os
from typing import Any

from forge_core import Batch, Option, RunInfo, Sink, SinkError, UsageError
from forge_core.logs import get_logger
from forge_core.records import Row

from . import load
from . import sql as q
from .compat import EmitterMethods, conflict_columns, connection_kwargs
from .connection import ConnectionSpec, Retry, Session
from .pending import Mapping, Pending
from .progress import Progress, Series
from .target import (
    KNOWN_TYPES,
    TableInfo,
    check_model,
    column_type,
    default_table_ddl,
    inspect,
    load_model,
    missing_columns_error,
    planned,
    split_name,
)

log = get_logger(__name__)


class PostgresSink(EmitterMethods, Sink):
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
        Option("password_file", "File holding the database password on one line (the line end is not part of it).",
               metavar="PATH"),
    )

    supports_follow = True  # every commit is a transaction in the target table

    # Retrying a lost connection: backoff from RETRY_FIRST doubling to RETRY_MAX seconds,
    # giving up RETRY_FOR seconds after the first failure of a commit.
    RETRY_FIRST = 0.25
    RETRY_MAX = 5.0
    RETRY_FOR = 120.0
    # Seconds a transaction may take before the server is taken for silent (client deadline and
    # statement_timeout), plus one second per MIN_RATE bytes a commit sends.
    TIMEOUT = 60.0
    MIN_RATE = 256 * 1024
    # Commit early when this many rows are kept (bounds memory whatever --commit-every says).
    MAX_PENDING_ROWS = 250_000

    def __init__(self, **options: Any) -> None:
        kwargs = connection_kwargs(options)
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
        self.conflict = conflict_columns(self.settings["on_conflict"])  # None = primary key, () = plain
        self.session: Session | None = None
        self.table: TableInfo | None = None  # None until the default table is created (first batch)
        self.planned: TableInfo | None = None  # the default table as it will be created
        self.pending: dict[tuple[str, ...], Pending] = {}  # by target columns
        self.pending_rows = 0
        self._mappings: dict[tuple[str, ...], Mapping] = {}
        self.run: RunInfo | None = None
        self.resumable = False
        self.progress: dict[Series, int] = {}  # last end_ts kept per series, not yet committed
        self.timeframes: set[str] = set()  # of the rows written, for forgetting progress at the end
        self.not_stored: dict[str, None] = {}  # batch columns the (user's) table has no column for
        self.sent = 0
        self.changed = 0

    @property
    def retries(self) -> int:
        return self.session.retries if self.session is not None else 0

    # -- the sink contract --------------------------------------------------------------------
    def open(self, run: RunInfo) -> None:
        if self.model is not None:  # before creating its table
            check_model(self.model, run.columns, f"source {run.source}")
        self.sent = self.changed = 0
        self.run = run
        self.progress.clear()
        self.timeframes.clear()
        self.not_stored.clear()
        self._mappings.clear()
        self.table = self.planned = None
        self.session = Session(self.spec, self._label,
                               Retry(self.RETRY_FIRST, self.RETRY_MAX, self.RETRY_FOR, self.TIMEOUT))
        self.session.open()
        try:
            self.table = self._prepare_table(run)
            ledger = self._ledger
            self.resumable = self.session.run(lambda cur: ledger.prepare(cur, self.spec.where, self.spec.reason),
                                              "open", retry=False)
            self._check(run.columns, f"source {run.source}")
        except BaseException:
            self.session.drop()
            raise
        log.info("postgres_open", where=self.spec.safe_url, table=self._label,
                 conflict=",".join(self._key) or "none (plain inserts)")

    def write(self, batch: Batch) -> None:
        if not batch.rows:
            return
        mapping = self._mapping(batch.columns, batch.rows)
        pending = self.pending.get(mapping.columns)
        if pending is None:
            pending = self.pending[mapping.columns] = Pending()
        pending.add(mapping, batch.rows)
        self.pending_rows += len(batch.rows)
        self.timeframes.add(batch.timeframe)
        if "end_ts" in batch.columns:
            self.progress[(batch.source, batch.symbol, batch.timeframe)] = batch.rows[-1][batch.columns.index("end_ts")]
        if self.pending_rows >= self.MAX_PENDING_ROWS:
            self.commit()

    def commit(self) -> None:
        if not self.pending:
            return
        table, key, run, ledger = self.table, self._key, self.run, self._ledger
        assert table is not None and run is not None
        kept = list(self.pending.items())
        progress = dict(self.progress) if self.resumable else {}

        def send(cur: Any) -> int:
            changed = load.send(cur, table, key, kept)
            if progress:
                ledger.record(cur, run, progress)
            return changed

        size = sum(p.size for p in self.pending.values())
        # a lost COMMIT acknowledgement is settled by asking the server; should it not know,
        # upserts are sent again (harmless), plain inserts are not (they would duplicate)
        changed = self._session.run(send, "commit", writes=True, resend_unknown=bool(key),
                                    timeout=self.TIMEOUT + size / self.MIN_RATE)
        self.sent += self.pending_rows
        self.changed += changed
        self.pending.clear()
        self.pending_rows = 0
        self.progress.clear()

    def last_open(self, source: str, symbol: str, timeframe: str) -> int | None:
        table = self.table
        if table is None or "open_ts" not in table.columns:
            return None
        query, params = q.last_open(table, source, symbol, timeframe)

        def run(cur: Any) -> int | None:
            cur.execute(query, params)
            value = cur.fetchone()[0]
            return None if value is None else int(value)

        return self._session.run(run, "last_open")

    def resume_after(self, source: str, symbol: str, timeframe: str) -> int | None:
        """Where an interrupted run of the same identity committed ``timeframe`` rows (the output
        timeframe) up to, from ``forge_progress``, if the table still holds that row. The
        pipeline hands this sink only the rows after it."""
        run_info, ledger, table = self.run, self._ledger, self.table
        if run_info is None or not self.resumable or table is None:
            return None
        return self._session.run(lambda cur: ledger.lookup(cur, run_info, (source, symbol, timeframe), table),
                                 "resume_after")

    def close(self, ok: bool) -> None:
        try:
            if ok:
                self.commit()
                run, ledger = self.run, self._ledger
                if self.resumable and run is not None:  # complete: a re-run fetches anew
                    timeframes = self.timeframes | {run.output_timeframe or run.timeframe}
                    self._session.run(lambda cur: ledger.forget(cur, run, timeframes), "close")
        finally:
            self.pending.clear()
            self.pending_rows = 0
            self.progress.clear()
            if self.session is not None:
                self.session.drop()

    def rows_changed(self) -> int | None:
        """Rows inserted or updated to other values, as the committed statements counted them:
        rows equal to the stored ones are dropped from the stage before the upsert, and the
        upsert rewrites only rows whose values differ (plain inserts count every row)."""
        return self.changed

    def integrity(self) -> Any:
        """Hooks of ``forge status/verify/repair`` on this sink's table (integrity.py)."""
        from .integrity import PostgresIntegrity

        return PostgresIntegrity(self.spec, self.schema, self.table_name)

    def describe(self) -> str:
        if not self.sent:  # also what a '--from auto: ... holds no ...' error calls the table
            return f"{self.spec.safe_url} table {self._label}"
        key = self._key
        mode = (f"upsert on {','.join(key)}" if key else "plain inserts" if self.conflict is not None
                else "upsert on the primary key")
        skipped = f"; not stored, the table has no such columns: {', '.join(self.not_stored)}" if self.not_stored else ""
        # the retries themselves are progress (the progress line, -v), not warnings: the summary counts them
        retried = f"; {self.retries} {'retry' if self.retries == 1 else 'retries'} (connection lost or silent)" \
            if self.retries else ""
        return (f"{self.spec.safe_url} table {self._label} ({mode}; {self.sent} rows sent, "
                f"{self.changed} inserted or changed{skipped}{retried})")

    # -- the table ------------------------------------------------------------------------------
    @property
    def _session(self) -> Session:
        if self.session is None:
            raise SinkError("postgres sink: used before open()")
        return self.session

    @property
    def _label(self) -> str:
        return f"{self.schema}.{self.table_name}" if self.schema else self.table_name

    @property
    def _ledger(self) -> Progress:
        return Progress(self.schema, self._label)

    @property
    def _info(self) -> TableInfo | None:
        return self.table or self.planned

    @property
    def _key(self) -> tuple[str, ...]:
        if self.conflict is not None:
            return self.conflict
        info = self._info
        return info.primary_key if info is not None else ()

    def _prepare_table(self, run: RunInfo) -> TableInfo | None:
        """The existing table, the model's (created if missing), or ``None``: the default table
        is created at the first batch, with every column the run produces (transforms may add
        some); here only whether it can be created is checked."""
        session = self._session
        table = session.run(lambda cur: inspect(cur, self.schema, self.table_name), "open", retry=False)
        if table is None and self.model is not None:
            self._create_model_table()
            table = session.run(lambda cur: inspect(cur, self.schema, self.table_name), "open", retry=False)
            if table is None:
                raise SinkError(f"table {self._label} does not exist after creating it "
                                f"in {self.spec.where}; check the search_path")
        if table is None:
            types = {c: KNOWN_TYPES.get(c, "numeric") for c in run.columns}
            session.run(lambda cur: self._try_create(cur, types), "open", retry=False)
            self.planned = planned(self.schema, self.table_name, run.columns)
            return None
        if self.model is not None:
            missing = [c.name for c in self.model.columns if c.name not in table.columns]
            if missing:
                raise SinkError(f"table {table.label} in {self.spec.where} has no column {missing[0]!r} "
                                "that the model declares; migrate the table or fix the model")
        elif table.keeps_every_column:
            lacking = {c: KNOWN_TYPES.get(c, "numeric") for c in run.columns if c not in table.columns}
            if lacking:
                raise missing_columns_error(table, lacking, f"source {run.source}")
        return table

    def _try_create(self, cur: Any, types: dict[str, str]) -> None:
        """Create the default table in a savepoint and roll it back: fails now, before any
        exchange request, without the rights to create it or with a search_path it cannot take."""
        cur.execute("SAVEPOINT forge_try_create")
        cur.execute(q.DDL_LOCK)
        for statement in default_table_ddl(self.schema, self.table_name, types):
            cur.execute(statement)
        found = inspect(cur, self.schema, self.table_name)
        cur.execute("ROLLBACK TO SAVEPOINT forge_try_create")
        if found is None:
            raise SinkError(f"table {self._label} does not exist after creating it "
                            f"in {self.spec.where}; check the search_path")

    def _create_default(self, columns: tuple[str, ...], rows: list[Row]) -> TableInfo:
        """The default table, with a column for each of the first batch's columns; types of
        columns Forge does not know come from that batch's values."""
        types = {c: column_type(c, (r[i] for r in rows)) for i, c in enumerate(columns)}

        def create(cur: Any) -> TableInfo | None:
            cur.execute(q.DDL_LOCK)
            for statement in default_table_ddl(self.schema, self.table_name, types):
                cur.execute(statement)
            return inspect(cur, self.schema, self.table_name)

        table = self._session.run(create, "create table")
        if table is None:
            raise SinkError(f"table {self._label} does not exist after creating it "
                            f"in {self.spec.where}; check the search_path")
        log.info("postgres_table_created", table=self._label, columns=",".join(types))
        return table

    def _create_model_table(self) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import StaticPool

        assert self.model is not None
        engine = create_engine("postgresql+psycopg2://", creator=self.spec.connect, poolclass=StaticPool)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(q.DDL_LOCK)
                self.model.create(conn, checkfirst=True)
        finally:
            engine.dispose()

    def _check(self, available: tuple[str, ...], what: str) -> None:
        """Refuse a column set that cannot fill the table or the conflict key."""
        table = self._info
        assert table is not None
        if self.model is not None:
            check_model(self.model, available, what)
        table.check_fillable(available, what)
        key = self._key
        if self.conflict is None and not key:
            raise SinkError(f"table {self._label} has no primary key to upsert on; pass --on-conflict "
                            "COLUMNS naming a unique index, or --on-conflict none for plain inserts")
        if key:
            unknown = [c for c in key if c not in table.columns]
            if unknown:
                raise UsageError(f"--on-conflict column {unknown[0]!r} is not in table {self._label}; "
                                 f"it has: {', '.join(table.columns)}")
            if frozenset(key) not in table.unique:
                raise SinkError(f"--on-conflict {','.join(key)}: table {self._label} has no unique index or "
                                "primary key on exactly these columns")
            unfilled = [c for c in key if c not in available]
            if unfilled:
                raise SinkError(f"conflict column {unfilled[0]!r} of table {self._label} is not among the "
                                f"columns of {what}: {', '.join(available)}")

    def _mapping(self, columns: tuple[str, ...], rows: list[Row]) -> Mapping:
        """Target columns a batch with ``columns`` fills, and where each comes from in a row."""
        found = self._mappings.get(columns)
        if found is None:
            if self.run is None or self.session is None:
                raise SinkError("postgres sink: write() before open()")
            if self.table is None:
                self.table = self._create_default(columns, rows)
            table = self.table
            self._check(columns, "the batch")
            lacking = tuple(c for c in columns if c not in table.columns)
            if lacking and self.model is None and table.keeps_every_column:
                raise missing_columns_error(table, {c: column_type(c, (r[columns.index(c)] for r in rows))
                                                    for c in lacking}, "the run")
            self.not_stored.update(dict.fromkeys(lacking))
            found = self._mappings[columns] = Mapping.build(columns, table.writable(columns), self._key, lacking)
        return found
