"""The exact rows a correct backfill of the mock must produce, computed from the synthetic
market alone (not from any source plugin), for tests of Forge and of third-party plugins."""

from __future__ import annotations

from forge_core.timeframes import parse_timeframe

from .market import Market, candle, open_times


def binance_rows(symbol: str, timeframe: str, start: int, end: int, now: int,
                 market: Market | None = None) -> list[tuple]:
    """Closed candles opening in ``[start, end)`` as the Binance source's canonical tuples."""
    market = market or Market.binance_spot()
    listing = market.get(symbol)
    assert listing is not None, symbol
    tf = parse_timeframe(timeframe)
    rows = []
    for ts in open_times(listing, tf, start, end):
        close = tf.end_ts(ts)
        if close >= now:
            break
        o, h, lo, c, v, qv, n, tb, tq = candle(listing, tf, ts)
        rows.append((market.source, symbol, timeframe, ts, close, o, h, lo, c, v, qv, n, tb, tq))
    return rows


def as_csv_lines(rows: list[tuple]) -> list[list[str]]:
    return [[str(x) for x in row] for row in rows]
