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


# -- rows held as columns (issue 18, REST): TextRows.from_columns -----------------------------
def column_rows(opens: list[int], *, as_text: bool = False, **over: list) -> TextRows | None:
    n = len(opens)
    ints = {"open_ts": opens, "end_ts": [t + 59_999 for t in opens], "trades": [7] * n}
    if as_text:  # the int columns as the decimal strings a page's body spells them
        ints = {k: [str(v) for v in col] for k, col in ints.items()}
    values = {**ints, "open": ["1.10"] * n, "high": ["2.0"] * n, "low": ["0.5"] * n, "close": ["1.5"] * n,
              "volume": ["10.000"] * n, **over}
    return TextRows.from_columns(COLS, values, fixed={"source": "x", "symbol": "S", "timeframe": "1m"},
                                 ints=("trades",))


@pytest.mark.parametrize("as_text", [False, True])
def test_column_rows_are_the_tuples_and_the_text_csv_writer_gives(as_text):
    import csv
    import io

    opens = [i * 60_000 for i in range(6)]
    rows = column_rows(opens, as_text=as_text)
    assert rows is not None and isinstance(rows, TextRows)
    assert list(rows) == tuples(opens) and rows == tuples(opens) and len(rows) == 6
    assert [type(v) for v in rows[0]] == [type(v) for v in tuples(opens)[0]]  # ints where the columns are ints
    assert rows[-1] == tuples(opens)[-1] and list(rows[2:4]) == tuples(opens)[2:4]
    buffer = io.StringIO()
    csv.writer(buffer).writerows(tuples(opens))
    assert rows.text() == buffer.getvalue() == rows[0:6].text()
    assert rows[2:4].text() == "".join(buffer.getvalue().splitlines(keepends=True)[2:4])
    assert Batch("x", "S", "1m", COLS, rows).csv_text() == buffer.getvalue()
    check_rows(rows, COLS, TF, "p", source="x", symbol="S")
    clean, _ = _clean(rows, Task("S", TF, 60_000, 300_000), 1 << 60, 3, 4)
    assert list(clean) == tuples(opens)[1:5] and clean.text() == "".join(buffer.getvalue().splitlines(True)[1:5])


@pytest.mark.parametrize("column", ["open_ts", "end_ts", "trades"])
def test_column_rows_refuse_int_columns_mixing_text_and_ints(column):
    """A decoded body whose first open time is text and the next an int: no rows in columns
    (the per-row path decides), never an AttributeError that would end the run."""
    opens = [0, 60_000, 120_000]
    values = {"open_ts": ["0", "60000", "120000"], "end_ts": ["59999", "119999", "179999"], "trades": ["7", "7", "7"]}
    values[column] = [values[column][0], int(values[column][1]), values[column][2]]
    assert column_rows(opens, as_text=True, **values) is None


@pytest.mark.parametrize("value", ["1,5", 'a"b', "1\r\n2", 1.5, None])
def test_column_rows_with_a_value_csv_must_quote_have_no_text_and_are_written_as_tuples(value, tmp_path):
    """The rows stay the values as given (as the per-row path keeps them); only the shortcut
    is off, and the CSV sink writes them with csv.writer, quoted where needed."""
    import csv

    from forge_core import Pipeline, Source

    opens = [0, 60_000]
    rows = column_rows(opens, close=["1.5", value])
    assert rows is not None and rows.text() is None and Batch("x", "S", "1m", COLS, rows).csv_text() is None
    want = tuples(opens)
    want[1] = want[1][:8] + (value,) + want[1][9:]
    assert list(rows) == want

    class ColumnSource(Source):
        name = "x"
        columns = COLS

        def fetch(self, task):
            return column_rows([task.start, task.start + 60_000], close=["1.5", value])

    path = tmp_path / "out.csv"
    Pipeline(ColumnSource(), [("csv", {"output": str(path)})]).run("S", "1m", "2024-01-01 00:00", "2024-01-01 00:01")
    with path.open(newline="") as f:
        got = list(csv.reader(f))
    assert got[2][COLS.index("close")] == ("" if value is None else str(value))


@pytest.mark.parametrize("bad", [["0", "60000x"], ["0", "060000"], ["0", ""], ["0", "+60000"], ["0", "6e4"],
                                 [0, 60_000.0], [0, None], [0, "60000"], [0, 1 << 64]])
def test_column_rows_refuse_an_int_column_that_is_not_canonical_ints(bad):
    # the caller then builds tuples (with int()), so text and rows never disagree
    assert column_rows([0, 60_000], open_ts=bad) is None


def test_a_bool_in_an_int_column_is_the_int_the_per_row_path_gives():
    rows = column_rows([0, 60_000], trades=[True, 7])
    assert rows is not None and list(rows)[0][COLS.index("trades")] == 1 == int(True)
    assert rows.text().split("\r\n")[0].endswith(",1")



@pytest.mark.parametrize("opens", [
    [i * 60_000 for i in range(1000)],  # an even run: compared with the grid as one string
    [0, 60_000, 180_000, 240_000],  # a hole: read one by one (by the JSON decoder)
    [120_000, 60_000, 0],  # descending
    [60_000],
])
def test_int_columns_as_text_become_the_same_ints_however_they_are_spaced(opens):
    rows = column_rows(opens, as_text=True)
    assert rows is not None and rows.open_ts.tolist() == opens and rows.end_ts.tolist() == [t + 59_999 for t in opens]
    assert list(rows) == tuples(opens)


@pytest.mark.parametrize("bad", [["0", "60000", "0120000"], ["60000", "120000", "180000 "], ["0", "60000", "٣"]])
def test_a_bad_value_at_the_end_of_an_even_run_is_refused(bad):
    assert column_rows([0, 60_000, 120_000], as_text=True, open_ts=bad) is None


@pytest.mark.parametrize("held", ["text", "columns", "columns as text"])
def test_a_column_is_its_values_in_row_order_as_the_rows_hold_them(held):
    """``column(name)``: what ``[row[i] for row in rows]`` gives (ints in the int columns), for
    rows held as text in several pieces and as columns (ints given as ints or as text), and for
    their slices; ``nbytes`` grows with the rows held."""
    opens = [i * 60_000 for i in range(7)]
    if held == "text":
        rows = TextRows.join([text_rows(opens[:3]), text_rows(opens[3:])])
    else:
        got = column_rows(opens, as_text=held == "columns as text")
        assert got is not None
        rows = got
    for part in (rows, rows[2:6]):
        want = [list(col) for col in zip(*part, strict=True)]
        assert [list(part.column(c)) for c in COLS] == want
        assert [type(v) for v in part.column("trades")] == [int] * len(part)
    assert rows.nbytes > rows[2:6].nbytes > 4 * len("x,S,1m,0,59999,1.10,2.0,0.5,1.5,10.000,7")
