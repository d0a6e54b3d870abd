"""A pair paused by a maintenance (Binance spot BREAK, its last candle recent) is not abandoned
by a follow run: its status is asked again every ``recheck`` seconds and, once it trades again,
the series goes on from after its last candle, without a gap or a duplicate. A real delisting
stays where it ended."""

from __future__ import annotations

import threading

import pytest

from conftest import follow_until_ended, wait_for
from forge_core import Pipeline
from forge_core.testing.market import PAUSE
from forge_mock_exchange.expected import as_csv_lines, binance_rows

MINUTE = 60_000
SINCE = PAUSE[0] - 30 * MINUTE  # 06:30, half an hour before the pause



def rows_of(path):
    from conftest import read_csv

    return read_csv(path)[1]



def clock_at_recheck(follower, mock, *times: int) -> list[list[int]]:
    """The mock's clock set to the next of ``times`` as each recheck starts (none meanwhile:
    a look-up half before, half after the change would see a status and candles of two times);
    the symbols of each recheck."""
    real, todo, asked = follower.source.recheck, list(times), []

    def recheck(symbols, timeframe):
        if todo:
            mock.config.now = todo.pop(0)
        asked.append(list(symbols))
        return real(symbols, timeframe)

    follower.source.recheck = recheck
    return asked


def pages_asked(mock) -> list[int]:
    """The startTime of every klines page PAUSEUSDT gets from now on."""
    real, seen = mock.routes["/api/v3/klines"], []

    def route(req):
        if req.arg("symbol") == "PAUSEUSDT" and req.arg("startTime") is not None:
            seen.append(int(req.arg("startTime")))
        return real(req)

    mock.routes["/api/v3/klines"] = route
    return seen


@pytest.fixture
def follow(fresh_mock, tmp_path):
    """A follow run of PAUSEUSDT and OLDUSDT (1m) in a thread, the mock's clock re-read every
    0.1 s (it is frozen, and moved by the tests)."""
    started: list = []

    def start(*times: int, **options):
        follower = Pipeline(("binance", {"base_url": fresh_mock.url, "archive": "rest"}),
                            [("csv", {"output": str(tmp_path / "{symbol}.csv")})]).follow(
            ["PAUSEUSDT", "OLDUSDT"], "1m", since=SINCE, resync=0.1, **options)
        asked = clock_at_recheck(follower, fresh_mock, *times)
        thread = threading.Thread(target=follower.run, daemon=True)
        thread.start()
        started.append((follower, thread))
        return follower, asked

    yield start
    for follower, thread in started:
        follower.stop()
        thread.join(20)
        assert not thread.is_alive()


def test_a_paused_pair_is_followed_again_when_it_trades_again(fresh_mock, follow, tmp_path):
    """In BREAK at the start (10:20:30, last candle 06:59): left at its last candle, its status
    asked again, followed again once it trades (10:40:30)."""
    pages = pages_asked(fresh_mock)
    real_info, info = fresh_mock.routes["/api/v3/exchangeInfo"], []
    fresh_mock.routes["/api/v3/exchangeInfo"] = lambda req: info.append(req.arg("symbols")) or real_info(req)
    trading = PAUSE[1] + 10 * MINUTE + 30_456
    follower, asked = follow(fresh_mock.config.now, fresh_mock.config.now, trading, recheck=0.2)
    assert wait_for(lambda: len(asked) >= 2)
    assert info[0] == '["PAUSEUSDT","OLDUSDT"]'  # the start: one exchangeInfo for both, as a bounded run
    paused = follower.series["PAUSEUSDT"]
    assert paused.ended == "not trading (Binance exchangeInfo status BREAK)"
    assert paused.last_candle == PAUSE[0] - MINUTE and paused.next_start == PAUSE[0]
    assert asked[0] == ["PAUSEUSDT", "OLDUSDT"]  # one look-up for both
    assert not [t for t in pages if t >= PAUSE[0]]  # nothing asked past the last candle meanwhile

    assert wait_for(lambda: paused.last_open == PAUSE[1] + 9 * MINUTE)
    assert paused.ended is None and paused.ends_at is None
    seen = len(asked)
    assert wait_for(lambda: len(asked) > seen + 1)
    assert asked[-1] == ["OLDUSDT"]  # current again: no longer asked about
    follower.stop()
    assert rows_of(tmp_path / "PAUSEUSDT.csv") == as_csv_lines(
        binance_rows("PAUSEUSDT", "1m", SINCE, PAUSE[1] + 10 * MINUTE, trading))
    old = follower.series["OLDUSDT"]  # delisted a year before: still ended, nothing asked past it
    assert old.ended == "delisted (Binance exchangeInfo status BREAK)" and old.last_open is None


