"""Delisted Binance symbols end at their last candle, as exchangeInfo confirms: no error, no
silent hole, no request after it; a symbol the exchange does not know fails naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_mock_exchange.expected import binance_csv_lines
from forge_mock_exchange.market import DELISTED, Market

LAST_1H = "2024-01-22 23:00:00 UTC"  # OLDUSDT's last 1h candle opens here (it closes at DELISTED)


@pytest.fixture
def env(fresh_exchange_env, in_tmp):
    return fresh_exchange_env


def rows_of(path):
    from conftest import read_csv

    return read_csv(path)[1]


expected = binance_csv_lines


@pytest.mark.parametrize("archive", ["archive", "auto", "rest"])
def test_a_range_past_the_delisting_is_exact_in_every_archive_mode(forge, env, archive):
    """--archive archive used to fail on the first file after the delisting (404: the real
    archive stops there too); every mode now gives the same exact rows and names the end."""
    result = forge("run", "-s", "binance", "--symbol", "OLDUSDT", "-t", "1h", "--from", "2024-01-01",
                   "--to", "2024-03-31", "--archive", archive, "--output", "old.csv")
    assert result.code == 0, result
    assert rows_of("old.csv") == expected("OLDUSDT", "1h", "2024-01-01", "2024-03-31", env.config.now)
    assert (f"OLDUSDT delisted (Binance exchangeInfo status BREAK): last candle {LAST_1H}, none after it"
            in result.out)
    assert "series_ended" in result.err and "not_asked=2024-01-23T00:00:00Z..2024-03-31T23:00:00Z" in result.err
    if archive == "archive":  # January's monthly file, and nothing after it is asked for
        assert env.stats["archive.zip"] == 1 and env.stats["archive.404"] == 0


def test_the_tail_after_the_last_candle_costs_no_request(forge, env):
    """Before, each series re-asked the empty tail for about 7 s before believing it."""
    result = forge("run", "-s", "binance", "--symbol", "OLDUSDT", "-t", "1h", "--from", "2024-01-15",
                   "--to", "2025-03-01", "--archive", "rest", "-q")
    assert result.code == 0, result
    # time, exchangeInfo, the first and the newest candle, one page up to the last candle
    assert env.stats["binance.spot.requests"] == 5
    assert env.stats["binance.spot.candles"] == 2 + 8 * 24
    assert "OLDUSDT 192 of 192 slots" not in result.out  # no hole in the range asked for


def test_a_range_wholly_after_the_delisting_names_it(forge, env):
    result = forge("run", "-s", "binance", "--symbol", "OLDUSDT", "-t", "1d", "--from", "2024-03-01",
                   "--to", "2024-03-31", "--summary-json", "s.json", "--output", "old.csv", "-q")
    assert result.code == 0, result
    assert result.out.startswith("0 1d candles from binance (OLDUSDT 0)")
    assert ("OLDUSDT delisted (Binance exchangeInfo status BREAK): last candle 2024-01-22 00:00:00 UTC, "
            "none after it") in result.out
    summary = json.loads(Path("s.json").read_text())
    ended = summary["ended"]["OLDUSDT"]
    assert ended["last_open"] == DELISTED - 86_400_000 and ended["last_candle"] == "2024-01-22 00:00:00 UTC"
    assert ended["reason"] == "delisted (Binance exchangeInfo status BREAK)"
    assert env.stats["binance.spot.candles"] == 2  # the first and the newest candle: no page at all


def test_every_symbol_is_looked_up_in_one_exchange_info(forge, env):
    """The status of the second symbol counts too (exchangeInfo was asked about the first only)."""
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT,OLDUSDT", "--symbol", "ETHUSDT", "-t", "1d",
                   "--from", "2024-03-01", "--to", "2024-03-10", "--output", "{symbol}.csv", "-q")
    assert result.code == 0, result
    assert env.stats["binance.spot.exchangeInfo"] == 1
    assert "OLDUSDT delisted (Binance exchangeInfo status BREAK)" in result.out
    assert "BTCUSDT 10, OLDUSDT 0, ETHUSDT 10" in result.out
    assert rows_of("ETHUSDT.csv") == expected("ETHUSDT", "1d", "2024-03-01", "2024-03-10", env.config.now)


@pytest.mark.parametrize("market,symbols,bad,close,like", [
    ("spot", "BTCUSDT,OLDUSTD", "OLDUSTD", "OLDUSDT", "BTCUSDT"),
    ("usdm", "ETHUSTD", "ETHUSTD", "ETHUSDT", "BTCUSDT"),
    ("coinm", "BTCUSD_PREP", "BTCUSD_PREP", "BTCUSD_PERP", "BTCUSD_PERP"),
])
def test_an_unknown_symbol_is_one_line_naming_it_and_a_close_match(forge, env, market, symbols, bad, close, like):
    result = forge("run", "-s", "binance", "--market", market, "--symbol", symbols, "-t", "1h",
                   "--from", "2024-03-01", "--to", "2024-03-02", "-q")
    assert result.code == 1, result
    assert result.err == (f"forge: error: unknown symbol {bad!r} on Binance {market} (Binance: Invalid symbol.); "
                          f"did you mean {close!r}? Binance spells pairs like {like}\n")
    assert not list(Path(".").glob("*.csv"))  # nothing was written


@pytest.mark.parametrize("archive", ["archive", "rest"])
def test_a_settled_usdm_perpetual_ends_at_its_last_candle(forge, env, archive):
    """USD-M keeps a delisted perpetual in exchangeInfo with status SETTLING and its deliveryDate
    moved to the delisting time; its archive stops after that month, like spot's."""
    result = forge("run", "-s", "binance", "--market", "usdm", "--symbol", "OLDUSDT", "-t", "1h",
                   "--from", "2024-01-20", "--to", "2024-02-29", "--archive", archive, "--output", "perp.csv", "-q")
    assert result.code == 0, result
    assert rows_of("perp.csv") == expected("OLDUSDT", "1h", "2024-01-20", "2024-02-29", env.config.now,
                                           Market.binance_usdm())
    assert (f"OLDUSDT delisted (Binance USD-M exchangeInfo status SETTLING, deliveryDate 2024-01-23 00:00:00 UTC): "
            f"last candle {LAST_1H}, none after it") in result.out


