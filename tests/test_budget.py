"""One rate budget shared by processes (SQLite) and machines (PostgreSQL): the bound holds across
participants, a pause anywhere stops everyone, a bad store is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forge_core import RateLimiter, UsageError, budget

WORKER = """
import json, sys, time
from forge_core import RateLimiter, budget
url, capacity, window, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
budget.use(url)
limiter = RateLimiter(capacity, window, name="test-limit")
stamps, deadline = [], time.time() + seconds
while time.time() < deadline:
    limiter.acquire(1)
    stamps.append(time.time())
print(json.dumps(stamps))
"""


def run_participants(url: str, n: int, capacity: float, window: float, seconds: float) -> list[float]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(capacity), str(window), str(seconds)],
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    stamps: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        stamps += json.loads(out)
    return sorted(stamps)


def most_in_any_window(stamps: list[float], window: float) -> int:
    best, lo = 0, 0
    for hi, t in enumerate(stamps):
        while stamps[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def check_bound(stamps: list[float], capacity: float, window: float, seconds: float) -> None:
    # GCRA with a 5% burst: never more than capacity * 1.05 (+1 at a boundary) in any window
    assert most_in_any_window(stamps, window) <= capacity * (1 + budget.BURST) + 1
    # and the participants together use the budget, not a fraction of it
    assert len(stamps) >= 0.8 * capacity * seconds / window


def test_sqlite_budget_holds_its_bound_across_six_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    stamps = run_participants(url, 6, capacity=40, window=1.0, seconds=3.0)
    check_bound(stamps, 40, 1.0, 3.0)


def test_without_a_shared_budget_the_processes_overrun_the_limit():
    """What the shared budget prevents: six limiters of 40 per second each."""
    stamps = run_participants("", 6, capacity=40, window=1.0, seconds=1.5)
    assert most_in_any_window(stamps, 1.0) > 2 * 40


def test_postgres_budget_holds_its_bound_across_four_processes(pg_url):
    stamps = run_participants(pg_url, 4, capacity=40, window=1.0, seconds=3.0)
    check_bound(stamps, 40, 1.0, 3.0)


def test_a_pause_anywhere_stops_every_participant(tmp_path):
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    shared = budget.use(url)
    try:
        RateLimiter(100, 1.0, name="test-limit").pause(1.0)  # another process saw a 429
        other = budget.SharedBudget(budget.open_store(url), "default")  # a second participant
        began = time.monotonic()
        other.acquire("test-limit", 1, 100, 1.0)
        assert time.monotonic() - began >= 0.9
        assert shared is not None and budget.current() is shared
    finally:
        budget.use(None)


def test_the_server_count_moves_the_shared_estimate(tmp_path):
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    try:
        budget.use(url)
        limiter = RateLimiter(10, 1.0, name="test-limit")
        began = time.time()
        limiter.observe(10)  # the exchange says its whole (epoch-aligned) window is spent
        budget.current().acquire("test-limit", 1, 10, 1.0)  # type: ignore[union-attr]
        # nothing more until that window ends (less the 5% burst)
        assert time.time() >= (began // 1.0 + 1.0) - budget.BURST - 0.005
    finally:
        budget.use(None)


@pytest.mark.parametrize("url, words", [
    ("mysql://h/db", "unknown rate budget 'mysql://'"),
    ("sqlite://", "names no file"),
    ("postgresql://forge:s3cret@127.0.0.1:1/forge", "rate budget at 127.0.0.1:1 is not reachable"),
    ("postgresql://forge:s3cret@[::1/forge", "rate budget URL does not parse"),  # was an unexpected ValueError
])
def test_a_bad_budget_store_is_one_clear_line(url, words):
    with pytest.raises(UsageError, match=words) as info:
        budget.use(url)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)
    assert budget.current() is None


def test_a_sqlite_budget_in_an_unwritable_place_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="is not usable"):
        budget.use(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'budget.db'}")
    assert not Path(tmp_path / "missing").exists()


def test_a_pipelines_budget_holds_only_for_its_run(tmp_path, exchange_env):
    from forge_core import Pipeline
    from forge_core.testing import MemorySink

    assert budget.current() is None
    Pipeline("binance", [MemorySink()], rate_budget=f"sqlite:///{tmp_path / 'b.db'}").run(
        "BTCUSDT", "1h", "2024-01-01", "2024-01-01")
    assert budget.current() is None  # the next run in this process does not inherit it


def test_the_mock_counts_weight_as_binance_does():
    """The mock's Binance limit is the real one: 6000 weight per minute window (epoch-aligned),
    the count in X-MBX-USED-WEIGHT-1M, then 429s with Retry-After to the window's end, and a
    418 ban once a client sends more than five requests past its 429."""
    import math

    from forge_mock_exchange import MockConfig, MockExchange
    from forge_mock_exchange.server import Request

    for _ in range(2):  # once more if the minute turned over meanwhile
        minute = time.time() // 60
        mock = MockExchange(MockConfig(now=1742034030456), routes=["binance"])  # dispatch only, no socket
        info = Request("GET", "/api/v3/exchangeInfo", {"symbol": ["BTCUSDT"]}, {}, "symbol=BTCUSDT")
        answers = [mock.dispatch(info) for _ in range(300 + 6 + 1)]  # 300 x 20 = 6000: the whole minute
        if time.time() // 60 == minute:
            break
    ok, refused, banned = answers[:300], answers[300:305], answers[305:]
    assert all(a.status == 200 for a in ok) and ok[-1].headers["X-MBX-USED-WEIGHT-1M"] == "6000"
    assert json.loads(ok[0].body)["rateLimits"][0] == {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE",
                                                       "intervalNum": 1, "limit": 6000}
    assert [a.status for a in refused] == [429] * 5
    assert 0 < int(refused[0].headers["Retry-After"]) <= math.ceil((minute + 1) * 60 - time.time()) + 1
    assert "current limit is 6000 request weight per 1 MINUTE" in json.loads(refused[0].body)["msg"]
    assert [a.status for a in banned] == [418, 418] and int(banned[0].headers["Retry-After"]) >= 120
    assert "IP banned until" in json.loads(banned[0].body)["msg"]
    assert mock.stats["binance.429"] == 5 and mock.stats["binance.418"] == 2


def test_the_server_count_is_placed_in_the_exchanges_window_not_the_limiters(tmp_path):
    """Binance counts per epoch-aligned minute; the limiter's window is 61.2 s (a slack for
    jitter). Aligned on 61.2 s the count lands up to a minute off, stalling every participant
    for up to a minute (or letting them overrun) each time the phases drift apart."""
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    try:
        shared = budget.use(url)
        limiter = RateLimiter(5700, 61.2, name="test-limit")
        limiter.reconfigure(5700, 61.2, counting_window=60)
        limiter.observe(570)  # a tenth of the window's weight spent since the minute began
        now = time.time()
        store = shared.store  # type: ignore[union-attr]
        tat, _ = store._row(store._conn(), shared.key("test-limit"))  # type: ignore[union-attr,attr-defined]
        assert tat == pytest.approx(now // 60 * 60 + 570 * 61.2 / 5700, abs=0.01)
    finally:
        budget.use(None)


def test_start_up_requests_cost_the_shared_budget_their_weight_not_ten_times_it(tmp_path):
    """A new source's limiter caps itself at 10% of the published limit until exchangeInfo
    answers; the participants' shared budget is charged at the published rate all the same."""
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    try:
        shared = budget.use(url)
        limiter = RateLimiter(5700, 61.2, name="test-limit", initial=600)
        before = time.time()
        limiter.acquire(20)  # exchangeInfo
        store = shared.store  # type: ignore[union-attr]
        tat, _ = store._row(store._conn(), shared.key("test-limit"))  # type: ignore[union-attr,attr-defined]
        assert tat - before == pytest.approx(20 * 61.2 / 5700, abs=0.05)  # 0.21 s of the budget, not 2.0 s
    finally:
        budget.use(None)


def test_the_postgres_budget_takes_one_connection_per_process_not_per_worker(pg_url, db):
    """16 hosts x 4 processes x 5 worker threads would otherwise be 320 connections."""
    import threading

    try:
        budget.use(pg_url, egress=f"one-connection-{time.time_ns()}")
        limiter = RateLimiter(1e6, 1.0, name="test-limit")
        acquired, counted = threading.Barrier(6), threading.Event()

        def work() -> None:
            for _ in range(20):
                limiter.acquire(1)
            acquired.wait()
            counted.wait(10)  # still alive (a thread's connection would close with it)

        workers = [threading.Thread(target=work) for _ in range(5)]
        for w in workers:
            w.start()
        acquired.wait()
        db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'forge-rate-budget'")
        connections = db.fetchone()[0]
        counted.set()
        for w in workers:
            w.join()
        assert connections == 1
    finally:
        budget.use(None)
