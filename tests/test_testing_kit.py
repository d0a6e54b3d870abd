"""The testing kit as a third party sees it: an installed Forge, a test folder outside this
repository (no conftest of ours), fixtures found through the ``pytest11`` entry point, and
contract suites that pass for a correct plugin and fail, naming the rule, for a broken one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def pytest_in(folder: Path, files: dict[str, str], env: dict[str, str] | None = None,
              args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *args, "."],
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
    # one request per task also takes an empty answer for the task's candles
    assert failed == ["test_empty_pages_are_not_holes", "test_short_pages_are_not_the_end_of_data"], \
        result.stdout[-3000:]


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
                return [r for r in map(json.loads, open(options["path"])) if r["symbol"] == symbol]
    """})
    failed = sorted(line.split("::")[-1].split(" ")[0] for line in result.stdout.splitlines()
                    if line.startswith("FAILED"))
    assert failed == ["test_commit_is_durable_without_close", "test_failed_run_keeps_only_what_was_committed",
                      "test_resume_after_the_end_moved_later"], result.stdout[-3000:]
    # passed: read back, rerun, columns by name, two symbols, failed rerun; skipped: bad
    # destination (no fixture), --from auto (no last_open), integrity (none)
    assert "5 passed" in result.stdout and "4 skipped" in result.stdout


def failures(result: subprocess.CompletedProcess) -> list[str]:
    return sorted(line.split("::", 1)[-1].split(" ")[0] for line in result.stdout.splitlines()
                  if line.startswith("FAILED"))


def test_a_source_that_believes_an_empty_page_or_ends_on_a_503_fails_the_contract(tmp_path):
    result = pytest_in(tmp_path, {"test_sources.py": """
        from forge_bybit.mock import bybit_rows
        from forge_bybit.source import INTERVALS, BybitSource
        from forge_core import SourceError
        from forge_core.testing import SourceContract


        class BelievesEmpty(BybitSource):
            def fetch(self, task):  # walks short pages down, but takes the first empty answer as a hole
                make, rows, before = self.row_maker(task), [], task.end
                while before > task.start:
                    page = self._get("/v5/market/kline", {
                        "category": self.category, "symbol": task.symbol, "limit": 1000,
                        "interval": INTERVALS[task.timeframe.name], "start": task.start, "end": before - 1})["list"]
                    if not page:
                        break
                    rows += [make(open_ts=int(k[0]), open=k[1], high=k[2], low=k[3], close=k[4], volume=k[5],
                                  quote_volume=k[6]) for k in page]
                    before = min(int(k[0]) for k in page)
                return rows


        class EndsOnAnyError(BybitSource):
            def _check(self, response, body):  # every HTTP error final: a 503 or a 429 ends the run
                if response.status_code >= 400:
                    raise SourceError(f"Bybit said HTTP {response.status_code}")
                super()._check(response, body)


        class Base(SourceContract):
            symbol, timeframe, start, end = "BTCUSDT", "1h", "2023-09-01", "2024-02-29"
            mock_routes = ("bybit",)

            def expected_rows(self, symbol, timeframe, start, end, now):
                return bybit_rows(symbol, timeframe, start, end, now)


        class TestBelievesEmpty(Base):
            source = BelievesEmpty


        class TestEndsOnAnyError(Base):
            source = EndsOnAnyError
    """}, args=("-k", "exact_range or empty_pages or transient"))
    assert failures(result) == ["TestBelievesEmpty::test_empty_pages_are_not_holes",
                                "TestEndsOnAnyError::test_transient_errors_are_retried"], result.stdout[-3000:]



def test_a_source_whose_recheck_or_holes_unconfirmed_says_other_than_the_docs_fails_the_contract(tmp_path):
    result = pytest_in(tmp_path, {"test_hooks.py": """
        from forge_bybit.mock import bybit_rows
        from forge_bybit.source import BybitSource
        from forge_core import SymbolInfo
        from forge_core.testing import SourceContract


        class RecheckEndsThemAll(BybitSource):
            def recheck(self, symbols, timeframe):  # a follow run would stop following each series it asks about
                return {s: SymbolInfo(s, ended="delisted") for s in symbols}


        class DoubtWithoutWords(BybitSource):
            def holes_unconfirmed(self, symbol):  # the summary would print '(unconfirmed: False)'
                return False


        class Base(SourceContract):
            symbol, timeframe, start, end = "BTCUSDT", "1h", "2023-09-01", "2024-02-29"
            mock_routes = ("bybit",)

            def expected_rows(self, symbol, timeframe, start, end, now):
                return bybit_rows(symbol, timeframe, start, end, now)


        class TestRecheckEndsThemAll(Base):
            source = RecheckEndsThemAll


        class TestDoubtWithoutWords(Base):
            source = DoubtWithoutWords
    """}, args=("-k", "exact_range or recheck"))
    assert failures(result) == ["TestDoubtWithoutWords::test_recheck_answers_as_prepare",
                                "TestRecheckEndsThemAll::test_recheck_answers_as_prepare"], result.stdout[-3000:]