def test_a_pause_that_begins_while_following_ends_the_series_until_it_trades_again(fresh_mock, follow, tmp_path,
                                                                                   monkeypatch):
    """Trading at the start (06:50:30), in BREAK from 07:00: the series lags (no candle after
    06:59), so its status is asked again; BREAK ends it at its last candle (no kline page, no
    lag warning after that), TRADING (10:35:30) resumes it. Before, the walk that found no
    candle after 06:59 was remembered as the end of its data for the rest of the run."""
    from forge_core import paging

    monkeypatch.setattr(paging, "AFFIRM_BACKOFF", (0.0, 0.01))  # the empty tail believed sooner (7 s otherwise)
    fresh_mock.config.now = PAUSE[0] - 10 * MINUTE + 30_456
    in_break = PAUSE[0] + 60 * MINUTE + 30_456
    trading = PAUSE[1] + 5 * MINUTE + 30_456
    follower, asked = follow(recheck=0.2, lag_warning=1.0)
    assert wait_for(lambda: "PAUSEUSDT" in follower.series and follower.series["PAUSEUSDT"].current)
    paused = follower.series["PAUSEUSDT"]
    assert paused.ended is None
    fresh_mock.config.now = in_break
    assert wait_for(lambda: paused.ended is not None)
    assert paused.ended == "not trading (Binance exchangeInfo status BREAK)"
    assert paused.last_candle == PAUSE[0] - MINUTE and paused.next_start == PAUSE[0]
    pages = pages_asked(fresh_mock)
    seen = len(asked)
    assert wait_for(lambda: len(asked) >= seen + 2)
    assert pages == [] and not paused.lagging

    clock_at_recheck(follower, fresh_mock, trading)
    assert wait_for(lambda: paused.last_open == PAUSE[1] + 4 * MINUTE)
    assert paused.ended is None
    follower.stop()
    assert rows_of(tmp_path / "PAUSEUSDT.csv") == as_csv_lines(
        binance_rows("PAUSEUSDT", "1m", SINCE, PAUSE[1] + 5 * MINUTE, trading))
    assert follower.result.outages == 0  # resumed without first taking the empty walk for an outage


def test_a_pair_answered_empty_while_trading_holds_back_no_other_series(fresh_mock, tmp_path, monkeypatch):
    """ETHUSDT's klines come back empty while exchangeInfo says it trades (the source calls that
    a failure, not the end of its data): BTCUSDT is followed meanwhile, ETHUSDT asked again each
    pass, and once its answers come back it catches up without a gap or a duplicate."""
    from forge_core import paging

    monkeypatch.setattr(paging, "AFFIRM_BACKOFF", (0.0, 0.01))
    now = fresh_mock.config.now
    since = now - 30 * MINUTE
    real, broken = fresh_mock.routes["/api/v3/klines"], threading.Event()
    broken.set()

    def route(req):  # every page and probe of ETHUSDT in the followed range: []
        response = real(req)
        if broken.is_set() and req.arg("symbol") == "ETHUSDT" and int(req.arg("startTime") or 0) >= since:
            response.body = b"[]"
        return response

    fresh_mock.routes["/api/v3/klines"] = route
    follower = Pipeline(("binance", {"base_url": fresh_mock.url, "archive": "rest"}),
                        [("csv", {"output": str(tmp_path / "{symbol}.csv")})]).follow(
        ["ETHUSDT", "BTCUSDT"], "1m", since=since, resync=0.1)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: "BTCUSDT" in follower.series and follower.series["BTCUSDT"].current)
        eth = follower.series["ETHUSDT"]
        assert eth.written == 0 and not eth.current
        broken.clear()
        fresh_mock.config.now = now = now + 6_000  # the series' retry is due (5 s of the exchange's clock)
        assert wait_for(lambda: follower.series["ETHUSDT"].current)
    finally:
        follower.stop()
        thread.join(20)
    assert not thread.is_alive()
    for symbol in ("BTCUSDT", "ETHUSDT"):
        assert rows_of(tmp_path / f"{symbol}.csv") == as_csv_lines(binance_rows(symbol, "1m", since, now, now))