def test_delisting_month_archive_file_is_served_and_later_ones_are_404(env):
    """The mock archive as the real one around a delisting: the last month is published with
    the candles up to the delisting, every file after it is a 404."""
    import io
    import zipfile

    import requests

    base = f"{env.url}/data/futures/um"
    month = requests.get(f"{base}/monthly/klines/OLDUSDT/1h/OLDUSDT-1h-2024-01.zip", timeout=10)
    assert month.status_code == 200
    with zipfile.ZipFile(io.BytesIO(month.content)) as zf:
        lines = zf.read("OLDUSDT-1h-2024-01.csv").decode().splitlines()
    assert lines[0].startswith("open_time,") and int(lines[-1].split(",")[6]) == DELISTED - 1
    for path in ("monthly/klines/OLDUSDT/1h/OLDUSDT-1h-2024-02.zip", "daily/klines/OLDUSDT/1h/OLDUSDT-1h-2024-01-23.zip",
                 "daily/klines/OLDUSDT/1h/OLDUSDT-1h-2024-01-23.zip.CHECKSUM"):
        assert requests.get(f"{base}/{path}", timeout=10).status_code == 404, path


def test_verify_calls_the_tail_after_the_delisting_the_exchanges(forge, env):
    """Before, verify called it "no later candle at the exchange yet"."""
    assert forge("run", "-s", "binance", "--symbol", "OLDUSDT", "-t", "1h", "--from", "2024-01-01", "--to",
                 "2024-02-29", "--output", "old.csv", "-q").code == 0
    result = forge("verify", "-s", "binance", "--symbol", "OLDUSDT", "-t", "1h", "--from", "2024-01-01",
                   "--to", "2024-02-29", "--output", "old.csv")
    assert result.code == 0, result
    why = "after its last candle 2024-01-22T23:00:00Z: delisted (Binance exchangeInfo status BREAK)"
    assert f"hole 2024-01-23 00:00 .. 2024-01-31 23:00, 216 slots ({why})" in result.out
    assert f"hole 2024-02-01 00:00 .. 2024-02-29 23:00, 696 slots ({why})" in result.out
    assert "missing 0, extra 0, duplicate 0, changed 0" in result.out


