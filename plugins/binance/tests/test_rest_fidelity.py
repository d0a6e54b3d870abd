"""Binance REST behaviours of the real API (``exchange-apis.md`` section A) that the mock
models and the source must handle."""

from __future__ import annotations

import pytest
import requests

from forge_binance.mock import binance_rows
from forge_binance.source import BinanceSource
from forge_core import SourceError, Task
from forge_core.testing.market import Market
from forge_core.testing.server import MockExchange, Response
from forge_core.timeframes import DAY, MINUTE, parse_timeframe

T = 1706745600000  # 2024-02-01 00:00 UTC, well inside the mock's BTCUSD_PERP history


def fetch(base_url: str, symbol: str = "BTCUSDT", *, market: str = "spot", attempts: int | None = None) -> tuple[list, dict]:
    """A 100-minute REST task from ``T`` through a fresh source (fast backoff): its rows and
    the source's stats. A ``SourceError`` propagates."""
    src = BinanceSource(base_url=base_url, market=market, archive="rest")
    src.http.backoff = 0.01
    if attempts is not None:
        src.http.max_attempts = attempts
    try:
        return list(src.fetch(Task(symbol, parse_timeframe("1m"), T, T + 100 * MINUTE))), src.stats()
    finally:
        src.close()


def failure(base_url: str, symbol: str = "BTCUSDT", attempts: int | None = None) -> str:
    """The one-line error of that task."""
    with pytest.raises(SourceError) as caught:
        fetch(base_url, symbol, attempts=attempts)
    return str(caught.value)


# -- COIN-M: startTime alone means endTime = startTime + 200 days, newest rows first ---------
def test_mock_coinm_start_time_alone_is_anchored_200_days_later(mock):
    url = f"{mock.url}/dapi/v1/klines"
    one = requests.get(url, params={"symbol": "BTCUSD_PERP", "interval": "1h", "startTime": T, "limit": 1}).json()
    assert [r[0] for r in one] == [T + 200 * DAY]  # the newest candle of the 200 days, not the first
    last = requests.get(url, params={"symbol": "BTCUSD_PERP", "interval": "1d", "endTime": T, "limit": 1500}).json()
    assert last[0][0] == T - 200 * DAY and last[-1][0] == T  # only endTime: the 200 days before it


def test_coinm_probe_after_a_wrongly_empty_page_finds_the_candles(fresh_mock: MockExchange):
    """The paging core re-checks an empty page with a probe for the next candle. On COIN-M a bare
    ``startTime`` probe returns a candle 200 days later, so a transient empty answer looked like a
    hole and the task's candles were silently dropped."""
    real = fresh_mock.routes["/dapi/v1/klines"]
    emptied: list[str] = []

    def flaky(req):  # the first page comes back empty, as real servers occasionally do
        answer = real(req)
        if req.arg("endTime") and not emptied:
            emptied.append(req.raw_query)
            return Response.json([], **answer.headers)
        return answer

    fresh_mock.route("/dapi/v1/klines", flaky)
    rows, _ = fetch(fresh_mock.url, "BTCUSD_PERP", market="coinm")
    assert emptied
    assert rows == binance_rows("BTCUSD_PERP", "1m", T, T + 100 * MINUTE, fresh_mock.now(), Market.binance_coinm())


# -- 10xx "General Server or Network issues": retried whatever the HTTP status -----------------
SERVER_CODES = [(400, -1000), (408, -1001), (503, -1006), (400, -1007), (400, -1008)]


def test_server_side_error_codes_are_retried_whatever_their_status(fresh_mock: MockExchange):
    """errors.md puts -1000 UNKNOWN, -1001 DISCONNECTED, -1006 UNEXPECTED_RESP, -1007 TIMEOUT and
    -1008 SERVER_BUSY among "General Server or Network issues"; they come with 400, 408 or 503,
    not only 5xx. -1006/-1007 say "execution status unknown": klines are a read, a retry is safe."""
    fresh_mock.config.extra["binance_errors"] = [list(e) for e in SERVER_CODES]
    rows, stats = fetch(fresh_mock.url)
    retries = stats["retries"]
    assert rows == binance_rows("BTCUSDT", "1m", T, T + 100 * MINUTE, fresh_mock.now())
    assert fresh_mock.config.extra["binance_errors"] == [] and retries == len(SERVER_CODES)
    assert fresh_mock.stats["binance.error-1008"] == 1


def test_a_server_side_error_that_persists_gives_up_in_one_line_naming_it(fresh_mock: MockExchange):
    fresh_mock.config.extra["binance_errors"] = [[400, -1008]] * 3
    message = failure(fresh_mock.url, attempts=3)
    assert "\n" not in message and "after 3 attempts" in message
    assert "HTTP 400 -1008 SERVER_BUSY" in message and "overloaded" in message


def test_a_request_error_is_still_final(fresh_mock: MockExchange):
    src = BinanceSource(base_url=fresh_mock.url, archive="rest")
    try:
        with pytest.raises(SourceError, match="unknown symbol 'NOPEUSDT'"):
            list(src.fetch(Task("NOPEUSDT", parse_timeframe("1m"), T, T + 100 * MINUTE)))
        assert src.stats()["retries"] == 0
    finally:
        src.close()


