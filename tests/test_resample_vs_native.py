"""Forge's ``--resample-to`` from 1m against the candles the mock exchange serves natively, the
mock's coarser candles being the exchange's aggregate of its 1m ones: both CSV files, column by
column, the exact strings."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import read_csv

CASES = [
    # the maintenance hole 2024-01-10 03:00-05:30: two hours without a candle, 05:00 from 30 minutes
    ("binance", "spot", "BTCUSDT", "1h", "2024-01-09", "2024-01-11"),
    # NEWUSDT trades from 2024-01-15 08:00: its first 1d candle is 16 hours of 1m candles
    ("binance", "spot", "NEWUSDT", "1d", "2024-01-12", "2024-02-10"),
    ("binance", "spot", "ETHUSDT", "1d", "2024-01-01", "2024-01-31"),  # the hole inside a day
    ("binance", "spot", "BTCUSDT", "1h", "2025-03-14", "now"),  # ends now: the open hour is left out
    ("binance", "usdm", "BTCUSDT", "4h", "2024-01-08", "2024-01-12"),
    ("binance", "spot", "BTCUSDT", "1w", "2024-01-01", "2024-01-28"),  # Monday to Sunday, 4 weeks
    ("binance", "spot", "ADAUSDT", "1M", "2024-02-01", "2024-02-29"),  # a calendar month, leap February
    ("binance", "coinm", "BTCUSD_PERP", "1d", "2024-01-01", "2024-01-20"),
    ("okx", "", "BTC-USDT", "1h", "2024-01-09", "2024-01-11"),
    ("okx", "", "BTC-USDT-SWAP", "1d", "2024-01-09", "2024-01-11"),  # OKX's UTC day (1Dutc), the hole
]


def _run(forge, source: str, market: str, symbol: str, *args: str) -> tuple[list[str], list[list[str]]]:
    extra = ("--market", market) if market else ()
    result = forge("run", "-s", source, *extra, "--symbol", symbol, "-q", "--output", "out.csv", *args)
    assert result.code == 0, result
    out = Path("out.csv")
    try:
        return read_csv(out)
    finally:
        out.unlink()


@pytest.mark.parametrize("source,market,symbol,target,start,end", CASES)
def test_resampled_1m_equals_the_native_candles(forge, exchange_env, in_tmp, source, market, symbol,
                                                target, start, end):
    span = ("--from", start, "--to", end)
    header, resampled = _run(forge, source, market, symbol, "-t", "1m", *span, "--transform", "resample",
                             "--resample-to", target)
    native_header, native = _run(forge, source, market, symbol, "-t", target, *span)
    assert resampled and len(resampled) == len(native)
    for column in header:  # resample drops the columns it cannot add up (OKX's vol, vol_ccy)
        i, j = header.index(column), native_header.index(column)
        assert [r[i] for r in resampled] == [r[j] for r in native], column
