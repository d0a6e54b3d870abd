"""The synthetic market: which symbols exist since when, where the holes are, and the candles.

Every candle is a pure function of ``(symbol, timeframe, open_ts)``, so the mock needs no
storage and tests can compute exactly what an exchange would have served. 1s and 1m candles
are drawn from a hash: consecutive ones chain (a candle's close is the next one's open), roughly
one in 500 has no trades. Coarser ones are, as on an exchange, their 1m candles aggregated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

from forge_core.timeframes import DAY, HOUR, MINUTE, Timeframe

M64 = (1 << 64) - 1
SPOT_LISTED = 1502928000000  # 2017-08-17, Binance's first klines
NEW_LISTED = 1705305600000  # 2024-01-15 08:00 UTC: a symbol listed mid-range
DELISTED = 1705968000000  # 2024-01-23 00:00 UTC: OLDUSDT's last candle closes here; it stays listed, in BREAK
SOON_LISTED = 1748822400000  # 2025-06-02 00:00 UTC: SOONUSDT trades from here (after the frozen clock)
# BTCUSDT_240329 / BTCUSD_240329, quarterly contracts: listed 2023-09-29 08:00 UTC (the
# previous quarterly's delivery), delivered 2024-03-29 08:00 UTC, then gone from exchangeInfo
QUARTER_LISTED = 1695974400000
QUARTER_DELIVERED = 1711699200000
MAINTENANCE = (1704855600000, 1704864600000)  # 2024-01-10 03:00 to 05:30 UTC: no candles
# 2025-03-15 07:00 to 10:30 UTC: PAUSEUSDT in BREAK (no market data), around the frozen test clock
# (10:20:30): exchangeInfo says BREAK until 10:30, then TRADING again, with no candle in between
PAUSE = (1742022000000, 1742034600000)
_TEST_SYMBOL = re.compile(r"^T\d{1,4}USDT$")
__all__ = ["DELISTED", "MAINTENANCE", "NEW_LISTED", "PAUSE", "QUARTER_DELIVERED", "QUARTER_LISTED", "SOON_LISTED", "SPOT_LISTED",
           "Listing", "Market", "candle", "has_candle", "mix",
           "open_times"]


def mix(x: int) -> int:
    """splitmix64: a fast, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


@lru_cache(maxsize=4096)
def _seed(text: str) -> int:
    h = 1469598103934665603
    for ch in text.encode():
        h = ((h ^ ch) * 1099511628211) & M64
    return h


@dataclass(frozen=True)
class Listing:
    symbol: str
    listed: int
    holes: tuple[tuple[int, int], ...] = ()
    base_price: int = 3_000_000  # cents
    # a delisted pair: no candle closes after this; exchangeInfo still lists it, with status BREAK
    delisted: int | None = None
    # spot BREAK for a while, then trading again: no candle inside (as ``holes``) and, while the
    # clock is inside one, exchangeInfo status BREAK ("Market data is not generated during BREAK")
    pauses: tuple[tuple[int, int], ...] = ()
    # the status during them: BREAK, or CANCEL_ONLY ("Market data is still generated on this
    # trading status (except for klines)", binance-spot-api-docs faqs/spot_glossary.md)
    pause_status: str = "BREAK"
    # a delivery contract past its delivery (``delisted``): gone from exchangeInfo, its archive
    # files still served; REST klines answer as ``extra["expired_klines"]`` says (see mock.py)
    expired: bool = False

    @property
    def status(self) -> str:
        return "TRADING" if self.delisted is None else "BREAK"

    def status_at(self, now: int, market: str = "spot") -> str:
        """exchangeInfo's status at ``now``: spot ``BREAK`` before trading starts (a pair
        announced, not open yet) and after a delisting; futures ``PENDING_TRADING`` before
        the listing and, after a delisting, ``SETTLING`` (USD-M) or ``DELIVERED`` (COIN-M); spot
        ``BREAK`` during one of its ``pauses``."""
        if now < self.listed:
            return "BREAK" if market == "spot" else "PENDING_TRADING"
        if self.delisted is not None:
            return {"spot": "BREAK", "usdm": "SETTLING"}.get(market, "DELIVERED")
        if market == "spot" and any(a <= now < b for a, b in self.pauses):
            return self.pause_status
        return "TRADING"


