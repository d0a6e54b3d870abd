"""Built-in transforms and user functions, through the CLI and the Python API."""

from __future__ import annotations

from decimal import Decimal

import pytest

from forge_core import Pipeline
from forge_core.errors import UsageError
from forge_core.timeframes import parse_timeframe
from forge_core.times import parse_range
from forge_mock_exchange.expected import binance_rows


def reference_resample(rows, target):
    """Straightforward aggregation of expected 1m rows, for comparison."""
    tf = parse_timeframe(target)
    groups: dict[int, list] = {}
    for r in rows:
        groups.setdefault(tf.floor(r[3]), []).append(r)
    out = []
    for period, g in sorted(groups.items()):
        out.append(("binance", g[0][1], target, period, tf.end_ts(period), g[0][5],
                    str(max(Decimal(r[6]) for r in g)), str(min(Decimal(r[7]) for r in g)), g[-1][8],
                    str(sum(Decimal(r[9]) for r in g)), str(sum(Decimal(r[10]) for r in g)),
                    sum(r[11] for r in g), str(sum(Decimal(r[12]) for r in g)), str(sum(Decimal(r[13]) for r in g))))
    return out


def test_resample_1m_to_1h_is_exact_and_keeps_only_covered_periods(exchange_env, in_tmp):
    from forge_sink_csv import CsvSink  # noqa: F401 (the csv plugin is installed)

    class Collect(list):
        pass

    rows: list = []
    from forge_core import Sink

    class Memory(Sink):
        name = "memory"

        def write(self, batch):
            rows.extend(batch.rows)

    # 00:30 start: the 00:00 hour is only half covered and must not appear
    Pipeline("binance", [Memory()], [("resample", {"resample_to": "1h"})]).run(
        "BTCUSDT", "1m", "2024-01-10 00:30", "2024-01-10 09:59")
    lo, hi = parse_range("2024-01-10 01:00", "2024-01-10 09:59")
    want = reference_resample(binance_rows("BTCUSDT", "1m", lo, hi, exchange_env.config.now), "1h")
    assert rows == want
    assert [r[3] for r in rows][0] == lo and len(rows) == 9 - 2
    # the maintenance hole (03:00-05:30) leaves 03:00 and 04:00 empty; 05:00 has its 30 minutes
    assert lo + 3 * 3_600_000 not in [r[3] for r in rows]


def test_resample_via_cli_and_select_renames(forge, exchange_env, in_tmp):
    from conftest import read_csv

    result = forge("run", "-s", "binance", "--symbol", "ETHUSDT", "-t", "1h", "--from", "2024-02-01",
                   "--to", "2024-02-07", "--transform", "resample", "--resample-to", "1d",
                   "--transform", "select", "--columns", "open_ts,close:price,volume", "-q")
    assert result.code == 0, result
    header, rows = read_csv(in_tmp / "Binance-ETHUSDT-1d-2024-02-01_2024-02-07.csv")  # named by what it holds
    assert header == ["open_ts", "price", "volume"]
    lo, hi = parse_range("2024-02-01", "2024-02-07")
    hourly = binance_rows("ETHUSDT", "1h", lo, hi, exchange_env.config.now)
    daily = reference_resample(hourly, "1d")
    assert rows == [[str(r[3]), r[8], r[9]] for r in daily] and len(rows) == 7


def test_user_function_by_module_path(forge, exchange_env, in_tmp, tmp_path, monkeypatch):
    (tmp_path / "my_indicators.py").write_text(
        "def spread(c):\n    return {**c, 'spread': round(c['high'] - c['low'], 8)}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1d", "--from", "2024-03-01",
                   "--to", "2024-03-03", "--transform", "my_indicators:spread", "-q")
    assert result.code == 0, result
    from conftest import read_csv

    header, rows = read_csv(in_tmp / "Binance-BTCUSDT-1d-2024-03-01_2024-03-03.csv")
    assert header[-1] == "spread" and len(rows) == 3
    assert all(abs(float(r[-1]) - (float(r[6]) - float(r[7]))) < 1e-6 for r in rows)


def test_a_raising_transform_writes_nothing(forge, exchange_env, in_tmp, tmp_path, monkeypatch):
    (tmp_path / "bad_fn.py").write_text("def boom(c):\n    return {**c, 'x': 1 / 0}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1d", "--from", "2024-03-01",
                   "--to", "2024-03-03", "--transform", "bad_fn:boom")
    assert result.code == 1
    assert "transform boom failed on BTCUSDT candle 2024-03-01T00:00:00Z: ZeroDivisionError" in result.err
    assert not list(in_tmp.glob("*.csv"))


@pytest.mark.parametrize("args,message", [
    (["--transform", "nope"], "unknown transform 'nope'; installed transforms: resample, select"),
    (["--transform", "no_such_module:fn"], "cannot load transform 'no_such_module:fn'"),
    (["--transform", "resample"], "the resample transform needs a target timeframe: --resample-to 1h"),
    (["--transform", "resample", "--resample-to", "1m"], "cannot resample 1h candles to 1m"),
    (["--transform", "select", "--columns", "open_ts,nope"], "select: no column 'nope'"),
])
def test_bad_transforms_are_usage_errors(forge, exchange_env, in_tmp, args, message):
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-03-01",
                   "--to", "2024-03-02", "-q", *args)
    assert result.code == 2, result
    assert message in result.err and "Traceback" not in result.err


