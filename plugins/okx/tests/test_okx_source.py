"""The OKX source against the mock's OKX endpoints, and the mock against real OKX bodies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from forge_core import RetryableError, SourceError, Task
from forge_core.timeframes import DAY, HOUR, parse_timeframe
from forge_mock_exchange.expected_okx import okx_rows
from forge_mock_exchange.market import MAINTENANCE
from forge_mock_exchange.server import Response
from forge_okx.source import BARS, HISTORY, OkxSource, inst_type, suggest

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # real OKX responses; see PROVENANCE.md
NOW = 1742034030456  # the mock's frozen clock (conftest.NOW)


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def source(mock, **options) -> OkxSource:
    src = OkxSource(base_url=mock.url, **options)
    assert src.server_time() == NOW
    return src


def task(symbol: str, tf: str, start: int, end: int) -> Task:
    return Task(symbol, parse_timeframe(tf), start, end)


# -- mapping and spelling ---------------------------------------------------------------------
def test_timeframes_map_to_utc_aligned_bars():
    assert BARS["1h"] == "1H" and BARS["1d"] == "1Dutc" and BARS["1w"] == "1Wutc" and BARS["1M"] == "1Mutc"
    assert BARS["6h"] == "6Hutc" and BARS["12h"] == "12Hutc" and BARS["1s"] == "1s"
    assert "8h" not in OkxSource.timeframes and "3d" not in OkxSource.timeframes


@pytest.mark.parametrize("inst_id,kind", [("BTC-USDT", "SPOT"), ("BTC-USDT-SWAP", "SWAP"),
                                          ("BTC-USD-250328", "FUTURES"), ("BTC-USD-250328-90000-C", "OPTION")])
def test_inst_type_from_the_instrument_id(inst_id, kind):
    assert inst_type(inst_id) == kind


@pytest.mark.parametrize("typed,meant", [("BTCUSDT", "BTC-USDT"), ("btc-usdt", "BTC-USDT"), ("ETH/USDC", "ETH-USDC"),
                                         ("BTC_USDT", "BTC-USDT"), ("BTCUSDT-PERP", "BTC-USDT-SWAP"),
                                         ("ETHBTC", "ETH-BTC"), ("BTC-USDT", None)])
def test_suggests_the_okx_spelling(typed, meant):
    assert suggest(typed) == meant


# -- the source against the mock --------------------------------------------------------------
def test_prepare_finds_the_listing_and_validates(mock):
    src = source(mock)
    info = src.prepare("NEW-USDT", parse_timeframe("1h"))
    assert info.first_open == 1705305600000  # listTime, confirmed by an empty probe before it
    with pytest.raises(SourceError, match=r"unknown instrument 'BTCUSDT' on OKX .*did you mean 'BTC-USDT'\?"):
        src.prepare("BTCUSDT", parse_timeframe("1h"))


def test_prepare_distrusts_a_listtime_later_than_the_first_bar(fresh_mock):
    real = fresh_mock.routes["/api/v5/public/instruments"]

    def late_listing(req):
        body = json.loads(real(req).body)
        body["data"][0]["listTime"] = "1704067200000"  # 2024, but bars exist since 2018
        return Response.json(body)

    fresh_mock.route("/api/v5/public/instruments", late_listing)
    assert source(fresh_mock).prepare("BTC-USDT", parse_timeframe("1d")).first_open is None


def test_one_request_per_task_with_limit_300(fresh_mock):
    src = source(fresh_mock)
    start = 1704067200000
    rows = list(src.fetch(task("BTC-USDT", "1m", start, start + 300 * 60_000)))
    assert rows == okx_rows("BTC-USDT", "1m", start, start + 300 * 60_000, NOW)
    assert fresh_mock.stats["okx.history.requests"] == 1


def test_short_pages_continue_from_the_oldest_row(fresh_mock):
    """A server capped at the legacy 100 rows: three pages per task, nothing lost, even across
    the maintenance hole (pages that hold fewer bars than their span)."""
    fresh_mock.config.okx_history_limit = 100
    src = source(fresh_mock)
    start = MAINTENANCE[0] - 100 * 60_000
    want = okx_rows("BTC-USDT", "1m", start, start + 300 * 60_000, NOW)
    rows = list(src.fetch(task("BTC-USDT", "1m", start, start + 300 * 60_000)))
    assert rows == want and len(want) == 150  # 100 before the hole, 50 after it
    assert fresh_mock.stats["okx.history.rows"] >= 150
    assert all(r[3] < MAINTENANCE[0] or r[3] >= MAINTENANCE[1] for r in rows)


def test_listing_inside_a_task_stops_at_the_first_bar(fresh_mock):
    src = source(fresh_mock)
    start = 1705305600000 - 100 * HOUR
    rows = list(src.fetch(task("NEW-USDT", "1h", start, start + 300 * HOUR)))
    assert rows[0][3] == 1705305600000
    assert rows == okx_rows("NEW-USDT", "1h", start, start + 300 * HOUR, NOW)
    assert fresh_mock.stats["okx.history.requests"] == 2  # the second finds nothing older


def test_recent_bars_come_from_candles_and_the_open_bar_is_dropped(fresh_mock):
    src = source(fresh_mock)
    end = NOW - NOW % 60_000 + 60_000  # includes the open minute, which must not come back
    rows = list(src.fetch(task("BTC-USDT-SWAP", "1m", end - 300 * 60_000, end)))
    assert fresh_mock.stats["okx.candles.requests"] == 1 and fresh_mock.stats["okx.history.requests"] == 0
    assert rows == okx_rows("BTC-USDT-SWAP", "1m", end - 300 * 60_000, end, NOW)
    assert rows[-1][4] < NOW and len(rows) == 299


def test_recent_bars_that_left_candles_during_a_long_run_come_from_history(fresh_mock):
    """/market/candles keeps the latest 1,440 bars of the exchange's clock when it answers, not
    when the run read that clock: an hour later (a long multi-symbol 1m run), a task chosen for
    candles from the reading finds its oldest bars gone. They are on history-candles; the run
    failed with "keeps answering empty" instead."""
    src = source(fresh_mock)
    src.prepare("BTC-USDT", parse_timeframe("1m"))
    minute = 60_000
    start = NOW - NOW % minute - 1399 * minute  # within 1,400 bars of the reading: candles
    fresh_mock.config.now = later = NOW + 60 * minute
    rows = list(src.fetch(task("BTC-USDT", "1m", start, start + 300 * minute)))
    assert rows == okx_rows("BTC-USDT", "1m", start, start + 300 * minute, later) and len(rows) == 300
    assert fresh_mock.stats["okx.candles.rows"] == 280  # the 20 oldest had left candles


def test_swap_volume_is_base_currency_not_contracts(mock):
    rows = list(source(mock).fetch(task("BTC-USDT-SWAP", "1d", 1704067200000, 1704067200000 + 3 * DAY)))
    for row in rows:
        volume, quote_volume, vol, vol_ccy = row[9:]
        assert volume == vol_ccy and float(vol) == pytest.approx(float(vol_ccy) * 100)  # ctVal 0.01 BTC
        assert float(quote_volume) > float(volume) * 10_000


def test_the_real_swap_body_parses(fresh_mock):
    body = (FIXTURES / "okx_candles_swap_1m_2025-05-13_nautilus.json").read_bytes()
    for path in ("/api/v5/market/history-candles", "/api/v5/market/candles"):
        fresh_mock.route(path, lambda req: Response(200, body))
    rows = list(source(fresh_mock).fetch(task("BTC-USDT-SWAP", "1m", 1747093980000, 1747094100000)))
    assert rows == [
        ("okx", "BTC-USDT-SWAP", "1m", 1747093980000, 1747094039999, "102806", "102820.5", "102783.1",
         "102806.1", "71.6404", "7364701.57952", "7164.04", "71.6404"),
        ("okx", "BTC-USDT-SWAP", "1m", 1747094040000, 1747094099999, "102806.1", "102820.4", "102806.1",
         "102820.4", "10.4037", "1069603.34883", "1040.37", "10.4037"),
    ]


@pytest.mark.parametrize("status", [429, 200])
def test_50011_is_retried_whatever_its_http_status(fresh_mock, status):
    fresh_mock.config.extra.update(okx_history_rate=1, okx_rate_limit_status=status)
    # the two requests must fall in one window even on a loaded machine (0.3 s was not always);
    # the retry waits OKX's 2 s window, after this one
    fresh_mock.config.okx_window = 1.5
    src = source(fresh_mock)
    start = 1704067200000
    got = [list(src.fetch(task("ETH-USDT", "1h", start + i * 300 * HOUR, start + (i + 1) * 300 * HOUR)))
           for i in range(2)]
    assert [r for page in got for r in page] == okx_rows("ETH-USDT", "1h", start, start + 600 * HOUR, NOW)
    assert fresh_mock.stats["okx.50011"] >= 1 and src.stats()["okx_50011"] == fresh_mock.stats["okx.50011"]


def test_a_wrong_base_url_says_so(fresh_mock):
    src = OkxSource(base_url=fresh_mock.url + "/api/v5")
    with pytest.raises(SourceError, match=r"HTTP 404 .*base URL the host root"):
        src.server_time()


def test_base_url_comes_from_the_environment(fresh_mock, monkeypatch):
    monkeypatch.setenv("FORGE_OKX_URL", fresh_mock.url)
    assert OkxSource().server_time() == NOW


# -- the mock speaks OKX ----------------------------------------------------------------------
def get(mock, path, **params):
    return requests.get(mock.url + path, params=params)


def test_mock_candles_have_the_real_shape(mock):
    real = fixture("okx_candles_swap_1m_2025-05-13_nautilus.json")
    ours = get(mock, "/api/v5/market/history-candles", instId="BTC-USDT-SWAP", after=1742000000000, limit=2).json()
    assert set(ours) == set(real) and ours["code"] == real["code"] == "0"
    assert [[type(x) for x in row] for row in ours["data"]] == [[type(x) for x in row] for row in real["data"]]
    assert int(ours["data"][0][0]) > int(ours["data"][1][0])  # newest first, as the real body
    assert all(row[8] == "1" for row in ours["data"])


def test_mock_error_bodies_match_the_real_ones(mock):
    r = get(mock, "/api/v5/nope")
    assert r.status_code == 404 and r.json() == fixture("okx_error_404_unknown_path_nautilus.json")
    r = get(mock, "/api/v5/public/time")
    real = fixture("ccxt_okx_static_fetchTime.json")[0]["httpResponse"]
    assert r.json()["data"][0]["ts"] == str(NOW) and set(r.json()) == set(real)
    r = get(mock, "/api/v5/market/candles", instId="BTC-USDT", bar="1h")
    assert r.status_code == 400 and r.json() == {"code": "51000", "msg": "Parameter bar error", "data": []}
    r = get(mock, "/api/v5/market/candles", instId="BTCUSDT")
    assert r.status_code == 200 and r.json()["code"] == "51001" and r.json()["data"] == []


def test_mock_429_body_is_the_real_one(fresh_mock):
    fresh_mock.config.extra["okx_history_rate"] = 1
    codes = [get(fresh_mock, "/api/v5/market/history-candles", instId="BTC-USDT") for _ in range(2)]
    assert [r.status_code for r in codes] == [200, 429]
    assert codes[1].json() == fixture("okx_error_rate_limit_50011_nautilus.json")
    assert fresh_mock.stats["okx.429"] == fresh_mock.stats["okx.50011"] == 1


def test_mock_instruments_have_the_real_fields(mock):
    real = fixture("okx_public_instruments_spot_nautilus.json")["data"][1]  # the untrimmed entry
    ours = get(mock, "/api/v5/public/instruments", instType="SPOT", instId="BTC-USDT").json()["data"]
    assert [i["instId"] for i in ours] == ["BTC-USDT"] and set(ours[0]) == set(real)
    assert get(mock, "/api/v5/public/instruments").json()["code"] == "50014"


def test_mock_after_before_are_exclusive_and_before_alone_is_the_latest_page(mock):
    def opens(**params):
        body = get(mock, "/api/v5/market/history-candles", instId="BTC-USDT", bar="1H", **params).json()
        return [int(row[0]) for row in body["data"]]

    t = 1704067200000
    assert opens(after=t, before=t - 3 * HOUR) == [t - HOUR, t - 2 * HOUR]
    latest = opens(before=t)
    assert latest[0] == NOW - NOW % HOUR and len(latest) == 100  # default limit
    assert len(opens(limit=500)) == 300


def test_mock_candles_keep_only_the_latest_1440_bars(mock):
    body = get(mock, "/api/v5/market/candles", instId="BTC-USDT", after=NOW - 1439 * 60_000, limit=300).json()
    assert body["code"] == "0" and len(body["data"]) == 1  # only the oldest of the 1,440 is older
    body = get(mock, "/api/v5/market/candles", instId="BTC-USDT", bar="1s").json()
    assert body["code"] == "51000"  # 1s is a history-candles bar


@pytest.mark.parametrize("bar,offset", [("1D", 16 * HOUR), ("1Dutc", 0), ("6H", 4 * HOUR), ("6Hutc", 0)])
def test_mock_plain_bars_open_in_hong_kong_utc_variants_in_utc(mock, bar, offset):
    body = get(mock, "/api/v5/market/history-candles", instId="BTC-USDT", bar=bar, after=1704067200000).json()
    period = DAY if bar.startswith("1D") else 6 * HOUR
    assert {int(row[0]) % period for row in body["data"]} == {offset}


def test_a_50011_slows_the_endpoint_once_per_window_and_quiet_windows_restore_it():
    src = OkxSource(base_url="http://127.0.0.1:9")
    limiter = src.clients["/api/v5/market/history-candles"].limiter
    refused, fine = requests.Response(), requests.Response()
    refused.status_code, fine.status_code = 429, 200
    for _ in range(5):  # one burst of refusals counts once
        with pytest.raises(RetryableError):
            src._check(refused, {"msg": "Too Many Requests", "code": "50011"}, limiter)
    assert limiter.capacity == 15 and src.rate_limited == 5
    src._check(fine, {"code": "0", "msg": "", "data": []}, limiter)
    assert limiter.capacity == 15  # not yet: the last change was just now
    src._changed[limiter.name] -= 2 * limiter.window + 0.1  # two quiet windows later
    src._check(fine, {"code": "0", "msg": "", "data": []}, limiter)
    assert limiter.capacity == 16


# -- error codes from OKX's table that the source once got wrong -----------------------------
def test_a_settled_contract_recent_bars_come_from_history(fresh_mock):
    """``/market/candles`` answers a settled contract with 50047 (HTTP 200) "... has already
    settled. To check the relevant candlestick data, please use ..."; 1d bars of a contract
    that expired within the last ~4 years are "recent" by count, so the run used to fail."""
    r = requests.get(f"{fresh_mock.url}/api/v5/market/candles", params={"instId": "BTC-USDT-240329", "bar": "1Dutc"})
    assert r.status_code == 200 and r.json()["code"] == "50047" and r.json()["data"] == []
    src = source(fresh_mock)
    start, end = 1709251200000, 1709251200000 + 40 * DAY  # 2024-03-01 .. 2024-04-10, expiry inside
    rows = list(src.fetch(task("BTC-USDT-240329", "1d", start, end)))
    assert rows == okx_rows("BTC-USDT-240329", "1d", start, end, NOW) and rows
    assert fresh_mock.stats["okx.candles.requests"] == 2  # the probe above, then once: later tasks go to history
    list(src.fetch(task("BTC-USDT-240329", "1d", start, end)))
    assert fresh_mock.stats["okx.candles.requests"] == 2


def test_50004_endpoint_timeout_is_retried_although_its_status_is_400(fresh_mock):
    fresh_mock.config.extra["okx_timeouts"] = 1
    start = 1704067200000
    rows = list(source(fresh_mock).fetch(task("BTC-USDT", "1h", start, start + 300 * HOUR)))
    assert fresh_mock.stats["okx.50004"] == 1
    assert rows == okx_rows("BTC-USDT", "1h", start, start + 300 * HOUR, NOW)


def test_1s_bars_older_than_okx_keeps_them_are_empty_not_a_failure(fresh_mock):
    """history-candles keeps 1s bars for 3 months ("It is last 3 months supported for 1s
    candlestick"): the listing is no 1s bar known to exist, and an old range used to fail after
    7 s of re-asking ("keeps answering empty ... though it has candles from <listing>")."""
    fresh_mock.config.extra["okx_1s_days"] = 30
    old = NOW - 40 * DAY - NOW % 1000
    body = get(fresh_mock, "/api/v5/market/history-candles", instId="BTC-USDT", bar="1s", after=old).json()
    assert body["code"] == "0" and body["data"] == []  # the mock keeps 30 days of 1s bars here
    src = source(fresh_mock)
    tf = parse_timeframe("1s")
    src.prepare("BTC-USDT", tf)
    assert list(src.fetch(task("BTC-USDT", "1s", old, old + 300_000))) == []
    recent = NOW - 20 * DAY - NOW % 1000
    assert list(src.fetch(task("BTC-USDT", "1s", recent, recent + 300_000))) == okx_rows(
        "BTC-USDT", "1s", recent, recent + 300_000, NOW)


def test_a_waf_403_is_one_clear_line_without_the_html(mock_exchange_factory):
    mock = mock_exchange_factory(faults={"waf403": 1.0})
    src = OkxSource(base_url=mock.url)
    start = 1704067200000
    with pytest.raises(SourceError) as caught:
        list(src.fetch(task("BTC-USDT", "1h", start, start + 300 * HOUR)))
    text = str(caught.value)
    assert text.startswith("OKX refused the request for BTC-USDT 1h: HTTP 403 from 127.0.0.1:")
    assert "forbidden: refused by the exchange's firewall" in text and "could not be satisfied" in text
    assert "\n" not in text and "<" not in text and len(text) < 300
    assert mock.stats["fault.waf403"] == 1


def test_50005_endpoint_unavailable_is_retried(fresh_mock):
    """50005 (HTTP 410) "API endpoint is inactive or unavailable" (older docs: "API is offline or
    unavailable"; ccxt: ExchangeNotAvailable) passes: retried with backoff, not a failed run."""
    fresh_mock.config.extra["okx_errors"] = [[410, "50005"], [410, "50005"]]
    start = 1704067200000
    src = source(fresh_mock)
    src.clients[HISTORY].backoff = 0.01
    rows = list(src.fetch(task("BTC-USDT", "1h", start, start + 300 * HOUR)))
    assert fresh_mock.stats["okx.50005"] == 2 and src.stats()["retries"] == 2
    assert rows == okx_rows("BTC-USDT", "1h", start, start + 300 * HOUR, NOW)


def test_50005_that_persists_gives_up_in_one_line(fresh_mock):
    fresh_mock.config.extra["okx_errors"] = [[410, "50005"]] * 3
    start = 1704067200000
    src = source(fresh_mock)
    src.clients[HISTORY].backoff, src.clients[HISTORY].max_attempts = 0.01, 3
    with pytest.raises(SourceError) as caught:
        list(src.fetch(task("BTC-USDT", "1h", start, start + 300 * HOUR)))
    text = str(caught.value)
    assert "\n" not in text and "still failing after 3 attempts" in text
    assert "HTTP 410 50005 API endpoint is inactive or unavailable" in text


def test_52000_no_market_data_is_one_clear_line_not_retried(fresh_mock):
    """52000 (HTTP 200) "No market data found." is an answer, not a passing fault."""
    fresh_mock.config.extra["okx_errors"] = [[200, "52000"]] * 3
    start = 1704067200000
    src = source(fresh_mock)
    with pytest.raises(SourceError) as caught:
        list(src.fetch(task("BTC-USDT", "1h", start, start + 300 * HOUR)))
    text = str(caught.value)
    assert "\n" not in text and src.stats()["retries"] == 0 and fresh_mock.stats["okx.52000"] == 1
    assert text.startswith("OKX has no market data for BTC-USDT 1h (OKX 52000: No market data found.)")


def test_a_5xx_html_page_that_persists_gives_up_without_the_html_or_a_none(fresh_mock):
    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>"
    fresh_mock.route(HISTORY, lambda req: Response(502, page, content_type="text/html"))
    src = source(fresh_mock)
    src.clients[HISTORY].backoff, src.clients[HISTORY].max_attempts = 0.01, 2
    start = 1704067200000
    with pytest.raises(SourceError) as caught:
        list(src.fetch(task("BTC-USDT", "1h", start, start + 300 * HOUR)))
    text = str(caught.value)
    assert "still failing after 2 attempts" in text and text.endswith(": OKX HTTP 502 502 Bad Gateway"), text
    assert "<" not in text and "nginx" not in text and "None" not in text


def test_the_retry_display_names_the_okx_code(fresh_mock):
    from forge_core import retrying

    seen: list[str] = []
    stop = retrying.watch(lambda active: seen.extend(r.error for r in active))
    fresh_mock.config.extra["okx_errors"] = [[410, "50005"], [400, "50004"]]
    src = source(fresh_mock)
    src.clients[HISTORY].backoff = 0.01
    start = 1704067200000
    try:
        list(src.fetch(task("BTC-USDT", "1h", start, start + 300 * HOUR)))
    finally:
        stop()
    assert seen == ["HTTP 410 50005", "HTTP 400 50004"]


# -- 1s bars: OKX keeps them for a few months only (exchange-apis.md C.2) -----------------------
def test_a_1s_range_older_than_okx_keeps_is_refused_in_a_few_requests(fresh_mock):
    """"It is last 3 months supported for 1s candlestick": a day of 1s bars before that was 288
    requests of 300-bar pages answering nothing (580 and 63 s against the mock with latency),
    then '0 candles' and exit 0. Now a bisection finds OKX's oldest 1s bar and the run is
    refused, naming it."""
    from forge_core import Pipeline
    from forge_core.testing import MemorySink

    fresh_mock.config.extra["okx_1s_days"] = 2
    with pytest.raises(SourceError) as caught:
        Pipeline(("okx", {"base_url": fresh_mock.url}), [MemorySink()]).run(
            "BTC-USDT", "1s", "2025-03-01", "2025-03-01")
    kept = NOW - 2 * DAY + 1000 - NOW % 1000  # the mock's oldest 1s bar
    assert str(caught.value) == (
        "OKX keeps 1s candles for a few months only (its docs: the last 3 months): OKX serves no BTC-USDT 1s "
        "candle before 2025-03-02T00:00:00Z, where the range ends (its oldest opens 2025-03-13T10:20:31Z); "
        "choose --from 2025-03-13T10:20:31Z or later, or a longer timeframe (1m goes back years)")
    assert kept == 1741861231000
    assert fresh_mock.stats["okx.history.requests"] < 35


def test_a_1s_range_reaching_below_what_okx_keeps_names_that_part_an_unconfirmed_hole(fresh_mock):
    """The part of the range OKX no longer keeps is not asked for, and the summary says the
    hole is not the exchange's: before, it was walked page by page and reported as 'exchange
    affirmed empty: candles on both sides'."""
    from forge_core import Pipeline
    from forge_core.testing import MemorySink

    fresh_mock.config.extra["okx_1s_days"] = 1
    kept = NOW - DAY + 1000 - NOW % 1000
    start, end = kept - 3 * DAY, kept + 600_000
    sink = MemorySink()
    result = Pipeline(("okx", {"base_url": fresh_mock.url}), [sink]).run("BTC-USDT", "1s", start, end - 1)
    assert [tuple(r.values()) for r in sink.rows("BTC-USDT")] == okx_rows("BTC-USDT", "1s", kept, end, NOW)
    assert result.holes["BTC-USDT"] == [(start, kept)]
    assert result.unconfirmed["BTC-USDT"] == ("OKX keeps 1s candles for a few months only (its docs: the last "
                                              "3 months); none served before 2025-03-14T10:20:31Z")
    assert "exchange affirmed" not in result.summary()
    assert fresh_mock.stats["okx.history.requests"] < 35  # 3 days below it: 864 pages before


def test_a_wrong_empty_answer_does_not_mislead_the_search_for_the_oldest_1s_bar(fresh_mock):
    """A server under load may answer ``[]`` where it has bars: the search's last probe below
    the bar it found must stay empty, else it searches again below the bar that probe found."""
    fresh_mock.config.extra["okx_1s_days"] = 1
    real = fresh_mock.routes[HISTORY]
    probes: list[int] = []

    def one_wrong_empty(req):
        if req.arg("limit") == "1" and req.arg("bar") == "1s":
            probes.append(int(req.arg("after")))
            if len(probes) == 4:  # the bisection's first (after the listing's, the range's, the newest)
                return Response.json({"code": "0", "msg": "", "data": []})
        return real(req)

    fresh_mock.route(HISTORY, one_wrong_empty)
    src = source(fresh_mock)
    tf = parse_timeframe("1s")
    kept = NOW - DAY + 1000 - NOW % 1000
    start = kept - 600_000
    src.prepare("BTC-USDT", tf)
    tasks = list(src.plan("BTC-USDT", tf, start, kept + 600_000))
    assert src.holes_unconfirmed("BTC-USDT").endswith("none served before 2025-03-14T10:20:31Z")
    rows = [r for t in tasks for r in src.fetch(t)]
    assert rows == okx_rows("BTC-USDT", "1s", kept, kept + 600_000, NOW)  # the mock has none before kept


def test_a_later_plan_of_a_cut_1s_series_asks_and_says_nothing_more(fresh_mock, caplog):
    """A follow plans its series again each pass: OKX's oldest 1s bar is not searched again,
    and the part before it is not named again (it was, as an empty span)."""
    import logging

    fresh_mock.config.extra["okx_1s_days"] = 1
    src = source(fresh_mock)
    tf = parse_timeframe("1s")
    kept = NOW - DAY + 1000 - NOW % 1000
    src.prepare("BTC-USDT", tf)
    with caplog.at_level(logging.WARNING, logger="forge"):
        list(src.plan("BTC-USDT", tf, kept - HOUR, kept + 600_000))
        assert caplog.text.count("okx_1s_not_kept") == 1
        asked = fresh_mock.stats["okx.history.requests"]
        assert list(src.plan("BTC-USDT", tf, kept + 600_000, kept + 900_000))
        assert fresh_mock.stats["okx.history.requests"] == asked
        assert caplog.text.count("okx_1s_not_kept") == 1


# -- the first bar: listTime need not be it (exchange-apis.md C.2 "How far back") ---------------
LTC_LISTED = 1507593600000  # the mock's LTC-USDT: listTime 2017-10-10, daily bars from it
LTC_MINUTES = 1515669120000  # ... and 1m bars only from 2018-01-11 11:12 UTC (DSM's BTC-USDT 1m)


def test_the_first_1m_bar_months_after_the_listing_is_found(fresh_mock):
    """OKX keeps BTC-USDT 1m bars from 2018-01-11 but 1D bars from 2017-10-10: the listing was
    taken as a bar known to exist, so a 1m range after it failed after 7 s of re-asking
    ('keeps answering empty ... though it has candles from 2017-10-10')."""
    from forge_core import Pipeline
    from forge_core.testing import MemorySink

    src = source(fresh_mock)
    assert src.prepare("LTC-USDT", parse_timeframe("1m")).first_open == LTC_MINUTES
    assert src.prepare("LTC-USDT", parse_timeframe("1d")).first_open == LTC_LISTED
    assert src.prepare("LTC-USDT", parse_timeframe("1h")).first_open == LTC_MINUTES + 48 * 60_000
    sink = MemorySink()
    result = Pipeline(("okx", {"base_url": fresh_mock.url}), [sink]).run(
        "LTC-USDT", "1m", "2017-12-01", "2018-01-11T12:00")
    assert [tuple(r.values()) for r in sink.rows("LTC-USDT")] == okx_rows(
        "LTC-USDT", "1m", LTC_MINUTES, LTC_MINUTES + 48 * 60_000 + 60_000, NOW)
    assert not result.holes.get("LTC-USDT")


def test_a_first_bar_after_the_listing_is_warned_of_once_a_run(fresh_mock, caplog):
    """okx_first_candle_after_listing came twice for one symbol in one run: forge verify
    prepares the series, then its fetch (a pipeline on that source) prepares it again; and
    once a group in a --partition run (a source each)."""
    import logging

    from forge_core import Pipeline
    from forge_core.partitions import Partition
    from forge_core.partitions import run as run_partitions
    from forge_core.testing import MemorySink

    src = source(fresh_mock)
    with caplog.at_level(logging.WARNING, logger="forge"):
        assert src.prepare("LTC-USDT", parse_timeframe("1h")).first_open == LTC_MINUTES + 48 * 60_000
        Pipeline(src, [MemorySink()]).run("LTC-USDT", "1h", "2018-01-11", "2018-01-12")
        assert caplog.text.count("okx_first_candle_after_listing") == 1
        caplog.clear()
        run_partitions([Partition("okx", "-", "LTC-USDT", "1h", m) for m in ("2018-01", "2018-03")], [MemorySink()],
                       source_options={"base_url": fresh_mock.url})
        assert caplog.text.count("okx_first_candle_after_listing") == 1


def test_a_range_before_the_first_bar_of_an_unlisted_contract_is_refused(fresh_mock):
    """An expired contract is gone from /public/instruments, so no listTime: a range before its
    first bar was 0 candles and exit 0; now one line naming the first bar."""
    from forge_core import Pipeline
    from forge_core.testing import MemorySink

    with pytest.raises(SourceError) as caught:
        Pipeline(("okx", {"base_url": fresh_mock.url}), [MemorySink()]).run(
            "BTC-USDT-240329", "1h", "2023-11-01", "2023-11-30")
    assert str(caught.value) == ("OKX has no BTC-USDT-240329 1h candle before 2023-12-01T00:00:00Z, where the "
                                 "range ends (its first opens 2023-12-22T08:00:00Z); choose a later range")
    assert fresh_mock.stats["okx.history.requests"] < 20


def test_a_range_reaching_before_the_first_bar_of_an_unlisted_contract_claims_no_hole(fresh_mock):
    """The part before its first bar was reported as a hole 'exchange affirmed empty: candles on
    both sides', with no candle on its near side."""
    from forge_core import Pipeline
    from forge_core.testing import MemorySink

    sink = MemorySink()
    result = Pipeline(("okx", {"base_url": fresh_mock.url}), [sink]).run(
        "BTC-USDT-240329", "1h", "2023-12-20", "2023-12-23")
    first = 1703232000000  # 2023-12-22 08:00 UTC
    assert [tuple(r.values()) for r in sink.rows("BTC-USDT-240329")] == okx_rows(
        "BTC-USDT-240329", "1h", first, first + 40 * HOUR, NOW)
    assert not result.holes.get("BTC-USDT-240329")
    assert "affirmed" not in result.summary()


def test_the_first_bar_found_once_answers_later_plans_without_a_request(fresh_mock):
    """verify plans small windows one after the other: a window before the first bar is refused
    from what the first search found (each one searched again, about 20 requests)."""
    src = source(fresh_mock)
    tf = parse_timeframe("1h")
    first = 1703232000000  # BTC-USDT-240329's first bar, 2023-12-22 08:00 UTC
    src.prepare("BTC-USDT-240329", tf)
    assert next(iter(src.plan("BTC-USDT-240329", tf, first - DAY, first + DAY))).start == first
    asked = fresh_mock.stats["okx.history.requests"]
    for _ in range(2):
        with pytest.raises(SourceError, match="its first opens 2023-12-22T08:00:00Z"):
            list(src.plan("BTC-USDT-240329", tf, first - 2 * DAY, first - DAY))
    assert next(iter(src.plan("BTC-USDT-240329", tf, first - HOUR, first + HOUR))).start == first
    assert fresh_mock.stats["okx.history.requests"] == asked


def test_the_first_bar_is_found_under_the_legacy_limit_of_100_too():
    """Older docs cap history-candles at 100 rows: the listing's page and the search's last
    page ask for no more than 100 bars, so a capped page cannot hide the first one."""
    from forge_core.testing import MockConfig, MockExchange

    with MockExchange(MockConfig(now=NOW, okx_history_limit=100, extra={"okx_1s_days": 1})) as mock:
        src = source(mock)
        assert src.prepare("LTC-USDT", parse_timeframe("1m")).first_open == LTC_MINUTES
        assert src.prepare("NEW-USDT", parse_timeframe("1m")).first_open == 1705305600000
        tf = parse_timeframe("1s")
        kept = NOW - DAY + 1000 - NOW % 1000
        list(src.plan("BTC-USDT", tf, kept - 2 * HOUR, kept + 600_000))
        assert src.holes_unconfirmed("BTC-USDT").endswith(f"none served before {'2025-03-14T10:20:31Z'}")


def test_the_searches_survive_wrong_empty_answers(mock_exchange_factory):
    """An exchange under load answers ``[]`` where it has bars (the mock's ``empty`` fault, 15 %
    of requests here, each answered right when asked again): every empty probe of a search is
    asked twice. Each of the 14 probes of a bisection taken at its word, this seed's 1s run
    named OKX's oldest bar wrongly (then 'no 1s candle at all', or a hole 'affirmed by the
    exchange' and a page lost); the 1m run of LTC-USDT alike."""
    from forge_core import Pipeline
    from forge_core.testing import MemorySink

    mock = mock_exchange_factory(faults={"empty": 0.15}, fault_seed=1, extra={"okx_1s_days": 1, "empty_once": True})
    kept = NOW - DAY + 1000 - NOW % 1000
    sink = MemorySink()
    result = Pipeline(("okx", {"base_url": mock.url}), [sink]).run("BTC-USDT", "1s", kept - 2 * HOUR, kept + 599_999)
    assert [tuple(r.values()) for r in sink.rows("BTC-USDT")] == okx_rows("BTC-USDT", "1s", kept, kept + 600_000, NOW)
    assert result.holes["BTC-USDT"] == [(kept - 2 * HOUR, kept)] and "BTC-USDT" in result.unconfirmed
    sink = MemorySink()
    result = Pipeline(("okx", {"base_url": mock.url}), [sink]).run("LTC-USDT", "1m", "2017-12-01", "2018-01-11T12:00")
    assert [tuple(r.values()) for r in sink.rows("LTC-USDT")] == okx_rows(
        "LTC-USDT", "1m", LTC_MINUTES, LTC_MINUTES + 49 * 60_000, NOW)
    assert not result.holes.get("LTC-USDT")
    assert mock.stats["fault.empty"] > 0
