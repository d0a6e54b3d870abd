"""The Binance source against Forge's source contract (forge_core.testing), over REST."""

from __future__ import annotations

from forge_binance.mock import binance_rows
from forge_core.testing import SourceContract


class TestBinanceSpotContract(SourceContract):
    source = "binance"
    symbol, timeframe = "BTCUSDT", "1m"
    start, end = "2024-01-09", "2024-01-11"  # five pages of 1,000, across the maintenance hole
    unknown_symbol = "NOPEUSDT"

    def source_options(self, mock):
        return {"archive": "rest"}  # the archive path has its own tests (tests/test_archive_e2e.py)

    def expected_rows(self, symbol, timeframe, start, end, now):
        return binance_rows(symbol, timeframe, start, end, now)
