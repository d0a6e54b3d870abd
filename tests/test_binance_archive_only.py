"""Binance series that REST cannot give, taken from the archive alone: an expired delivery
contract (gone from exchangeInfo after its delivery, its files kept), and any symbol when REST
refuses this location (HTTP 451) with ``--archive archive``. Their holes are never called the
exchange's: REST could not confirm them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_mock_exchange.expected import binance_csv_lines
from forge_mock_exchange.market import MAINTENANCE, QUARTER_DELIVERED, QUARTER_LISTED, Market

HOUR = 3_600_000
APRIL = 1711929600000  # 2024-04-01 00:00 UTC
CONTRACTS = {"usdm": ("BTCUSDT_240329", Market.binance_usdm(), "USD-M"),
             "coinm": ("BTCUSD_240329", Market.binance_coinm(), "COIN-M")}


@pytest.fixture
def env(fresh_exchange_env, in_tmp):
    return fresh_exchange_env


def rows_of(path):
    from conftest import read_csv

    return read_csv(path)[1]


expected = binance_csv_lines


# -- an expired delivery contract ------------------------------------------------------------------
@pytest.mark.parametrize("archive", ["archive", "auto"])
@pytest.mark.parametrize("market", ["usdm", "coinm"])
def test_an_expired_delivery_contract_comes_from_the_archive_and_ends_at_its_last_candle(forge, env, market,
                                                                                         archive):
    """BTCUSDT_240329 (USD-M) / BTCUSD_240329 (COIN-M) are gone from exchangeInfo since their
    delivery; they were 'unknown symbol'. Now: every candle from the archive, exactly, the end
    named, nothing asked after it, and the maintenance hole unconfirmed (REST answers -1121)."""
    symbol, mkt, where = CONTRACTS[market]
    result = forge("run", "-s", "binance", "--market", market, "--symbol", symbol, "-t", "1h", "--from", "2023-01-01",
                   "--to", "2024-12-31", "--archive", archive, "--output", "q.csv", "--summary-json", "s.json")
    assert result.code == 0, result
    assert rows_of("q.csv") == expected(symbol, "1h", "2023-01-01", "2024-12-31", env.config.now, mkt)
    assert rows_of("q.csv")[0][3] == str(QUARTER_LISTED)
    assert (f"{symbol} delivered 2024-03-29 08:00:00 UTC (an expired Binance {where} delivery contract: gone from "
            "exchangeInfo, its candles from the archive): last candle 2024-03-29 07:00:00 UTC, none after it"
            in result.out)
    assert (f"hole 2024-01-10 03:00..04:59:59 UTC (unconfirmed: Binance {market} REST does not serve the expired "
            "contract)") in result.out
    assert "exchange affirmed empty" not in result.out
    summary = json.loads(Path("s.json").read_text())
    assert summary["ended"][symbol]["last_open"] == QUARTER_DELIVERED - HOUR
    assert env.stats["archive.404"] == 0  # no file after the delivery month is asked for
    assert env.stats[f"binance.{market}.candles"] == 0, dict(env.stats)  # REST was asked once, refused it


def test_an_expired_contract_that_rest_still_serves_has_its_holes_confirmed(forge, env):
    """What REST answers for an expired contract is undocumented; if it gives the archive's
    last candle, it is asked about the archive's gaps like any symbol's."""
    env.config.extra["expired_klines"] = "serve"
    result = forge("run", "-s", "binance", "--market", "usdm", "--symbol", "BTCUSDT_240329", "-t", "1h",
                   "--from", "2024-01-01", "--to", "2024-03-31", "--archive", "archive", "--output", "q.csv")
    assert result.code == 0, result
    assert "hole 2024-01-10 03:00..04:59:59 UTC (exchange affirmed empty: candles on both sides)" in result.out
    assert "BTCUSDT_240329 delivered 2024-03-29 08:00:00 UTC" in result.out  # the end, though REST serves it
    assert rows_of("q.csv") == expected("BTCUSDT_240329", "1h", "2024-01-01", "2024-03-31", env.config.now,
                                        Market.binance_usdm())


def test_an_empty_rest_answer_for_an_expired_contract_confirms_nothing(forge, env):
    """REST answering [] for the contract (one of the possible real answers) is not taken for
    the exchange confirming the archive's holes, nor for a file's candles: no REST at all."""
    env.config.extra["expired_klines"] = "empty"
    result = forge("run", "-s", "binance", "--market", "coinm", "--symbol", "BTCUSD_240329", "-t", "1h",
                   "--from", "2024-01-01", "--to", "2024-03-31", "--output", "q.csv")
    assert result.code == 0, result
    assert "(unconfirmed: Binance coinm REST does not serve the expired contract)" in result.out
    assert env.stats["binance.coinm.requests"] == 3  # time, exchangeInfo, the one question about the last candle


def test_a_missing_file_of_an_expired_contract_is_an_error_not_a_silent_hole(forge, env):
    """--archive auto stands REST in for a missing file; REST does not serve the contract, so
    the run fails naming it instead of leaving the month out."""
    env.config.extra["archive_missing"] = {"BTCUSDT_240329-1h-2024-02.zip"} | {
        f"BTCUSDT_240329-1h-2024-02-{d:02d}.zip" for d in range(1, 30)}
    result = forge("run", "-s", "binance", "--market", "usdm", "--symbol", "BTCUSDT_240329", "-t", "1h",
                   "--from", "2024-01-01", "--to", "2024-03-31", "-q")
    assert result.code == 1, result
    assert "REST does not serve the expired contract BTCUSDT_240329" in result.err, result.err


@pytest.mark.parametrize("symbol,hint", [("BTCUSDT_240328", "did you mean 'BTCUSDT_240329'? "),
                                         ("BTCUSDT_250926", ""), ("ETHUSDT_240329", "")])
def test_a_delivery_name_the_archive_does_not_have_is_still_an_unknown_symbol(forge, env, symbol, hint):
    """Not in exchangeInfo and no archive file (a typo, a contract exchangeInfo does not list
    and not delivered yet): unknown, as before, with no file read; a typo in the date of an
    archived contract is named (one folder listing of the pair's contracts)."""
    result = forge("run", "-s", "binance", "--market", "usdm", "--symbol", symbol, "-t", "1h",
                   "--from", "2024-01-01", "--to", "2024-03-31", "-q")
    assert result.code == 1, result
    assert result.err == (f"forge: error: unknown symbol {symbol!r} on Binance usdm (Binance: Invalid symbol.); "
                          f"{hint}Binance spells pairs like BTCUSDT\n")
    assert env.stats["archive.zip"] == 0


def test_verify_calls_the_tail_after_the_delivery_and_not_the_holes_the_exchanges(forge, env):
    forge("run", "-s", "binance", "--market", "coinm", "--symbol", "BTCUSD_240329", "-t", "1h",
          "--from", "2024-01-01", "--to", "2024-04-30", "--output", "q.csv", "-q")
    result = forge("verify", "-s", "binance", "--market", "coinm", "--symbol", "BTCUSD_240329", "-t", "1h",
                   "--from", "2024-01-01", "--to", "2024-04-30", "--output", "q.csv", "--json")
    assert result.code == 0, result
    holes = json.loads(result.out)["series"][0]["holes"]
    assert [(h["from_ms"], h["reason"]) for h in holes] == [(MAINTENANCE[0], "unconfirmed"),
                                                           (QUARTER_DELIVERED, "after_last_candle"),
                                                           (APRIL, "after_last_candle")]  # one a partition
    assert holes[0]["evidence"]["why"] == "Binance coinm REST does not serve the expired contract"
    text = forge("verify", "-s", "binance", "--market", "coinm", "--symbol", "BTCUSD_240329", "-t", "1h",
                 "--from", "2024-01-01", "--to", "2024-04-30", "--output", "q.csv")
    assert text.out.splitlines()[-1].endswith("; 2 exchange hole(s), 1 unconfirmed: identical"), text.out


# -- REST refused here (HTTP 451) -------------------------------------------------------------------
@pytest.fixture
def geo(mock_exchange_factory, monkeypatch, in_tmp):
    mock = mock_exchange_factory(faults={"geo451": 1.0})
    for name in mock.environment:
        monkeypatch.setenv(name, mock.url)
    return mock


ARCHIVED_TO = "2025-03-14"  # the mock's clock is 2025-03-15 10:20: the newest daily file is the 14th's


def test_a_geo_blocked_archive_run_takes_the_archive_alone(forge, geo):
    """A 451 from api.binance.com stopped --archive archive at its first REST request (the
    clock). Now the archive host's clock, each symbol's range from the archive's listing, one
    warning line, the newest days (not archived) left out, named as a hole, and every hole unconfirmed."""
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT,OLDUSDT", "-t", "1h", "--from", "2024-01-01",
                   "--to", "now", "--archive", "archive", "--output", "{symbol}.csv", "--summary-json", "s.json")
    assert result.code == 0, result
    now = geo.config.now
    assert rows_of("BTCUSDT.csv") == expected("BTCUSDT", "1h", "2024-01-01", ARCHIVED_TO, now)
    assert rows_of("OLDUSDT.csv") == expected("OLDUSDT", "1h", "2024-01-01", ARCHIVED_TO, now)
    assert result.err.count("rest_unreachable") == 1 and result.err.count("[warning") == 2, result.err
    assert "archive_ends_early" in result.err and "last_file=OLDUSDT-1h-2024-01.zip" in result.err  # not BTCUSDT
    assert "the newest days not archived yet" in result.err
    assert "exchange affirmed empty" not in result.out
    # the days not archived yet (the 15th, to now) are an unconfirmed hole too; so is all of
    # OLDUSDT after its last file: REST, which would confirm a delisting, refused this location
    assert ("BTCUSDT 10534 of 10546 slots, holes 2024-01-10 03:00..04:59:59, 2025-03-15 00:00..09:59:59 UTC "
            "(unconfirmed: Binance spot REST refused this location (HTTP 451), the archive's files alone)") in result.out
    assert ("OLDUSDT 526 of 10546 slots, holes 2024-01-10 03:00..04:59:59, 2024-01-23 00:00..2025-03-15 09:59:59 UTC "
            "(unconfirmed: ") in result.out
    assert geo.stats["fault.geo451"] == 1  # the clock's request; REST was not asked again
    unconfirmed = json.loads(Path("s.json").read_text())["unconfirmed"]
    assert unconfirmed == dict.fromkeys(["BTCUSDT", "OLDUSDT"], "Binance spot REST refused this location (HTTP 451), "
                                        "the archive's files alone")


