"""What a run waits for before its first row: requests that do not depend on each other are
asked at once (each round trip to a real exchange is 50-300 ms)."""

from __future__ import annotations

import threading
from urllib.parse import unquote

from forge_binance.source import BinanceSource
from forge_core.testing.server import MockExchange
from forge_core.timeframes import parse_timeframe

H1 = parse_timeframe("1h")


def held_until(mock: MockExchange, path: str, event: threading.Event) -> list[str]:
    """``path`` answers only once ``event`` is set (or after 5 s); the queries it got."""
    real = mock.routes[path]
    seen: list[str] = []

    def route(req):
        seen.append(unquote(req.raw_query))
        event.wait(5)
        return real(req)

    mock.routes[path] = route
    return seen


def test_first_candle_probes_are_asked_while_exchange_info_answers_once_each(fresh_mock):
    """Every first-candle probe (klines from time 0) is asked while exchangeInfo is still
    answering, once, and prepare uses it."""
    source = BinanceSource(base_url=fresh_mock.url, archive="rest")
    symbols = ["BTCUSDT", "ETHUSDT", "OLDUSDT"]
    arrived = threading.Event()
    probes: list[str] = []
    klines = fresh_mock.routes["/api/v3/klines"]

    def probe(req):
        probes.append(unquote(req.raw_query))
        if sum("startTime=0&" in q for q in probes) == len(symbols):
            arrived.set()
        return klines(req)

    fresh_mock.routes["/api/v3/klines"] = probe
    info = held_until(fresh_mock, "/api/v3/exchangeInfo", arrived)
    try:
        source.prepare_symbols(symbols, H1)
        assert arrived.is_set()  # the three probes came while exchangeInfo was held
        firsts = {s: source.prepare(s, H1).first_open for s in symbols}
    finally:
        source.close()
    assert all(isinstance(first, int) for first in firsts.values())
    assert sorted(q.split("&")[0] for q in probes if "startTime=0&" in q) == sorted(f"symbol={s}" for s in symbols)
    assert len(info) == 1

