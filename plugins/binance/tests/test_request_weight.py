"""Request weight: Binance futures charge by `limit`, so a short range asks for no more."""

from __future__ import annotations

from forge_core import Plugins, Task
from forge_core.testing import MockExchange
from forge_core.timeframes import MINUTE, parse_timeframe


def test_a_usdm_request_for_a_few_candles_costs_weight_1() -> None:
    with MockExchange(routes=["binance"], weight_window=86_400) as mock:  # no window ends mid-test
        source = Plugins().get("source", "binance")(market="usdm", base_url=mock.url, archive="rest")
        source.prepare("BTCUSDT", parse_timeframe("1m"))
        before = dict(mock.state.get("weights.usdm", {"used": 0}))
        start = mock.now() // MINUTE * MINUTE - 40 * MINUTE
        rows = list(source.fetch(Task("BTCUSDT", parse_timeframe("1m"), start, start + 30 * MINUTE)))
        after = mock.state["weights.usdm"]
        source.close()
    assert len(rows) == 30
    assert after["used"] - before.get("used", 0) == 1  # limit=30, not the 499 page (weight 2)
