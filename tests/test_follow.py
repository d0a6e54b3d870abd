"""``forge run --follow`` end to end: the ``forge`` command in a subprocess against a mock
exchange on real time (1s candles, so a test takes seconds). Every check compares the files
with the candles the synthetic market defines, from ``--since`` to the last one written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge_core.times import parse_instant
from forge_mock_exchange import MockConfig, MockExchange
from forge_mock_exchange.expected import as_csv_lines, binance_rows
from forge_mock_exchange.server import Request, Response

SECOND = 1000


@pytest.fixture
def live_mock() -> Iterator[MockExchange]:
    """A mock on real time whose clock runs 2.5 s behind this machine's: a follower that
    trusted the local clock would take the candle still open at the exchange for closed."""
    with MockExchange(MockConfig(now=None, clock_offset=-2500)) as server:
        yield server


class Follow:
    """One ``forge run --follow`` process writing ``f-{symbol}.csv`` in ``cwd``."""

    def __init__(self, mock: MockExchange, cwd: Path, symbols: str, since: int, *extra: str,
                 env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        args = ["forge", "-v", "--log-format", "json", "run", "-s", "binance", "--symbol", symbols, "-t", "1s",
                "--from", "auto", "--since", str(since), "--follow", *extra]
        if "--sink" not in extra:
            args += ["--output", "f-{symbol}.csv"]
        self.proc = subprocess.Popen(args, cwd=cwd, env={**os.environ, "FORGE_BINANCE_URL": mock.url, **(env or {})},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.err_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err_lines.append(line)

    def events(self, name: str) -> list[dict]:
        out = []
        for line in list(self.err_lines):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == name:
                out.append(event)
        return out

    def wait_event(self, name: str, count: int, symbol: str, timeout: float = 20) -> None:
        """Until ``symbol`` has logged ``name`` ``count`` times."""
        deadline = time.monotonic() + timeout
        while len([e for e in self.events(name) if e.get("symbol") == symbol]) < count:
            assert time.monotonic() < deadline, f"{symbol}: fewer than {count} {name}: {''.join(self.err_lines[-20:])}"
            assert self.proc.poll() is None, (self.proc.returncode, "".join(self.err_lines[-20:]))
            time.sleep(0.05)

    def wait_rows(self, symbol: str, until_open: int, timeout: float = 20) -> None:
        """Until the file holds the candle opening at ``until_open`` (exchange time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = read_rows(self.cwd / f"f-{symbol}.csv")
            if rows and int(rows[-1][3]) >= until_open:
                return
            assert self.proc.poll() is None, (self.proc.returncode, "".join(self.err_lines[-20:]))
            time.sleep(0.05)
        raise AssertionError(f"{symbol} did not reach {until_open}: {''.join(self.err_lines[-20:])}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> tuple[int, str]:
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        return self.proc.returncode, out

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=10)
        self._reader.join(5)


def read_rows(path: Path) -> list[list[str]]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[1:]


def check_exact(path: Path, symbol: str, since: int) -> list[list[str]]:
    """The file is exactly the market's closed candles from ``since`` to its last row."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("source,symbol,timeframe,open_ts,end_ts")
    rows = read_rows(path)
    assert rows, path
    last = int(rows[-1][3])
    expected = as_csv_lines(binance_rows(symbol, "1s", since, last + SECOND, last + SECOND))
    assert len(rows) == len(expected), (len(rows), len(expected))
    assert rows == expected
    return rows


def mock_now(mock: MockExchange) -> int:
    return mock.now()


@pytest.fixture
def ram_path(tmp_path: Path) -> Iterator[Path]:
    """A directory in RAM (``/dev/shm``) where there is one, else ``tmp_path``. A latency bound
    is on the follower, not on the disk: on a shared machine one fsync of the CSV commit took
    0.3-2.4 s at times (another job's writes ahead of it in the journal)."""
    import shutil
    import tempfile

    if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="forge-follow-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def live_tail(committed: list[dict]) -> list[dict]:
    """The commits of candles that closed after their series' previous commit: those the
    follower waited for. A candle that closed during the backfill (or any slower pass) was
    fetched late by design, as catch-up."""
    committed_at: dict[str, float] = {}  # exchange time of a series' previous commit, s
    live = []
    for e in committed:
        close = parse_instant(e["open"])[0] / 1000 + 1  # 1s candles
        previous = committed_at.get(e["symbol"])
        if previous is not None and close > previous:
            live.append(e)
        committed_at[e["symbol"]] = close + e["delay"]
    return live


def test_follow_writes_every_closed_candle_once_and_never_an_open_one(live_mock: MockExchange, ram_path: Path) -> None:
    tmp_path = ram_path
    since = (mock_now(live_mock) // SECOND - 20) * SECOND
    run = Follow(live_mock, tmp_path, "BTCUSDT,ETHUSDT", since)
    for symbol in ("BTCUSDT", "ETHUSDT"):  # a slow start-up (a loaded machine) must not eat the live tail
        run.wait_event("caught_up", 1, symbol)
    target = (mock_now(live_mock) // SECOND + 4) * SECOND
    run.wait_rows("BTCUSDT", target)
    run.wait_rows("ETHUSDT", target)
    stopped_at = mock_now(live_mock)
    code, out = run.stop()
    assert code == 0, "".join(run.err_lines[-20:])
    for symbol in ("BTCUSDT", "ETHUSDT"):
        rows = check_exact(tmp_path / f"f-{symbol}.csv", symbol, since)
        assert int(rows[-1][4]) < stopped_at  # closed by the exchange's clock when written
        assert f"{symbol}: last committed candle opens" in out
    assert "stopped by SIGTERM" in out
    committed = run.events("candle_committed")
    assert committed and {e["symbol"] for e in committed} == {"BTCUSDT", "ETHUSDT"}
    live = live_tail(committed)
    assert len(live) >= 4 and max(e["delay"] for e in live) < 1.0, committed
    assert {e["symbol"] for e in run.events("caught_up")} == {"BTCUSDT", "ETHUSDT"}
    # one kline request per series per closed candle in the tail (plus the clock's)
    stats = live_mock.stats
    klines = stats["binance.spot.requests"]
    assert klines <= 2 * (len(committed) + 4) + 10, (klines, len(committed))


def test_follow_kill9_restart_then_sigterm_is_exact(live_mock: MockExchange, tmp_path: Path) -> None:
    since = (mock_now(live_mock) // SECOND - 10) * SECOND
    run = Follow(live_mock, tmp_path, "BTCUSDT", since)
    run.wait_rows("BTCUSDT", (mock_now(live_mock) // SECOND + 1) * SECOND)
    run.kill()
    time.sleep(2.5)  # candles close while nothing follows
    again = Follow(live_mock, tmp_path, "BTCUSDT", since)
    again.wait_rows("BTCUSDT", (mock_now(live_mock) // SECOND + 2) * SECOND)
    code, out = again.stop()
    assert code == 0, "".join(again.err_lines[-20:])
    check_exact(tmp_path / "f-BTCUSDT.csv", "BTCUSDT", since)
    start = again.events("follow_start")
    assert start and start[0]["held"][0] is not None  # continued after what the file held


def test_follow_outage_leaves_no_gap(live_mock: MockExchange, tmp_path: Path) -> None:
    down = threading.Event()

    def outage(handler, request: Request, response: Response) -> bool:
        if not down.is_set() or request.path.startswith("/mock/"):
            return False
        body = b'{"code":-1000,"msg":"Service unavailable."}'
        handler.send_response(503)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        return True

    live_mock.before_send = outage
    since = (mock_now(live_mock) // SECOND - 5) * SECOND
    run = Follow(live_mock, tmp_path, "BTCUSDT,ETHUSDT", since, "--lag-warning", "2",
                 env={"FORGE_HTTP_MAX_ATTEMPTS": "2"})
    run.wait_rows("BTCUSDT", (mock_now(live_mock) // SECOND + 1) * SECOND)
    down.set()
    time.sleep(5)  # several candle periods
    down.clear()
    back = mock_now(live_mock)
    run.wait_rows("BTCUSDT", (back // SECOND + 1) * SECOND, timeout=40)
    run.wait_rows("ETHUSDT", (back // SECOND + 1) * SECOND, timeout=10)
    for symbol in ("BTCUSDT", "ETHUSDT"):  # each series: after the backfill and after the outage
        run.wait_event("caught_up", 2, symbol)  # (on a loaded machine, some time after its rows)
    code, _ = run.stop()
    assert code == 0
    for symbol in ("BTCUSDT", "ETHUSDT"):
        check_exact(tmp_path / f"f-{symbol}.csv", symbol, since)
    assert run.events("exchange_down")
    assert run.events("lagging")


def test_follow_symbol_added_starts_at_since_and_ctrl_c_exits_130(live_mock: MockExchange, tmp_path: Path) -> None:
    since = (mock_now(live_mock) // SECOND - 8) * SECOND
    first = Follow(live_mock, tmp_path, "BTCUSDT", since)
    first.wait_rows("BTCUSDT", (mock_now(live_mock) // SECOND) * SECOND)
    code, _ = first.stop()
    assert code == 0
    held = int(read_rows(tmp_path / "f-BTCUSDT.csv")[-1][3])
    second = Follow(live_mock, tmp_path, "BTCUSDT,ETHUSDT", since)
    target = (mock_now(live_mock) // SECOND + 1) * SECOND
    second.wait_rows("ETHUSDT", target)
    second.wait_rows("BTCUSDT", target)
    code, out = second.stop(signal.SIGINT)
    assert code == 130, "".join(second.err_lines[-20:])
    assert "stopped by Ctrl-C" in out
    btc = check_exact(tmp_path / "f-BTCUSDT.csv", "BTCUSDT", since)
    eth = check_exact(tmp_path / "f-ETHUSDT.csv", "ETHUSDT", since)
    assert int(eth[0][3]) == since and int(btc[-1][3]) > held


def test_follow_usage_errors(forge_process) -> None:
    result = forge_process("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", "auto", "--follow")
    assert result.code == 2 and "--since" in result.err and "Traceback" not in result.err
    result = forge_process("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to",
                           "2024-02-01", "--follow")
    assert result.code == 2 and "drop --to" in result.err


def test_follow_into_postgres_commits_each_boundary_and_restarts_exactly(live_mock: MockExchange, tmp_path: Path,
                                                                         pg_url: str, db) -> None:
    import uuid

    table = f"follow_{uuid.uuid4().hex[:10]}"
    since = (mock_now(live_mock) // SECOND - 6) * SECOND
    extra = ("--sink", "postgres", "--table", table)
    env = {"FORGE_DATABASE_URL": pg_url}

    def rows() -> list[tuple]:
        db.execute(f"SELECT source, symbol, timeframe, open_ts, end_ts, open::text, high::text, low::text, "
                   f"close::text, volume::text FROM {table} ORDER BY symbol, open_ts")
        return db.fetchall()

    def wait_table(until_open: int, proc: Follow) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            db.execute(f"SELECT max(open_ts) FROM {table}")
            newest = db.fetchone()[0]
            if newest is not None and newest >= until_open:
                return
            assert proc.proc.poll() is None, "".join(proc.err_lines[-20:])
            time.sleep(0.05)
        raise AssertionError("".join(proc.err_lines[-20:]))

    first = Follow(live_mock, tmp_path, "BTCUSDT", since, *extra, env=env)
    wait_deadline = time.monotonic() + 20
    while time.monotonic() < wait_deadline and not first.events("caught_up"):
        assert first.proc.poll() is None, "".join(first.err_lines[-20:])
        time.sleep(0.05)
    wait_table((mock_now(live_mock) // SECOND + 2) * SECOND, first)
    first.kill()
    again = Follow(live_mock, tmp_path, "BTCUSDT", since, *extra, env=env)
    wait_table((mock_now(live_mock) // SECOND + 2) * SECOND, again)
    deadline = time.monotonic() + 20  # the catch-up is one commit; then one per boundary
    while time.monotonic() < deadline and len(again.events("candle_committed")) < 3:
        time.sleep(0.05)
    code, _ = again.stop()
    assert code == 0, "".join(again.err_lines[-20:])
    got = rows()
    last = got[-1][3]
    want = [r[:10] for r in binance_rows("BTCUSDT", "1s", since, last + SECOND, last + SECOND)]
    assert got == want
    # one transaction per boundary in the tail: a commit event per candle
    tail = again.events("candle_committed")[1:]
    assert tail and all(b["written"] - a["written"] == 1 for a, b in zip(tail, tail[1:], strict=False))


def test_follow_paused_process_catches_up_exactly(live_mock: MockExchange, ram_path: Path) -> None:
    """SIGSTOP/SIGCONT: what a suspended laptop looks like to the process (its timers overshoot,
    candles closed meanwhile must be fetched before the tail goes on)."""
    tmp_path = ram_path  # a commit's fsync on a busy disk is where a stop would land, not the wait
    since = (mock_now(live_mock) // SECOND - 3) * SECOND
    run = Follow(live_mock, tmp_path, "BTCUSDT", since)
    for _ in range(5):  # a stop that lands mid-request (not in the wait) finds nothing late: again
        target = (mock_now(live_mock) // SECOND) * SECOND
        run.wait_rows("BTCUSDT", target)
        # stopped once that candle's commit is logged (the row is in the file before it is
        # committed): the follower then waits for the next one, where the stop should land
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                parse_instant(e["open"])[0] >= target for e in run.events("candle_committed")):
            time.sleep(0.01)
        run.proc.send_signal(signal.SIGSTOP)
        time.sleep(4)
        run.proc.send_signal(signal.SIGCONT)
        resumed = mock_now(live_mock)
        run.wait_rows("BTCUSDT", (resumed // SECOND) * SECOND, timeout=10)
        if run.events("woke_late"):
            break
    code, _ = run.stop()
    assert code == 0
    check_exact(tmp_path / "f-BTCUSDT.csv", "BTCUSDT", since)
    assert run.events("woke_late"), "".join(run.err_lines[-30:])


def test_follow_okx_1s(live_mock: MockExchange, tmp_path: Path) -> None:
    """Another source through the same core loop: OKX's 1s bars, its own clock and limits."""
    from forge_mock_exchange.expected_okx import okx_rows

    since = (mock_now(live_mock) // SECOND - 5) * SECOND
    args = ["forge", "run", "-s", "okx", "--symbol", "BTC-USDT", "-t", "1s", "--from", "auto", "--since",
            str(since), "--follow", "--output", "okx.csv"]
    proc = subprocess.Popen(args, cwd=tmp_path, env={**os.environ, "FORGE_OKX_URL": live_mock.url},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    target = (mock_now(live_mock) // SECOND + 3) * SECOND
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        rows = read_rows(tmp_path / "okx.csv")
        if rows and int(rows[-1][3]) >= target:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    rows = read_rows(tmp_path / "okx.csv")
    last = int(rows[-1][3])
    assert last >= target
    assert rows == as_csv_lines(okx_rows("BTC-USDT", "1s", since, last + SECOND, last + SECOND))


def test_follow_outlives_a_database_restart(live_mock: MockExchange, tmp_path: Path, pg_url: str) -> None:
    """The PostgreSQL server restarts mid-follow (every connection terminated, down for 3 s):
    the commit is retried, the candles that closed meanwhile are caught up, nothing is lost."""
    import uuid

    import pgserver
    import psycopg2

    server = pgserver.current()
    if server is None:
        pytest.skip("needs the throwaway PostgreSQL this session started (not FORGE_TEST_DATABASE_URL)")
    table = f"follow_{uuid.uuid4().hex[:10]}"
    since = (mock_now(live_mock) // SECOND - 4) * SECOND

    def query(sql: str) -> list[tuple]:
        conn = psycopg2.connect(pg_url)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    def newest() -> int | None:
        try:
            return query(f"SELECT max(open_ts) FROM {table}")[0][0]
        except psycopg2.Error:
            return None

    def wait_table(until_open: int, run: Follow, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = newest()
            if got is not None and got >= until_open:
                return
            assert run.proc.poll() is None, "".join(run.err_lines[-20:])
            time.sleep(0.1)
        raise AssertionError("".join(run.err_lines[-20:]))

    run = Follow(live_mock, tmp_path, "BTCUSDT", since, "--sink", "postgres", "--table", table,
                 env={"FORGE_DATABASE_URL": pg_url})
    wait_table((mock_now(live_mock) // SECOND + 1) * SECOND, run)
    server.restart(down_for=3)
    wait_table((mock_now(live_mock) // SECOND + 2) * SECOND, run)
    code, _ = run.stop()
    assert code == 0, "".join(run.err_lines[-20:])
    got = query(f"SELECT source, symbol, timeframe, open_ts, end_ts, open::text, high::text, low::text, "
                f"close::text, volume::text FROM {table} ORDER BY open_ts")
    last = got[-1][3]
    assert got == [r[:10] for r in binance_rows("BTCUSDT", "1s", since, last + SECOND, last + SECOND)]
    assert any("postgres_retry" in line for line in run.err_lines)


@pytest.mark.slow  # 4-7 s: a PostgreSQL stop and start, then the catch-up
def test_follow_waits_for_a_database_down_longer_than_its_retries(live_mock: MockExchange, pg_url: str) -> None:
    """PostgreSQL stays down longer than the sink's own retries (RETRY_FOR, 120 s; scaled to
    0.3 s here): the follow run used to end with exit 1. It now waits with backoff, commits the
    kept rows when the server is back, catches up, and the table is exact."""
    import uuid

    import pgserver
    import psycopg2

    from forge_core import Pipeline
    from forge_sink_postgres import PostgresSink

    server = pgserver.current()
    if server is None:
        pytest.skip("needs the throwaway PostgreSQL this session started (not FORGE_TEST_DATABASE_URL)")

    class QuickToGiveUp(PostgresSink):
        RETRY_FIRST, RETRY_MAX, RETRY_FOR = 0.05, 0.1, 0.3

    table = f"follow_{uuid.uuid4().hex[:10]}"
    since = (mock_now(live_mock) // SECOND - 4) * SECOND
    follower = Pipeline(("binance", {"base_url": live_mock.url, "archive": "rest"}),
                        [QuickToGiveUp(database_url=pg_url, table=table)]).follow(["BTCUSDT"], "1s", since=since)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            follower.run()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            failed.append(exc)

    def newest() -> int:
        try:
            conn = psycopg2.connect(pg_url)
        except psycopg2.Error:
            return 0
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT max(open_ts) FROM {table}")
                return cur.fetchone()[0] or 0
        except psycopg2.Error:
            return 0
        finally:
            conn.close()

    def wait_table(until_open: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not failed:
            if newest() >= until_open:
                return
            time.sleep(0.1)
        raise AssertionError(f"the table did not reach {until_open}: {failed}")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_table((mock_now(live_mock) // SECOND + 1) * SECOND)
        server.stop(remove=False)
        try:  # down until the follow run has waited for it at least once past the sink's patience
            deadline = time.monotonic() + 20
            while follower.result.sink_outages < 1 and time.monotonic() < deadline and not failed:
                time.sleep(0.05)
        finally:
            server.start()
        wait_table((mock_now(live_mock) // SECOND + 1) * SECOND)
    finally:
        follower.stop()
        thread.join(30)
    assert not failed and not thread.is_alive(), failed
    assert follower.result.sink_outages >= 1
    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT source, symbol, timeframe, open_ts, end_ts, open::text, high::text, low::text, "
                        f"close::text, volume::text FROM {table} ORDER BY open_ts")
            got = cur.fetchall()
    finally:
        conn.close()
    last = got[-1][3]
    assert got == [r[:10] for r in binance_rows("BTCUSDT", "1s", since, last + SECOND, last + SECOND)]
