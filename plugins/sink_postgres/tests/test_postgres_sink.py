"""PostgresSink through its Python API against a real server (``pg_url``: a throwaway server
the suite starts, or ``FORGE_TEST_DATABASE_URL``)."""

from __future__ import annotations

import uuid

import psycopg2
import pytest
from sqlalchemy import BigInteger, Column, Float, Integer, Numeric, String, Table
from sqlalchemy.orm import declarative_base

from forge_core import Batch, RunInfo, SinkError, UsageError
from forge_sink_postgres import PostgresSink
from forge_sink_postgres.connection import ConnectionSpec, one_line

COLUMNS = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume",
           "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume")
T0 = 1704067200000


def rows(n: int, start: int = 0, symbol: str = "BTCUSDT", close: str | None = None) -> list[tuple]:
    out = []
    for i in range(start, start + n):
        ts = T0 + i * 60_000
        out.append(("binance", symbol, "1m", ts, ts + 59_999, f"{100 + i}.10", f"{101 + i}.00", f"{99 + i}.5",
                    close or f"{100 + i}.20", f"{i}.00000001", f"{i * 100}.5", i, "0.1", "10.0"))
    return out


def run_info(symbols: tuple[str, ...] = ("BTCUSDT",), columns: tuple[str, ...] = COLUMNS) -> RunInfo:
    return RunInfo("binance", "Binance", symbols, "1m", T0, T0 + 10**9, columns)


def load(sink: PostgresSink, *batches: list[tuple], columns: tuple[str, ...] = COLUMNS) -> PostgresSink:
    sink.open(run_info(columns=columns))
    for batch in batches:
        sink.write(Batch("binance", batch[0][1], "1m", columns, batch))
    sink.commit()
    sink.close(True)
    return sink


@pytest.fixture
def table() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


def fetch(db, table: str, cols: str = "symbol, open_ts, close::text") -> list[tuple]:
    db.execute(f'SELECT {cols} FROM "{table}" ORDER BY symbol, open_ts')
    return db.fetchall()


# -- the default table ---------------------------------------------------------------------------
def test_creates_default_table_and_upserts(pg_url, db, table):
    sink = load(PostgresSink(database_url=pg_url, table=table), rows(50), rows(30, 50))
    db.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
               "ORDER BY ordinal_position", (table,))
    # every column the run produces (issue 16: the source's extra columns were dropped before)
    assert db.fetchall() == [("source", "text"), ("symbol", "text"), ("timeframe", "text"),
                             ("open_ts", "bigint"), ("end_ts", "bigint"), ("open", "numeric"),
                             ("high", "numeric"), ("low", "numeric"), ("close", "numeric"),
                             ("volume", "numeric"), ("quote_volume", "numeric"), ("trades", "bigint"),
                             ("taker_buy_base_volume", "numeric"), ("taker_buy_quote_volume", "numeric")]
    assert fetch(db, table) == [("BTCUSDT", r[3], r[8]) for r in rows(80)]
    assert sink.sent == 80 and sink.changed == 80
    # again, half of them with another close price: only those are rewritten
    again = load(PostgresSink(database_url=pg_url, table=table), rows(40), rows(40, 40, close="7.7"))
    assert again.sent == 80 and again.changed == 40
    got = fetch(db, table)
    assert len(got) == 80 and got[39][2] == "139.20" and got[40][2] == "7.7" and got[79][2] == "7.7"


def test_last_open(pg_url, table):
    sink = PostgresSink(database_url=pg_url, table=table)
    sink.open(run_info())
    assert sink.last_open("binance", "BTCUSDT", "1m") is None
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(10)))
    sink.write(Batch("binance", "ETHUSDT", "1m", COLUMNS, rows(20, symbol="ETHUSDT")))
    sink.commit()
    assert sink.last_open("binance", "BTCUSDT", "1m") == T0 + 9 * 60_000
    assert sink.last_open("binance", "ETHUSDT", "1m") == T0 + 19 * 60_000
    assert sink.last_open("binance", "ETHUSDT", "5m") is None
    sink.close(True)


def test_duplicate_keys_in_one_commit_keep_the_last(pg_url, db, table):
    load(PostgresSink(database_url=pg_url, table=table), rows(10), rows(10, close="1.5"))
    assert fetch(db, table) == [("BTCUSDT", r[3], "1.5") for r in rows(10)]


