"""The Binance source's symbol look-ups: one exchangeInfo for every symbol of a run, the
status that says a symbol no longer trades, and its last candle only when klines confirms it."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from forge_binance.source import BinanceSource
from forge_core import SourceError
from forge_core.testing.market import DELISTED
from forge_core.testing.server import MockExchange, Response
from forge_core.timeframes import HOUR, parse_timeframe

H1 = parse_timeframe("1h")


def recorded(mock: MockExchange, path: str, answer=None) -> list[str]:
    """The decoded queries ``path`` gets from now on (``answer(req, real)`` may replace the reply)."""
    real = mock.routes[path]
    seen: list[str] = []

    def route(req):
        seen.append(unquote(req.raw_query))
        return answer(req, real) if answer is not None else real(req)

    mock.routes[path] = route
    return seen


@pytest.fixture
def source(fresh_mock: MockExchange):
    src = BinanceSource(base_url=fresh_mock.url, archive="rest")
    yield src
    src.close()


def test_every_symbol_of_the_run_is_asked_in_one_request(fresh_mock, source):
    asked = recorded(fresh_mock, "/api/v3/exchangeInfo")
    source.prepare_symbols(["BTCUSDT", "OLDUSDT", "ETHUSDT", "BTCUSDT"], H1)
    info = {s: source.prepare(s, H1) for s in ("BTCUSDT", "OLDUSDT", "ETHUSDT")}
    assert asked == ['symbols=["BTCUSDT","OLDUSDT","ETHUSDT"]']
    assert info["BTCUSDT"].ended is None and info["BTCUSDT"].last_open is None
    assert info["OLDUSDT"].ended == "delisted (Binance exchangeInfo status BREAK)"
    assert info["OLDUSDT"].last_open == DELISTED - HOUR


def test_an_unknown_symbol_asks_for_the_whole_list_once_and_is_named_with_a_close_match(fresh_mock, source):
    asked = recorded(fresh_mock, "/api/v3/exchangeInfo")
    source.prepare_symbols(["BTCUSDT", "ETHUSTD"], H1)
    assert asked == ['symbols=["BTCUSDT","ETHUSTD"]', ""]  # -1121 for the pair, then the whole list
    source.prepare("BTCUSDT", H1)
    with pytest.raises(SourceError) as caught:
        source.prepare("ETHUSTD", H1)
    assert str(caught.value) == ("unknown symbol 'ETHUSTD' on Binance spot (Binance: Invalid symbol.); "
                                 "did you mean 'ETHUSDT'? Binance spells pairs like BTCUSDT")
    assert len(asked) == 2


def test_more_than_a_hundred_symbols_are_asked_by_name_a_hundred_at_a_time(fresh_mock, source):
    """The whole spot list is megabytes (it was asked past 100 symbols): 150 take two requests
    by name, weight 20 each. (The docs give no maximum for ``symbols``: 100 is unverified.)"""
    import json

    names = [f"T{i}USDT" for i in range(1, 151)]
    asked = recorded(fresh_mock, "/api/v3/exchangeInfo")
    source.prepare_symbols(names, H1)
    assert asked == ["symbols=" + json.dumps(part, separators=(",", ":")) for part in (names[:100], names[100:])]
    assert source.prepare("T150USDT", H1).first_open is not None and len(asked) == 2


def test_a_malformed_symbol_is_left_to_klines_and_gets_the_right_spelling(fresh_mock, source):
    asked = recorded(fresh_mock, "/api/v3/exchangeInfo")
    source.prepare_symbols(["BTCUSDT", "ethusdt"], H1)
    assert asked == ["symbol=BTCUSDT"]
    with pytest.raises(SourceError, match=r"symbol 'ethusdt' is not valid on Binance spot: use upper case .*"
                                          r"like BTCUSDT$"):
        source.prepare("ethusdt", H1)


def test_a_newest_candle_that_stays_empty_is_not_taken_for_the_end(fresh_mock, source):
    """The status alone is not the confirmation: an empty answer for the newest candle of a
    symbol that has candles (a faulty server) is asked again, then not believed."""

    def empty_newest(req, real):
        if req.arg("startTime") is None and req.arg("endTime") is None:
            return Response.json([])
        return real(req)

    asked = recorded(fresh_mock, "/api/v3/klines", empty_newest)
    info = source.prepare("OLDUSDT", H1)
    assert info.ended is None and info.last_open is None and info.first_open is not None
    assert sum("startTime" not in q for q in asked) == 3


def test_a_newest_candle_empty_once_is_asked_again(fresh_mock, source):
    emptied: list[str] = []

    def empty_once(req, real):
        if req.arg("startTime") is None and not emptied:
            emptied.append(req.raw_query)
            return Response.json([])
        return real(req)

    recorded(fresh_mock, "/api/v3/klines", empty_once)
    info = source.prepare("OLDUSDT", H1)
    assert emptied and info.last_open == DELISTED - HOUR and info.ended is not None


def test_a_pair_in_break_for_hours_is_not_called_delisted(mock_exchange_factory):
    """BREAK also covers a maintenance of a few hours: the tail is the exchange's all the same
    (no market data is made during BREAK), but the word is "not trading" until a day has passed."""
    mock = mock_exchange_factory(now=DELISTED + 3 * HOUR)
    src = BinanceSource(base_url=mock.url, archive="rest")
    try:
        src.server_time()
        info = src.prepare("OLDUSDT", H1)
    finally:
        src.close()
    assert info.last_open == DELISTED - HOUR and info.ended == "not trading (Binance exchangeInfo status BREAK)"


@pytest.mark.parametrize("status", ["HALT", "END_OF_DAY", "SOMETHING_NEW"])
def test_a_pause_of_trading_is_not_the_end_of_the_series(fresh_mock, source, status):
    """HALT ("Market data is still generated during HALT") and END_OF_DAY (spot enums.md) pause
    trading; they do not end it, and neither does a status Forge does not know: nothing is cut at
    the newest candle (a follow would otherwise leave the symbol alone for the rest of its run)."""
    import json

    def paused(req, real):
        answer = real(req)
        body = json.loads(answer.body)
        for entry in body["symbols"]:
            entry["status"] = status
        return Response.json(body)

    recorded(fresh_mock, "/api/v3/exchangeInfo", paused)
    info = source.prepare("BTCUSDT", H1)
    assert info.ended is None and info.last_open is None and info.first_open is not None


@pytest.mark.parametrize("change", [
    lambda b: b["rateLimits"][0].update(intervalNum="x"),
    lambda b: b["rateLimits"][0].pop("limit"),
    lambda b: b["rateLimits"][0].update(limit=0),
    lambda b: b["rateLimits"][0].update(interval=["MINUTE"]),
    lambda b: b.update(rateLimits=5),
    lambda b: b["symbols"].append({"symbol": ["BTCUSDT"], "status": "BREAK"}),
    lambda b: b.update(symbols=7),
])
def test_a_malformed_exchange_info_keeps_the_start_up_limit_and_the_run_going(fresh_mock, source, change):
    """A weight limit that is not positive numbers, or a symbol entry that is not a name, in
    exchangeInfo: the run goes on at the conservative start-up limit (it was a ValueError,
    KeyError or TypeError ending the run)."""
    import json

    def mangled(req, real):
        body = json.loads(real(req).body)
        assert body["rateLimits"][0]["rateLimitType"] == "REQUEST_WEIGHT"
        change(body)
        return Response.json(body)

    recorded(fresh_mock, "/api/v3/exchangeInfo", mangled)
    before = source.limiter.capacity
    source.prepare_symbols(["BTCUSDT"], H1)
    info = source.prepare("BTCUSDT", H1)
    assert info.first_open is not None and info.ended is None
    assert source.limiter.capacity in (before, 6000 * 0.95)  # (the symbol cases keep the real one)


def test_two_empty_answers_are_not_taken_for_a_symbol_without_candles(fresh_mock, source):
    """The first-candle request and the newest-candle request each empty once (a faulty
    server): the newest is asked again, and the symbol ends at its real last candle. It was
    "no candles at all", the whole range skipped and, for verify, the exchange's hole."""
    emptied: set[str] = set()

    def empty_once_each(req, real):
        kind = "first" if req.arg("startTime") is not None else "newest"
        if kind not in emptied:
            emptied.add(kind)
            return Response.json([])
        return real(req)

    recorded(fresh_mock, "/api/v3/klines", empty_once_each)
    info = source.prepare("OLDUSDT", H1)
    assert emptied == {"first", "newest"}
    assert info.last_open == DELISTED - HOUR and info.ended is not None


