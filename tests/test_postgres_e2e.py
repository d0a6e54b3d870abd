"""``forge run --sink postgres`` end to end: the mock exchange over HTTP, a real PostgreSQL
(``pg_url``: a throwaway server this session starts, or ``FORGE_TEST_DATABASE_URL``)."""

from __future__ import annotations

import io
import os
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from forge_core import Pipeline
from forge_core.progress import ProgressLine
from forge_core.times import parse_range
from forge_mock_exchange.expected import binance_rows

CANON = "source, symbol, timeframe, open_ts, end_ts, open::text, high::text, low::text, close::text, volume::text"


@pytest.fixture
def pg_env(monkeypatch: pytest.MonkeyPatch, pg_url: str, exchange_env) -> str:
    monkeypatch.setenv("FORGE_DATABASE_URL", pg_url)
    return pg_url


def unique(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def expected(symbol: str, start: str, end: str, tf: str = "1m", columns: int = 10) -> list[tuple]:
    from conftest import NOW

    lo, hi = parse_range(start, end)
    return [row[:columns] for row in binance_rows(symbol, tf, lo, hi, NOW)]


def table_rows(db, table: str, cols: str = CANON) -> list[tuple]:
    db.execute(f'SELECT {cols} FROM {table} ORDER BY symbol, open_ts')
    return db.fetchall()


def run(forge, *args: str):
    return forge("run", "-s", "binance", "--sink", "postgres", "-q", *args)


@pytest.fixture
def own_schema(db, pg_url: str, exchange_env, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh schema first on the search_path, so the default table ``klines`` is ours alone
    (never an existing one in a FORGE_TEST_DATABASE_URL database)."""
    schema = unique("s")
    db.execute(f"CREATE SCHEMA {schema}")
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    monkeypatch.setenv("FORGE_DATABASE_URL", url.render_as_string(hide_password=False))
    yield schema
    db.execute(f"DROP SCHEMA {schema} CASCADE")


def test_default_table_exact_candles_and_safe_rerun(forge, own_schema, db):
    klines = f"{own_schema}.klines"
    args = ("--symbol", "BTCUSDT,ETHUSDT", "--from", "2024-01-09", "--to", "2024-01-11")
    first = run(forge, *args)
    assert first.code == 0, first
    want = expected("BTCUSDT", "2024-01-09", "2024-01-11") + expected("ETHUSDT", "2024-01-09", "2024-01-11")
    assert len(want) > 8000  # three days of two symbols, minus the mock's maintenance hole
    assert table_rows(db, klines) == want
    assert f"{len(want)} rows sent, {len(want)} inserted or changed" in first.out

    # damage some rows and delete others; the same command repairs them, and adds no duplicates
    db.execute(f"UPDATE {klines} SET close = 0, volume = 0 WHERE symbol = 'ETHUSDT' AND open_ts % 7 = 0")
    damaged = db.rowcount
    db.execute(f"DELETE FROM {klines} WHERE symbol = 'BTCUSDT' AND open_ts % 11 = 0")
    deleted = db.rowcount
    assert damaged > 100 and deleted > 100
    second = run(forge, *args)
    assert second.code == 0, second
    assert f"{len(want)} rows sent, {damaged + deleted} inserted or changed" in second.out
    assert table_rows(db, klines) == want

    # --from auto continues after the newest candle held
    third = run(forge, "--symbol", "BTCUSDT", "--from", "auto", "--to", "2024-01-12")
    assert third.code == 0, third
    assert table_rows(db, klines) == (expected("BTCUSDT", "2024-01-09", "2024-01-12")
                                        + expected("ETHUSDT", "2024-01-09", "2024-01-11"))

    # a series the table does not hold: the error names the table, not the empty run's counters
    fourth = run(forge, "--symbol", "SOLUSDT", "--from", "auto", "--to", "2024-01-12")
    assert fourth.code == 2, fourth
    assert "table klines holds no binance SOLUSDT 1m candles yet; give --since DATE" in fourth.err


def test_other_table_and_small_commits(forge, pg_env, db):
    table = unique()
    result = run(forge, "--table", table, "--symbol", "BTCUSDT", "--timeframe", "5m", "--from", "2024-01-01",
                 "--to", "2024-01-20", "--commit-every", "700")
    assert result.code == 0, result
    assert table_rows(db, table) == expected("BTCUSDT", "2024-01-01", "2024-01-20", "5m")


def test_user_model_with_extra_columns(forge, pg_env, db, in_tmp, monkeypatch):
    module, table = unique("models"), unique("candles")
    (in_tmp / f"{module}.py").write_text(textwrap.dedent(f"""
        from sqlalchemy import BigInteger, Column, Integer, Numeric, String
        from sqlalchemy.orm import declarative_base

        Base = declarative_base()

        class Candle(Base):
            __tablename__ = "{table}"
            source = Column(String, primary_key=True)
            symbol = Column(String, primary_key=True)
            timeframe = Column(String, primary_key=True)
            open_ts = Column(BigInteger, primary_key=True)
            close = Column(Numeric, nullable=False)
            volume = Column(Numeric)
            quote_volume = Column(Numeric)
            trades = Column(Integer)
            comment = Column(String)
    """))
    monkeypatch.setattr(sys, "path", list(sys.path))  # the sink may append the cwd
    args = ("--model", f"{module}:Candle", "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-02")
    for _ in range(2):
        result = run(forge, *args)
        assert result.code == 0, result
    got = table_rows(db, table, "source, symbol, timeframe, open_ts, close::text, volume::text, "
                               "quote_volume::text, trades, comment")
    assert got == [(*r[:4], r[8], r[9], r[10], r[11], None)
                   for r in expected("BTCUSDT", "2024-01-01", "2024-01-02", columns=14)]


def test_model_missing_a_required_column(forge, pg_env, fresh_mock, in_tmp, monkeypatch):
    monkeypatch.setenv("FORGE_BINANCE_URL", fresh_mock.url)
    module = unique("models")
    (in_tmp / f"{module}.py").write_text(textwrap.dedent(f"""
        from sqlalchemy import BigInteger, Column, String
        from sqlalchemy.orm import declarative_base

        Base = declarative_base()

        class Candle(Base):
            __tablename__ = "{unique()}"
            symbol = Column(String, primary_key=True)
            open_ts = Column(BigInteger, primary_key=True)
            venue = Column(String, nullable=False)
    """))
    monkeypatch.setattr(sys, "path", list(sys.path))
    result = run(forge, "--model", f"{module}:Candle", "--symbol", "BTCUSDT", "--from", "2024-01-01",
                 "--to", "2024-01-02")
    assert result.code == 1, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "column 'venue' is required" in lines[0], result.err
    assert "Traceback" not in result.err
    assert sum(fresh_mock.stats.values()) == 0  # refused before any exchange request


def test_plain_inserts(forge, pg_env, db):
    table = unique()
    args = ("--table", table, "--on-conflict", "none", "--symbol", "BTCUSDT", "--from", "2024-01-01",
            "--to", "2024-01-01")
    first = run(forge, *args)
    assert first.code == 0, first
    assert "plain inserts" in first.out
    again = run(forge, *args)  # the default table has a primary key: a re-run fails, cleanly
    assert again.code == 1
    assert again.err.strip().count("\n") == 0 and "duplicate key value" in again.err, again.err
    assert table_rows(db, table) == expected("BTCUSDT", "2024-01-01", "2024-01-01")


@pytest.fixture
def secret_role(db, pg_url) -> Iterator[tuple[str, str]]:
    """A role that logs in with a password, and a URL for it; skips when the server would let
    a wrong password in (only possible with an external FORGE_TEST_DATABASE_URL server)."""
    role, password = unique("role"), "S3cr3t-" + uuid.uuid4().hex[:8]
    db.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
    db.execute(f"GRANT ALL ON SCHEMA public TO {role}")
    url = make_url(pg_url).set(username=role, password=password).render_as_string(hide_password=False)
    try:
        psycopg2.connect(make_url(url).set(password="wrong").render_as_string(hide_password=False)).close()
        pytest.skip("this server accepts wrong passwords for new roles (trust authentication)")
    except psycopg2.OperationalError:
        pass
    yield url, password
    db.execute(f"DROP OWNED BY {role}")
    db.execute(f"DROP ROLE {role}")


def test_wrong_password_is_one_line_and_never_shown(forge, exchange_env, secret_role, monkeypatch):
    url, password = secret_role
    bad = make_url(url).set(password=password + "x")
    monkeypatch.setenv("FORGE_DATABASE_URL", bad.render_as_string(hide_password=False))
    result = run(forge, "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-01")
    assert result.code == 1
    line = result.err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"forge: error: cannot connect to PostgreSQL at {bad.host}:{bad.port}/{bad.database}, "
                           f"user {bad.username}: password authentication failed"), line
    assert password not in result.err + result.out


def test_password_absent_from_logs_summary_progress_and_plugins(forge, exchange_env, secret_role, monkeypatch):
    url, password = secret_role
    monkeypatch.setenv("FORGE_DATABASE_URL", url)
    table = unique()
    result = forge("-vv", "run", "-s", "binance", "--sink", "postgres", "--table", table, "--symbol", "BTCUSDT",
                   "--from", "2024-01-01", "--to", "2024-01-01")
    assert result.code == 0, result
    assert "postgres_open" in result.err  # the debug logs were on
    assert f"table {table}" in result.out and password not in result.out + result.err
    listing = forge("plugins")
    helptext = forge("run", "--help")
    assert "postgres" in listing.out and "--database-url" in helptext.out
    assert password not in listing.out + listing.err + helptext.out

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Tty()
    sink_url = make_url(url)
    pipeline = Pipeline(("binance", {}), [("postgres", {"table": table})],
                        on_progress=ProgressLine(screen, interval=0))
    pipeline.run("BTCUSDT", "1m", "2024-01-02", "2024-01-02")
    assert "BTCUSDT" in screen.getvalue() and password not in screen.getvalue()
    assert sink_url.username in pipeline.result.destinations[0]
    assert password not in pipeline.result.summary()


def test_unreachable_server_and_missing_database(forge, pg_url, fresh_mock, monkeypatch):
    monkeypatch.setenv("FORGE_BINANCE_URL", fresh_mock.url)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    url = f"postgresql://me:topsecret@127.0.0.1:{port}/crypto"
    result = run(forge, "--database-url", url, "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-01")
    assert result.code == 1
    assert result.err.strip() == (f"forge: error: cannot connect to PostgreSQL at 127.0.0.1:{port}/crypto, "
                                  "user me: Connection refused")
    missing = make_url(pg_url).set(database="no_such_db_here").render_as_string(hide_password=False)
    result = run(forge, "--database-url", missing, "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-01")
    assert result.code == 1
    assert result.err.strip().endswith('database "no_such_db_here" does not exist') and "\n" not in result.err.strip()
    assert sum(fresh_mock.stats.values()) == 0  # failed before any exchange request


# -- a server restart in the middle of a run ----------------------------------------------------------
@pytest.fixture
def restartable(pg_url: str):
    """The session's throwaway server, or (with an external FORGE_TEST_DATABASE_URL) one of our own."""
    import pgserver

    server = pgserver.current()
    if server is not None and server.url == pg_url:
        yield server
        return
    server = pgserver.start()
    try:
        yield server
    finally:
        server.stop()


def test_server_restart_mid_run(restartable, exchange_env):
    from forge_sink_postgres import PostgresSink

    table = unique()
    outage: list[threading.Thread] = []

    class RestartOnThirdCommit(PostgresSink):
        RETRY_FIRST = 0.05
        commits = 0

        def commit(self) -> None:
            if self.pending:
                type(self).commits += 1
                if self.commits == 3:  # rows of this commit are kept but not yet sent
                    restartable.stop(remove=False)  # pg_ctl stop -m fast: connections die
                    outage.append(threading.Thread(target=lambda: (__import__("time").sleep(1.0),
                                                                   restartable.start())))
                    outage[0].start()
            super().commit()

    sink = RestartOnThirdCommit(database_url=restartable.url, table=table)
    result = Pipeline(("binance", {}), [sink], commit_every=600).run("BTCUSDT,ETHUSDT", "1m", "2024-01-09",
                                                                     "2024-01-10")
    outage[0].join()
    assert sink.retries >= 2  # the server was down for a second: several attempts
    assert type(sink).commits > 3  # and the run went on committing after the restart
    want = expected("BTCUSDT", "2024-01-09", "2024-01-10") + expected("ETHUSDT", "2024-01-09", "2024-01-10")
    assert result.total == len(want)
    conn = psycopg2.connect(restartable.url)
    try:
        with conn.cursor() as cur:
            assert table_rows(cur, table) == want
    finally:
        conn.close()


def test_seed_postgres_emitter_example(exchange_env, secret_role, db):
    """The seed's ``PostgresEmitter(host=..., password=...).set_model(...).on_conflict([...])``."""
    from sqlalchemy import BigInteger, Column, Float, String
    from sqlalchemy.orm import declarative_base

    import forge_core as sf

    url, password = secret_role
    parts = make_url(url)
    Base = declarative_base()
    name = unique("seed")

    class KlineTable(Base):
        __tablename__ = name
        source = Column(String, primary_key=True)
        symbol = Column(String, primary_key=True)
        timeframe = Column(String, primary_key=True)
        open_ts = Column(BigInteger, primary_key=True)
        end_ts = Column(BigInteger)
        open = Column(Float)
        high = Column(Float)
        low = Column(Float)
        close = Column(Float)
        volume = Column(Float)

    postgres = (sf.PostgresEmitter(host=parts.host, port=parts.port, dbname=parts.database,
                                   user=parts.username, password=password)
                .set_model(KlineTable)
                .on_conflict(["source", "symbol", "timeframe", "open_ts"]))
    backfiller = sf.BinanceBackfilling(symbol="BTCUSDT", timeframe="1h", from_date="2024-01-01",
                                       to_date="2024-01-31")
    backfiller.register_emitter(postgres)
    for _ in range(2):
        result = backfiller.run()
        assert password not in result.summary()
    want = expected("BTCUSDT", "2024-01-01", "2024-01-31", "1h")
    got = table_rows(db, name, "source, symbol, timeframe, open_ts, end_ts, open, high, low, close, volume")
    assert got == [(*r[:5], *(float(v) for v in r[5:10])) for r in want]


def test_a_failed_run_resumes_from_forge_progress_and_a_complete_one_refetches(forge, pg_env, db, monkeypatch):
    from conftest import NOW
    from forge_mock_exchange import MockConfig, MockExchange

    table = unique("resume")
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-05", "--to", "2024-01-14", "--table", table, "--archive", "rest",
            "--workers", "1", "--commit-every", "1000")
    want = expected("BTCUSDT", "2024-01-05", "2024-01-14")
    monkeypatch.setenv("FORGE_HTTP_MAX_ATTEMPTS", "2")
    with MockExchange(MockConfig(now=NOW, faults={"down": 1.0}, extra={"down_after": 8})) as broken:
        monkeypatch.setenv("FORGE_BINANCE_URL", broken.url)
        first = run(forge, *args)
    assert first.code == 1 and "HTTP 503" in first.err
    kept = table_rows(db, table)
    assert kept == want[: len(kept)] and len(kept) >= 3000
    db.execute("SELECT committed_end FROM forge_progress WHERE target = %s", (table,))
    assert db.fetchall() == [(kept[-1][4],)]

    with MockExchange(MockConfig(now=NOW)) as healthy:
        monkeypatch.setenv("FORGE_BINANCE_URL", healthy.url)
        second = run(forge, *args)
        served = healthy.stats["binance.spot.candles"]
    assert second.code == 0, second
    assert "resumed BTCUSDT after" in second.out
    assert table_rows(db, table) == want
    assert served == len(want) - len(kept) + 1  # the rest, plus the one-candle listing probe
    db.execute("SELECT count(*) FROM forge_progress WHERE target = %s", (table,))
    assert db.fetchone() == (0,)

    with MockExchange(MockConfig(now=NOW)) as again:  # a complete range re-runs in full (safe re-run)
        monkeypatch.setenv("FORGE_BINANCE_URL", again.url)
        assert run(forge, *args).code == 0
        assert again.stats["binance.spot.candles"] == len(want) + 1
    assert table_rows(db, table) == want


def test_seed_emitter_without_on_conflict_inserts_plainly(pg_env, db, in_tmp):
    import forge_core as sf

    table = unique("plain")
    emitter = sf.PostgresEmitter(database_url=pg_env, table=table)
    backfiller = sf.BinanceBackfilling(symbol="BTCUSDT", timeframe="1h", from_date="2024-02-01", to_date="2024-02-02")
    backfiller.register_emitter(emitter)
    backfiller.run()
    assert len(table_rows(db, table)) == 48
    from forge_core.errors import SinkError

    with pytest.raises(SinkError, match="duplicate key"):  # as documented: a plain re-run hits the key
        backfiller.run()
    emitter.on_conflict(["source", "symbol", "timeframe", "open_ts"])
    backfiller.run()  # with upsert, the safe re-run
    assert len(table_rows(db, table)) == 48


def _interrupted(forge, monkeypatch, *args):
    """Run with an exchange that goes down after a few requests; the run fails midway."""
    from conftest import NOW
    from forge_mock_exchange import MockConfig, MockExchange

    monkeypatch.setenv("FORGE_HTTP_MAX_ATTEMPTS", "1")
    with MockExchange(MockConfig(now=NOW, faults={"down": 1.0}, extra={"down_after": 6})) as broken:
        monkeypatch.setenv("FORGE_BINANCE_URL", broken.url)
        assert run(forge, *args).code == 1
    monkeypatch.setenv("FORGE_BINANCE_URL", os.environ["FORGE_BINANCE_ARCHIVE_URL"])  # the healthy shared mock


def test_csv_and_postgres_together_resume_without_duplicates(forge, pg_env, db, monkeypatch, in_tmp):
    from conftest import read_csv

    table = unique("both")
    args = ("--sink", "csv", "--symbol", "BTCUSDT", "--from", "2024-01-05", "--to", "2024-01-08", "--table", table,
            "--archive", "rest", "--workers", "1", "--commit-every", "1500", "--output", "both.csv")
    _interrupted(forge, monkeypatch, *args)
    again = run(forge, *args)
    assert again.code == 0, again
    want = expected("BTCUSDT", "2024-01-05", "2024-01-08")
    _, rows = read_csv(in_tmp / "both.csv")
    assert [tuple(r[:3]) + (int(r[3]), int(r[4])) for r in rows] == [w[:5] for w in want]
    assert [r[:5] for r in table_rows(db, table)] == [w[:5] for w in want]


def test_a_resample_run_and_a_plain_run_do_not_share_progress(forge, pg_env, db, monkeypatch):
    table = unique("tf")
    base = ("--symbol", "BTCUSDT", "--from", "2024-01-05", "--to", "2024-01-07", "--table", table,
            "--archive", "rest", "--workers", "1", "--commit-every", "100")
    _interrupted(forge, monkeypatch, *base, "--transform", "resample", "--resample-to", "1h")
    plain = run(forge, *base)
    assert plain.code == 0 and "resumed" not in plain.out
    db.execute(f"SELECT {CANON} FROM {table} WHERE timeframe = '1m' ORDER BY open_ts")
    assert db.fetchall() == expected("BTCUSDT", "2024-01-05", "2024-01-07")


class _LostAck:
    """A connection whose first COMMIT of candles reaches the server but whose answer is lost."""

    lost = 0

    def __init__(self, conn, sink) -> None:
        self._conn, self._sink = conn, sink

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def commit(self) -> None:
        self._conn.commit()
        if _LostAck.lost == 0 and self._sink.pending_rows:
            _LostAck.lost += 1
            raise psycopg2.OperationalError("server closed the connection unexpectedly")


def test_a_lost_commit_acknowledgement_does_not_duplicate_plain_inserts(pg_env, db, monkeypatch, in_tmp):
    from forge_sink_postgres.connection import Session
    from forge_sink_postgres.sink import PostgresSink

    table = unique("ack")
    sink = PostgresSink(table=table, on_conflict="none")
    real = Session.connection
    _LostAck.lost = 0
    monkeypatch.setattr(Session, "connection", lambda self: _LostAck(real(self), sink))
    monkeypatch.setattr(PostgresSink, "RETRY_FIRST", 0.01)
    result = Pipeline("binance", [sink]).run("BTCUSDT", "1h", "2024-02-01", "2024-02-03")
    assert _LostAck.lost == 1 and result.total == 72
    db.execute(f"SELECT count(*), count(DISTINCT open_ts) FROM {table}")
    assert db.fetchone() == (72, 72)


def test_default_table_keeps_every_column_the_run_produces(forge, own_schema, db, in_tmp, monkeypatch):
    """Binance's quote volume, trades and taker volumes, and a column a transform adds."""
    module = unique("tx")
    (in_tmp / f"{module}.py").write_text("def up(c):\n    return {**c, 'up': float(c['close']) > float(c['open'])}\n")
    monkeypatch.setattr(sys, "path", [str(in_tmp), *sys.path])
    result = run(forge, "--symbol", "BTCUSDT", "--from", "2024-01-02", "--to", "2024-01-02",
                 "--transform", f"{module}:up")
    assert result.code == 0, result
    assert "not stored" not in result.out
    db.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s "
               "AND table_name = 'klines' ORDER BY ordinal_position", (own_schema,))
    assert db.fetchall()[10:] == [("quote_volume", "numeric"), ("trades", "bigint"),
                                  ("taker_buy_base_volume", "numeric"), ("taker_buy_quote_volume", "numeric"),
                                  ("up", "boolean")]
    got = table_rows(db, f"{own_schema}.klines", "open_ts, quote_volume, trades, taker_buy_base_volume, "
                                                 "taker_buy_quote_volume, up")
    want = expected("BTCUSDT", "2024-01-02", "2024-01-02", columns=14)
    # by value: a per-row function hands the sink floats (the exact-strings fix is another issue's)
    assert got == [(w[3], Decimal(w[10]), int(w[11]), Decimal(w[12]), Decimal(w[13]), float(w[8]) > float(w[5]))
                   for w in want]


