"""docs/writing-a-sink.md's complete sink works: discovered like a plugin, exact output, and an
interrupted run resumes without a duplicate or a gap."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from forge_core import Pipeline, Plugins, Sink
from forge_core.times import parse_range
from forge_mock_exchange.expected import binance_rows

DOC = Path(__file__).resolve().parent.parent / "docs" / "writing-a-sink.md"


def doc_plugin() -> types.ModuleType:
    code = re.search(r"```python\n(# forge_jsonl/plugin.py\n.*?)```", DOC.read_text(), re.S).group(1)
    module = types.ModuleType("forge_jsonl_doc")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    sys.modules.pop("forge_jsonl_doc", None)
    return module


def plugins() -> Plugins:
    p = Plugins(entry_points=False)
    p.register(doc_plugin(), name="jsonl")
    import forge_binance.plugin

    p.register(forge_binance.plugin, name="binance")
    return p


def read(path: Path) -> list[tuple]:
    keys = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume")
    return [tuple(d[k] for k in keys) for d in map(json.loads, path.read_text().splitlines())]


def expected(lo: str, hi: str, now: int) -> list[tuple]:
    a, b = parse_range(lo, hi)
    return [r[:10] for r in binance_rows("BTCUSDT", "1h", a, b, now)]


def test_doc_sink_writes_exactly(exchange_env, tmp_path):
    out = tmp_path / "btc.jsonl"
    Pipeline("binance", [("jsonl", {"jsonl_path": str(out)})], plugins=plugins()).run(
        "BTCUSDT", "1h", "2024-01-01", "2024-01-31")
    assert read(out) == expected("2024-01-01", "2024-01-31", exchange_env.config.now)
    assert not Path(str(out) + ".run").exists()


def test_doc_sink_resumes_an_interrupted_run_exactly(exchange_env, tmp_path):
    out = tmp_path / "btc.jsonl"

    class Boom(Sink):  # a second sink failing on the second batch, after jsonl wrote it uncommitted
        name = "boom"

        def __init__(self) -> None:
            super().__init__()
            self.batches = 0

        def write(self, batch):
            self.batches += 1
            if self.batches == 2:
                raise RuntimeError("disk on fire")

    sink_spec = ("jsonl", {"jsonl_path": str(out)})
    with pytest.raises(RuntimeError):
        Pipeline("binance", [sink_spec, Boom()], plugins=plugins(), commit_every=200).run(
            "BTCUSDT", "1h", "2024-01-01", "2024-03-31")
    assert not out.exists()  # the file appears complete or not at all
    partial = read(Path(str(out) + ".part"))
    assert 1000 < len(partial) < 2184  # two pages written, only the first committed
    result = Pipeline("binance", [sink_spec], plugins=plugins()).run("BTCUSDT", "1h", "2024-01-01", "2024-03-31")
    assert result.resumed
    assert read(out) == expected("2024-01-01", "2024-03-31", exchange_env.config.now)
    assert not Path(str(out) + ".part").exists()


def test_a_failed_rerun_keeps_the_finished_file(exchange_env, tmp_path):
    out = tmp_path / "btc.jsonl"
    spec = ("jsonl", {"jsonl_path": str(out)})
    Pipeline("binance", [spec], plugins=plugins()).run("BTCUSDT", "1h", "2024-01-01", "2024-01-31")
    finished = out.read_bytes()

    class Boom(Sink):
        name = "boom"

        def write(self, batch):
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        Pipeline("binance", [spec, Boom()], plugins=plugins()).run("BTCUSDT", "1h", "2024-01-01", "2024-01-31")
    assert out.read_bytes() == finished


# docs/testing-plugins.md's SinkContract suite, run on the docs' sink
TESTING_DOC = DOC.parent / "testing-plugins.md"
_suite: dict = {}
exec(compile(re.search(r"```python\n# tests/test_contract.py\n(import json\n.*?)```", TESTING_DOC.read_text(),
                       re.S).group(1), str(TESTING_DOC), "exec"), _suite)


class TestDocsSinkContract(_suite["TestJsonLinesSink"]):
    sink = doc_plugin().JsonLinesSink
