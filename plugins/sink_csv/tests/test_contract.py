"""The CSV sink against Forge's sink contract (forge_core.testing)."""

from __future__ import annotations

import csv
import os

import pytest

from forge_core.testing import SinkContract


class TestCsvSinkContract(SinkContract):
    sink = "csv"
    visible_before_close = False  # a CSV file appears complete or not at all

    @pytest.fixture
    def sink_options(self, tmp_path):
        return {"output": str(tmp_path / "{symbol}.csv")}

    @pytest.fixture
    def bad_sink_options(self, tmp_path):
        (tmp_path / "a-file").write_text("")
        return {"output": str(tmp_path / "a-file" / "{symbol}.csv")}  # a folder that is a file

    def read_back(self, options, symbol):
        path = options["output"].format(symbol=symbol)
        if not os.path.exists(path):
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    # Known deviations from the contract in the BRIEF (issue 11), left for the CSV sink's owner:
    @pytest.mark.xfail(strict=True, reason="close(ok=False) flushes rows written after the last commit into "
                       "the .part, and the next run resumes after them: more than was committed")
    def test_failed_run_keeps_only_what_was_committed(self, sink_options):
        super().test_failed_run_keeps_only_what_was_committed(sink_options)

    @pytest.mark.xfail(strict=True, reason="issue 11: a later --to throws the interrupted run's .part away "
                       "(the run identity includes the end)")
    def test_resume_after_the_end_moved_later(self, sink_options):
        super().test_resume_after_the_end_moved_later(sink_options)