@dataclass
class Market:
    """Symbols by name. ``T<n>USDT`` (e.g. ``T17USDT``) are extra spot symbols for load tests."""

    listings: dict[str, Listing] = field(default_factory=dict)
    test_symbols: bool = True
    source: str = "binance"  # the source column a correct backfill of this market carries

    @classmethod
    def binance_spot(cls) -> Market:
        return cls({
            "BTCUSDT": Listing("BTCUSDT", SPOT_LISTED, (MAINTENANCE,), 4_200_000),
            "ETHUSDT": Listing("ETHUSDT", SPOT_LISTED, (MAINTENANCE,), 250_000),
            "SOLUSDT": Listing("SOLUSDT", 1597125600000, (MAINTENANCE,), 10_000),
            "ADAUSDT": Listing("ADAUSDT", 1523937600000, (MAINTENANCE,), 45),
            "NEWUSDT": Listing("NEWUSDT", NEW_LISTED, (), 150),
            "OLDUSDT": Listing("OLDUSDT", SPOT_LISTED, (MAINTENANCE,), 80_000, delisted=DELISTED),
            "SOONUSDT": Listing("SOONUSDT", SOON_LISTED, (), 500),  # in exchangeInfo before it trades
            "PAUSEUSDT": Listing("PAUSEUSDT", SPOT_LISTED, (MAINTENANCE,), 1_200, pauses=(PAUSE,)),
            # cancel-only over the same hours: no klines, exchangeInfo status CANCEL_ONLY
            "CANCELUSDT": Listing("CANCELUSDT", SPOT_LISTED, (MAINTENANCE,), 900, pauses=(PAUSE,),
                                  pause_status="CANCEL_ONLY"),
        })

    @classmethod
    def binance_usdm(cls) -> Market:
        futures = 1568102400000  # 2019-09-10
        return cls({
            "BTCUSDT": Listing("BTCUSDT", futures, (MAINTENANCE,), 4_200_000),
            "ETHUSDT": Listing("ETHUSDT", 1574812800000, (MAINTENANCE,), 250_000),
            # a perpetual delisted as USD-M ones are: exchangeInfo keeps it, status SETTLING,
            # deliveryDate moved to the delisting time; klines and archive stop there
            "OLDUSDT": Listing("OLDUSDT", futures, (MAINTENANCE,), 80_000, delisted=DELISTED),
            "SOONUSDT": Listing("SOONUSDT", SOON_LISTED, (), 500),  # PENDING_TRADING until its onboardDate
            "BTCUSDT_240329": Listing("BTCUSDT_240329", QUARTER_LISTED, (MAINTENANCE,), 4_300_000,
                                      delisted=QUARTER_DELIVERED, expired=True),
        }, test_symbols=False, source="binance-usdm")

    @classmethod
    def binance_coinm(cls) -> Market:
        return cls({"BTCUSD_PERP": Listing("BTCUSD_PERP", 1597104000000, (MAINTENANCE,), 4_200_000),
                    "BTCUSD_240329": Listing("BTCUSD_240329", QUARTER_LISTED, (MAINTENANCE,), 4_300_000,
                                             delisted=QUARTER_DELIVERED, expired=True)},
                   test_symbols=False, source="binance-coinm")

    def get(self, symbol: str) -> Listing | None:
        listing = self.listings.get(symbol)
        if listing is None and self.test_symbols and _TEST_SYMBOL.match(symbol):
            listing = Listing(symbol, SPOT_LISTED, (MAINTENANCE,), 100_000 + int(symbol[1:-4]) * 100)
        return listing


_1M = Timeframe("1m", MINUTE)


def has_candle(listing: Listing, tf: Timeframe, open_ts: int) -> bool:
    """A candle exists if its period ends after the listing and is not wholly inside a hole."""
    close = tf.next_open(open_ts)
    if close <= listing.listed or (listing.delisted is not None and close > listing.delisted):
        return False
    return not any(a <= open_ts and close <= b for a, b in (*listing.holes, *listing.pauses))


def _price(listing: Listing, ts: int) -> int:
    """The synthetic price in cents at instant ``ts`` (a candle boundary)."""
    wave = 1.0 + 0.25 * math.sin(ts / 86_400_000 / 30.0) + 0.05 * math.sin(ts / 3_600_000 / 7.0)
    noise = (mix(_seed(listing.symbol) ^ ts) % 2001) - 1000  # +-0.1 %
    return max(1, int(listing.base_price * wave * (1 + noise / 1_000_000)))


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}000000"


def _qty(units: int) -> str:
    """A quantity with 8 decimals from an integer number of 1e-8 units."""
    whole, frac = divmod(units, 100_000_000)
    return f"{whole}.{frac:08d}"


Candle = tuple[str, str, str, str, str, str, int, str, str]
Sums = tuple[int, int, int, int, int, int, int, int, int]  # the same in cents / 1e-8 units
PARTIAL = (4_734_000, 287_311_720_000, 7, 2_000_000, 121_388_000_000)
"""The still-open 1s/1m candle's volumes so far (0.04734 BTC, 7 trades: a real one's, A.3)."""


