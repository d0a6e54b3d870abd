"""The OKX source against Forge's source contract (forge_core.testing)."""

from __future__ import annotations

from forge_core.testing import SourceContract
from forge_okx.mock import okx_rows


class TestOkxSpotContract(SourceContract):
    source = "okx"
    symbol, timeframe = "BTC-USDT", "1h"
    start, end = "2023-11-01", "2024-01-31"  # eight pages of 300 newest-first, across the maintenance hole
    unknown_symbol = "NOPE-USDT"

    def expected_rows(self, symbol, timeframe, start, end, now):
        return okx_rows(symbol, timeframe, start, end, now)