SINKS = """
    import json, os
    import pytest
    from forge_core import Sink
    from forge_core.testing import SinkContract


    class Store(Sink):
        \"\"\"A correct sink: one JSON document (rows by series and open_ts, resume points by run),
        replaced atomically at each commit.\"\"\"
        name = "store"

        def __init__(self, path):
            super().__init__()
            self.path = path

        def load(self):
            try:
                with open(self.path) as f:
                    return json.load(f)
            except FileNotFoundError:
                return {"rows": {}, "points": {}}

        def save(self):
            with open(self.path + ".tmp", "w") as f:
                json.dump(self.doc, f)
            os.replace(self.path + ".tmp", self.path)

        def series(self, symbol):
            return symbol

        def open(self, run):
            self.doc, self.pending, self.changed = self.load(), [], 0
            self.before = json.loads(json.dumps(self.doc["rows"]))  # what was held: rows_changed counts against it
            self.run = json.dumps([run.source, list(run.symbols), run.output_timeframe, run.start, run.transforms])

        def write(self, batch):
            self.pending += [dict(zip(batch.columns, row)) for row in batch.rows]

        def put(self, rows):
            for row in rows:
                self.changed += self.before.get(self.series(row["symbol"]), {}).get(str(row["open_ts"])) != row
                self.doc["rows"].setdefault(self.series(row["symbol"]), {})[str(row["open_ts"])] = row

        def commit(self):
            self.put(self.pending)
            for row in self.pending:
                self.doc["points"].setdefault(self.run, {})[row["symbol"]] = row["end_ts"]
            self.pending = []
            self.save()

        def resume_after(self, source, symbol, timeframe):
            return self.load()["points"].get(self.run, {}).get(symbol)

        def last_open(self, source, symbol, timeframe):
            opens = [int(t) for t in self.load()["rows"].get(self.series(symbol), {})]
            return max(opens) if opens else None

        def close(self, ok):
            if ok:
                self.doc["points"].pop(self.run, None)
                self.save()

        def rows_changed(self):
            return self.changed


    class MixesSymbols(Store):  # one series for all symbols: ETHUSDT overwrites BTCUSDT
        def series(self, symbol):
            return "all"


    class EmptiesOnOpen(Store):  # a run that does not resume starts from an empty document
        def open(self, run):
            super().open(run)
            if self.run not in self.doc["points"]:
                self.doc["rows"] = {}


    class ShowsUncommitted(Store):  # rows reach the document as they come; close(False) cuts them
        def write(self, batch):
            super().write(batch)
            self.put([dict(zip(batch.columns, row)) for row in batch.rows])
            self.save()

        def commit(self):
            for row in self.pending:
                self.doc["points"].setdefault(self.run, {})[row["symbol"]] = row["end_ts"]
            self.pending = []
            self.save()
            self.committed = json.dumps(self.doc)

        def close(self, ok):
            if not ok:
                self.doc = json.loads(getattr(self, "committed", json.dumps({"rows": {}, "points": {}})))
            super().close(ok)
            self.save()


    class ByPosition(Store):  # takes the columns in the source's order, not the batch's
        def write(self, batch):
            from forge_core.testing import SyntheticSource
            self.pending += [dict(zip(SyntheticSource.columns, row)) for row in batch.rows]


    class SaysNothingChanged(Store):
        def rows_changed(self):
            return 0


    class OldestAsNewest(Store):
        def last_open(self, source, symbol, timeframe):
            opens = [int(t) for t in self.load()["rows"].get(self.series(symbol), {})]
            return min(opens) if opens else None


    class Base(SinkContract):
        visible_before_close = True

        @pytest.fixture
        def sink_options(self, tmp_path):
            return {"path": str(tmp_path / "store.json")}

        def read_back(self, options, symbol):
            if not os.path.exists(options["path"]):
                return []
            with open(options["path"]) as f:
                rows = json.load(f)["rows"]
            return [r for held in rows.values() for r in held.values() if r["symbol"] == symbol]
"""


def test_sinks_that_mix_symbols_empty_on_rerun_show_uncommitted_rows_miscount_or_read_by_position_fail(tmp_path):
    classes = ("Store", "MixesSymbols", "EmptiesOnOpen", "ShowsUncommitted", "SaysNothingChanged", "OldestAsNewest",
               "ByPosition")
    suites = "".join(f"\n\nclass Test{name}(Base):\n    sink = {name}\n" for name in classes)
    new = "symbols_stay_apart or failed_rerun or from_auto or rerun_of or durable or read_back or by_name"
    result = pytest_in(tmp_path, {"test_sinks.py": textwrap.dedent(SINKS) + suites}, args=("-k", new))
    assert failures(result) == [
        "TestByPosition::test_columns_are_read_by_name",
        "TestEmptiesOnOpen::test_a_failed_rerun_keeps_the_finished_rows",
        "TestEmptiesOnOpen::test_from_auto_continues_after_the_newest_candle",
        "TestMixesSymbols::test_symbols_stay_apart",
        "TestOldestAsNewest::test_from_auto_continues_after_the_newest_candle",
        "TestSaysNothingChanged::test_rerun_of_a_finished_range_is_idempotent",
        "TestShowsUncommitted::test_commit_is_durable_without_close",
    ], result.stdout[-3000:]
