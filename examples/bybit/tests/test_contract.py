"""The example Bybit source against Forge's source contract (forge_core.testing), served by
the kit's mock exchange with the routes this plugin ships (forge_bybit/mock.py)."""

from __future__ import annotations

from forge_bybit.mock import bybit_rows
from forge_core.testing import SourceContract


class TestBybitContract(SourceContract):
    source = "bybit"
    symbol, timeframe = "BTCUSDT", "1h"
    start, end = "2023-09-01", "2024-02-29"  # five tasks of 1,000 candles, across the maintenance hole
    unknown_symbol = "BTC-USDT"
    mock_routes = ("bybit",)  # only this plugin's routes: what a third party's suite sees

    def expected_rows(self, symbol, timeframe, start, end, now):
        return bybit_rows(symbol, timeframe, start, end, now)
