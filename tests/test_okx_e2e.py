"""`forge run --source okx` end to end over real HTTP against the mock exchange's OKX endpoints."""

from __future__ import annotations

import pytest

from forge_core.times import parse_range
from forge_mock_exchange.expected import as_csv_lines
from forge_mock_exchange.expected_okx import okx_rows
from forge_mock_exchange.market import MAINTENANCE, NEW_LISTED

HEADER = ["source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume",
          "quote_volume", "vol", "vol_ccy"]


def read(path):
    from conftest import read_csv

    return read_csv(path)


def expected(symbol, tf, start, end, now):
    lo, hi = parse_range(start, end)
    return as_csv_lines(okx_rows(symbol, tf, lo, hi, now))


def run(forge, *args):
    return forge("run", "--source", "okx", "--sink", "csv", "-q", *args)


@pytest.mark.parametrize("tf,start,end", [
    ("1m", "2024-01-09", "2024-01-10"),  # crosses the maintenance hole
    ("15m", "2024-01-01", "2024-01-07"),
    ("1h", "2024-01-01", "2024-06-30"),  # the example
    ("6h", "2023-06-01", "2024-06-30"),
    ("1d", "2017-06-01", "2019-12-31"),  # starts before the listing (2018-01-11)
    ("1w", "2020-01-01", "2024-12-31"),
    ("1M", "2018-01-01", "2025-03-01"),
    ("1s", "2025-03-01 10:00:00", "2025-03-01 10:20:00"),
])
def test_exact_candles_for_each_timeframe(forge, exchange_env, in_tmp, tf, start, end):
    result = run(forge, "--symbol", "BTC-USDT", "--timeframe", tf, "--from", start, "--to", end)
    assert result.code == 0, result
    header, rows = read(in_tmp / f"Okx-BTC-USDT-{tf}-{start[:10]}_{end[:10]}.csv")
    assert header == HEADER
    assert rows == expected("BTC-USDT", tf, start, end, exchange_env.config.now) and len(rows) > 5


def test_daily_and_weekly_bars_open_at_utc_midnight_and_monday(forge, exchange_env, in_tmp):
    for tf in ("1d", "1w"):
        assert run(forge, "--symbol", "ETH-USDT", "-t", tf, "--from", "2024-01-01", "--to", "2024-03-31",
                   "--output", f"{tf}.csv").code == 0
    _, days = read(in_tmp / "1d.csv")
    _, weeks = read(in_tmp / "1w.csv")
    assert len(days) == 91 and {int(r[3]) % 86_400_000 for r in days} == {0}
    assert len(weeks) == 13 and int(weeks[0][3]) == 1704067200000  # Monday 2024-01-01 00:00 UTC


def test_maintenance_hole_is_not_invented_or_filled(forge, exchange_env, in_tmp):
    assert run(forge, "--symbol", "ETH-USDT", "--from", "2024-01-10", "--to", "2024-01-10").code == 0
    _, rows = read(in_tmp / "Okx-ETH-USDT-1m-2024-01-10_2024-01-10.csv")
    opens = [int(r[3]) for r in rows]
    assert len(opens) == 1440 - 150 and opens == sorted(set(opens))
    assert not [t for t in opens if MAINTENANCE[0] <= t < MAINTENANCE[1]]


def test_instrument_listed_mid_range_starts_at_listing(forge, exchange_env, in_tmp):
    assert run(forge, "--symbol", "NEW-USDT", "-t", "1h", "--from", "2023-01-01", "--to", "2024-01-31").code == 0
    _, rows = read(in_tmp / "Okx-NEW-USDT-1h-2023-01-01_2024-01-31.csv")
    assert int(rows[0][3]) == NEW_LISTED
    assert rows == expected("NEW-USDT", "1h", "2023-01-01", "2024-01-31", exchange_env.config.now)


def test_range_ending_now_leaves_out_the_open_bar(forge, exchange_env, in_tmp):
    now = exchange_env.config.now
    before = exchange_env.stats["okx.candles.requests"]
    assert run(forge, "--symbol", "BTC-USDT", "-t", "1m", "--from", "2025-03-14 10:00", "--to", "now").code == 0
    [path] = in_tmp.glob("Okx-BTC-USDT-1m-2025-03-14_*.csv")
    _, rows = read(path)
    assert int(rows[-1][4]) < now <= int(rows[-1][4]) + 60_000
    assert rows == expected("BTC-USDT", "1m", "2025-03-14 10:00", str(now), now)
    assert exchange_env.stats["okx.candles.requests"] > before  # the latest bars come from /candles