def test_shortcut_falls_back_when_keys_appear_concurrently(pg_url, db, table, monkeypatch):
    """The fresh-range shortcut COPYs straight into the table; if another writer inserted one
    of the keys meanwhile, the savepoint catches it and the rows are upserted."""
    from forge_sink_postgres import load as loading

    load(PostgresSink(database_url=pg_url, table=table), rows(5))
    sink = PostgresSink(database_url=pg_url, table=table)
    monkeypatch.setattr(loading, "exists", lambda cur, table, pending: False)  # as if checked before the other writer
    load(sink, rows(10, close="2.5"))
    assert fetch(db, table) == [("BTCUSDT", r[3], "2.5") for r in rows(10)]


def test_dropped_connection_is_retried_with_the_uncommitted_rows(pg_url, db, table):
    sink = PostgresSink(database_url=pg_url, table=table)
    sink.RETRY_FIRST = 0.01
    sink.open(run_info())
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(100)))
    sink.commit()
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(100, 100)))
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'forge' "
               "AND pid <> pg_backend_pid()")
    assert db.fetchone() is not None
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(100, 200)))
    sink.commit()
    sink.close(True)
    assert sink.retries >= 1
    assert fetch(db, table) == [("BTCUSDT", r[3], r[8]) for r in rows(300)]


def test_a_retry_is_progress_on_the_progress_line_not_a_warning(pg_url, db, table, caplog):
    """postgres_retry was a warning, so it showed under -q (and by default) for a retry that
    then succeeded, where the HTTP client's retries are progress: the progress line says them
    (hidden by -q), -v logs them. Now the same for PostgreSQL."""
    import logging

    from forge_core import retrying

    seen: list[retrying.Retrying] = []
    stop = retrying.watch(lambda active: seen.extend(active))
    sink = PostgresSink(database_url=pg_url, table=table)
    sink.RETRY_FIRST = 0.01
    try:
        with caplog.at_level(logging.WARNING, logger="forge"):
            sink.open(run_info())
            sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(10)))
            sink.commit()
            db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'forge' "
                       "AND pid <> pg_backend_pid()")
            sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(10, 10)))
            sink.commit()
            sink.close(True)
    finally:
        stop()
    assert sink.retries >= 1 and "postgres_retry" not in caplog.text
    assert sink.describe().endswith(f"{sink.retries} retr{'y' if sink.retries == 1 else 'ies'} (connection lost or silent))")
    assert seen and seen[0].what.endswith(f" table {table} (commit)") and seen[0].attempt == 2, seen
    assert fetch(db, table) == [("BTCUSDT", r[3], r[8]) for r in rows(20)]


def test_failed_run_keeps_only_committed_rows(pg_url, db, table):
    sink = PostgresSink(database_url=pg_url, table=table)
    sink.open(run_info())
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(10)))
    sink.commit()
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(10, 10)))
    sink.close(False)
    assert len(fetch(db, table)) == 10


# -- plain inserts ---------------------------------------------------------------------------------
def test_plain_inserts_duplicate_without_a_key(pg_url, db, table):
    db.execute(f'CREATE TABLE "{table}" (source text, symbol text, timeframe text, open_ts bigint, '
               "end_ts bigint, open float8, high float8, low float8, close float8, volume float8)")
    for _ in range(2):
        load(PostgresSink(database_url=pg_url, table=table, on_conflict="none"), rows(5))
    assert len(fetch(db, table)) == 10


def test_plain_inserts_fail_clearly_on_a_primary_key(pg_url, db, table):
    load(PostgresSink(database_url=pg_url, table=table, on_conflict=[]), rows(5))
    with pytest.raises(SinkError, match=f"table {table}: commit failed: duplicate key value") as err:
        load(PostgresSink(database_url=pg_url, table=table, on_conflict="none"), rows(5))
    assert "\n" not in str(err.value)
    assert len(fetch(db, table)) == 5


