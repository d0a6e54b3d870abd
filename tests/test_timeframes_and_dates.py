from datetime import datetime, timezone

import pytest

from forge_core.errors import UsageError
from forge_core.timeframes import NAMES, parse_timeframe
from forge_core.times import parse_instant, parse_range


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


def test_every_timeframe_floors_and_steps_consistently():
    ts = ms(2024, 2, 29, 13, 47, 12) + 345
    for name in NAMES:
        tf = parse_timeframe(name)
        start = tf.floor(ts)
        assert start <= ts < tf.next_open(start), name
        assert tf.end_ts(start) == tf.next_open(start) - 1
        assert tf.ceil(start) == start and tf.ceil(start + 1) == tf.next_open(start)


def test_week_opens_monday_and_month_is_calendar():
    assert parse_timeframe("1w").floor(ms(2024, 1, 10)) == ms(2024, 1, 8)  # a Monday
    month = parse_timeframe("1M")
    assert month.floor(ms(2024, 2, 29, 23)) == ms(2024, 2, 1)
    assert month.next_open(ms(2024, 12, 1)) == ms(2025, 1, 1)
    assert month.end_ts(ms(2024, 2, 1)) == ms(2024, 3, 1) - 1
    assert month.count(ms(2024, 1, 1), ms(2025, 1, 1)) == 12


def test_counts_half_open_ranges():
    minute = parse_timeframe("1m")
    assert minute.count(ms(2024, 1, 1), ms(2024, 1, 2)) == 1440
    assert minute.count(ms(2024, 1, 1) + 1, ms(2024, 1, 1) + 60_000) == 0
    assert parse_timeframe("1d").count(ms(2024, 1, 1), ms(2025, 1, 1)) == 366


@pytest.mark.parametrize("bad", ["1mo", "1H", "2d", "", "60"])
def test_unsupported_timeframe_names_the_choices(bad):
    with pytest.raises(UsageError, match="choose one of: 1s 1m"):
        parse_timeframe(bad)


def test_timeframe_narrowed_to_an_exchange():
    with pytest.raises(UsageError, match="unsupported timeframe '1s'"):
        parse_timeframe("1s", ("1m", "1h"))


@pytest.mark.parametrize("typed,meant", [
    ("1H", "1h"), ("4H", "4h"), ("1D", "1d"), ("1W", "1w"), ("60m", "1h"), ("1hr", "1h"), ("1hour", "1h"),
    ("240m", "4h"), ("24h", "1d"), ("7d", "1w"), ("1min", "1m"), ("1day", "1d"), ("1month", "1M"),
    ("1m ", "1m"), ("5M", "5m (m is a minute, M a month)"),
])
def test_another_spelling_of_a_timeframe_gets_did_you_mean(typed, meant):
    with pytest.raises(UsageError) as caught:
        parse_timeframe(typed)
    text = str(caught.value)
    assert text.startswith(f"unsupported timeframe {typed!r}") and "choose one of: 1s 1m" in text
    assert text.endswith(f"; did you mean {meant}?")


def test_a_period_the_exchange_lacks_points_to_resample():
    with pytest.raises(UsageError) as caught:
        parse_timeframe("8h", ("1m", "1h", "4h", "1d"))
    assert str(caught.value).endswith("; or fetch 4h and add --transform resample --resample-to 8h")


def test_an_exchange_alias_is_its_forge_timeframe_and_the_hint_names_the_exchange_bar():
    aliases = {"1H": "1h", "1Dutc": "1d"}
    tf = parse_timeframe("1H", ("1m", "1h", "1d"), aliases)
    assert tf.name == "1h" and tf.ms == 3_600_000
    with pytest.raises(UsageError) as caught:
        parse_timeframe("1D", ("1m", "1h", "1d"), aliases, source="okx")
    assert str(caught.value).endswith("; did you mean 1d (okx's 1Dutc)?")


def test_date_spellings_all_mean_utc():
    assert parse_instant("2024-01-01") == (ms(2024, 1, 1), True)
    assert parse_instant("2024-01-01 12:00:00")[0] == ms(2024, 1, 1, 12)
    assert parse_instant("2024-01-01T12:00:00+02:00")[0] == ms(2024, 1, 1, 10)
    assert parse_instant("2024-01-01T12:00:00Z")[0] == ms(2024, 1, 1, 12)
    assert parse_instant("1704067200000")[0] == ms(2024, 1, 1)
    assert parse_instant("now", now=123)[0] == 123


def test_to_date_is_inclusive_of_the_whole_day():
    start, end = parse_range("2024-10-01", "2024-10-31")
    assert (start, end) == (ms(2024, 10, 1), ms(2024, 11, 1))
    start, end = parse_range("2024-01-01", "2024-01-01 12:00:00")
    assert end == ms(2024, 1, 1, 12) + 1


@pytest.mark.parametrize("bad,match", [
    ("2024-13-01", "bad from date '2024-13-01'"),
    ("yesterday", "bad from date 'yesterday'"),
    ("1704067200", "epoch seconds"),
])
def test_bad_dates_say_what_is_accepted(bad, match):
    with pytest.raises(UsageError, match=match):
        parse_range(bad, "2024-02-01")


def test_from_after_to_is_refused():
    with pytest.raises(UsageError, match="from date '2024-02-01' is after to date '2024-01-01'"):
        parse_range("2024-02-01", "2024-01-01")


def test_results_do_not_depend_on_local_time_zone(monkeypatch):
    import time

    before = parse_range("2024-03-10", "2024-03-10 08:00")
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_range("2024-03-10", "2024-03-10 08:00") == before
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_to_date_after_the_exchanges_now_names_the_file_by_that_now(forge, exchange_env, in_tmp):
    """--to 2030-01-01 fetched up to the exchange's now but named the file ..._2030-01-01.csv,
    days it does not hold; now it is named as --to now names it."""
    result = forge("run", "-q", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1d", "--from", "2025-03-10",
                   "--to", "2030-01-01")
    assert result.code == 0, result
    assert [p.name for p in in_tmp.iterdir()] == ["Binance-BTCUSDT-1d-2025-03-10_2025-03-15.csv"]
    assert len((in_tmp / "Binance-BTCUSDT-1d-2025-03-10_2025-03-15.csv").read_text().splitlines()) == 1 + 5