def test_a_geo_blocked_auto_run_goes_on_from_the_archive_saying_what_is_lost(forge, geo):
    """--archive auto under a 451 stopped with a hint to use --archive archive, which then did
    the run. Now auto does it the same way: the same rows, one warning naming what is lost, the
    holes unconfirmed in the summary and --summary-json. --archive rest still stops (it asked
    for REST)."""
    args = ("--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01", "--to", "2024-02-29")
    result = forge("run", "-s", "binance", *args, "--output", "auto.csv", "--summary-json", "s.json")
    assert result.code == 0, result
    assert rows_of("auto.csv") == expected("BTCUSDT", "1h", "2024-01-01", "2024-02-29", geo.config.now)
    assert result.err.count("[warning") == 1 and "rest_unreachable" in result.err, result.err
    assert 'going_on="--archive auto from the archive\'s files alone' in result.err
    assert "the exchange's confirmation of holes: they are reported unconfirmed" in result.err
    assert ("BTCUSDT 1438 of 1440 slots, hole 2024-01-10 03:00..04:59:59 UTC (unconfirmed: Binance spot REST "
            "refused this location (HTTP 451), the archive's files alone)") in result.out
    assert "exchange affirmed empty" not in result.out
    summary = json.loads(Path("s.json").read_text())
    assert summary["unconfirmed"] == {"BTCUSDT": "Binance spot REST refused this location (HTTP 451), the "
                                                 "archive's files alone"}
    assert summary["status"] == "ok"
    assert geo.stats["fault.geo451"] == 1  # the clock's request; REST was not asked again

    refused = forge("run", "-s", "binance", *args, "--archive", "rest", "-q")
    assert refused.code == 1 and len(refused.err.splitlines()) == 1, refused
    assert "HTTP 451" in refused.err and "--archive archive takes the archive's files alone" in refused.err