def test_upsert_needs_a_key(pg_url, db, table):
    db.execute(f'CREATE TABLE "{table}" (source text, symbol text, timeframe text, open_ts bigint)')
    with pytest.raises(SinkError, match="has no primary key to upsert on; pass --on-conflict"):
        PostgresSink(database_url=pg_url, table=table).open(run_info())
    with pytest.raises(SinkError, match="no unique index or primary key on exactly these columns"):
        PostgresSink(database_url=pg_url, table=table, on_conflict="symbol,open_ts").open(run_info())
    db.execute(f'CREATE UNIQUE INDEX ON "{table}" (symbol, open_ts)')
    load(PostgresSink(database_url=pg_url, table=table, on_conflict="symbol,open_ts"), rows(3), rows(3))
    assert len(fetch(db, table, "symbol, open_ts")) == 3
    with pytest.raises(UsageError, match="--on-conflict column 'nope' is not in table"):
        PostgresSink(database_url=pg_url, table=table, on_conflict="symbol,nope").open(run_info())


# -- models ------------------------------------------------------------------------------------------
def test_model_with_extra_columns_schema_and_identity(pg_url, db):
    name = f"m_{uuid.uuid4().hex[:8]}"
    db.execute("CREATE SCHEMA IF NOT EXISTS market")
    Base = declarative_base()

    class Kline(Base):
        __tablename__ = name
        __table_args__ = {"schema": "market"}
        id = Column(Integer, primary_key=True)  # serial: fills itself
        source = Column(String, nullable=False)
        symbol = Column(String, nullable=False)
        timeframe = Column(String, nullable=False)
        open_ts = Column(BigInteger, nullable=False)
        close = Column(Float, nullable=False)
        quote_volume = Column(Numeric)
        trades = Column(BigInteger)
        note = Column(String)  # nothing fills it: stays NULL

    db.execute(f'DROP TABLE IF EXISTS market."{name}"')
    sink = PostgresSink(database_url=pg_url, model=Kline, on_conflict=["source", "symbol", "timeframe", "open_ts"])
    with pytest.raises(SinkError, match="no unique index or primary key on exactly these columns"):
        load(sink, rows(3))
    db.execute(f'CREATE UNIQUE INDEX ON market."{name}" (source, symbol, timeframe, open_ts)')
    load(PostgresSink(database_url=pg_url, model=Kline, on_conflict="source,symbol,timeframe,open_ts"),
         rows(3), rows(2, 3))
    db.execute(f'SELECT symbol, open_ts, close, quote_volume::text, trades, note FROM market."{name}" ORDER BY open_ts')
    assert db.fetchall() == [("BTCUSDT", r[3], float(r[8]), r[10], r[11], None) for r in rows(5)]


def test_model_missing_a_required_column_is_refused_before_writing(pg_url, db):
    Base = declarative_base()
    name = f"m_{uuid.uuid4().hex[:8]}"

    class Kline(Base):
        __tablename__ = name
        source = Column(String, primary_key=True)
        symbol = Column(String, primary_key=True)
        timeframe = Column(String, primary_key=True)
        open_ts = Column(BigInteger, primary_key=True)
        close = Column(Float)
        exchange_id = Column(Integer, nullable=False)

    with pytest.raises(SinkError) as err:
        PostgresSink(database_url=pg_url).set_model(Kline).open(run_info())
    assert str(err.value).startswith(f"model table {name} column 'exchange_id' is required")
    assert "\n" not in str(err.value)
    db.execute("SELECT to_regclass(%s)", (name,))
    assert db.fetchone() == (None,)  # refused before creating anything


def test_model_from_table_and_on_conflict_method(pg_url, db):
    from sqlalchemy import MetaData

    name = f"m_{uuid.uuid4().hex[:8]}"
    table = Table(name, MetaData(), Column("symbol", String, primary_key=True),
                  Column("open_ts", BigInteger, primary_key=True), Column("volume", Numeric))
    sink = PostgresSink(database_url=pg_url).set_model(table).on_conflict(["symbol", "open_ts"])
    load(sink, rows(4), rows(4))
    assert fetch(db, name, "symbol, open_ts, volume::text") == [("BTCUSDT", r[3], r[9]) for r in rows(4)]


