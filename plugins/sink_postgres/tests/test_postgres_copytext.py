"""COPY text encoding: the fast path must equal the exact one whenever it is taken, and the
exact one must round-trip through a real server."""

from __future__ import annotations

import io

import psycopg2
import pytest

from forge_sink_postgres.copytext import encode, encode_exact

CANDLE = ("binance", "BTCUSDT", "1m", 1704067200000, 1704067259999, "42000.01000000", "42010.00000000",
          "41990.5", "42001.00000000", "12.34567890", "518000.1", 321, "6.1", "256000.0")


def test_fast_path_equals_exact_for_exchange_rows():
    rows = [CANDLE, CANDLE[:3] + (CANDLE[3] + 60000,) + CANDLE[4:]]
    for indexes in [tuple(range(10)), (3, 0, 11), (5,)]:
        assert encode(rows, indexes) == encode_exact(rows, indexes)
    assert encode(rows, tuple(range(10))).splitlines()[0] == (
        "binance\tBTCUSDT\t1m\t1704067200000\t1704067259999\t42000.01000000\t42010.00000000\t41990.5\t"
        "42001.00000000\t12.34567890")


@pytest.mark.parametrize("value,wire", [
    (None, "\\N"),
    ("a\tb", "a\\tb"),
    ("line\nbreak", "line\\nbreak"),
    ("cr\r", "cr\\r"),
    ("back\\slash", "back\\\\slash"),
    ("None", "None"),
    ("\\N", "\\\\N"),
    (True, "True"),
    (1.5, "1.5"),
])
def test_awkward_values_take_the_exact_path(value, wire):
    rows = [("x", value, 7)]
    assert encode(rows, (0, 1, 2)) == f"x\t{wire}\t7\n"


def test_empty():
    assert encode([], (0, 1)) == "" and encode_exact([], (0,)) == ""


def test_round_trip_through_copy(pg_url):
    values = [("plain", 1, "1.50"), ("tab\there", 2, None), ("new\nline\\ \\N", None, "0.00000001"),
              (None, 4, "-3"), ("ünïcødé €", 5, "1e-3")]
    conn = psycopg2.connect(pg_url)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE rt (a text, b bigint, c numeric)")
            cur.copy_expert("COPY rt FROM STDIN", io.BytesIO(encode(values, (0, 1, 2)).encode()))
            cur.execute("SELECT a, b, c::text FROM rt ORDER BY b NULLS FIRST, a")
            got = cur.fetchall()
    finally:
        conn.close()
    want = sorted(((a, b, None if c is None else str(c)) for a, b, c in values),
                  key=lambda r: (r[1] is not None, r[1] or 0, r[0] or ""))
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in want]
    assert {c for _, _, c in got} == {"1.50", None, "0.00000001", "-3", "0.001"}