def test_resample_refuses_finer_target():
    from forge_core.builtin_transforms import Resample

    with pytest.raises(UsageError):
        Resample()


def test_resample_drops_extra_columns_it_cannot_aggregate(forge, exchange_env, in_tmp):
    from conftest import read_csv

    result = forge("run", "-s", "okx", "--symbol", "BTC-USDT", "-t", "1h", "--from", "2024-02-01",
                   "--to", "2024-02-03", "--transform", "resample", "--resample-to", "1d", "-q")
    assert result.code == 0, result
    header, rows = read_csv(in_tmp / "Okx-BTC-USDT-1d-2024-02-01_2024-02-03.csv")
    assert header == ["source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close",
                      "volume", "quote_volume"]
    assert [r[2] for r in rows] == ["1d"] * 3


def test_a_failed_run_leaves_no_empty_part_file(forge, exchange_env, in_tmp):
    assert forge("run", "-s", "binance", "--symbol", "NOSUCHUSDT", "--from", "2024-01-01", "-q").code == 1
    assert not list(in_tmp.iterdir())


def test_console_script_finds_a_transform_module_in_the_current_directory(forge_process, mock, tmp_path):
    (tmp_path / "local_fn.py").write_text("def tag(c):\n    return {**c, 'tag': 'x'}\n")
    result = forge_process("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1d", "--from", "2024-03-01",
                           "--to", "2024-03-02", "--transform", "local_fn:tag", "--output", "o.csv",
                           env={"FORGE_BINANCE_URL": mock.url}, cwd=tmp_path)
    assert result.code == 0, result
    assert (tmp_path / "o.csv").read_text().splitlines()[1].endswith(",x")


def test_resample_writes_plain_decimals_never_exponents():
    from forge_core import Batch
    from forge_core.builtin_transforms import Resample

    cols = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume")
    rows = [("x", "S", "1m", t * 60_000, t * 60_000 + 59_999, "0.00000012", "0.00000012", "0.00000011",
             "0.00000012", "0.00000000") for t in range(60)]
    r = Resample(resample_to="1h")
    r.start_series("S", 0, 3_600_000)
    out = r.apply(Batch("x", "S", "1m", cols, rows)).rows + r.end_series().rows
    assert out == [("x", "S", "1h", 0, 3_599_999, "0.00000012", "0.00000012", "0.00000011", "0.00000012",
                    "0.00000000")]


@pytest.mark.parametrize("source_tf,target", [("1w", "1M"), ("3d", "1M"), ("3d", "1w"), ("1M", "1d")])
def test_resample_refuses_periods_that_do_not_nest(source_tf, target):
    from forge_core import Batch
    from forge_core.builtin_transforms import Resample

    cols = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume")
    with pytest.raises(UsageError, match=f"cannot resample {source_tf} candles to {target}"):
        Resample(resample_to=target).apply(Batch("x", "S", source_tf, cols, [("x", "S", source_tf, 0, 1, "1", "1", "1", "1", "1")]))


def _hour_of(volumes: list[str], price: str = "42000.1") -> tuple:
    from forge_core.builtin_transforms import Resample
    from forge_core.records import CANDLE_COLUMNS, Batch

    rows = [("okx", "X", "1m", i * 60_000, i * 60_000 + 59_999, price, price, price, price, v)
            for i, v in enumerate(volumes)]
    resample = Resample(resample_to="1h")
    resample.start_series("X", 0, 3_600_000)
    resample.apply(Batch("okx", "X", "1m", CANDLE_COLUMNS, rows, "rest"))
    last = resample.end_series()
    assert last is not None
    return last.rows[0]


def test_resample_sums_in_the_sources_number_format():
    """OKX writes decimals without padding zeros: its 1h volume of 0.15 + 0.25 is 0.4, not the
    0.40 a plain Decimal sum prints; Binance pads to 8 decimals, and so does the sum."""
    assert _hour_of(["0.15", "0.25", "100"])[9] == "100.4"
    assert _hour_of(["0.15", "0.85"])[9] == "1"
    assert _hour_of(["0.15000000", "0.25000000"], "42000.10000000")[9] == "0.40000000"


def test_resample_sums_do_not_round_at_28_digits():
    big = "98765432109876543210.12345678"  # 28 digits: the sum has 29, Decimal's default precision 28
    assert _hour_of([big, big])[9] == "197530864219753086420.24691356"


def test_resample_keeps_the_listing_period_of_a_range_from_before_the_listing(exchange_env):
    """NEWUSDT trades from 2024-01-15 08:00: asked from 2024-01-14, its first day is whole (there is
    no candle before the listing to miss), as the exchange's own 1d candle of that day is."""
    from forge_core import Sink

    rows: list = []

    class Memory(Sink):
        name = "memory"

        def write(self, batch):
            rows.extend(batch.rows)

    Pipeline("binance", [Memory()], [("resample", {"resample_to": "1d"})]).run(
        "NEWUSDT", "1m", "2024-01-14", "2024-01-16 23:59")
    lo, hi = parse_range("2024-01-14", "2024-01-16 23:59")
    native = binance_rows("NEWUSDT", "1d", lo, hi, exchange_env.config.now)
    assert [r[3] for r in native] == [1705276800000, 1705363200000]  # 2024-01-15 and -16
    assert rows == native
