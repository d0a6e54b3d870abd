"""The exact rows a correct OKX backfill of the mock must produce, from the synthetic market
alone (not from the OKX source plugin): Forge's UTC-aligned timeframes, closed bars only,
``volume`` in the base currency whatever the instrument type."""

from __future__ import annotations

from forge_core.timeframes import parse_timeframe

from .market import candle, open_times
from .okx import INSTRUMENTS, okx_row, plain


def okx_rows(inst_id: str, timeframe: str, start: int, end: int, now: int) -> list[tuple]:
    """Closed candles opening in ``[start, end)`` as the OKX source's canonical tuples:
    the ten canonical columns, then ``quote_volume`` (volCcyQuote), ``vol``, ``vol_ccy``."""
    inst = INSTRUMENTS[inst_id]
    tf = parse_timeframe(timeframe)
    rows = []
    for ts in open_times(inst.listing, tf, start, end):
        close = tf.end_ts(ts)
        if close >= now:
            break
        base = plain(candle(inst.listing, tf, ts)[4])
        _, o, h, lo, c, vol, vol_ccy, quote, _ = okx_row(inst, tf, ts, now)
        rows.append(("okx", inst_id, timeframe, ts, close, o, h, lo, c, base, quote, vol, vol_ccy))
    return rows
