"""Run the streamforge backfilling guide's examples on Forge and check what they produced.

Used by ``test_guide_examples.py`` on the repository's verbatim copy of the examples
(``guide_examples.py``; ``test_seed_examples.py`` checks the copy against the guide when the
guide is present). A module that does ``from guide_checks import *`` defines a ``guide_blocks``
fixture: ``[(heading, code), ...]``.

The blocks run in document order in one namespace, as a reader pasting them into one session
would, with one change, ``import forge_core as sf`` for ``import streamforge as sf``. They reach
the mock exchange through ``FORGE_BINANCE_URL``/``FORGE_OKX_URL``/``FORGE_BINANCE_ARCHIVE_URL`` and
the test PostgreSQL by one more substitution, ``host="localhost"`` -> its address and port (the
server trusts the ``postgres`` role from 127.0.0.1, so the guide's passwords need no change).
Blocks that are deliberately incomplete in the guide (``sf.BinanceBackfilling(...)`` with a
literal ``...``) are listed in FRAGMENTS and not run; the test fails if that list and the guide
disagree. The mock's clock is frozen at ``NOW`` (2025-03-15 10:20:30.456 UTC) and the guide's
``datetime.now()`` (its "daily update") reads that clock too, by one more substitution: so "backfill
to now" is the same 630,000 candles whatever the date the suite runs on.
"""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path
from urllib.parse import urlsplit

import psycopg2
import pytest

from forge_core.times import parse_range
from forge_mock_exchange import MockConfig, MockExchange
from forge_mock_exchange.expected import as_csv_lines, binance_rows
from forge_mock_exchange.expected_okx import okx_rows

__all__ = ["FRAGMENTS", "guide", "parse_guide", "test_backfill_to_now_ends_with_the_last_closed_candle",
           "test_csv_outputs_are_exact", "test_every_block_ran_except_the_listed_fragments",
           "test_okx_example_wrote_okx_candles", "test_postgres_examples_loaded_exact_rows_without_duplicates",
           "test_transformer_columns_appear_in_the_csv"]

FRAGMENTS = {"Rate Limiting", "Safe Re-Running"}  # headings of blocks with a literal `...`
NOW = 1742034030456  # 2025-03-15 10:20:30.456 UTC: the mock's clock, and the guide's datetime.now()


def parse_guide(text: str) -> list[tuple[str, str]]:
    """The guide's ```python blocks, each with the heading it appears under."""
    out, heading = [], ""
    for match in re.finditer(r"^(#{2,4} [^\n]+)$|^```python\n(.*?)^```", text, re.S | re.M):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            out.append((heading, match.group(2)))
    return out


