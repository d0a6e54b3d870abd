"""A mock of exchange market-data APIs on 127.0.0.1, serving deterministic synthetic candles.

Start it with ``forge mock-exchange --port 8000`` or from Python::

    from forge_mock_exchange import MockExchange
    with MockExchange(latency=0.05) as mock:
        print(mock.url)   # http://127.0.0.1:PORT, for FORGE_BINANCE_URL, FORGE_OKX_URL, ...

Tests compute the exact expected output with :func:`forge_mock_exchange.market.expected_rows`.
"""

from .market import Market
from .server import MockConfig, MockExchange

__all__ = ["Market", "MockConfig", "MockExchange"]
