"""Fixtures shared by every test in the repository (core, plugins, end-to-end).

The mock exchange and PostgreSQL fixtures come from Forge's testing kit (``forge_core.testing``,
registered with pytest through the ``pytest11`` entry point, as for any plugin's tests):
``mock_exchange``, ``mock_exchange_factory``, ``mock_env``, ``pg_url``, ``pg_server``. The names
below are this repository's older spellings of them."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forge_core.testing import FROZEN_NOW, MockExchange

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))

# The mock exchanges' frozen clock: 2025-03-15 10:20:30.456 UTC. Every "now" in the tests.
NOW = FROZEN_NOW
ENV_URLS = ("FORGE_BINANCE_URL", "FORGE_BINANCE_FUTURES_URL", "FORGE_BINANCE_COINM_URL", "FORGE_OKX_URL",
            "FORGE_BINANCE_ARCHIVE_URL")


@pytest.fixture(autouse=True)
def _no_hosts_answered_yet() -> Iterator[None]:
    """Each test starts like a fresh process: no host has answered yet. The HTTP client keeps
    the hosts that answered (``forge_core.http._answered``) for the process, and retries a
    failure of those instead of failing fast; one test reaching ``forge-test-host.invalid``
    through a proxy made another test's DNS failure of that name retry for 100 s."""
    from forge_core import http

    http._answered.clear()
    yield
    http._answered.clear()


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """Each test starts with the signal handlers the process started with. Dagster's in-process
    materialisation (plugins/dagster) leaves SIGTERM raising KeyboardInterrupt: a run then
    takes SIGTERM for the embedding app's own (pipeline._stop_signals leaves it alone), and in a
    pytest-xdist worker that had run the Dagster tests first, test_signals' swallowed-stop tests
    ended with exit 0 (reproduced with the Dagster file ordered before test_signals)."""
    import signal

    names = ("SIGINT", "SIGTERM", "SIGHUP")
    before = {sig: signal.getsignal(sig) for sig in (getattr(signal, n) for n in names if hasattr(signal, n))}
    yield
    for sig, handler in before.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forge's per-user state ($XDG_STATE_HOME/forge: Binance bans remembered across runs) is
    each test's own: a ban one test met on the shared mock must not refuse the next test's run."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


@pytest.fixture(autouse=True)
def _no_shared_rate_budget_left() -> Iterator[None]:
    """A test that ran a Pipeline with ``rate_budget`` (or ``FORGE_RATE_BUDGET``) leaves that
    store installed for the process (``forge_core.budget.use``): every later in-process test's
    limiter would draw from a SQLite file in that test's tmp_path. Stop it after each test."""
    yield
    from forge_core import budget

    if budget._current is not None:
        budget.use(None)


@pytest.fixture(autouse=True)
def _fresh_weight_minute(request: pytest.FixtureRequest) -> None:
    """A test on the shared mock starts in a fresh Binance weight window: each command's new
    limiter believes the mock's used-weight header, and would wait out the minute the tests
    before it filled (several tests took 61 s for that alone)."""
    if "mock_exchange" not in request.fixturenames:
        return
    mock = request.getfixturevalue("mock_exchange")
    with mock.lock:
        for key in [k for k in mock.state if k.startswith("weights.")]:
            del mock.state[key]


@pytest.fixture(autouse=True)
def _no_user_modules_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """In-process CLI runs import a user's transform module from the current directory (a
    test's tmp dir) and put that directory on ``sys.path``, as a process would for its own
    life. Undo both after each test: a ``my_indicators`` from one test must not answer for
    another test's file of the same name."""
    path = sys.path[:]
    yield
    sys.path[:] = path
    root = str(tmp_path_factory.getbasetemp())
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(root):
            del sys.modules[name]


@pytest.fixture(scope="session")
def mock(mock_exchange: MockExchange) -> MockExchange:
    """One shared mock (no latency, frozen clock). Don't reconfigure it: use ``fresh_mock``."""
    return mock_exchange


@pytest.fixture
def fresh_mock(mock_exchange_factory: Any) -> MockExchange:
    """A mock of this test's own, free to take faults or latency in its config."""
    return mock_exchange_factory()


@pytest.fixture
def exchange_env(monkeypatch: pytest.MonkeyPatch, mock: MockExchange) -> MockExchange:
    """Point every source at the shared mock through the environment variables."""
    for name in (*ENV_URLS, *mock.environment):
        monkeypatch.setenv(name, mock.url)
    return mock


@pytest.fixture
def fresh_exchange_env(monkeypatch: pytest.MonkeyPatch, fresh_mock: MockExchange) -> MockExchange:
    """A mock of the test's own (its counters start at 0), every source pointed at it."""
    for name in (*ENV_URLS, *fresh_mock.environment):
        monkeypatch.setenv(name, fresh_mock.url)
    return fresh_mock


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def forge(capsys: pytest.CaptureFixture[str]):
    """Run the ``forge`` CLI in-process: ``forge("run", "--source", ...)`` -> CliResult."""
    from forge_core.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def forge_process():
    """Run the installed ``forge`` console script in a subprocess, the way users do."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> CliResult:
        proc = subprocess.run(["forge", *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})}, cwd=cwd, stdin=subprocess.DEVNULL)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def wait_for(condition: Callable[[], object], seconds: float = 30.0) -> bool:
    """Whether ``condition()`` came true within ``seconds`` (polled every 20 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def follow_until_ended(follower: Any, seconds: float = 20.0) -> Any:
    """``follower.run()`` in a thread, stopped after ``seconds`` if it has not ended by itself;
    its result, or None if it never returned."""
    import threading

    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(follower.run()), daemon=True)
    thread.start()
    thread.join(seconds)
    follower.stop()
    thread.join(5)
    return done[0] if done else None


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.fixture
def db(pg_url: str) -> Iterator[Any]:
    """An autocommit cursor on the test PostgreSQL, for setting up and checking tables."""
    import psycopg2

    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        yield cur
    conn.close()


# The files that take longest start first, so that with several workers (-n, --dist loadfile)
# none of them is left to run alone at the end; the rest keep their order.
SLOW_FIRST = ("tests/test_guide_examples.py", "tests/test_verify.py", "tests/test_follow.py",
              "tests/test_archive_e2e.py", "tests/test_resume.py", "plugins/sink_parquet/tests/test_parquet_sink.py",
              "tests/test_signals.py", "tests/test_faults.py", "tests/test_partitions.py",
              "tests/test_postgres_e2e.py", "tests/test_bench_smoke.py", "plugins/dagster/tests/test_dagster.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]  # relative to the repository root
        return SLOW_FIRST.index(path) if path in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: tests keep their order inside a file
