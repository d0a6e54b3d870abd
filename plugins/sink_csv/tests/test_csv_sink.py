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


# -- quote-aware scans (issue 17 item 5; issue 16: --from auto reads the file from its end) ---
HEADER = [*COLUMNS, "note"]
TRAPS = ['plain', 'a "quoted" word', 'two\nlines', 'looks like a record:\r\nbinance,BTCUSDT,1m,0,99,1,1,1,1,1,x\r\n',
         '"', '\n\n', 'comma, here']


def noted(n):
    return [(*ROWS[i][:9], ROWS[i][9], TRAPS[i % len(TRAPS)]) for i in range(n)]


def test_last_boundary_never_cuts_inside_a_quoted_field():
    from forge_sink_csv.scan import last_boundary

    text = csv_writer_text([HEADER, *noted(40)]).encode()
    assert last_boundary(text) == len(text)
    # every prefix is cut exactly after the last complete record it holds
    ends = [len(csv_writer_text([HEADER, *noted(k)]).encode()) for k in range(41)]
    for size in range(len(text)):
        assert last_boundary(text[:size]) == max(e for e in [0, *ends] if e <= size), size


@pytest.mark.parametrize("block", [8, 64, 1 << 16])
def test_records_backward_reads_quoted_records_from_the_end(block):
    from forge_sink_csv.scan import read_header, records_backward

    rows = noted(30)
    data = csv_writer_text([HEADER, *rows]).encode()
    raw = io.BytesIO(data)
    header = read_header(raw, "x.csv")
    assert header is not None and header.columns == HEADER
    got = list(records_backward(raw, len(data), header.end, "x.csv", block=block))
    assert got == [list(map(str, r)) for r in reversed(rows)]


def test_a_part_torn_inside_a_quoted_field_resumes_after_the_last_whole_record(tmp_path):
    run = RunInfo("binance", "Binance", ("BTCUSDT",), "1m", 0, 60_000_000, COLUMNS)
    first = CsvSink(output=str(tmp_path / "n.csv"))
    first.open(run)
    first.resume_after("binance", "BTCUSDT", "1m")
    first.write(Batch("binance", "BTCUSDT", "1m", tuple(HEADER), noted(3)))
    first.commit()
    first.close(False)
    part = tmp_path / "n.csv.part"
    whole = part.read_bytes()
    part.write_bytes(whole[:whole.rindex(b"two\nlines") + 4])  # killed right after the newline inside record 3
    torn = part.read_bytes()
    assert torn.endswith(b'"two\n')
    again = CsvSink(output=str(tmp_path / "n.csv"))
    again.open(run)
    assert again.resume_after("binance", "BTCUSDT", "1m") == ROWS[1][4]
    again.write(Batch("binance", "BTCUSDT", "1m", tuple(HEADER), noted(5)[2:]))
    again.close(True)
    assert (tmp_path / "n.csv").read_bytes().decode() == csv_writer_text([HEADER, *noted(5)])