def test_binances_market_data_host_keeps_the_archive():
    """The 451 line names --base-url https://data-api.binance.vision: Binance's own spot data
    with another host name, so auto still takes the archive's files (it went REST only, a
    year of 1m in ~530 requests instead of 12 files). Another host still turns it off."""
    from forge_binance.source import DATA_API

    for url, mode in ((DATA_API, "auto"), (DATA_API + "/", "auto"), ("https://proxy.example", "rest")):
        src = BinanceSource(base_url=url, market="spot")
        try:
            assert src.archive_mode == mode, url
        finally:
            src.close()


def with_status(mock: MockExchange, path: str, statuses: dict[str, str]) -> list[str]:
    """exchangeInfo on ``path`` says these statuses (``status``, as spot and USD-M spell it)."""
    import json

    def answer(req, real):
        body = json.loads(real(req).body)
        for entry in body["symbols"]:
            entry["status"] = statuses.get(entry["symbol"], entry["status"])
        return Response.json(body)

    return recorded(mock, path, answer)


@pytest.mark.parametrize("status,ended", [("PRE_DELIVERING", None), ("PRE_SETTLE", None),
                                          ("DELIVERING", "not trading (Binance USD-M exchangeInfo status DELIVERING)")])
def test_a_contract_before_its_delivery_still_trades(fresh_mock, status, ended):
    """USD-M PRE_DELIVERING and PRE_SETTLE come before the deliveryDate, while the contract
    still trades: nothing is cut at the newest candle (a follow left it at the candle open
    at its start, for the rest of the run). DELIVERING: its trading is over."""
    with_status(fresh_mock, "/fapi/v1/exchangeInfo", {"BTCUSDT": status})
    src = BinanceSource(base_url=fresh_mock.url, market="usdm", archive="rest")
    try:
        src.server_time()
        info = src.prepare("BTCUSDT", H1)
    finally:
        src.close()
    assert info.ended == ended and info.first_open is not None
    assert (info.last_open is None) == (ended is None)


