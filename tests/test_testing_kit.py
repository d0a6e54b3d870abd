"""The testing kit as a third party sees it: an installed Forge, a test folder outside this
repository (no conftest of ours), fixtures found through the ``pytest11`` entry point, and
contract suites that pass for a correct plugin and fail, naming the rule, for a broken one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def pytest_in(folder: Path, files: dict[str, str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "."],
                          cwd=folder, capture_output=True, text=True, timeout=300, env={**clean, **(env or {})})


def test_fixtures_come_with_an_installed_forge(tmp_path, pg_url):
    result = pytest_in(tmp_path, {"test_fixtures.py": """
        import os, requests

        def test_mock(mock_exchange, mock_env):
            assert os.environ["FORGE_BINANCE_URL"] == mock_exchange.url == mock_env.url
            r = requests.get(mock_exchange.url + "/api/v3/time", timeout=5)
            assert r.json() == {"serverTime": 1742034030456}

        def test_factory(mock_exchange_factory):
            mock = mock_exchange_factory(faults={"http500": 1.0}, routes=["okx"])
            r = requests.get(mock.url + "/api/v5/public/time", timeout=5)
            assert r.status_code >= 500 and mock.stats["fault.http500"] == 1

        def test_pg(pg_url, pg_server):
            assert pg_server is None and pg_url == os.environ["FORGE_TEST_DATABASE_URL"]
    """}, env={"FORGE_TEST_DATABASE_URL": pg_url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_a_broken_source_fails_the_contract_on_the_rule_it_breaks(tmp_path):
    result = pytest_in(tmp_path, {"test_broken.py": """
        from forge_bybit.mock import bybit_rows
        from forge_bybit.source import INTERVALS, BybitSource
        from forge_core.testing import SourceContract


        class OnePagePerTask(BybitSource):
            def fetch(self, task):  # one request per task: a short page is taken as the end of data
                page = self._get("/v5/market/kline", {
                    "category": self.category, "symbol": task.symbol, "interval": INTERVALS[task.timeframe.name],
                    "start": task.start, "end": task.end - 1, "limit": 1000})["list"]
                make = self.row_maker(task)
                return [make(open_ts=int(k[0]), open=k[1], high=k[2], low=k[3], close=k[4], volume=k[5],
                             quote_volume=k[6]) for k in page]


        class TestBroken(SourceContract):
            source = OnePagePerTask
            symbol, timeframe, start, end = "BTCUSDT", "1h", "2023-09-01", "2024-02-29"
            mock_routes = ("bybit",)

            def expected_rows(self, symbol, timeframe, start, end, now):
                return bybit_rows(symbol, timeframe, start, end, now)
    """})
    failed = sorted(line.split("::")[-1].split(" ")[0] for line in result.stdout.splitlines()
                    if line.startswith("FAILED"))
    assert failed == ["test_short_pages_are_not_the_end_of_data"], result.stdout[-3000:]


def test_a_sink_that_loses_uncommitted_state_fails_the_contract(tmp_path):
    result = pytest_in(tmp_path, {"test_sink.py": """
        import json, os
        import pytest
        from forge_core import Sink
        from forge_core.testing import SinkContract


        class CommitsNothing(Sink):
            \"\"\"Writes straight to the final file and never makes a commit durable.\"\"\"
            name = "nocommit"

            def __init__(self, path):
                super().__init__()
                self.path = path

            def open(self, run):
                self.rows = []

            def write(self, batch):
                self.rows += [dict(zip(batch.columns, r)) for r in batch.rows]

            def close(self, ok):
                if ok:
                    with open(self.path, "w") as f:
                        f.writelines(json.dumps(r) + "\\n" for r in self.rows)


        class TestNoCommit(SinkContract):
            sink = CommitsNothing
            visible_before_close = True

            @pytest.fixture
            def sink_options(self, tmp_path):
                return {"path": str(tmp_path / "out.jsonl")}

            def read_back(self, options, symbol):
                if not os.path.exists(options["path"]):
                    return []
                return [json.loads(line) for line in open(options["path"])]
    """})
    failed = sorted(line.split("::")[-1].split(" ")[0] for line in result.stdout.splitlines()
                    if line.startswith("FAILED"))
    assert failed == ["test_commit_is_durable_without_close", "test_failed_run_keeps_only_what_was_committed",
                      "test_resume_after_the_end_moved_later"], result.stdout[-3000:]
    assert "2 passed" in result.stdout and "3 skipped" in result.stdout  # bad destination (no fixture), integrity (none)
