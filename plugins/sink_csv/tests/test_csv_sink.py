"""The CSV sink on its own: bytes identical to csv.writer, atomic rename, resume scan."""

import csv
import io

import pytest

from forge_core import Batch, RunInfo
from forge_sink_csv import CsvSink
from forge_sink_csv.sink import _plain_lines

COLUMNS = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume")
ROWS = [("binance", "BTCUSDT", "1m", 60_000 * i, 60_000 * i + 59_999, "1.5", "2", "1", "1.75", "0.00000000")
        for i in range(1000)]


def csv_writer_text(rows):
    out = io.StringIO(newline="")
    csv.writer(out).writerows(rows)
    return out.getvalue()


def test_fast_path_writes_what_csv_writer_writes():
    assert _plain_lines(ROWS, 10) == csv_writer_text(ROWS)
    floats = [(*r[:5], 1.5, 2.25, True, 3, 1e-7) for r in ROWS[:10]]
    assert _plain_lines(floats, 10) == csv_writer_text(floats)


@pytest.mark.parametrize("odd", ["a,b", 'say "hi"', "two\nlines", None, "cr\r"])
def test_fields_needing_quotes_fall_back_to_csv_writer(odd):
    rows = [(*ROWS[0][:9], odd)]
    assert _plain_lines(rows, 10) is None


def test_sink_output_is_atomic_and_identical(tmp_path):
    sink = CsvSink(output=str(tmp_path / "{symbol}.csv"))
    run = RunInfo("binance", "Binance", ("BTCUSDT",), "1m", 0, 60_000_000, COLUMNS)
    sink.open(run)
    odd = [(*ROWS[0][:9], 'x,"y"')]
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, ROWS))
    sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, odd))
    sink.commit()
    assert not (tmp_path / "BTCUSDT.csv").exists() and (tmp_path / "BTCUSDT.csv.part").exists()
    sink.close(True)
    text = (tmp_path / "BTCUSDT.csv").read_bytes().decode()
    assert text == csv_writer_text([COLUMNS, *ROWS, *odd])
    assert list(tmp_path.iterdir()) == [tmp_path / "BTCUSDT.csv"]