@pytest.mark.parametrize("symbol,tf,start,end", [
    ("BTC-USDT-SWAP", "1m", "2024-10-01", "2024-10-02"),  # the example
    ("BTC-USDT-SWAP", "4h", "2019-12-01", "2020-06-30"),  # listed 2019-12-10
    ("BTC-USDT-250328", "1h", "2024-12-01", "2025-03-15"),  # dated futures, up to now
    ("BTC-USDT-240329", "4h", "2023-12-01", "2024-04-30"),  # expired: not in /public/instruments
])
def test_derivatives_report_base_currency_volume(forge, exchange_env, in_tmp, symbol, tf, start, end):
    assert run(forge, "--symbol", symbol, "-t", tf, "--from", start, "--to", end, "--output", "out.csv").code == 0
    _, rows = read(in_tmp / "out.csv")
    assert rows == expected(symbol, tf, start, end, exchange_env.config.now) and len(rows) > 10
    assert all(r[9] == r[12] and r[9] != r[11] for r in rows if r[9] != "0")  # volume = volCcy, not contracts


@pytest.mark.parametrize("args,code,message", [
    (["--symbol", "BTCUSDT"], 1, "unknown instrument 'BTCUSDT' on OKX (OKX 51001: Instrument ID, Instrument ID "
                                 "code, or Spread ID doesn't exist.); did you mean 'BTC-USDT'?"),
    (["--symbol", "BTC-USDT-PERP"], 1, "did you mean 'BTC-USDT-SWAP'?"),
    (["--symbol", "BTC-USDT", "-t", "8h"], 2, "unsupported timeframe '8h'; choose one of: 1s 1m"),
    (["--symbol", "BTC-USDT", "-t", "3d"], 2, "unsupported timeframe '3d'"),
    (["--symbol", "BTC-USDT", "--market", "usdm"], 2, "option --market belongs to source binance"),
])
def test_bad_input_is_one_clear_line(forge, exchange_env, in_tmp, args, code, message):
    result = run(forge, "--from", "2024-01-01", "--to", "2024-01-02", *args)
    assert result.code == code, result
    assert message in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert not list(in_tmp.glob("*.csv"))


def test_okx_bar_names_are_accepted_and_written_as_forge_timeframes(forge, exchange_env, in_tmp):
    """A user coming from OKX types its bar names: 1H is 1h, 1Dutc is 1d (file, rows, summary)."""
    for typed, tf in (("1H", "1h"), ("1Dutc", "1d")):
        result = run(forge, "--symbol", "BTC-USDT", "-t", typed, "--from", "2024-01-01", "--to", "2024-01-03")
        assert result.code == 0, result
        assert f" {tf} candles " in result.out
        _, rows = read(in_tmp / f"Okx-BTC-USDT-{tf}-2024-01-01_2024-01-03.csv")
        assert rows == expected("BTC-USDT", tf, "2024-01-01", "2024-01-03", exchange_env.config.now)


def test_resample_to_takes_the_spellings_of_t(forge, exchange_env, in_tmp):
    """--resample-to 4H with OKX was 'did you mean 4h?', where -t 4H is OKX's bar: the same
    spellings, the same file as --resample-to 4h."""
    for typed in ("4h", "4H"):
        result = run(forge, "--symbol", "BTC-USDT", "-t", "1H", "--from", "2024-01-01", "--to", "2024-01-02",
                     "--transform", "resample", "--resample-to", typed, "--output", f"r{typed}.csv")
        assert result.code == 0, result
        assert result.out.startswith("12 4h candles from okx")
    assert (in_tmp / "r4H.csv").read_bytes() == (in_tmp / "r4h.csv").read_bytes()


@pytest.mark.parametrize("source,args,typed,meant", [
    ("okx", ["--symbol", "BTC-USDT"], "1D", "1d (okx's 1Dutc)"),
    ("binance", ["--symbol", "BTCUSDT"], "4H", "4h"),
])
def test_resample_to_spelled_otherwise_says_what_t_says(forge, exchange_env, in_tmp, source, args, typed, meant):
    result = forge("run", "-s", source, "-q", *args, "-t", "1h", "--from", "2024-01-01", "--to", "2024-01-02",
                   "--transform", "resample", "--resample-to", typed)
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"forge: error: unsupported timeframe {typed!r}; choose one of: ")
    assert lines[0].endswith(f"; did you mean {meant}?")


@pytest.mark.parametrize("source,args,typed,meant", [
    ("okx", ["--symbol", "BTC-USDT"], "1D", "1d (okx's 1Dutc)"),  # OKX's plain 1D opens on Hong Kong time
    ("okx", ["--symbol", "BTC-USDT"], "60m", "1h"),
    ("binance", ["--symbol", "BTCUSDT"], "1H", "1h"),
    ("binance", ["--symbol", "BTCUSDT"], "60m", "1h"),
])
def test_a_timeframe_spelled_otherwise_is_one_line_with_did_you_mean(forge, exchange_env, in_tmp, source, args,
                                                                      typed, meant):
    result = forge("run", "-s", source, "-q", *args, "-t", typed, "--from", "2024-01-01", "--to", "2024-01-02")
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"forge: error: unsupported timeframe {typed!r}; choose one of: ")
    assert f"; did you mean {meant}?" in lines[0]


def test_base_url_option_beats_environment(forge, mock, in_tmp, monkeypatch):
    monkeypatch.setenv("FORGE_OKX_URL", "http://127.0.0.1:9")  # nothing listens there
    result = run(forge, "--base-url", mock.url, "--symbol", "BTC-USDT", "-t", "1d", "--from", "2024-01-01",
                 "--to", "2024-01-05")
    assert result.code == 0, result


