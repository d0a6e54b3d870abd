"""`forge run --source binance` end to end over real HTTP against the mock exchange."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_mock_exchange.expected import binance_csv_lines
from forge_mock_exchange.market import DELISTED, MAINTENANCE, NEW_LISTED, Market

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "real"  # real responses; see PROVENANCE.md
HEADER = ["source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume",
          "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume"]


def read(path: Path):
    from conftest import read_csv

    return read_csv(path)


expected = binance_csv_lines


@pytest.mark.parametrize("tf,start,end", [
    ("1m", "2024-01-09", "2024-01-11"),  # crosses the maintenance hole
    ("5m", "2024-01-01", "2024-01-31"),
    ("1h", "2023-11-01", "2024-02-29"),
    ("1d", "2020-01-01", "2024-12-31"),
    ("1w", "2023-01-01", "2024-06-30"),
    ("1M", "2019-01-01", "2024-12-31"),
    ("1s", "2024-01-10 02:50:00", "2024-01-10 03:10:00"),
])
def test_exact_candles_for_each_timeframe(forge, exchange_env, in_tmp, tf, start, end):
    result = forge("run", "--source", "binance", "--sink", "csv", "--symbol", "BTCUSDT", "--timeframe", tf,
                   "--from", start, "--to", end, "-q")
    assert result.code == 0, result
    name = f"Binance-BTCUSDT-{tf}-{start[:10]}_{end[:10]}.csv"
    header, rows = read(in_tmp / name)
    assert header == HEADER
    want = expected("BTCUSDT", tf, start, end, exchange_env.config.now)
    assert rows == want and len(rows) > 5
    assert not list(in_tmp.glob("*.part"))


def test_maintenance_hole_is_not_invented_or_filled(forge, exchange_env, in_tmp):
    assert forge("run", "-s", "binance", "--symbol", "ETHUSDT", "--from", "2024-01-10", "--to", "2024-01-10",
                 "-q").code == 0
    _, rows = read(in_tmp / "Binance-ETHUSDT-1m-2024-01-10_2024-01-10.csv")
    opens = [int(r[3]) for r in rows]
    assert len(opens) == 1440 - 150
    assert not [t for t in opens if MAINTENANCE[0] <= t < MAINTENANCE[1]]
    assert opens[0] == 1704844800000 and opens[-1] == 1704844800000 + 1439 * 60_000


def test_symbol_listed_mid_range_starts_at_listing(forge, exchange_env, in_tmp):
    assert forge("run", "-s", "binance", "--symbol", "NEWUSDT", "-t", "1h", "--from", "2024-01-01",
                 "--to", "2024-01-31", "-q").code == 0
    _, rows = read(in_tmp / "Binance-NEWUSDT-1h-2024-01-01_2024-01-31.csv")
    assert int(rows[0][3]) == NEW_LISTED
    assert rows == expected("NEWUSDT", "1h", "2024-01-01", "2024-01-31", exchange_env.config.now)


@pytest.mark.parametrize("archive", ["rest", "auto"])
def test_delisted_symbol_ends_at_its_last_candle(forge, exchange_env, in_tmp, monkeypatch, archive):
    """A delisted Binance pair stays in exchangeInfo (status BREAK) and its klines stay queryable
    (docs: exchange-apis A.6); nothing after its last candle, in REST or the archive."""
    import requests

    from forge_core import paging

    monkeypatch.setattr(paging, "AFFIRM_BACKOFF", (0.0, 0.01, 0.02))  # the end of data is believed sooner

    info = requests.get(f"{exchange_env.url}/api/v3/exchangeInfo", params={"symbol": "OLDUSDT"}, timeout=10).json()
    assert info["symbols"][0]["status"] == "BREAK"
    newest = requests.get(f"{exchange_env.url}/api/v3/klines", timeout=10,
                          params={"symbol": "OLDUSDT", "interval": "1m", "limit": 1}).json()
    assert newest[0][6] == DELISTED - 1
    zip_after = "/data/spot/daily/klines/OLDUSDT/1h/OLDUSDT-1h-2024-02-01.zip"
    assert requests.get(exchange_env.url + zip_after, timeout=10).status_code == 404
    result = forge("run", "-s", "binance", "--symbol", "OLDUSDT", "-t", "1h", "--from", "2023-12-20",
                   "--to", "now", "--archive", archive, "--output", "old.csv", "-q")
    assert result.code == 0, result
    _, rows = read(in_tmp / "old.csv")
    assert int(rows[-1][4]) == DELISTED - 1
    assert rows == expected("OLDUSDT", "1h", "2023-12-20", "2025-03-15", exchange_env.config.now)


def test_range_ending_now_leaves_out_the_open_candle(forge, exchange_env, in_tmp):
    now = exchange_env.config.now
    assert forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1m", "--from", "2025-03-15 06:00",
                 "--to", "now", "-q").code == 0
    [path] = in_tmp.glob("Binance-BTCUSDT-1m-2025-03-15_*.csv")
    _, rows = read(path)
    assert int(rows[-1][4]) < now <= int(rows[-1][4]) + 60_000  # last closed minute, nothing open
    assert rows == expected("BTCUSDT", "1m", "2025-03-15 06:00", str(now), now)


def test_several_symbols_share_one_run_and_one_budget(forge, exchange_env, in_tmp):
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT,ETHUSDT", "--symbol", "SOLUSDT", "-t", "15m",
                   "--from", "2024-02-01", "--to", "2024-02-10", "-q", "--workers", "8")
    assert result.code == 0, result
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        _, rows = read(in_tmp / f"Binance-{symbol}-15m-2024-02-01_2024-02-10.csv")
        assert rows == expected(symbol, "15m", "2024-02-01", "2024-02-10", exchange_env.config.now)
    assert "BTCUSDT 960, ETHUSDT 960, SOLUSDT 960" in result.out


def test_usdm_futures_market(forge, exchange_env, in_tmp):
    result = forge("run", "-s", "binance", "--market", "usdm", "--symbol", "BTCUSDT", "-t", "1h",
                   "--from", "2024-01-01", "--to", "2024-03-01", "--output", "perp.csv", "-q")
    assert result.code == 0, result
    _, rows = read(in_tmp / "perp.csv")
    assert rows == expected("BTCUSDT", "1h", "2024-01-01", "2024-03-01", exchange_env.config.now,
                            Market.binance_usdm())


def test_output_template_and_combined_file(forge, exchange_env, in_tmp):
    assert forge("run", "-s", "binance", "--symbol", "BTCUSDT,ETHUSDT", "-t", "1d", "--from", "2024-01-01",
                 "--to", "2024-01-10", "--output", "{symbol}_{timeframe}.csv", "-q").code == 0
    assert {p.name for p in in_tmp.glob("*.csv")} == {"BTCUSDT_1d.csv", "ETHUSDT_1d.csv"}
    assert forge("run", "-s", "binance", "--symbol", "BTCUSDT,ETHUSDT", "-t", "1d", "--from", "2024-01-01",
                 "--to", "2024-01-10", "--output", "both.csv", "-q").code == 0
    _, rows = read(in_tmp / "both.csv")
    assert [r[1] for r in rows] == ["BTCUSDT"] * 10 + ["ETHUSDT"] * 10


@pytest.mark.parametrize("args,code,message", [
    (["--symbol", "FOOBAR"], 1, "unknown symbol 'FOOBAR' on Binance spot (Binance: Invalid symbol.)"),
    (["--symbol", "btcusdt"], 1, "symbol 'btcusdt' is not valid on Binance spot: use upper case"),
    (["--symbol", "BTCUSDT", "--market", "usdm", "-t", "1s"], 2, "unsupported timeframe '1s': Binance USD-M futures has no 1s klines"),
    (["--symbol", "BTCUSDT", "-t", "1mo"], 2, "unsupported timeframe '1mo' (1M is a month, 1m a minute)"),
    (["--symbol", "BTCUSDT", "--from", "2024-02-30"], 2, "bad from date '2024-02-30'"),
    (["--symbol", "BTCUSDT", "--from", "2024-03-01", "--to", "2024-02-01"], 2,
     "from date '2024-03-01' is after to date '2024-02-01'"),
    (["--symbol", "BTCUSDT", "--from", "2030-01-01", "--to", "2030-02-01"], 2, "is in the future"),
    (["--symbol", "BTCUSDT", "--sink", "s3"], 2, "unknown sink 's3'; installed sinks: csv"),
    (["--symbol", "BTCUSDT", "--table", "x"], 2, "option --table belongs to sink postgres"),
])
def test_bad_input_is_one_clear_line(forge, exchange_env, in_tmp, args, code, message):
    base = ["run", "-s", "binance", "--from", "2024-01-01", "--to", "2024-01-02", "-q"]
    result = forge(*base, *args)
    assert result.code == code, result
    assert message in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert not list(in_tmp.glob("*.csv"))


def test_unknown_source_lists_installed(forge, in_tmp):
    result = forge("run", "-s", "kraken", "--symbol", "X", "--from", "2024-01-01")
    assert result.code == 2 and "unknown source 'kraken'; installed sources: binance" in result.err


def test_plugins_command_lists_distributions(forge):
    result = forge("plugins")
    assert result.code == 0
    assert "source    binance" in result.out and "forge-etl-binance 0.1.0" in result.out
    assert "sink      csv" in result.out
    listed = json.loads(forge("plugins", "--json").out)
    assert {(p["kind"], p["name"]) for p in listed["plugins"]} >= {("source", "binance"), ("sink", "csv")}


def test_run_help_explains_every_option(forge):
    out = forge("run", "--help").out
    for option in ("--source", "--sink", "--symbol", "--timeframe", "--from", "--to", "--workers",
                   "--base-url", "--market", "--output", "inclusive", "Examples:"):
        assert option in out, option


def test_base_url_option_beats_environment(forge, mock, in_tmp, monkeypatch):
    monkeypatch.setenv("FORGE_BINANCE_URL", "http://127.0.0.1:9")  # nothing listens there
    result = forge("run", "-s", "binance", "--base-url", mock.url, "--symbol", "BTCUSDT", "-t", "1d",
                   "--from", "2024-01-01", "--to", "2024-01-05", "-q")
    assert result.code == 0, result


def test_unreachable_exchange_fails_cleanly(forge, in_tmp, monkeypatch):
    monkeypatch.setenv("FORGE_BINANCE_URL", "http://127.0.0.1:9")
    from forge_core import http

    monkeypatch.setattr(http.HttpClient, "get_json", _fast_fail(http.HttpClient.get_json))
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-02")
    assert result.code == 1
    # nothing ever answered there: not retried (issue 16), and the message names the variable
    assert "127.0.0.1:9/api/v3/time: connection refused" in result.err and "Connection refused" in result.err
    assert "not retried (is the host right? the base URL option or FORGE_BINANCE_URL sets it)" in result.err
    assert "Traceback" not in result.err and not list(in_tmp.glob("*.csv"))
    # given as --base-url, not in the environment: it named only the variable, which was not set
    monkeypatch.delenv("FORGE_BINANCE_URL")
    given = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-02",
                  "--base-url", "http://127.0.0.1:9")
    assert given.code == 1 and "the base URL option or FORGE_BINANCE_URL sets it" in given.err, given


def _fast_fail(real):
    def get_json(self, *args, **kw):
        self.max_attempts, self.backoff = 2, 0.01
        return real(self, *args, **kw)

    return get_json


def test_the_console_script_runs_the_main_command(forge_process, mock, tmp_path):
    result = forge_process("run", "--source", "binance", "--sink", "csv", "--symbol", "BTCUSDT",
                           "--timeframe", "1m", "--from", "2024-01-01", "--to", "2024-01-31",
                           env={"FORGE_BINANCE_URL": mock.url}, cwd=tmp_path)
    assert result.code == 0, result
    header, rows = read(tmp_path / "Binance-BTCUSDT-1m-2024-01-01_2024-01-31.csv")
    assert rows == expected("BTCUSDT", "1m", "2024-01-01", "2024-01-31", mock.config.now)
    assert len(rows) == 31 * 1440 - 150
    assert "44490 1m candles from binance" in result.out


# -- the mock speaks Binance's real wire format ------------------------------------------------
def test_mock_klines_have_the_real_field_types(mock):
    import requests

    real = json.loads((FIXTURES / "binance_spot_klines_BTCUSDT_1m_2021-10-22_nautilus.json").read_text())
    ours = requests.get(f"{mock.url}/api/v3/klines",
                        params={"symbol": "BTCUSDT", "interval": "1m", "startTime": 1634943780000, "limit": 10}).json()
    assert len(ours) == len(real) == 10
    for a, b in zip(real, ours, strict=True):
        assert [type(x) for x in a] == [type(x) for x in b]
        assert b[6] - b[0] == a[6] - a[0] == 59_999
        assert all(len(x.split(".")[1]) == 8 for x in b[1:6])


def test_mock_error_bodies_match_the_real_ones(mock):
    import requests

    real = {e["code"]: e["msg"] for e in json.loads((FIXTURES / "binance_error_bodies_from_ccxt_comments.json").read_text())}
    r = requests.get(f"{mock.url}/api/v3/klines", params={"symbol": "NOPEUSDT", "interval": "1m"})
    assert r.status_code == 400 and r.json() == {"code": -1121, "msg": real[-1121]}
    r = requests.get(f"{mock.url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1mo"})
    assert r.status_code == 400 and r.json() == {"code": -1120, "msg": real[-1120]}
    r = requests.get(f"{mock.url}/fapi/v1/klines", params={"symbol": "BTCUSDT", "interval": "1h",
                                                            "startTime": 2, "endTime": 1})
    assert r.json() == {"code": -1023, "msg": real[-1023]}
    assert any(h.lower() == "x-mbx-used-weight-1m" for h in r.headers)


def test_mock_coinm_windows_are_end_anchored_and_at_most_200_days(mock):
    import requests

    t = 1706745600000  # 2024-02-01
    url = f"{mock.url}/dapi/v1/klines"
    rows = requests.get(url, params={"symbol": "BTCUSD_PERP", "interval": "1h", "startTime": t,
                                     "endTime": t + 10 * 3_600_000, "limit": 3}).json()
    assert [r[0] for r in rows] == [t + h * 3_600_000 for h in (8, 9, 10)]
    too_long = requests.get(url, params={"symbol": "BTCUSD_PERP", "interval": "1d", "startTime": t,
                                         "endTime": t + 201 * 86_400_000})
    assert too_long.status_code == 400 and too_long.json()["code"] == -1127