def test_a_geo_blocked_auto_run_needing_rest_for_a_missing_file_says_so(forge, geo):
    """A file the archive lacks is fetched from REST under auto; REST refused here: one line
    naming the range and both refusals, not the archive-mode advice to use --archive auto."""
    geo.config.extra["archive_missing"] = {"BTCUSDT-1h-2024-02.zip"} | {
        f"BTCUSDT-1h-2024-02-{d:02d}.zip" for d in range(1, 30)}
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01",
                   "--to", "2024-03-31", "-q")
    assert result.code == 1, result
    line = result.err.splitlines()[-1]
    assert line.startswith("forge: error: BTCUSDT 1h 2024-02-01 00:00:00 UTC..") and "is not in the Binance archive, " \
        "and REST refused this location: HTTP 451" in line, result.err
    assert "use --archive auto" not in result.err
    strict = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01",
                   "--to", "2024-03-31", "--archive", "archive", "-q")  # advised --archive auto, refused as well
    assert strict.code == 1 and "use --archive auto" not in strict.err, strict
    assert "cannot come from REST either, which refused this location (HTTP 451" in strict.err.splitlines()[-1]


def test_a_geo_blocked_expired_contract_asks_rest_nothing(forge, geo):
    """Refused here and gone from exchangeInfo: the contract's range and end from the archive
    alone, REST asked once (the clock), not again about the contract."""
    result = forge("run", "-s", "binance", "--market", "usdm", "--symbol", "BTCUSDT_240329", "-t", "1h",
                   "--from", "2024-03-01", "--to", "2024-04-30", "--archive", "archive", "--output", "q.csv")
    assert result.code == 0, result
    assert rows_of("q.csv") == expected("BTCUSDT_240329", "1h", "2024-03-01", "2024-04-30", geo.config.now,
                                        Market.binance_usdm())
    assert "BTCUSDT_240329 delivered 2024-03-29 08:00:00 UTC" in result.out
    assert geo.stats["fault.geo451"] == 1


