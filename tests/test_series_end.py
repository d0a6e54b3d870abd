"""The run loop and ``SymbolInfo.ended``: a series the exchange confirms has ended is fetched up
to its last candle, nothing after it is asked for, and the summary says why."""

from __future__ import annotations

import pytest
from test_pipeline import NOW, T0, FakeSource, MemorySink, row

from forge_core import Pipeline, Plugins, SourceError, SymbolInfo
from forge_core.timeframes import MINUTE

LAST = T0 + 3 * 1440 * MINUTE + 59 * MINUTE  # 2024-01-04 00:59


class EndingSource(FakeSource):
    """``GONE`` stopped trading after ``LAST`` (``NEVER``: without a candle); others trade."""

    def __init__(self) -> None:
        super().__init__()
        self.told: list[list[str]] = []

    def prepare_symbols(self, symbols, timeframe):
        self.told.append(list(symbols))

    def prepare(self, symbol, timeframe):
        assert self.told, "prepare_symbols comes first"
        if symbol == "GONE":
            return SymbolInfo(symbol, T0 - 1440 * MINUTE, LAST, "delisted (fake status BREAK)")
        if symbol == "NEVER":
            return SymbolInfo(symbol, None, None, "not trading (fake status BREAK)")
        return SymbolInfo(symbol)


def run(symbols, start, end):
    source, sink = EndingSource(), MemorySink()
    result = Pipeline(source, [sink], plugins=Plugins(entry_points=False)).run(symbols, "1m", start, end)
    return source, sink, result


def test_a_series_ends_at_its_confirmed_last_candle_and_the_summary_says_why():
    source, sink, result = run("A,GONE", "2024-01-01", "2024-01-06")
    assert source.told == [["A", "GONE"]]
    gone = [r for r in sink.rows if r[1] == "GONE"]
    assert gone == [row("GONE", ts) for ts in range(T0, LAST + 1, MINUTE)]
    assert max(t.end for t in source.fetched if t.symbol == "GONE") == LAST + MINUTE
    assert result.rows["A"] == 6 * 1440 and result.slots["GONE"] == len(gone)
    assert result.ended == {
        "GONE": {"reason": "delisted (fake status BREAK)", "last_open": LAST,
                 "skipped": [LAST + MINUTE, T0 + 6 * 1440 * MINUTE]}}
    assert result.summary().endswith(
        "; GONE delisted (fake status BREAK): last candle 2024-01-04 00:59:00 UTC, none after it")


def test_a_series_not_trading_without_any_candle_is_an_error_as_a_range_before_a_listing_is():
    """No candle at all and not trading (Binance spot lists a pair before it opens, in BREAK):
    no range has any candle, as a range before a listing has none, so it is that error, before
    any candle is asked for. It was 0 candles, exit 0, where a listing date gave exit 1."""
    source, sink = EndingSource(), MemorySink()
    with pytest.raises(SourceError) as caught:
        Pipeline(source, [sink], plugins=Plugins(entry_points=False)).run("A,NEVER", "1m", "2024-01-01", "2024-01-06")
    assert str(caught.value) == ("fake has no NEVER candles at all, and it is not trading (fake status BREAK): it has "
                                 "not opened for trading yet, so no range has any (the exchange gives no listing "
                                 "date); run it once it trades")
    assert not source.fetched and not sink.rows


def test_a_range_wholly_after_the_end_asks_nothing_and_a_range_before_it_says_nothing():
    source, sink, result = run("GONE", "2024-01-05", "2024-01-06")
    assert not source.fetched and not sink.rows and result.rows == {"GONE": 0}
    assert result.ended["GONE"]["skipped"] == [T0 + 4 * 1440 * MINUTE, T0 + 6 * 1440 * MINUTE]
    assert "GONE delisted (fake status BREAK)" in result.summary()
    _, sink, result = run("GONE", "2024-01-01", "2024-01-02")  # ends before the last candle
    assert len(sink.rows) == 2 * 1440 and not result.ended and "delisted" not in result.summary()
    assert NOW > LAST