# -- a firewall's HTML page (HTTP 403: "WAF rule violated") ------------------------------------
def test_a_waf_403_is_one_clear_line_without_the_html_or_credentials(mock_exchange_factory):
    mock = mock_exchange_factory(faults={"waf403": 1.0})
    host = mock.url.split("//")[1]
    text = failure(f"http://user:s3cretpw@{host}")
    assert text.startswith(f"Binance spot refused the request for BTCUSDT 1m: HTTP 403 from {host}/api/v3/klines: "
                           "forbidden: refused by the exchange's firewall")
    assert "The request could not be satisfied" in text
    assert "\n" not in text and "<" not in text and "s3cretpw" not in text and len(text) < 300
    assert mock.stats["fault.waf403"] == 1  # not retried


def test_a_5xx_html_page_that_persists_gives_up_without_the_html(fresh_mock: MockExchange):
    page = b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center>" \
           b"<hr><center>nginx</center></body></html>"
    fresh_mock.route("/api/v3/klines", lambda req: Response(502, page, content_type="text/html"))
    text = failure(fresh_mock.url, attempts=2)
    assert "still failing after 2 attempts" in text and text.endswith("HTTP 502 502 Bad Gateway")
    assert "<" not in text and "nginx" not in text


def test_the_retry_display_names_the_code_a_400_comes_with(fresh_mock: MockExchange):
    """"retrying BTCUSDT HTTP 400" reads as a bad request: the display says -1008 (server busy)."""
    from forge_core import retrying

    seen: list[str] = []
    stop = retrying.watch(lambda active: seen.extend(r.error for r in active))
    fresh_mock.config.extra["binance_errors"] = [[400, -1008], [503, -1000]]
    try:
        fetch(fresh_mock.url)
    finally:
        stop()
    assert seen == ["HTTP 400 -1008", "HTTP 503"]


def test_an_error_body_whose_code_is_not_a_number_is_one_error_line_not_a_crash():
    """`{"code": [..]}` (a proxy's or a broken gateway's JSON) must not raise TypeError (unhashable)."""
    from forge_binance.source import BinanceError, BinanceSource

    response = requests.Response()
    response.status_code, response._content = 400, b'{"code": [-1000], "msg": "odd"}'
    response.url = "https://api.binance.com/api/v3/klines"
    source = BinanceSource(archive="rest")
    try:
        with pytest.raises(BinanceError, match="odd"):
            source._check(response, {"code": [-1000], "msg": "odd"})
    finally:
        source.close()


# -- exchangeInfo ?symbols=[...]: compact JSON only -------------------------------------------
def test_exchange_info_symbols_must_be_compact_json_as_on_the_real_api(fresh_mock: MockExchange):
    """The real API checks ``symbols`` against ``^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$``:
    ``json.dumps``'s default ``["A", "B"]`` (a space after the comma) is -1100, which the mock
    took. The source asks in the compact form and learns both symbols in one request."""
    url = f"{fresh_mock.url}/api/v3/exchangeInfo"
    spaced = requests.get(url, params={"symbols": '["BTCUSDT", "ETHUSDT"]'})
    assert spaced.status_code == 400 and spaced.json()["code"] == -1100
    assert "Illegal characters found in parameter 'symbols'" in spaced.json()["msg"]
    compact = requests.get(url, params={"symbols": '["BTCUSDT","ETHUSDT"]'}).json()
    assert [s["symbol"] for s in compact["symbols"]] == ["BTCUSDT", "ETHUSDT"]
    src = BinanceSource(base_url=fresh_mock.url, archive="rest")
    try:
        src.prepare_symbols(["BTCUSDT", "ETHUSDT"], parse_timeframe("1m"))
        assert src.prepare("ETHUSDT", parse_timeframe("1m")).symbol == "ETHUSDT"
    finally:
        src.close()
    assert fresh_mock.stats["binance.spot.exchangeInfo"] == 3  # the two above and the source's one


# -- a restricted location (HTTP 451, code 0) -----------------------------------------------------
def test_a_geo_451_is_one_line_naming_the_market_data_host_not_code_0(mock_exchange_factory):
    """From the US or some clouds api.binance.com answers 451 ``{"code":0,"msg":"Service
    unavailable from a restricted location ..."}``: one line, not retried, without the
    meaningless ``0``, pointing at the market-data-only host that spot users can try."""
    mock = mock_exchange_factory(faults={"geo451": 1.0})
    host = mock.url.split("//")[1]
    text = failure(mock.url)
    assert text.startswith(f"Binance spot refused the request for BTCUSDT 1m: HTTP 451 from {host}/api/v3/klines: "
                           "unavailable for legal reasons: this IP's region is restricted; Service unavailable "
                           "from a restricted location"), text
    assert " 0 " not in text and "\n" not in text
    assert text.endswith("spot market data is also served by https://data-api.binance.vision "
                         "(--base-url https://data-api.binance.vision); --archive archive takes the archive's "
                         "files alone, without REST")
    assert mock.stats["fault.geo451"] == 1  # not retried