def test_bad_model_specs():
    with pytest.raises(UsageError, match="expected package.module:Class"):
        PostgresSink(model="nocolon")
    with pytest.raises(UsageError, match="cannot import model 'no_such_module_xyz:K'"):
        PostgresSink(model="no_such_module_xyz:K")
    with pytest.raises(UsageError, match="module os has no 'Nope'"):
        PostgresSink(model="os:Nope")
    with pytest.raises(UsageError, match="is not a SQLAlchemy declarative model"):
        PostgresSink(model="os:getcwd")
    with pytest.raises(UsageError, match="bad --on-conflict"):
        PostgresSink(on_conflict="a,,b")
    with pytest.raises(UsageError, match="bad table name"):
        PostgresSink(table="x" * 64)


# -- connection settings and secrets -------------------------------------------------------------
def test_keywords_win_over_the_url(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    spec = ConnectionSpec.build("postgresql+psycopg2://u@h:5433/db?sslmode=require", host="other",
                                dbname="crypto", password_file=str(secret))
    assert (spec.host, spec.port, spec.dbname, spec.user, spec.password) == ("other", 5433, "crypto", "u",
                                                                             "from-file")
    assert ("sslmode", "require") in spec.params
    assert ConnectionSpec.build("postgresql://u:inurl@h/db", password_file=str(secret)).password == "inurl"
    assert ConnectionSpec.build(host="h", port="6543", user="me", password="pw").port == 6543
    assert ConnectionSpec.build("postgresql:///db?host=/run/pg").host == "/run/pg"
    with pytest.raises(UsageError, match="not PostgreSQL"):
        ConnectionSpec.build("mysql://u@h/db")
    with pytest.raises(UsageError, match="bad database port 'abc'"):
        ConnectionSpec.build(port="abc")
    with pytest.raises(UsageError, match="cannot read password file"):
        ConnectionSpec.build(password_file=str(tmp_path / "missing"))


def test_password_never_shown(monkeypatch):
    monkeypatch.delenv("FORGE_DATABASE_URL", raising=False)
    sink = PostgresSink(host="127.0.0.1", port=1, dbname="crypto", user="me", password="hunter2-secret")
    assert "hunter2" not in sink.describe() and "hunter2" not in repr(sink.spec)
    assert sink.describe().startswith("postgresql://me@127.0.0.1:1/crypto table klines")
    with pytest.raises(SinkError) as err:
        sink.open(run_info())
    assert str(err.value).startswith("cannot connect to PostgreSQL at 127.0.0.1:1/crypto, user me: ")
    assert "hunter2" not in str(err.value) and "\n" not in str(err.value)
    assert sink.spec.redact("auth failed for hunter2-secret") == "auth failed for ***"


def test_url_from_environment(monkeypatch, pg_url, db, table):
    monkeypatch.setenv("FORGE_DATABASE_URL", pg_url)
    load(PostgresSink(table=table), rows(2))
    assert len(fetch(db, table)) == 2


def test_one_line():
    exc = psycopg2.OperationalError('connection to server at "h" (1.2.3.4), port 5 failed: FATAL:  '
                                    'password authentication failed for user "x"\n')
    assert one_line(exc) == 'password authentication failed for user "x"'


def test_the_ledger_is_looked_up_until_it_is_known_to_exist(pg_url, db, table):
    """Every ledger save and read asked to_regclass whether forge_ledger exists: once it is known
    to, this integrity store asks no more (the first save creates it, the next sees it)."""
    from forge_core.integrity import LedgerEntry

    schema = f"s_{uuid.uuid4().hex[:10]}"
    db.execute(f"CREATE SCHEMA {schema}")
    try:
        load(PostgresSink(database_url=pg_url, table=f"{schema}.{table}"), rows(3))
        store = PostgresSink(database_url=pg_url, table=f"{schema}.{table}").integrity()
        asked = []

        class Counting(psycopg2.extensions.cursor):
            def execute(self, query, args=None):
                asked.append("to_regclass" in str(query))
                return super().execute(query, args)

        store.conn.cursor_factory = Counting
        entry = LedgerEntry("binance", "BTCUSDT", "1m", "2024-01", T0, T0 + 180_000, 3, T0, T0 + 120_000,
                            "d", "d", "rest", "2024-02-01T00:00:00Z", "identical")
        for _ in range(3):
            store.save_ledger([entry])
            assert store.ledger("binance", "BTCUSDT", "1m") == {"2024-01": entry}
            assert store.venue_ledger("binance", "1m") == [entry]
        store.close()
        assert sum(asked) == 2
    finally:
        db.execute(f"DROP SCHEMA {schema} CASCADE")