def test_recheck_asks_exchange_info_again_and_lifts_the_cut_once_the_pair_trades(fresh_mock, source):
    """A pair in BREAK ends at its newest candle; recheck (a follow run's look-up every few
    minutes) asks exchangeInfo again by name and, TRADING again, the cut is gone: the candles
    after it are fetched."""
    from forge_core.testing.market import PAUSE

    m1 = parse_timeframe("1m")
    asked = recorded(fresh_mock, "/api/v3/exchangeInfo")
    source.server_time()  # 10:20:30, in BREAK since 07:00
    info = source.prepare("PAUSEUSDT", m1)
    assert info.ended == "not trading (Binance exchangeInfo status BREAK)" and info.last_open == PAUSE[0] - 60_000
    span = (PAUSE[0] - 120_000, PAUSE[1] + 120_000)
    assert [r[3] for r in source._fetch_rest("PAUSEUSDT", m1, *span)] == [PAUSE[0] - 120_000, PAUSE[0] - 60_000]

    assert source.recheck(["PAUSEUSDT"], m1)["PAUSEUSDT"] == info  # still BREAK
    fresh_mock.config.now = PAUSE[1] + 10 * 60_000 + 30_456  # 10:40:30, trading since 10:30
    again = source.recheck(["PAUSEUSDT"], m1)["PAUSEUSDT"]
    assert asked == ["symbol=PAUSEUSDT"] * 3
    assert again.ended is None and again.first_open == info.first_open
    assert [r[3] for r in source._fetch_rest("PAUSEUSDT", m1, *span)] == [
        PAUSE[0] - 120_000, PAUSE[0] - 60_000, PAUSE[1], PAUSE[1] + 60_000]


