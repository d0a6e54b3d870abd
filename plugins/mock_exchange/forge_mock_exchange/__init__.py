"""``forge mock-exchange``: a local exchange for tests, demos and offline work.

The server is Forge's testing kit (:mod:`forge_core.testing`); the routes it serves come from
the installed plugins (entry point group ``forge_etl_mock``: Binance and its archive, OKX,
the Bybit example, ...). This package adds the ``forge mock-exchange`` command and keeps the
old import paths working::

    from forge_mock_exchange import MockExchange
    with MockExchange(latency=0.05) as mock:
        print(mock.url)   # http://127.0.0.1:PORT, for FORGE_BINANCE_URL, FORGE_OKX_URL, ...
"""

from forge_core.testing.market import Market
from forge_core.testing.server import MockConfig, MockExchange

__all__ = ["Market", "MockConfig", "MockExchange"]
