"""The resume contract, every column kept, lost COMMIT answers, silent peers and URL secrets,
against the real test PostgreSQL (``pg_url``)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from sqlalchemy.engine import make_url

from forge_core import Batch, RunInfo, SinkError, UsageError
from forge_sink_postgres import PostgresSink
from forge_sink_postgres.connection import ConnectionSpec, Session

COLUMNS = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume",
           "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume")
T0 = 1704067200000
HOUR = 3_600_000


def rows(n: int, start: int = 0, tf: str = "1m", close: str | None = None) -> list[tuple]:
    step = HOUR if tf == "1h" else 60_000
    return [("binance", "BTCUSDT", tf, T0 + i * step, T0 + (i + 1) * step - 1, f"{100 + i}.10", f"{101 + i}.00",
             f"{99 + i}.5", close or f"{100 + i}.20", f"{i}.00000001", f"{i * 100}.5", i, "0.1", "10.0")
            for i in range(start, start + n)]


def run_info(tf: str = "1m", out: str = "", transforms: str = "", end: int = T0 + 10**9,
             columns: tuple[str, ...] = COLUMNS) -> RunInfo:
    return RunInfo("binance", "Binance", ("BTCUSDT",), tf, T0, end, columns, transforms=transforms,
                   output_timeframe=out or tf)


@pytest.fixture
def table() -> str:
    return f"h_{uuid.uuid4().hex[:10]}"


def count(db, table: str) -> tuple[int, int]:
    db.execute(f'SELECT count(*), count(DISTINCT open_ts) FROM "{table}"')
    return db.fetchone()


# -- the resume contract -----------------------------------------------------------------------------
def test_resume_point_is_keyed_by_the_output_timeframe_and_survives_a_moved_end(pg_url, table):
    """A resample run stores 1h rows: its resume point is asked for as 1h (the output timeframe)."""
    resample = "resample[('resample_to', '1h')]"
    sink = PostgresSink(database_url=pg_url, table=table)
    sink.open(run_info("1m", "1h", resample))
    sink.write(Batch("binance", "BTCUSDT", "1h", COLUMNS, rows(5, tf="1h")))
    sink.commit()
    sink.close(False)  # interrupted
    again = PostgresSink(database_url=pg_url, table=table)
    again.open(run_info("1m", "1h", resample, end=T0 + 10**10))  # --to moved later: the same run
    try:
        assert again.resume_after("binance", "BTCUSDT", "1h") == rows(5, tf="1h")[-1][4]
        assert again.resume_after("binance", "BTCUSDT", "1m") is None
    finally:
        again.close(False)


def test_the_sink_does_not_filter_rows_by_its_resume_point(pg_url, db, table):
    """The core hands a sink only what it lacks; a sink that filtered again would drop rows the
    core meant it to get (here: rows it is asked to rewrite)."""
    sink = PostgresSink(database_url=pg_url, table=table)
    sink.open(run_info())
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(10)))
    sink.commit()
    sink.close(False)
    again = PostgresSink(database_url=pg_url, table=table)
    again.open(run_info())
    assert again.resume_after("binance", "BTCUSDT", "1m") == rows(10)[-1][4]
    again.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(20, close="5.5")))
    again.close(True)
    db.execute(f'SELECT count(*) FROM "{table}" WHERE close = 5.5')
    assert db.fetchone() == (20,)


# -- every column the run produces -----------------------------------------------------------------------
def test_default_table_keeps_every_column_with_sensible_types(pg_url, db, table):
    extra = ("rsi", "signal", "bullish", "spread", "note")
    columns = COLUMNS + extra
    data = [(*r, 50.25 + i, i * 3, i % 2 == 0, f"{i}.125", None if i == 0 else f"n{i}") for i, r in enumerate(rows(4))]
    sink = PostgresSink(database_url=pg_url, table=table)
    sink.open(run_info())
    sink.write(Batch("binance", "BTCUSDT", "1m", columns, data))
    sink.close(True)
    db.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
               "ORDER BY ordinal_position", (table,))
    types = dict(db.fetchall())
    assert list(types) == list(columns)
    assert [types[c] for c in ("quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume")] == [
        "numeric", "bigint", "numeric", "numeric"]
    assert [types[c] for c in extra] == ["double precision", "bigint", "boolean", "numeric", "text"]
    db.execute(f'SELECT quote_volume::text, trades, rsi, signal, bullish, spread::text, note FROM "{table}" '
               "ORDER BY open_ts")
    assert db.fetchall() == [(r[10], r[11], r[14], r[15], r[16], r[17], r[18]) for r in data]
    assert "not stored" not in sink.describe()


def test_a_table_of_the_sink_lacking_a_column_of_the_run_is_a_one_line_error(pg_url, db, table):
    sink = PostgresSink(database_url=pg_url, table=table)
    sink.open(run_info())
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(3)))
    sink.close(True)
    later = PostgresSink(database_url=pg_url, table=table)  # a transform now adds a column
    later.open(run_info())
    with pytest.raises(SinkError) as err:
        later.write(Batch("binance", "BTCUSDT", "1m", (*COLUMNS, "rsi"), [(*r, 1.5) for r in rows(3, 3)]))
    later.close(False)
    message = str(err.value)
    assert "\n" not in message
    assert message == (f"table {table} has no column 'rsi' that the run produces; add it "
                       f'(ALTER TABLE "{table}" ADD COLUMN "rsi" double precision) or leave it out with '
                       "--transform select")
    assert count(db, table) == (3, 3)  # nothing of the refused batch written


def test_the_default_table_of_an_older_forge_is_refused_at_open_naming_the_remedy(pg_url, db):
    schema = f"s_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE SCHEMA {schema}")
    db.execute(f"CREATE TABLE {schema}.klines (source text NOT NULL, symbol text NOT NULL, timeframe text NOT NULL, "
               "open_ts bigint NOT NULL, end_ts bigint NOT NULL, open numeric NOT NULL, high numeric NOT NULL, "
               "low numeric NOT NULL, close numeric NOT NULL, volume numeric NOT NULL, "
               "PRIMARY KEY (source, symbol, timeframe, open_ts))")
    try:
        with pytest.raises(SinkError) as err:
            PostgresSink(database_url=pg_url, table=f"{schema}.klines").open(run_info())
        assert str(err.value) == (
            f"table {schema}.klines has no column 'quote_volume', 'trades', 'taker_buy_base_volume', "
            f"'taker_buy_quote_volume' that source binance produces; add them (ALTER TABLE \"{schema}\".\"klines\" "
            'ADD COLUMN "quote_volume" numeric, ADD COLUMN "trades" bigint, ADD COLUMN "taker_buy_base_volume" '
            'numeric, ADD COLUMN "taker_buy_quote_volume" numeric) or leave it out with --transform select')
        db.execute(f"ALTER TABLE {schema}.klines ADD COLUMN quote_volume numeric, ADD COLUMN trades bigint, "
                   "ADD COLUMN taker_buy_base_volume numeric, ADD COLUMN taker_buy_quote_volume numeric")
        sink = PostgresSink(database_url=pg_url, table=f"{schema}.klines")
        sink.open(run_info())  # the remedy works
        sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(2)))
        sink.close(True)
        db.execute(f"SELECT trades FROM {schema}.klines ORDER BY open_ts")
        assert db.fetchall() == [(0,), (1,)]
    finally:
        db.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_users_own_table_says_which_columns_it_does_not_store(pg_url, db, table):
    db.execute(f'CREATE TABLE "{table}" (source text, symbol text, timeframe text, open_ts bigint, close numeric)')
    sink = PostgresSink(database_url=pg_url, table=table, on_conflict="none")
    sink.open(run_info())
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(2)))
    sink.close(True)
    assert sink.describe().endswith("not stored, the table has no such columns: end_ts, open, high, low, volume, "
                                    "quote_volume, trades, taker_buy_base_volume, taker_buy_quote_volume)")


# -- a lost COMMIT answer never duplicates plain inserts -----------------------------------------------
class _LoseFirstAnswer:
    """Wraps the session's connection: the first COMMIT after a COPY reaches the server, its
    answer is lost."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from forge_sink_postgres import load

        real, real_copy = Session.connection, load.copy
        state = self.state

        def copy(*args, **kwargs):
            state["copied"] = True
            return real_copy(*args, **kwargs)

        class Conn:
            def __init__(self, conn) -> None:
                self._conn = conn

            def __getattr__(self, name):
                return getattr(self._conn, name)

            def commit(self) -> None:
                self._conn.commit()
                if state.pop("copied", False) and state["lost"] == 0:
                    state["lost"] += 1
                    raise psycopg2.OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(load, "copy", copy)
        monkeypatch.setattr(Session, "connection", lambda self: Conn(real(self)))