# -- an expired delivery contract: ended for good --------------------------------------------------
HOUR = 60 * MINUTE


def usdm_follower(mock, tmp_path, symbols, since, **options):
    return Pipeline(("binance", {"base_url": mock.url, "archive_url": mock.url, "market": "usdm"}),
                    [("csv", {"output": str(tmp_path / "{symbol}.csv")})]).follow(
        symbols, "1h", since=since, resync=0.1, recheck=0.1, **options)


def test_an_expired_delivery_contract_is_never_asked_about_again(fresh_mock, tmp_path, caplog):
    """BTCUSDT_240329 (USD-M), delivered 2024-03-29 08:00 and gone from exchangeInfo, followed
    beside BTCUSDT: backfilled to its last candle, one series_final info line, and its status is
    not asked again (it was, every recheck, for ever); BTCUSDT is followed as usual."""
    import logging

    from forge_core.testing.market import QUARTER_DELIVERED
    from forge_mock_exchange.market import Market

    since = QUARTER_DELIVERED - 5 * HOUR
    follower = usdm_follower(fresh_mock, tmp_path, ["BTCUSDT_240329", "BTCUSDT"], since)
    asked, rechecks, real = [], [], follower._recheck
    follower.source.recheck = lambda symbols, tf: asked.append(list(symbols)) or {}
    follower._recheck = lambda: rechecks.append(1) or real()
    thread = threading.Thread(target=follower.run, daemon=True)
    with caplog.at_level(logging.INFO, logger="forge"):
        thread.start()
        try:
            assert wait_for(lambda: "BTCUSDT" in follower.series and follower.series["BTCUSDT"].current)
            assert wait_for(lambda: len(rechecks) >= 3)  # the recheck interval passed three times
        finally:
            follower.stop()
            thread.join(20)
    assert not thread.is_alive() and asked == []
    contract = follower.series["BTCUSDT_240329"]
    assert contract.final and contract.last_open == QUARTER_DELIVERED - HOUR
    assert [r.levelname for r in caplog.records if "series_final" in r.getMessage()] == ["INFO"]
    assert not [r for r in caplog.records if "series_ended" in r.getMessage()]
    assert rows_of(tmp_path / "BTCUSDT_240329.csv") == as_csv_lines(binance_rows(
        "BTCUSDT_240329", "1h", since, QUARTER_DELIVERED, fresh_mock.config.now, Market.binance_usdm()))
    assert "BTCUSDT_240329: last committed candle opens 2024-03-29T07:00:00Z" in follower.result.summary()
    assert "ended for good)" in follower.result.summary()


def test_a_follow_run_of_expired_contracts_only_ends_after_their_last_candles(fresh_mock, tmp_path):
    """Nothing can come any more: the run ends by itself (exit 0 from the CLI) instead of
    waiting for ever."""
    from forge_core.testing.market import QUARTER_DELIVERED

    follower = usdm_follower(fresh_mock, tmp_path, ["BTCUSDT_240329"], QUARTER_DELIVERED - 5 * HOUR)
    result = follow_until_ended(follower)
    assert result is not None and result.stopped_by == "every series ended for good"
    assert follower.series["BTCUSDT_240329"].last_open == QUARTER_DELIVERED - HOUR
    assert "run the same command to continue" not in result.summary()


def test_a_delivered_contract_exchangeinfo_still_lists_is_final_a_settled_perpetual_is_not(fresh_mock,
                                                                                          monkeypatch):
    """A delivery contract past its delivery that exchangeInfo still lists as SETTLING ends for
    good; OLDUSDT, a perpetual SETTLING since its delisting, may be listed again: not final."""
    from forge_binance import BinanceSource
    from forge_binance import mock as binance_mock
    from forge_core.timeframes import parse_timeframe

    monkeypatch.setattr(binance_mock, "gone", lambda mock, listing: False)  # listed after its delivery
    source = BinanceSource(base_url=fresh_mock.url, market="usdm", archive="rest")
    contract = source.prepare("BTCUSDT_240329", parse_timeframe("1h"))
    assert contract.ended is not None and "SETTLING" in contract.ended and contract.final
    perpetual = source.prepare("OLDUSDT", parse_timeframe("1h"))
    assert perpetual.ended is not None and not perpetual.final
