"""The example plugin end to end: installed from its folder, found by its entry point, run with
``forge run --source bybit`` against Forge's mock exchange on 127.0.0.1.

The server is the testing kit's (``forge_core.testing``, fixture ``mock_exchange_factory``); the
Bybit routes it serves are this plugin's own (``forge_bybit/mock.py``, entry point group
``forge_etl_mock``), over the kit's deterministic synthetic market, so every expected candle is
known exactly. The contract suite is in ``test_contract.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from forge_bybit.mock import bybit_rows
from forge_core import Plugins
from forge_core.cli import main
from forge_core.testing import FROZEN_NOW as NOW
from forge_core.testing import MockExchange
from forge_core.times import parse_range

# Bybit's own documentation example response; see fixtures/PROVENANCE.md
DOCS_EXAMPLE = Path(__file__).resolve().parent / "fixtures" / "bybit_v5_market_kline_docs_example_coincise.json"


@pytest.fixture
def bybit(mock_exchange_factory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MockExchange:
    server = mock_exchange_factory(routes=["bybit"])  # only this plugin's routes
    monkeypatch.setenv("FORGE_BYBIT_URL", server.url)  # the plugin's base-URL override
    monkeypatch.chdir(tmp_path)
    return server


def expected(symbol: str, timeframe: str, start: str, end: str) -> list[list[str]]:
    """What a correct backfill writes, from the synthetic market alone."""
    return [[str(x) for x in row] for row in bybit_rows(symbol, timeframe, *parse_range(start, end), NOW)]


def read(path: str) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_the_installed_plugin_is_found_by_its_entry_point():
    registration = Plugins().registry["source"]["bybit"]
    assert registration.distribution == "forge-bybit-example"
    assert registration.cls.__module__ == "forge_bybit.source"


@pytest.mark.parametrize("timeframe,start,end", [
    ("1h", "2023-12-01", "2024-02-29"),  # three tasks of 1,000 candles, across the maintenance hole
    ("1m", "2024-01-10", "2024-01-10"),  # the hole itself: 150 minutes missing, not invented
    ("1d", "2021-01-01", "2024-12-31"),  # starts before the listing
    ("1w", "2024-01-01", "2025-03-15"),  # ends now: the open week is left out
    ("5m", "2025-03-15 09:00", "now"),
])
def test_forge_run_source_bybit_writes_the_exact_candles(bybit, capsys, timeframe, start, end):
    code = main(["run", "--source", "bybit", "--symbol", "BTCUSDT", "--timeframe", timeframe,
                 "--from", start, "--to", end, "--output", "out.csv", "-q"])
    assert code == 0, capsys.readouterr().err
    header, *rows = read("out.csv")
    assert header[:10] == ["source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low",
                           "close", "volume"]
    assert rows == expected("BTCUSDT", timeframe, start, str(NOW) if end == "now" else end) and rows


def test_default_file_name_uses_the_label(bybit):
    assert main(["run", "-s", "bybit", "--symbol", "BTCUSDT", "-t", "1d", "--from", "2024-01-01",
                 "--to", "2024-01-31", "-q"]) == 0
    assert len(read("Bybit-BTCUSDT-1d-2024-01-01_2024-01-31.csv")) == 32


def test_unknown_symbol_is_one_clear_line(bybit, capsys):
    code = main(["run", "-s", "bybit", "--symbol", "BTC-USDT", "--from", "2024-01-01", "--to", "2024-01-02"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "unknown symbol 'BTC-USDT' on Bybit spot; Bybit spells pairs like BTCUSDT" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_the_mock_answers_like_the_bybit_docs_example(bybit):
    import requests

    real = json.loads(DOCS_EXAMPLE.read_text())
    ours = requests.get(f"{bybit.url}/v5/market/kline", params={"category": "spot", "symbol": "BTCUSDT",
                                                               "interval": "60", "limit": 3}).json()
    assert set(ours) == set(real) and set(ours["result"]) == set(real["result"])
    assert [[type(x) for x in row] for row in ours["result"]["list"]] == \
        [[type(x) for x in row] for row in real["result"]["list"]]
    opens = [int(row[0]) for row in ours["result"]["list"]]
    assert opens == sorted(opens, reverse=True)  # newest first, like the real one


def test_each_category_has_its_own_source_value():
    from forge_bybit.source import BybitSource

    values = {c: BybitSource(category=c).source_value for c in ("spot", "linear", "inverse")}
    assert values == {"spot": "bybit", "linear": "bybit-linear", "inverse": "bybit-inverse"}


def test_the_docs_example_body_becomes_its_three_candles(mock_exchange_factory, monkeypatch, tmp_path):
    """Bybit's documented inverse answer (newest first, volume in USD contracts, turnover in
    BTC) served as is: three candles, oldest first, volume the base asset's (turnover), each
    value the exchange's string."""
    from forge_core.testing.server import Response

    server = mock_exchange_factory(routes=[])
    server.route("/v5/market/kline", lambda req: Response(200, DOCS_EXAMPLE.read_bytes()))
    server.route("/v5/market/instruments-info", lambda req: Response.json(
        {"retCode": 0, "retMsg": "OK", "result": {"category": "inverse", "list": [{"symbol": "BTCUSD"}]}}))
    server.route("/v5/market/time", lambda req: Response.json(
        {"retCode": 0, "retMsg": "OK", "result": {"timeNano": "1672025956592000000"}}))  # the example's "time"
    monkeypatch.setenv("FORGE_BYBIT_URL", server.url)
    out = tmp_path / "out.csv"
    assert main(["run", "-s", "bybit", "--category", "inverse", "--symbol", "BTCUSD", "-t", "1h",
                 "--from", "2022-12-09 16:00:00", "--to", "2022-12-09 18:00:00", "--output", str(out), "-q"]) == 0
    real = json.loads(DOCS_EXAMPLE.read_text())["result"]["list"]
    want = [["bybit-inverse", "BTCUSD", "1h", k[0], str(int(k[0]) + 3_599_999), *k[1:5], k[6], k[5]]
            for k in reversed(real)]
    assert read(str(out))[1:] == want


def test_a_200_body_without_the_list_is_retried(bybit, capsys):
    """retCode 0 but no result.list (a proxy's or an overloaded host's answer): retried as a
    malformed body, because the rows are built inside get_json's parse."""
    real, served = bybit.routes["/v5/market/kline"], []

    def once_wrong(req):
        served.append(req.path)
        if len(served) == 1:
            from forge_core.testing import Response
            return Response.json({"retCode": 0, "retMsg": "OK", "result": {}})
        return real(req)

    bybit.route("/v5/market/kline", once_wrong)
    code = main(["run", "-s", "bybit", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01",
                 "--to", "2024-01-02", "--output", "out.csv", "-q"])
    assert code == 0, capsys.readouterr().err
    assert read("out.csv")[1:] == expected("BTCUSDT", "1h", "2024-01-01", "2024-01-02") and len(served) > 1