@pytest.fixture(scope="module")
def guide(guide_blocks, pg_url, tmp_path_factory):
    """Run every block once; the tests below check what they produced."""
    parts = urlsplit(pg_url)
    admin = psycopg2.connect(pg_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS crypto")
        cur.execute("CREATE DATABASE crypto")
    admin.close()
    workdir = tmp_path_factory.mktemp("guide")
    outcomes: dict[str, list[str]] = {}
    mp = pytest.MonkeyPatch()
    with MockExchange(MockConfig(now=NOW)) as mock:
        for name in ("FORGE_BINANCE_URL", "FORGE_BINANCE_FUTURES_URL", "FORGE_OKX_URL", "FORGE_BINANCE_ARCHIVE_URL"):
            mp.setenv(name, mock.url)
        mp.chdir(workdir)
        namespace: dict = {"__name__": "seed_guide"}
        try:
            for i, (heading, code) in enumerate(guide_blocks):
                key = f"{i:02d} {heading}"
                if "(...)" in code:
                    assert heading in FRAGMENTS, f"block {key} is a fragment not listed in FRAGMENTS"
                    outcomes[key] = ["fragment"]
                    continue
                code = code.replace("import streamforge as sf", "import forge_core as sf")
                code = code.replace('host="localhost"', f'host="{parts.hostname}", port={parts.port}')
                code = code.replace("datetime.now()", f"datetime.fromtimestamp({NOW / 1000})")
                if "sf." in code and "import forge_core as sf" not in code:
                    code = "import forge_core as sf\n" + code
                if "postgres_with_upsert" in code and "postgres_with_upsert" not in namespace:
                    namespace["postgres_with_upsert"] = namespace["postgres"]
                if '__name__ == "__main__"' in code:
                    namespace["__name__"] = "__main__"
                exec(compile(code, f"guide:{heading}", "exec"), namespace)
                namespace["__name__"] = "seed_guide"
                outcomes[key] = ["ran"]
        finally:
            mp.undo()
    return {"dir": workdir, "outcomes": outcomes, "db": pg_url.rsplit("/", 1)[0] + "/crypto",
            "blocks": len(guide_blocks)}


def read(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@functools.lru_cache(maxsize=8)  # several tests compare against the same year
def expected(symbol: str, tf: str, start: str, end: str, now: int) -> list[list[str]]:
    lo, hi = parse_range(start, end)
    return as_csv_lines(binance_rows(symbol, tf, lo, hi, now))


def test_every_block_ran_except_the_listed_fragments(guide):
    ran = [k for k, v in guide["outcomes"].items() if v == ["ran"]]
    fragments = [k for k, v in guide["outcomes"].items() if v == ["fragment"]]
    assert len(ran) + len(fragments) == guide["blocks"] == 27
    assert {k[3:] for k in fragments} == FRAGMENTS


@pytest.mark.parametrize("name,symbol,tf,start,end", [
    ("Binance-BTCUSDT-1m-2024-10-01_2024-10-31.csv", "BTCUSDT", "1m", "2024-10-01", "2024-10-31"),
    ("Binance-BTCUSDT-1h-2024-01-01_2024-12-31.csv", "BTCUSDT", "1h", "2024-01-01", "2024-12-31"),
    ("Binance-BTCUSDT-1m-2024-01-01_2024-12-31.csv", "BTCUSDT", "1m", "2024-01-01", "2024-12-31"),
    ("my_custom_name.csv", "BTCUSDT", "1m", "2024-01-01", "2024-12-31"),
])
def test_csv_outputs_are_exact(guide, name, symbol, tf, start, end):
    _, rows = read(guide["dir"] / name)
    assert rows == expected(symbol, tf, start, end, NOW)


def test_backfill_to_now_ends_with_the_last_closed_candle(guide):
    [path] = [p for p in guide["dir"].glob("Binance-BTCUSDT-1m-2024-01-01_*.csv") if "2024-12-31" not in p.name]
    assert path.name == "Binance-BTCUSDT-1m-2024-01-01_2025-03-15.csv"  # the exchange's UTC day, not this machine's
    _, rows = read(path)
    last_closed_end = NOW // 60_000 * 60_000 - 1  # the candle open at NOW is not closed yet
    assert int(rows[0][3]) == 1704067200000 and int(rows[-1][4]) == last_closed_end
    year = expected("BTCUSDT", "1m", "2024-01-01", "2024-12-31", NOW)  # cached: the year's file is checked too
    assert rows[:len(year)] == year
    assert rows[len(year):] == expected("BTCUSDT", "1m", "2025-01-01", str(last_closed_end), NOW)


def test_transformer_columns_appear_in_the_csv(guide):
    header, rows = read(guide["dir"] / "btc_with_indicators.csv")
    assert header[-3:] == ["price_change_pct", "is_bullish", "price_range"]
    assert len(rows) == len(expected("BTCUSDT", "1h", "2024-01-01", "2024-12-31", NOW))
    for row in rows[:50]:
        o, h, lo, c = (float(row[header.index(k)]) for k in ("open", "high", "low", "close"))
        assert float(row[-3]) == pytest.approx((c - o) / o * 100)
        assert row[-2] == str(c > o)
        assert float(row[-1]) == pytest.approx(h - lo)


def test_okx_example_wrote_okx_candles(guide):
    [path] = guide["dir"].glob("Okx-BTC-USDT-1m-2024-10-01_2024-10-31.csv")
    _, rows = read(path)
    assert len(rows) == 31 * 1440 and rows[0][0] == "okx" and rows[0][1] == "BTC-USDT"


def test_postgres_examples_loaded_exact_rows_without_duplicates(guide):
    conn = psycopg2.connect(guide["db"])
    with conn.cursor() as cur:
        cur.execute("SELECT count(*), count(DISTINCT (source, symbol, timeframe, open_ts)) FROM klines")
        total, distinct = cur.fetchone()
        assert total == distinct > 0
        cur.execute("SELECT open_ts, end_ts, open, high, low, close, volume FROM klines "
                    "WHERE source='binance' AND symbol='BTCUSDT' AND timeframe='1m' "
                    "AND open_ts >= 1727740800000 AND open_ts < 1730419200000 ORDER BY open_ts")
        got = cur.fetchall()
        cur.execute("SELECT symbol, count(*) FROM klines WHERE timeframe='1h' AND source='binance' "
                    "AND open_ts < 1735689600000 AND open_ts >= 1704067200000 GROUP BY symbol ORDER BY symbol")
        hourly = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM klines WHERE source='okx' AND timeframe='1h'")
        okx_hours = cur.fetchone()[0]
        cur.execute("SELECT open_ts, close FROM klines WHERE source='binance' AND symbol='BTCUSDT' "
                    "AND timeframe='1m' AND open_ts >= 1741910400000 ORDER BY open_ts")  # 2025-03-14 on
        daily = cur.fetchall()
    conn.close()
    want = expected("BTCUSDT", "1m", "2024-10-01", "2024-10-31", NOW)
    assert [(r[0], r[1]) for r in got] == [(int(w[3]), int(w[4])) for w in want]
    assert [float(x) for x in got[0][2:]] == [float(x) for x in want[0][5:10]]
    full_year = len(expected("BTCUSDT", "1h", "2024-01-01", "2024-12-31", NOW))
    assert {s: hourly.get(s) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "ADAUSDT")} == dict.fromkeys(
        ("BTCUSDT", "ETHUSDT", "SOLUSDT", "ADAUSDT"), full_year)
    lo, hi = parse_range("2024-01-01", "2024-12-31")
    assert okx_hours == len(okx_rows("BTC-USDT", "1h", lo, hi, NOW))
    # "Daily Update": yesterday and today by the (frozen) clock, up to the last closed candle
    want_daily = expected("BTCUSDT", "1m", "2025-03-14", "2025-03-15", NOW)
    assert len(daily) == len(want_daily) > 1400
    assert [(r[0], float(r[1])) for r in daily] == [(int(w[3]), float(w[8])) for w in want_daily]
