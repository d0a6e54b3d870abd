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