def _plain_sink(url: str, table: str) -> PostgresSink:
    sink = PostgresSink(database_url=url, table=table, on_conflict="none")
    sink.RETRY_FIRST = 0.01
    return sink


def test_lost_answer_with_end_ts_dropped_by_a_select(pg_url, db, table, monkeypatch):
    """No end_ts in the rows, so forge_progress cannot record anything: the server is asked."""
    db.execute(f'CREATE TABLE "{table}" (symbol text, open_ts bigint, close numeric)')
    cols = ("symbol", "open_ts", "close")
    state = {"lost": 0}
    _LoseFirstAnswer(state).install(monkeypatch)
    sink = _plain_sink(pg_url, table)
    sink.open(run_info(columns=cols))
    sink.write(Batch("binance", "BTCUSDT", "1m", cols, [(r[1], r[3], r[8]) for r in rows(40)]))
    sink.commit()
    sink.write(Batch("binance", "BTCUSDT", "1m", cols, [(r[1], r[3], r[8]) for r in rows(40, 40)]))
    sink.close(True)
    assert state["lost"] == 1 and sink.retries == 1
    assert count(db, table) == (80, 80)


def test_lost_answer_without_rights_on_forge_progress(pg_url, db, table, monkeypatch):
    role, password = f"r_{uuid.uuid4().hex[:8]}", "pw-" + uuid.uuid4().hex[:8]
    schema = f"s_{uuid.uuid4().hex[:8]}"
    db.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password,))
    db.execute(f"CREATE SCHEMA {schema}")
    db.execute(f"CREATE TABLE {schema}.{table} (symbol text, open_ts bigint, end_ts bigint, close numeric)")
    db.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    db.execute(f"GRANT SELECT, INSERT ON {schema}.{table} TO {role}")
    url = make_url(pg_url).set(username=role, password=password).render_as_string(hide_password=False)
    cols = ("symbol", "open_ts", "end_ts", "close")
    data = [(r[1], r[3], r[4], r[8]) for r in rows(30)]
    try:
        state = {"lost": 0}
        _LoseFirstAnswer(state).install(monkeypatch)
        sink = _plain_sink(url, f"{schema}.{table}")
        sink.open(run_info(columns=cols))
        assert not sink.resumable  # cannot create forge_progress in that schema
        sink.write(Batch("binance", "BTCUSDT", "1m", cols, data))
        sink.close(True)
        assert state["lost"] == 1
        db.execute(f"SELECT count(*), count(DISTINCT open_ts) FROM {schema}.{table}")
        assert db.fetchone() == (30, 30)
    finally:
        db.execute(f"DROP SCHEMA {schema} CASCADE")
        db.execute(f"DROP ROLE {role}")