def test_mock_futures_exchange_info_speaks_the_real_wire_format(env):
    """USD-M entries have the fields and types of a real answer (status, contractType,
    deliveryDate...), COIN-M those of the docs' example (contractStatus, no status); a delisted
    USD-M perpetual is SETTLING with its deliveryDate at the delisting."""
    import requests

    fixtures = Path(__file__).resolve().parent / "fixtures" / "real"  # real responses; see PROVENANCE.md
    real = json.loads((fixtures / "binance_usdm_exchangeInfo_2022-02-19_trimmed_nautilus.json").read_text())
    ours = requests.get(f"{env.url}/fapi/v1/exchangeInfo", timeout=10).json()
    assert set(ours) == set(real)
    by_name = {s["symbol"]: s for s in ours["symbols"]}
    for mine in by_name.values():
        assert {k: type(v) for k, v in mine.items()} == {k: type(v) for k, v in real["symbols"][0].items()}
    assert by_name["BTCUSDT"]["status"] == "TRADING" and by_name["BTCUSDT"]["deliveryDate"] > 4_000_000_000_000
    old = by_name["OLDUSDT"]
    assert (old["status"], old["contractType"], old["deliveryDate"]) == ("SETTLING", "PERPETUAL", DELISTED)
    cm_real = json.loads((fixtures / "binance_coinm_exchangeInfo_symbol_docs_example.json").read_text())
    [cm] = requests.get(f"{env.url}/dapi/v1/exchangeInfo", timeout=10).json()["symbols"]
    assert {k: type(v) for k, v in cm.items()} == {k: type(v) for k, v in cm_real.items()}
    assert cm["contractStatus"] == "TRADING" and "status" not in cm


def test_follow_backfills_a_delisted_symbol_to_its_last_candle_then_leaves_it(env, tmp_path):
    """It used to be followed like any other, with a lag growing for ever."""
    import threading
    import time

    from forge_core import Pipeline

    follower = Pipeline(("binance", {"base_url": env.url, "archive": "rest"}),
                        [("csv", {"output": str(tmp_path / "{symbol}.csv")})]).follow(
        ["OLDUSDT", "BTCUSDT"], "1h", since="2024-01-22")
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
                len(follower.series) == 2 and follower.series["BTCUSDT"].current
                and follower.series["OLDUSDT"].next_start >= DELISTED):
            time.sleep(0.05)
        old = follower.series["OLDUSDT"]
        assert old.ends_at == DELISTED and old.next_start >= DELISTED
        assert not follower._is_due(old, env.config.now)
    finally:
        follower.stop()
        thread.join(20)
    assert not thread.is_alive()
    assert rows_of(tmp_path / "OLDUSDT.csv") == expected("OLDUSDT", "1h", "2024-01-22", "2024-01-31", env.config.now)
    assert ("OLDUSDT: last committed candle opens 2024-01-22T23:00:00Z; 24 written this run (delisted (Binance "
            "exchangeInfo status BREAK): last candle 2024-01-22T23:00:00Z, not followed past it unless it trades "
            "again)") in follower.result.summary()


def test_a_symbol_listed_but_not_trading_yet(forge, env, tmp_path):
    """Spot lists a pair before it trades (status BREAK, no candle): an error at once, as a range
    before a listing is on every market (it used to re-ask the empty range for 7 s, then it
    was 0 candles and exit 0 where USD-M said exit 1). A USD-M contract not trading yet
    (PENDING_TRADING) has its onboardDate: a range before it is the usual error naming it."""
    spot = forge("run", "-s", "binance", "--symbol", "SOONUSDT", "-t", "1d", "--from", "2025-01-01",
                 "--to", "2025-03-14", "--output", "soon.csv", "-q")
    assert spot.code == 1, spot
    assert spot.err == ("forge: error: Binance spot has no SOONUSDT candles at all, and it is not trading (Binance "
                        "exchangeInfo status BREAK): it has not opened for trading yet, so no range has any (the "
                        "exchange gives no listing date); run it once it trades\n")
    assert not (tmp_path / "soon.csv").exists()
    # exchangeInfo, time, the first candle, the newest three times (an empty answer is asked again)
    assert env.stats["binance.spot.requests"] == 6 and env.stats["binance.spot.candles"] == 0
    perp = forge("run", "-s", "binance", "--market", "usdm", "--symbol", "SOONUSDT", "-t", "1d",
                 "--from", "2025-01-01", "--to", "2025-03-14", "-q")
    assert perp.code == 1, perp
    assert perp.err == ("forge: error: Binance USD-M futures has no SOONUSDT candles before 2025-06-02T00:00:00Z (its first); "
                        "the range ends 2025-03-15T00:00:00Z: choose --to after the listing\n")