def test_a_geo_blocked_verify_calls_no_hole_the_exchanges(forge, geo):
    forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01", "--to", "2024-01-31",
          "--archive", "archive", "--output", "b.csv", "-q")
    result = forge("verify", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01",
                   "--to", "2024-01-31", "--archive", "archive", "--output", "b.csv", "--json")
    assert result.code == 0, result
    holes = json.loads(result.out)["series"][0]["holes"]
    assert [(h["from_ms"], h["reason"]) for h in holes] == [(MAINTENANCE[0], "unconfirmed")]


def test_a_geo_blocked_auto_verify_claims_no_hole_and_deletes_no_row_it_cannot_check(forge, geo,
                                                                                    mock_exchange_factory,
                                                                                    monkeypatch):
    """verify under a 451 with --archive auto: the maintenance hole and the days not archived
    yet are both unconfirmed (the tail was 'no later candle at the exchange yet', counted as the
    exchange's); a store row there, loaded where REST answered, is an extra the exchange may
    have: reported, never deleted, even with --delete-extra."""
    args = ("--symbol", "BTCUSDT", "-t", "1h", "--from", "2025-03-01", "--to", "now", "--output", "b.csv")
    free = mock_exchange_factory()  # the same market, REST answering: the store gets the newest hours
    for name in free.environment:
        monkeypatch.setenv(name, free.url)
    assert forge("run", "-s", "binance", *args, "-q").code == 0
    for name in geo.environment:
        monkeypatch.setenv(name, geo.url)
    res = forge("verify", "-s", "binance", *args, "--json")
    assert res.code == 1, res
    series = json.loads(res.out)["series"][0]
    why = "Binance spot REST refused this location (HTTP 451), the archive's files alone"
    assert [(h["from"], h["slots"], h["reason"], h["evidence"].get("why")) for h in series["holes"]] == [
        ("2025-03-15T00:00:00Z", 10, "unconfirmed", why)]  # after the archive's last file, the 14th
    assert series["counts"] == {"missing": 0, "extra": 10, "duplicate": 0, "changed": 0}
    assert [(e["from"], e["count"], e["reason"]) for e in series["extra"]] == [
        ("2025-03-15T00:00:00Z", 10, "in_unconfirmed_hole")]
    summary = json.loads(res.out)["summary"]
    assert (summary["exchange_holes"], summary["unconfirmed_holes"]) == (0, 1)
    text = forge("verify", "-s", "binance", *args)
    assert text.out.splitlines()[-1].endswith("; 0 exchange hole(s), 1 unconfirmed: differences found"), text.out

    repaired = forge("repair", "-s", "binance", *args, "--delete-extra")
    assert repaired.code == 0, repaired
    assert "extra 10: 2025-03-15 00:00 .. 2025-03-15 09:00 (in unconfirmed hole, kept)" in repaired.out
    assert len(rows_of("b.csv")) == 14 * 24 + 10


