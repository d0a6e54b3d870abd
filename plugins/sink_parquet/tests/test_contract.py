"""The Parquet sink against Forge's sink contract (forge_core.testing), read back with pyarrow."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
import pytest

from forge_core.testing import SinkContract


class TestParquetSinkContract(SinkContract):
    sink = "parquet"
    visible_before_close = True  # each commit replaces the month's file: visible at once

    @pytest.fixture
    def sink_options(self, tmp_path):
        return {"root": str(tmp_path / "dataset")}

    @pytest.fixture
    def bad_sink_options(self, tmp_path):
        (tmp_path / "a-file").write_text("")
        return {"root": str(tmp_path / "a-file" / "dataset")}  # a folder that is a file

    def read_back(self, options, symbol):
        root = Path(options["root"])
        files = sorted(str(p) for p in root.rglob("*.parquet")) if root.is_dir() else []
        if not files:
            return []
        table = ds.dataset(files, format="parquet", partitioning="hive").to_table()
        return [r for r in table.to_pylist() if r["symbol"] == symbol]