def _own(listing: Listing, name: str, open_ts: int, close_ts: int) -> Sums:
    """A 1s or 1m candle, drawn from its own hash (coarser ones are sums of 1m candles)."""
    h = mix(_seed(listing.symbol + name) ^ open_ts)
    o = _price(listing, open_ts)
    c = _price(listing, close_ts)
    if h % 500 == 0:  # no trades in this period: flat candle at the previous close
        return o, o, o, o, 0, 0, 0, 0, 0
    spread = max(1, max(o, c) * ((h >> 8) % 300) // 100_000)
    hi = max(o, c) + spread
    lo = max(1, min(o, c) - spread * ((h >> 20) % 3) // 2)
    volume = (h >> 24) % 5_000_000_000 + 1_000_000  # 0.01 .. 50 units
    quote = volume * c // 100
    taker = volume * ((h >> 40) % 100) // 100
    return o, hi, lo, c, volume, quote, (h >> 48) % 2000 + 1, taker, taker * c // 100


def _text(s: Sums) -> Candle:
    return (_money(s[0]), _money(s[1]), _money(s[2]), _money(s[3]), _qty(s[4]), _qty(s[5]), s[6],
            _qty(s[7]), _qty(s[8]))


def _join(a: Sums | None, b: Sums | None) -> Sums | None:
    """The candle of two consecutive stretches: ``a``'s open, ``b``'s close, extremes, sums."""
    if a is None or b is None:
        return a or b
    return (a[0], max(a[1], b[1]), min(a[2], b[2]), b[3], a[4] + b[4], a[5] + b[5], a[6] + b[6],
            a[7] + b[7], a[8] + b[8])


def _minutes(listing: Listing, start: int, stop: int) -> Sums | None:
    """The 1m candles opening in ``[start, stop)`` (minute-aligned) aggregated, one by one:
    the reference the bulk path (:mod:`._minutes`) must equal, and the path without numpy."""
    acc = None
    for ts in range(start, stop, MINUTE):
        if has_candle(listing, _1M, ts):
            acc = _join(acc, _own(listing, "1m", ts, ts + MINUTE))
    return acc


@lru_cache(maxsize=1 << 16)
def _span(listing: Listing, start: int, stop: int) -> Sums | None:
    """The 1m candles opening in ``[start, stop)`` aggregated, None if there is none; whole UTC
    days from a per-day cache, the rest from a day's minutes computed at once."""
    try:
        from ._minutes import day_hours, day_part, whole_day
    except ImportError:  # no numpy: one minute at a time (slow for long periods, same values)
        return _minutes(listing, start, stop)
    acc = None
    while start < stop:
        day = start - start % DAY
        upto = min(stop, day + DAY)
        if start == day and upto == day + DAY:
            acc = _join(acc, whole_day(listing, day))
        elif start % HOUR == 0 and upto % HOUR == 0:
            for part in day_hours(listing, day)[(start - day) // HOUR:(upto - day) // HOUR]:
                acc = _join(acc, part)
        else:
            acc = _join(acc, day_part(listing, day, start, upto))
        start = upto
    return acc


def candle(listing: Listing, tf: Timeframe, open_ts: int, now: int | None = None) -> Candle:
    """``(open, high, low, close, volume, quote_volume, trades, taker_base, taker_quote)``.

    A candle coarser than 1m is the exchange's aggregate of the 1m candles in its period that
    exist (holes, the listing and the delisting left out): open of the first, close of the
    last, high/low the extremes, the rest summed. With ``now`` inside the period, the candle
    so far: the open 1m candle with :data:`PARTIAL` volumes, the later minutes not yet."""
    close_ts = tf.next_open(open_ts)
    still_open = now is not None and close_ts > now
    if tf.name in ("1s", "1m"):
        sums = _own(listing, tf.name, open_ts, close_ts)
        return _text((*sums[:4], *PARTIAL) if still_open else sums)  # type: ignore[arg-type]
    if not still_open:
        sums = _span(listing, open_ts, close_ts)
    else:
        assert now is not None
        minute = now - now % MINUTE
        sums = _minutes(listing, minute, minute + MINUTE)  # the open minute, if it has a candle
        if sums is not None:
            sums = (*sums[:4], *PARTIAL)
        sums = _join(_span(listing, open_ts, minute), sums)
    if sums is None:  # no minute of the period has come yet (a listing after now): no trades
        p = _price(listing, open_ts)
        sums = (p, p, p, p, 0, 0, 0, 0, 0)
    return _text(sums)


def open_times(listing: Listing, tf: Timeframe, start: int, end: int) -> list[int]:
    """Open times of the candles that exist in ``[start, end)``."""
    out = []
    ts = tf.ceil(max(start, 0))
    if listing.delisted is not None:
        end = min(end, listing.delisted)
    while ts < end:
        if has_candle(listing, tf, ts):
            out.append(ts)
        ts = tf.next_open(ts)
    return out