def test_a_geo_blocked_unknown_symbol_is_one_line(forge, geo):
    result = forge("run", "-s", "binance", "--symbol", "BTCUSTD", "-t", "1h", "--from", "2024-01-01",
                   "--to", "2024-01-31", "--archive", "archive", "-q")
    assert result.code == 1, result
    *warning, line = result.err.splitlines()
    assert line == ("forge: error: BTCUSTD has no 1h files in the Binance archive (" + geo.url + "/) and REST "
                    "refused this location (HTTP 451): check the symbol's spelling"), result.err
    assert len(warning) == 1 and "rest_unreachable" in warning[0]


def test_a_geo_blocked_partitioned_run_is_refused_and_warned_once(forge, geo):
    """Each partition group has its own source: the later ones knew nothing of the 451 and
    asked REST (and warned) again, one line per group."""
    result = forge("run", "--partition", "binance:spot:BTCUSDT:1h:2024-01", "--partition", "binance:spot:ETHUSDT:1h:2024-02",
                   "--partition", "binance:spot:BTCUSDT:1h:2024-03", "--archive", "archive", "--output", "{symbol}.csv")
    assert result.code == 0, result
    assert result.err.count("rest_unreachable") == 1, result.err
    assert geo.stats["fault.geo451"] == 1
    assert rows_of("ETHUSDT.csv") == expected("ETHUSDT", "1h", "2024-02-01", "2024-02-29", geo.config.now)


def test_a_geo_blocked_deep_verify_is_one_line_saying_why(forge, geo):
    forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01", "--to", "2024-01-31",
          "--archive", "archive", "--output", "b.csv", "-q")
    result = forge("verify", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01",
                   "--to", "2024-01-31", "--archive", "archive", "--output", "b.csv", "--deep", "2")
    assert result.code != 0, result
    assert result.err.splitlines()[-1] == (
        "forge: error: --deep compares archive files with REST, which refused this location (HTTP 451): verify "
        "without --deep checks the store against the archive alone"), result.err


def test_an_expired_contract_without_its_delivery_days_file_still_ends_at_its_last_candle(forge, env):
    """The last candle is read from the delivery day's file when the archive lists it; without
    it (a daily file missing, as happens), from the month's file: the last daily file listed
    (the 28th) would end the series 8 candles early, those candles silently left out."""
    env.config.extra["archive_missing"] = {"BTCUSDT_240329-1h-2024-03-29.zip"}
    result = forge("run", "-s", "binance", "--market", "usdm", "--symbol", "BTCUSDT_240329", "-t", "1h",
                   "--from", "2024-03-01", "--to", "2024-04-30", "--archive", "archive", "--output", "q.csv")
    assert result.code == 0, result
    assert "last candle 2024-03-29 07:00:00 UTC, none after it" in result.out
    assert rows_of("q.csv") == expected("BTCUSDT_240329", "1h", "2024-03-01", "2024-04-30", env.config.now,
                                        Market.binance_usdm())


def test_a_geo_blocked_run_names_the_days_not_archived_yet_as_an_unconfirmed_hole(forge, geo):
    """The archive's newest daily file is the 14th's: the 15th up to now cannot be fetched (REST
    refused this location). It was left out of the summary (72 of 72 candles, no hole): now it
    is a hole, said to be unconfirmed, in the summary and --summary-json."""
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2025-03-12", "--to", "now",
                   "--archive", "archive", "--output", "t.csv", "--summary-json", "s.json")
    assert result.code == 0, result
    assert rows_of("t.csv") == expected("BTCUSDT", "1h", "2025-03-12", ARCHIVED_TO, geo.config.now)
    assert ("BTCUSDT 72 of 82 slots, hole 2025-03-15 00:00..09:59:59 UTC (unconfirmed: Binance spot REST refused "
            "this location (HTTP 451), the archive's files alone)") in result.out
    summary = json.loads(Path("s.json").read_text())
    assert summary["holes"] == {"BTCUSDT": [[1741996800000, 1742032800000]]}  # 2025-03-15 00:00 .. 10:00 (open)
    assert "BTCUSDT" in summary["unconfirmed"]
