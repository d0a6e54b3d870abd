"""The README's plugin example is complete and works, discovered like any plugin, against the mock."""

import re
import sys
import types
from pathlib import Path

from forge_core import Pipeline, Plugins, Sink
from forge_core.times import parse_range
from forge_mock_exchange.expected import binance_rows

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_plugin() -> types.ModuleType:
    code = re.search(r"```python\n(# my_exchange/plugin.py\n.*?)```", README.read_text(), re.S).group(1)
    module = types.ModuleType("my_exchange_plugin")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    sys.modules.pop("my_exchange_plugin", None)
    return module


def test_readme_plugin_backfills_exactly(mock, monkeypatch):
    monkeypatch.setenv("MYEXCHANGE_URL", mock.url)
    plugins = Plugins(entry_points=False)
    plugins.register(readme_plugin(), name="myexchange")
    rows: list = []

    class Memory(Sink):
        name = "memory"

        def write(self, batch):
            rows.extend(batch.rows)

    result = Pipeline("myexchange", [Memory()], plugins=plugins).run("ETHUSDT", "1h", "2024-01-01", "2024-03-31")
    lo, hi = parse_range("2024-01-01", "2024-03-31")
    want = [("myexchange", *r[1:10]) for r in binance_rows("ETHUSDT", "1h", lo, hi, mock.config.now)]
    assert rows == want and result.rows == {"ETHUSDT": len(want)} and len(want) > 2000