def test_an_older_default_table_lacking_columns_is_refused_before_any_request(forge, own_schema, db, fresh_mock,
                                                                              monkeypatch):
    monkeypatch.setenv("FORGE_BINANCE_URL", fresh_mock.url)
    db.execute(f"CREATE TABLE {own_schema}.klines (source text NOT NULL, symbol text NOT NULL, "
               "timeframe text NOT NULL, open_ts bigint NOT NULL, end_ts bigint NOT NULL, open numeric NOT NULL, "
               "high numeric NOT NULL, low numeric NOT NULL, close numeric NOT NULL, volume numeric NOT NULL, "
               "PRIMARY KEY (source, symbol, timeframe, open_ts))")
    result = run(forge, "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-01")
    assert result.code == 1, result
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert line.startswith("forge: error: table klines has no column 'quote_volume', 'trades'"), line
    assert 'ALTER TABLE "klines" ADD COLUMN "quote_volume" numeric' in line
    assert sum(fresh_mock.stats.values()) == 0


@pytest.mark.parametrize("how", ["TRUNCATE", "DROP TABLE"])
def test_progress_of_a_truncated_or_dropped_table_is_not_trusted(forge, pg_env, db, monkeypatch, how):
    table = unique("gone")
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-05", "--to", "2024-01-07", "--table", table,
            "--archive", "rest", "--workers", "1", "--commit-every", "500")
    _interrupted(forge, monkeypatch, *args)
    db.execute("SELECT count(*) FROM forge_progress WHERE target = %s", (table,))
    assert db.fetchone() == (1,)  # an interrupted run to resume
    db.execute(f"{how} {table}")
    again = run(forge, *args)
    assert again.code == 0, again
    assert "resumed" not in again.out
    assert table_rows(db, table) == expected("BTCUSDT", "2024-01-05", "2024-01-07")
