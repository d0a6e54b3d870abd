"""Real OKX bodies (``fixtures/``, see PROVENANCE.md) through the real source over real HTTP:
a local server answers with the recorded bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_core.testing.server import MockExchange, Response
from forge_core.timeframes import parse_timeframe
from forge_okx.source import HISTORY, INSTRUMENTS, TIME, OkxSource

FIXTURES = Path(__file__).resolve().parent / "fixtures"
INSTRUMENTS_BODY = (FIXTURES / "okx_public_instruments_spot_nautilus.json").read_bytes()
TIME_BODY = json.dumps(json.loads((FIXTURES / "ccxt_okx_static_fetchTime.json").read_text())[0]["httpResponse"]).encode()
EMPTY = b'{"code":"0","msg":"","data":[]}'


def server(history_asked: list[dict[str, str]]) -> MockExchange:
    """The recorded instruments list (all five, whatever ``instId`` asks: the source picks its
    own), the recorded time, and a history with no bar before anything asked."""
    mock = MockExchange(routes=[])
    mock.route(INSTRUMENTS, lambda req: Response(200, INSTRUMENTS_BODY))
    mock.route(TIME, lambda req: Response(200, TIME_BODY))

    def history(req):
        history_asked.append({k: v[0] for k, v in req.query.items()})
        return Response(200, EMPTY)

    mock.route(HISTORY, history)
    return mock


@pytest.mark.parametrize("inst_id,list_time", [("BTC-USD", 1733454000000), ("ETH-USD", 1733455800000),
                                               ("XRP-USD", 1733797800000)])
def test_the_recorded_listtime_string_is_the_first_bar_once_nothing_is_older(inst_id, list_time):
    asked: list[dict[str, str]] = []
    with server(asked) as mock:
        src = OkxSource(base_url=mock.url)
        try:
            assert src.server_time() == 1712250348676  # data[0].ts, a string
            info = src.prepare(inst_id, parse_timeframe("1m"))
        finally:
            src.close()
    assert info.first_open == list_time
    # the bars from one before the listing: OKX's first is among them, or one before the listing
    assert asked == [{"instId": inst_id, "bar": "1m", "after": str(list_time + 99 * 60_000), "limit": "100"}]


# -- options: instruments needs instFamily (exchange-apis.md C.4) -----------------------------
def test_an_option_is_looked_up_with_its_instrument_family(fresh_mock):
    """``/public/instruments`` requires ``instFamily`` (or ``uly``) when ``instType`` is OPTION;
    without it OKX answers 400 50015 and an option instId could not be backfilled at all."""
    from forge_core import Task
    from forge_okx.mock import okx_rows

    src = OkxSource(base_url=fresh_mock.url)
    tf = parse_timeframe("1h")
    start = 1735689600000  # 2025-01-01
    try:
        src.server_time()
        info = src.prepare("BTC-USD-250328-90000-C", tf)
        rows = list(src.fetch(Task("BTC-USD-250328-90000-C", tf, start, start + 48 * 3_600_000)))
    finally:
        src.close()
    assert info.first_open is not None
    assert rows == okx_rows("BTC-USD-250328-90000-C", "1h", start, start + 48 * 3_600_000, fresh_mock.now())
    assert len(rows) == 48


def test_the_mock_asks_an_instrument_family_for_options(mock):
    import requests

    answer = requests.get(f"{mock.url}{INSTRUMENTS}", params={"instType": "OPTION", "instId": "BTC-USD-250328-90000-C"})
    assert answer.status_code == 400 and answer.json()["code"] == "50015"
    listed = requests.get(f"{mock.url}{INSTRUMENTS}", params={"instType": "OPTION", "instFamily": "BTC-USD"}).json()
    assert [(i["instId"], i["optType"], i["stk"]) for i in listed["data"]] == [("BTC-USD-250328-90000-C", "C", "90000")]


@pytest.mark.parametrize("bad", [b"", b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                                 b'{"code":"0","msg":"","data":[["1704', b'{"code":"0","msg":""}',
                                 b'{"code":"0","msg":"","data":null}', b"[]"],
                         ids=["empty", "html", "truncated", "no-data", "null-data", "list"])
def test_a_200_without_candles_is_retried_and_the_rows_stay_exact(fresh_mock, bad):
    from forge_core import Task
    from forge_okx.mock import okx_rows

    real = fresh_mock.routes[HISTORY]
    spoiled: list[str] = []

    def once(req):
        if req.arg("limit") == "300" and not spoiled:
            spoiled.append(req.raw_query)
            return Response(200, bad)
        return real(req)

    fresh_mock.route(HISTORY, once)
    src = OkxSource(base_url=fresh_mock.url)
    tf, start = parse_timeframe("1h"), 1704067200000
    try:
        src.server_time()
        for client in src.clients.values():
            client.backoff = 0.01
        rows = list(src.fetch(Task("ETH-USDT", tf, start, start + 300 * 3_600_000)))
        retries = src.stats()["retries"]
    finally:
        src.close()
    assert spoiled and retries == 1
    assert rows == okx_rows("ETH-USDT", "1h", start, start + 300 * 3_600_000, fresh_mock.now())


def test_1s_bars_of_an_option_are_refused_in_one_line(fresh_mock):
    """history-candles has 1s bars "(not for OPTION)": OKX's 51000, said as the bar refused."""
    from forge_core import SourceError

    src = OkxSource(base_url=fresh_mock.url)
    try:
        src.server_time()
        with pytest.raises(SourceError, match=r"^OKX rejected bar '1s' for timeframe '1s': Parameter bar error$"):
            src.prepare("BTC-USD-250328-90000-C", parse_timeframe("1s"))
    finally:
        src.close()
