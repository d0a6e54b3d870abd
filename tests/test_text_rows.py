"""Rows kept as CSV text (issue 18): an ordinary sequence of rows to every consumer, checked by the
run loop like tuples, written by the CSV sink as it is."""

from __future__ import annotations

import pytest

from forge_core import CANDLE_COLUMNS, Batch, TextRows, parse_timeframe
from forge_core.pipeline import _after, _clean
from forge_core.records import check_rows
from forge_core.sources import Task

COLS = CANDLE_COLUMNS + ("trades",)
TF = parse_timeframe("1m")


def text_rows(opens: list[int], ends: list[int] | None = None, symbol: str = "S", trades: str = "7") -> TextRows:
    ends = ends if ends is not None else [t + 59_999 for t in opens]
    n = len(opens)
    rows = TextRows.build(COLS, {"open_ts": [str(t) for t in opens], "end_ts": [str(t) for t in ends],
                                 "open": ["1.10"] * n, "high": ["2.0"] * n, "low": ["0.5"] * n,
                                 "close": ["1.5"] * n, "volume": ["10.000"] * n, "trades": [trades] * n},
                          fixed={"source": "x", "symbol": symbol, "timeframe": "1m"}, ints=("trades",))
    assert rows is not None
    return rows


def tuples(opens: list[int]) -> list[tuple]:
    return [("x", "S", "1m", t, t + 59_999, "1.10", "2.0", "0.5", "1.5", "10.000", 7) for t in opens]


def test_text_rows_are_the_tuples_row_maker_would_build():
    opens = [i * 60_000 for i in range(5)]
    rows = text_rows(opens)
    assert list(rows) == tuples(opens) and rows == tuples(opens) and len(rows) == 5
    assert rows[2] == tuples(opens)[2] and rows[-1] == tuples(opens)[-1]
    assert list(rows[1:3]) == tuples(opens)[1:3] and rows[1:3].text() == "".join(
        ",".join(map(str, r)) + "\r\n" for r in tuples(opens)[1:3])
    joined = TextRows.join([rows[:2], rows[2:]])
    assert list(joined) == tuples(opens) and [list(c) for c in joined.chunks()] == [tuples(opens)[:2], tuples(opens)[2:]]
    assert Batch("x", "S", "1m", COLS, rows).csv_text() == rows.text()
    assert Batch("x", "S", "1m", COLS, list(rows)).csv_text() is None


@pytest.mark.parametrize("value", ["1,5", 'a"b', "1\r\n2"])
def test_a_value_that_would_need_quoting_makes_no_text_rows(value):
    fields = {"open_ts": ["0"], "end_ts": ["59999"], "open": [value], "high": ["2"], "low": ["1"], "close": ["1"],
              "volume": ["1"], "trades": ["1"]}
    assert TextRows.build(COLS, fields, fixed={"source": "x", "symbol": "S", "timeframe": "1m"},
                          ints=("trades",)) is None


@pytest.mark.parametrize("value", ["007", "+7", " 7", "7_0", "\u0667", "-0"])
def test_an_int_column_that_is_not_canonical_makes_no_text_rows(value):
    # the text would keep the exchange's spelling, the tuple the int: they would disagree
    assert TextRows.build(COLS, {"open_ts": ["0"], "end_ts": ["59999"], "open": ["1"], "high": ["2"], "low": ["1"],
                                 "close": ["1"], "volume": ["1"], "trades": [value]},
                          fixed={"source": "x", "symbol": "S", "timeframe": "1m"}, ints=("trades",)) is None


def test_an_empty_int_among_canonical_ones_makes_no_text_rows():
    # "" is no int: the tuples could not be built (it hid behind the digits of the other rows)
    assert TextRows.build(COLS, {"open_ts": ["0", "60000"], "end_ts": ["59999", "119999"], "open": ["1", "1"],
                                 "high": ["2", "2"], "low": ["1", "1"], "close": ["1", "1"], "volume": ["1", "1"],
                                 "trades": ["7", ""]},
                          fixed={"source": "x", "symbol": "S", "timeframe": "1m"}, ints=("trades",)) is None


@pytest.mark.parametrize("opens,ends,symbol,message", [
    ([0, 60_000, 120_001], None, "S", "row 2 opens at 120001, not on the 1m grid"),
    ([0, 60_000], [59_999, 60_000], "S", "row 1 opening 60000 has end_ts 60000, expected 119999"),
    ([0], None, "OTHER", "row 0 says source='x' symbol='OTHER' timeframe='1m', expected 'x' 'S' '1m'"),
])
def test_the_run_loop_checks_text_rows_like_tuples(opens, ends, symbol, message):
    rows = text_rows(opens, ends, symbol)
    with pytest.raises(ValueError, match=message):
        check_rows(rows, COLS, TF, "p", source="x", symbol="S")
    if symbol == "S":  # the same message as for the tuples
        with pytest.raises(ValueError, match=message):
            check_rows(list(rows), COLS, TF, "p", source="x", symbol="S")


def test_clean_and_resume_trim_text_rows_without_building_them():
    opens = [i * 60_000 for i in range(10)]
    rows = text_rows(opens)
    check_rows(rows, COLS, TF, "p", source="x", symbol="S")
    assert rows.step == 60_000
    clean, dropped = _clean(rows, Task("S", TF, 120_000, 480_000), 419_999, 3, 4)  # the candle ending now is open
    assert isinstance(clean, TextRows) and dropped == 0 and list(clean) == tuples(opens)[2:6]
    batch = Batch("x", "S", "1m", COLS, clean)
    after = _after(batch, 4 * 60_000 - 1)
    assert isinstance(after.rows, TextRows) and list(after.rows) == tuples(opens)[4:6]
    shuffled = TextRows.join([rows[5:], rows[:5]])  # out of order: sorted like any rows
    clean, dropped = _clean(shuffled, Task("S", TF, 0, 600_000), 1 << 60, 3, 4)
    assert clean == tuples(opens) and dropped == 0


def test_the_csv_sink_writes_text_rows_byte_for_byte_as_tuples(tmp_path):
    from forge_core import Pipeline, Source

    class TextSource(Source):
        name = "x"
        columns = COLS

        def fetch(self, task):
            opens = list(range(task.start, task.end, 60_000))
            return text_rows(opens) if self.settings.get("text", True) else tuples(opens)

    out = {}
    for text in (True, False):
        source = TextSource()
        source.settings["text"] = text
        path = tmp_path / f"{text}.csv"
        Pipeline(source, [("csv", {"output": str(path)})]).run("S", "1m", "2024-01-01", "2024-01-02")
        out[text] = path.read_bytes()
    assert out[True] == out[False] and out[True].count(b"\r\n") == 2 * 1440 + 1
