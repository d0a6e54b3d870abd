"""REST klines become rows held in columns (issue 18): straight from the body's bytes when it
is Binance's compact form, from the decoded JSON otherwise, from one tuple per kline as the
last resort; always the same rows as the per-kline path, with the same exact strings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from forge_binance.source import BinanceSource, _columns, _raw_klines
from forge_core import Batch, Task, TextRows
from forge_core.records import ColumnRows
from forge_core.timeframes import parse_timeframe

ROOT = Path(__file__).resolve().parents[3]
SPOT = ROOT / "tests" / "fixtures" / "real" / "binance_spot_klines_BTCUSDT_1m_2021-10-22_nautilus.json"
USDM = Path(__file__).resolve().parent / "fixtures" / "binance_usdm_klines_docs_example_nautilus.json"
COLS = BinanceSource.columns
M1 = parse_timeframe("1m")
T = 1706745600000  # 2024-02-01 00:00 UTC


def per_kline(page: list, source: str, symbol: str, tf: str = "1m") -> list[tuple]:
    """The rows BinanceSource built one tuple per kline before issue 18."""
    make = BinanceSource(market="spot").row_maker(Task(symbol, parse_timeframe(tf), 0, 0))
    rows = [make(open_ts=int(k[0]), end_ts=int(k[6]), open=k[1], high=k[2], low=k[3], close=k[4], volume=k[5],
                 quote_volume=k[7], trades=int(k[8]), taker_buy_base_volume=k[9], taker_buy_quote_volume=k[10])
            for k in page]
    return [(source, *r[1:]) for r in rows]


def compact(page: list) -> bytes:
    return json.dumps(page, separators=(",", ":")).encode()  # how Binance sends it


@pytest.mark.parametrize("fixture,tf", [(SPOT, "1m"), (USDM, "1w")])
def test_real_bodies_become_the_per_kline_rows_from_their_bytes(fixture, tf):
    page = json.loads(fixture.read_text())
    fixed = {"source": "binance", "symbol": "BTCUSDT", "timeframe": tf}
    want = per_kline(page, "binance", "BTCUSDT", tf)
    rows = _raw_klines(compact(page), COLS, fixed)
    assert isinstance(rows, TextRows) and rows == want and list(rows) == want
    assert [type(v) for v in rows[0]] == [type(v) for v in want[0]]
    assert rows.text() == "".join(",".join(map(str, r)) + "\r\n" for r in want)
    # pretty-printed (as stored): not the compact form, so decoded, and the same rows
    assert _raw_klines(fixture.read_bytes(), COLS, fixed) is None
    assert _columns(page, COLS, fixed) == want and _columns(page, COLS, fixed).text() == rows.text()


@pytest.mark.parametrize("market,prefix,symbol", [("spot", "/api/v3", "BTCUSDT"), ("usdm", "/fapi/v1", "BTCUSDT"),
                                                  ("coinm", "/dapi/v1", "BTCUSD_PERP")])
def test_every_market_takes_the_fast_path_with_the_same_rows(mock, market, prefix, symbol):
    body = requests.get(f"{mock.url}{prefix}/klines", params={"symbol": symbol, "interval": "1m", "startTime": T,
                                                               "endTime": T + 300 * 60_000 - 1, "limit": 300}).content
    source = "binance" if market == "spot" else f"binance-{market}"
    fixed = {"source": source, "symbol": symbol, "timeframe": "1m"}
    rows = _raw_klines(body, COLS, fixed)
    assert rows is not None and len(rows) == 300 and rows == per_kline(json.loads(body), source, symbol)
    src = BinanceSource(base_url=mock.url, market=market, archive="rest")
    try:
        got = src.fetch(Task(symbol, M1, T, T + 300 * 60_000))
    finally:
        src.close()
    assert type(got) is TextRows and got == rows  # a steady page: its CSV records at once
    assert Batch(source, symbol, "1m", COLS, got).csv_text() == rows.text()  # the CSV sink writes it as is


KLINE = b'[1706745600000,"1.5","2.5","1.0","2.0","10.5",1706745659999,"20.5",3,"5.5","10.25","0"]'
NEXT = KLINE.replace(b"1706745600000", b"1706745660000").replace(b"1706745659999", b"1706745719999")


@pytest.mark.parametrize("ms", [None, 60_000])
@pytest.mark.parametrize("body", [b"[" + KLINE + b"]", b"[" + KLINE + b"," + NEXT + b"]",
                                  b"[" + KLINE.replace(b",3,", b",0,") + b"]"])
def test_the_compact_form_is_taken_from_the_bytes(body, ms):
    rows = _raw_klines(body, COLS, {"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}, ms)
    assert rows is not None and rows == per_kline(json.loads(body), "binance", "BTCUSDT")


def klines(n: int, first: int = T, ms: int = 60_000) -> list[bytes]:
    return [KLINE.replace(b"1706745600000", str(first + i * ms).encode())
            .replace(b"1706745659999", str(first + i * ms + ms - 1).encode())
            .replace(b'"1.5"', f'"{i}.5"'.encode()).replace(b",3,", f",{i * 7},".encode()) for i in range(n)]


def test_a_steady_page_becomes_its_csv_records_at_once():
    """The usual page (no hole, every close the candle's last millisecond) is its CSV text
    from the start, no column or row built: the same rows, types and text as per kline."""
    body = b"[" + b",".join(klines(5)) + b"]"
    fixed = {"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}
    want = per_kline(json.loads(body), "binance", "BTCUSDT")
    rows = _raw_klines(body, COLS, fixed, 60_000)
    assert type(rows) is TextRows and rows.step == 60_000 and rows.steady(M1)
    assert rows == want and list(rows) == want and [type(v) for v in rows[3]] == [type(v) for v in want[3]]
    assert rows.text() == "".join(",".join(map(str, r)) + "\r\n" for r in want)
    assert list(rows[1:4]) == want[1:4]


@pytest.mark.parametrize("change", [
    lambda ks: ks[:2] + ks[3:],  # a hole
    lambda ks: [ks[0].replace(b"1706745659999", b"1706745659998")] + ks[1:],  # a close before the last ms
    lambda ks: ks[::-1],  # descending
    lambda ks: ks[:1] + ks[:1] + ks[1:],  # a duplicate
    lambda ks: klines(5, ms=120_000),  # two minutes apart
])
def test_a_page_off_the_run_is_held_as_columns_with_the_same_rows(change):
    body = b"[" + b",".join(change(klines(5))) + b"]"
    fixed = {"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}
    rows = _raw_klines(body, COLS, fixed, 60_000)
    assert isinstance(rows, ColumnRows) and rows == per_kline(json.loads(body), "binance", "BTCUSDT")


def test_a_constant_that_needs_quoting_keeps_the_page_as_columns_without_text():
    body = b"[" + b",".join(klines(3)) + b"]"
    rows = _raw_klines(body, COLS, {"source": "binance", "symbol": 'A,"B', "timeframe": "1m"}, 60_000)
    assert isinstance(rows, ColumnRows) and rows.text() is None
    assert rows == per_kline(json.loads(body), "binance", 'A,"B')


@pytest.mark.parametrize("body", [
    b"[" + KLINE + b"," + NEXT,  # cut short
    b"[" + KLINE + b"," + NEXT + b"]]",  # one bracket too many
    b"[" + KLINE + b",]",  # a trailing comma
    b"[" + KLINE + NEXT + b"]",  # no comma between klines
    b"[" + KLINE.replace(b"[1706745600000", b"[01706745600000") + b"]",  # a leading zero: not JSON
    b"[" + KLINE.replace(b",3,", b",3.0,") + b"]",  # trades a float
    b"[" + KLINE.replace(b",3,", b",,") + b"]",  # an empty value: not JSON
    b"[" + KLINE.replace(b"[1706745600000", b"[1706745600000.") + b"]",  # not a JSON number
    b"[" + KLINE.replace(b'"1.5"', b'"1,5"') + b"]",  # a comma inside a string
    b"[" + KLINE.replace(b'"1.5"', b'"1\\u002e5"') + b"]",  # an escape
    b"[" + KLINE.replace(b'"1.5"', b"1.5") + b"]",  # a number where Binance sends a string
    b"[" + KLINE.replace(b'"1.5"', b'"-1.5"') + b"]",  # a sign
    b"[" + KLINE.replace(b',"0"]', b"]") + b"]",  # 11 fields
    b"[" + KLINE.replace(b',"0"]', b',"0","1"]') + b"]",  # 13 fields
    b"[ " + KLINE + b"]",  # whitespace (valid JSON, but not the compact form)
    b"[" + KLINE.replace(b"1706745600000", b"99999999999999999999") + b"]",  # beyond 64 bits
    b"[" + KLINE.replace(b'"1.5",', b'"1.5"9,') + b"]",  # a digit after a closing quote
    b"[" + KLINE.replace(b',"2.5"', b',0"2.5"') + b"]",  # a digit before an opening quote
    b"[" + KLINE.replace(b',"0"]', b',"0"1]') + b"]",  # a digit before a kline's closing bracket
    b"[" + KLINE + b",0" + NEXT + b"]",  # a digit between two klines
    b"[0" + KLINE + b"]",  # a digit before the first kline
    b"<html><body>upstream error</body></html>",
    b"[]",
    b'{"code":-1121,"msg":"Invalid symbol."}',
    b"[" + KLINE.replace(b",3,", b",03,") + b"]",  # trades with a leading zero
    b"[" + KLINE + b"," + NEXT.replace(b",3,", b",0.5,") + b"]",  # trades a fraction
])
@pytest.mark.parametrize("ms", [None, 60_000])
def test_anything_but_the_exact_compact_form_is_left_to_the_json_decoder(body, ms):
    assert _raw_klines(body, COLS, {"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}, ms) is None


@pytest.mark.parametrize("ms", [None, 60_000])
def test_a_mangled_byte_is_read_as_json_reads_it_or_left_to_it(ms):
    """Seeded single-byte changes of a valid page: the bytes path (as columns, or with ``ms``
    as the CSV records of a steady page, both from one cut) either gives exactly the rows the
    JSON decoder gives, or leaves the body to it; it never reads a body JSON refuses."""
    import random

    page = b"[" + b",".join(klines(3)) + b"]"
    fixed = {"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}
    rng = random.Random(18)
    steady = held = 0
    for _ in range(3000):
        at = rng.randrange(len(page))
        byte = rng.choice(b'0123456789.,"[]')
        body = page[:at] + bytes([byte]) + page[at + rng.choice((0, 1)):]  # insert or replace one byte
        rows = _raw_klines(body, COLS, fixed, ms)
        if rows is None:
            continue
        decoded = json.loads(body)  # raises if the bytes path took what JSON refuses
        want = per_kline(decoded, "binance", "BTCUSDT")
        assert rows == want and list(rows) == want, body
        if rows.text() is not None:
            assert rows.text() == "".join(",".join(map(str, r)) + "\r\n" for r in want), body
        steady += type(rows) is TextRows
        held += isinstance(rows, ColumnRows)
    # the CSV-records path took many (a changed value digit), and with ``ms`` the columns path
    # after the same cut still many (a changed open or close)
    assert (steady > 100) == (ms is not None) and held > 100


def test_pages_held_as_columns_join_into_the_rows_of_a_walk():
    """A task that takes two requests (a short page) still returns every row, in order."""
    from forge_core import forward_pages

    fixed = {"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}
    klines = [KLINE.replace(b"1706745600000", str(T + i * 60_000).encode())
              .replace(b"1706745659999", str(T + i * 60_000 + 59_999).encode()) for i in range(5)]

    def request(cursor: int, stop: int | None):  # at most 3 klines a page
        first = (cursor - T) // 60_000
        return _raw_klines(b"[" + b",".join(klines[first:first + 3]) + b"]", COLS, fixed)

    rows = forward_pages(request, M1, T, T + 5 * 60_000, open_index=COLS.index("open_ts"))
    assert rows == per_kline(json.loads(b"[" + b",".join(klines) + b"]"), "binance", "BTCUSDT")