def test_recheck_forgets_where_a_walk_found_no_more_candles_once_the_newest_is_past_it(fresh_mock, source):
    """A page walk that found nothing after a candle remembers that end for the run (later
    tasks cost no request); a recheck whose newest candle is past it forgets it: else a follow
    would never ask that series again after a pause began while it was followed."""
    from forge_core.testing.market import PAUSE

    fresh_mock.config.now = PAUSE[0] + HOUR  # in the pause: nothing after 06:00 (1h) for now
    source.server_time()
    source.prepare_symbols(["PAUSEUSDT"], H1)
    source.prepare("PAUSEUSDT", H1)
    source._ends[("PAUSEUSDT", H1.name)] = {"at": PAUSE[0]}  # what the walk's empty tail leaves
    source.recheck(["PAUSEUSDT"], H1)
    assert source._fetch_rest("PAUSEUSDT", H1, PAUSE[0], PAUSE[1] + 2 * HOUR) == []
    fresh_mock.config.now = PAUSE[1] + 2 * HOUR  # trading again: 10:00 and 11:00 (1h) closed
    assert source.recheck(["PAUSEUSDT"], H1)["PAUSEUSDT"].ended is None
    assert [r[3] for r in source._fetch_rest("PAUSEUSDT", H1, PAUSE[0], PAUSE[1] + 90 * 60_000)] == [
        PAUSE[1] - 30 * 60_000, PAUSE[1] + 30 * 60_000]


def test_a_walk_that_meets_a_pause_begun_since_exchange_info_ends_at_the_last_candle(fresh_mock, source, monkeypatch):
    """exchangeInfo said TRADING when the run began (the cut is lifted here to say so), then the
    page walk finds nothing after 06:59: exchangeInfo asked again says BREAK, so the series ends
    at its last candle, as the exchange confirms it."""
    from forge_core import paging
    from forge_core.testing.market import PAUSE

    monkeypatch.setattr(paging, "AFFIRM_BACKOFF", (0.0, 0.01))  # the empty tail believed sooner (7 s otherwise)

    m1 = parse_timeframe("1m")
    source.server_time()  # 10:20:30, in BREAK since 07:00
    source.prepare("PAUSEUSDT", m1)
    del source._stops[("PAUSEUSDT", m1.name)]  # as if it traded at the start
    asked = recorded(fresh_mock, "/api/v3/exchangeInfo")
    span = (PAUSE[0] - 120_000, PAUSE[0] + 30 * 60_000)
    assert [r[3] for r in source._fetch_rest("PAUSEUSDT", m1, *span)] == [PAUSE[0] - 120_000, PAUSE[0] - 60_000]
    assert asked == ["symbol=PAUSEUSDT"] and source._stops[("PAUSEUSDT", m1.name)] == PAUSE[0]


def test_a_trading_pair_answered_empty_for_its_past_is_an_outage_not_the_end_of_its_data():
    """A pair exchangeInfo says trades, whose klines come back empty (every page and every
    probe) for a range long before the exchange's clock: a retryable error naming it, never a
    run that ends there with its tail silently missing; once the answers come back, so do the
    candles (the walk's end of data is not remembered)."""
    from forge_core import RetryableError, paging
    from forge_core.testing.server import MockConfig

    h1, start = parse_timeframe("1h"), 1704067200000
    with MockExchange(MockConfig(faults={"empty": 0.0})) as mock:
        src = BinanceSource(base_url=mock.url, archive="rest")
        try:
            src.server_time()
            src.prepare("BTCUSDT", h1)
            good = src._fetch_rest("BTCUSDT", h1, start, start + 48 * HOUR)
            mock.config.faults["empty"] = 1.0
            asked = recorded(mock, "/api/v3/exchangeInfo")
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(paging, "AFFIRM_BACKOFF", (0.0, 0.01))
                with pytest.raises(RetryableError, match=r"no 1h candle of BTCUSDT from 2024-01-01 00:00:00 UTC on, "
                                                         r"though its exchangeInfo says it trades"):
                    src._fetch_rest("BTCUSDT", h1, start, start + 48 * HOUR)
            assert asked == ["symbol=BTCUSDT"]
            mock.config.faults["empty"] = 0.0
            assert len(good) == 48 and src._fetch_rest("BTCUSDT", h1, start, start + 48 * HOUR) == good
        finally:
            src.close()

