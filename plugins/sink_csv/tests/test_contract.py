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


    def integrity_store(self, options):
        # forge verify names one file; the contract's runs write one file per symbol
        return super().integrity_store({**options, "output": options["output"].format(symbol=self.symbol)})