def test_rate_limit_burst_is_retried_to_exact_output(forge, fresh_mock, in_tmp, monkeypatch):
    """The IP's budget is smaller than OKX publishes (someone else uses it): 16 workers hit
    50011s, back off, slow down, retry, and the output is still exact."""
    fresh_mock.config.extra["okx_history_rate"] = 6
    monkeypatch.setenv("FORGE_OKX_URL", fresh_mock.url)
    result = run(forge, "--symbol", "BTC-USDT", "-t", "5m", "--from", "2024-02-01", "--to", "2024-02-06",
                 "--workers", "16")
    assert result.code == 0, result
    _, rows = read(in_tmp / "Okx-BTC-USDT-5m-2024-02-01_2024-02-06.csv")
    assert rows == expected("BTC-USDT", "5m", "2024-02-01", "2024-02-06", fresh_mock.config.now)
    assert fresh_mock.stats["okx.429"] > 0 and "retries 0" not in result.out


def test_limiter_keeps_a_legacy_server_free_of_50011(forge, fresh_mock, in_tmp, monkeypatch):
    """A legacy server (100 rows a page) needs three requests per 300-bar task: 16 workers push
    30 history requests (9 x 3, 2 for the last 180 bars, 1 listing probe) through the
    20-per-2-s budget without a single refusal."""
    fresh_mock.config.okx_history_limit = 100
    monkeypatch.setenv("FORGE_OKX_URL", fresh_mock.url)
    result = run(forge, "--symbol", "BTC-USDT", "--from", "2024-03-01", "--to", "2024-03-02", "--workers", "16")
    assert result.code == 0, result
    _, rows = read(in_tmp / "Okx-BTC-USDT-1m-2024-03-01_2024-03-02.csv")
    assert rows == expected("BTC-USDT", "1m", "2024-03-01", "2024-03-02", fresh_mock.config.now)
    assert fresh_mock.stats["okx.history.requests"] == 30 and fresh_mock.stats["okx.50011"] == 0


def test_plugins_command_lists_the_okx_distribution(forge):
    [line] = [x for x in forge("plugins").out.splitlines() if x.split()[:2] == ["source", "okx"]]
    assert "forge-etl-okx 0.1.0" in line


def test_1s_rows_okx_no_longer_keeps_are_never_deleted_by_repair(forge, fresh_exchange_env, in_tmp):
    """OKX keeps 1s bars for a few months (exchange-apis.md C.2): rows stored while it had them
    are, once it has dropped them, extras in an unconfirmed hole, kept even by repair
    --delete-extra. They were 'not at exchange' (the hole before OKX's oldest 1s bar has no
    candle before it, so the source's reason was not attached) and deleted."""
    import json

    mock = fresh_exchange_env
    now = mock.config.now
    mock.config.extra["okx_1s_days"] = 2
    kept = now - 86_400_000 + 1000 - now % 1000  # OKX's oldest 1s bar once it keeps one day
    args = ("--symbol", "BTC-USDT", "-t", "1s", "--from", str(kept - 600_000), "--to", str(kept + 299_999),
            "--output", "s.csv")
    assert run(forge, *args).code == 0
    mock.config.extra["okx_1s_days"] = 1  # a day later, as it were: the first 10 minutes are gone
    res = forge("verify", "-s", "okx", *args, "--json")
    assert res.code == 1, res
    series = json.loads(res.out)["series"][0]
    assert [(e["count"], e["reason"]) for e in series["extra"]] == [(600, "in_unconfirmed_hole")]
    assert [(h["slots"], h["reason"], "OKX keeps 1s" in h["evidence"].get("why", "")) for h in series["holes"]] == [
        (600, "unconfirmed", True)]
    assert forge("repair", "-s", "okx", *args, "--delete-extra").code == 0
    _, rows = read(in_tmp / "s.csv")
    assert len(rows) == 900


def test_resample_to_takes_the_sources_spellings_through_the_api(exchange_env):
    """The Python API took only Forge's 4h where the CLI took OKX's 4H too: a resample built
    by name or as an instance reads the target in the run's source's spellings, and the run's
    identity (its resume key) is that of 4h."""
    from forge_core import Pipeline, Sink
    from forge_core.builtin_transforms import Resample

    class Memory(Sink):
        name = "memory"

        def open(self, run):
            self.run, self.rows = run, []

        def write(self, batch):
            self.rows.extend(batch.rows)

    runs = []
    for resample in (("resample", {"resample_to": "4h"}), ("resample", {"resample_to": "4H"}),
                     Resample(resample_to="4H")):
        sink = Memory()
        Pipeline("okx", [sink], [resample]).run("BTC-USDT", "1H", "2024-01-01", "2024-01-02")
        runs.append((sink.run.transforms, sink.run.output_timeframe, sink.rows))
    assert runs[0][1] == "4h" and len(runs[0][2]) == 12
    assert runs[1] == runs[0] and runs[2] == runs[0]