def test_plain_inserts_are_refused_when_the_server_cannot_tell(pg_url, db, table, monkeypatch):
    db.execute(f'CREATE TABLE "{table}" (symbol text, open_ts bigint, close numeric)')
    cols = ("symbol", "open_ts", "close")
    state = {"lost": 0}
    _LoseFirstAnswer(state).install(monkeypatch)
    monkeypatch.setattr(Session, "_settle", lambda self, conn, old, xid: None)  # as if txid_status said NULL
    sink = _plain_sink(pg_url, table)
    sink.open(run_info(columns=cols))
    sink.write(Batch("binance", "BTCUSDT", "1m", cols, [(r[1], r[3], r[8]) for r in rows(10)]))
    with pytest.raises(SinkError) as err:
        sink.commit()
    sink.close(False)
    assert str(err.value).endswith("the connection was lost during commit and the server cannot tell whether it "
                                   "committed; not sending plain inserts again blindly: check the table's newest "
                                   "rows, then re-run")
    assert count(db, table) == (10, 10)  # the first send committed; nothing sent twice


# -- a silent peer ------------------------------------------------------------------------------------
class FreezingProxy:
    """TCP between the sink and PostgreSQL. ``freeze()`` makes the open connections go silent:
    nothing is forwarded either way, closes included, yet every socket stays open and the
    kernel still acknowledges (a hung server or middlebox). ``freeze_on_commit(after)`` does
    so at the next COMMIT, before forwarding it or after (the server commits, its answer is
    held). New connections are forwarded normally."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen: set[int] = set()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.trigger: str | None = None
        self.closed = False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        with self.lock:
            self.frozen.update(id(pair) for pair in self.pairs)

    def freeze_on_commit(self, after: bool) -> None:
        self.trigger = "after" if after else "before"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            pair = (client, server)
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(client, server, pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple, upstream: bool) -> None:
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if id(pair) in self.frozen:
                    if not data:
                        return  # silent: the other side never hears of the close
                    continue
                if not data:
                    break
                if upstream and self.trigger and b"COMMIT\x00" in data:
                    trigger, self.trigger = self.trigger, None
                    if trigger == "before":
                        self.frozen.add(id(pair))
                        continue
                    dst.sendall(data)
                    self.frozen.add(id(pair))
                    continue
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for a, b in self.pairs:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


@pytest.fixture
def proxy(pg_url: str) -> Iterator[tuple[FreezingProxy, str]]:
    url = make_url(pg_url)
    p = FreezingProxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield p, url.set(host="127.0.0.1", port=p.port).render_as_string(hide_password=False)
    finally:
        p.close()


def _within(seconds: float, work) -> None:
    """Run ``work`` in a thread; fail (instead of hanging the suite) if it takes longer."""
    failure: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - reported below
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting on a silent server after {seconds}s"
    if failure:
        raise failure[0]


@pytest.mark.parametrize("when", ["mid-run", "before COMMIT", "after COMMIT"])
@pytest.mark.parametrize("conflict", [None, "none"])
def test_a_silent_server_is_given_up_on_and_the_commit_retried(pg_url, db, table, proxy, when, conflict):
    p, url = proxy
    sink = PostgresSink(database_url=url, table=table, on_conflict=conflict)
    sink.TIMEOUT, sink.RETRY_FIRST = 1.5, 0.05
    sink.open(run_info())
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(100)))
    sink.commit()
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(100, 100)))
    if when == "mid-run":
        p.freeze()
    else:
        p.freeze_on_commit(after=when == "after COMMIT")
    began = time.monotonic()
    _within(30, sink.commit)
    assert time.monotonic() - began < 15
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, rows(100, 200)))
    _within(30, lambda: sink.close(True))
    assert sink.retries >= 1 and sink.sent == 300
    assert count(db, table) == (300, 300)
    db.execute("SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%%' "
               "AND application_name = 'forge'")
    assert db.fetchone() == (0,)  # the silent session's server process was ended, locks and all


# -- secrets in a URL --------------------------------------------------------------------------------
def test_an_unencoded_at_in_the_password_is_refused_without_showing_it(forge, exchange_env, in_tmp, pg_url):
    url = make_url(pg_url)
    bad = f"postgresql://me:Sesame4x@Open9z@{url.host}:{url.port}/{url.database}"
    with pytest.raises(UsageError) as err:
        ConnectionSpec.build(bad)
    for fragment in ("Sesame4x", "Open9z"):
        assert fragment not in str(err.value)
    assert "%40" in str(err.value)
    result = forge("run", "-s", "binance", "--sink", "postgres", "-q", "--database-url", bad, "--symbol",
                   "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-01")
    assert result.code == 2, result
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("forge: error: bad database URL"), line
    assert "Sesame4x" not in result.err + result.out and "Open9z" not in result.err + result.out
    encoded = ConnectionSpec.build(f"postgresql://me:Sesame4x%40Open9z@{url.host}:{url.port}/db")
    assert encoded.password == "Sesame4x@Open9z" and encoded.host == url.host
