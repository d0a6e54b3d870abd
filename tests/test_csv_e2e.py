"""The CSV sink end to end, through the CLI against the mock exchange: resume after a resample
and after ``--to`` moves, ``--from auto``, output paths and formats, locking, quoting and the
files it must never replace (issues 11, 16, 17)."""

from __future__ import annotations

import csv
import gzip
import io
import os
import threading
from pathlib import Path

import pytest

from forge_core.times import parse_range
from forge_mock_exchange import MockConfig, MockExchange
from forge_mock_exchange.expected import as_csv_lines, binance_rows

NOW = 1742034030456
DAY1 = "Binance-BTCUSDT-1m-2024-01-01_2024-01-02.csv"


@pytest.fixture
def only_rest(monkeypatch):
    """Binance over REST only (no archive), so the mock counts every candle served."""
    for name in ("FORGE_BINANCE_ARCHIVE_URL", "FORGE_BINANCE_FUTURES_URL", "FORGE_BINANCE_COINM_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FORGE_HTTP_MAX_ATTEMPTS", "1")


def run(forge, monkeypatch, mock, *args):
    monkeypatch.setenv("FORGE_BINANCE_URL", mock.url)
    return forge("run", "-s", "binance", "--archive", "rest", "-q", *args)


def failing(down_after: int) -> MockExchange:
    return MockExchange(MockConfig(now=NOW, faults={"down": 1.0}, extra={"down_after": down_after}))


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def reference(forge, monkeypatch, tmp_path: Path, *args: str) -> str:
    """What one uninterrupted run writes, in a directory of its own."""
    where = tmp_path / "reference"
    where.mkdir(exist_ok=True)
    here = os.getcwd()
    os.chdir(where)
    try:
        with MockExchange(MockConfig(now=NOW)) as mock:
            assert run(forge, monkeypatch, mock, *args).code == 0
    finally:
        os.chdir(here)
    (out,) = [p for p in where.iterdir() if p.suffix in (".csv", ".gz")]
    data = out.read_bytes()
    out.unlink()
    return gzip.decompress(data).decode() if out.suffix == ".gz" else data.decode()


def expected(symbol: str, tf: str, start: str, end: str) -> list[list[str]]:
    lo, hi = parse_range(start, end)
    return as_csv_lines(binance_rows(symbol, tf, lo, hi, NOW))


# -- resume (core-owned: by output timeframe, the end may move) ------------------------------
def test_a_resampled_run_resumes_its_part(forge, monkeypatch, in_tmp, only_rest, tmp_path):
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-10", "--workers", "1",
            "--commit-every", "10", "--transform", "resample", "--resample-to", "1h", "--output", "h.csv")
    with failing(6) as broken:
        assert run(forge, monkeypatch, broken, *args).code == 1
    kept = rows_of((in_tmp / "h.csv.part").read_text())[1:]
    assert len(kept) >= 20
    with MockExchange(MockConfig(now=NOW)) as healthy:
        again = run(forge, monkeypatch, healthy, *args)
        served = healthy.stats["binance.spot.candles"]
    assert again.code == 0 and "resumed BTCUSDT after" in again.out, again
    assert (in_tmp / "h.csv").read_bytes().decode() == reference(forge, monkeypatch, tmp_path, *args)
    assert served <= 10 * 1440 - len(kept) * 60 + 1  # the kept hours were not fetched again
    assert not list(in_tmp.glob("h.csv.*"))


def test_moving_to_later_continues_the_part_under_the_new_name(forge, monkeypatch, in_tmp, only_rest, tmp_path):
    first = ("--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-02", "--workers", "1",
             "--commit-every", "1000")
    with failing(5) as broken:
        assert run(forge, monkeypatch, broken, *first).code == 1
    kept = len(rows_of((in_tmp / (DAY1 + ".part")).read_text())) - 1
    assert kept >= 1000
    later = (*first[:5], "2024-01-03", *first[6:])
    with MockExchange(MockConfig(now=NOW)) as healthy:
        again = run(forge, monkeypatch, healthy, *later)
        served = healthy.stats["binance.spot.candles"]
    assert again.code == 0 and "resumed BTCUSDT after" in again.out, again
    name = "Binance-BTCUSDT-1m-2024-01-01_2024-01-03.csv"
    assert sorted(p.name for p in in_tmp.iterdir()) == [name], "the old .part is continued, not left behind"
    assert rows_of((in_tmp / name).read_text())[1:] == expected("BTCUSDT", "1m", "2024-01-01", "2024-01-03")
    assert served == 3 * 1440 - kept + 1


def test_the_kept_count_is_what_the_part_holds(only_rest, monkeypatch, in_tmp):
    """A failed run keeps exactly what it committed: the count the run reports (and Ctrl-C
    prints) is the count the resume uses."""
    from forge_core import ForgeError, Pipeline

    with failing(6) as broken:  # 3 requests before the pages, then 3 pages of 1000
        monkeypatch.setenv("FORGE_BINANCE_URL", broken.url)
        pipeline = Pipeline(("binance", {"archive": "rest"}), [("csv", {"output": "k.csv"})], workers=1,
                            commit_every=1500)
        with pytest.raises(ForgeError):
            pipeline.run(["BTCUSDT"], "1m", "2024-01-01", "2024-01-05")
    assert pipeline.result is not None
    written, committed = pipeline.result.total, pipeline.result.committed
    assert written > committed > 0  # rows were written after the last commit
    assert len(rows_of((in_tmp / "k.csv.part").read_text())) - 1 == committed


# -- --from auto -------------------------------------------------------------------------------
def test_from_auto_extends_an_output_file(forge, monkeypatch, in_tmp, only_rest):
    base = ("--symbol", "BTCUSDT", "-t", "1h", "--output", "m.csv")
    with MockExchange(MockConfig(now=NOW)) as mock:
        assert run(forge, monkeypatch, mock, *base, "--from", "2024-01-01", "--to", "2024-01-31").code == 0
        before = mock.stats["binance.spot.candles"]
        again = run(forge, monkeypatch, mock, *base, "--from", "auto", "--to", "2024-02-10")
        served = mock.stats["binance.spot.candles"] - before
        # a symbol the file does not hold: the clear error (until a fallback start exists), file untouched
        other = run(forge, monkeypatch, mock, "--symbol", "ETHUSDT", *base[2:], "--from", "auto", "--to", "2024-02-11")
    assert again.code == 0, again
    assert rows_of((in_tmp / "m.csv").read_text())[1:] == expected("BTCUSDT", "1h", "2024-01-01", "2024-02-10")
    assert served <= 10 * 24 + 1
    assert other.code == 2 and "--from auto: m.csv holds no binance ETHUSDT 1h candles" in other.err, other
    assert sorted(p.name for p in in_tmp.iterdir()) == ["m.csv"]


def test_from_auto_with_default_names_extends_the_newest_file(forge, monkeypatch, in_tmp, only_rest):
    base = ("--symbol", "BTCUSDT,ETHUSDT", "-t", "1h")
    with MockExchange(MockConfig(now=NOW)) as mock:
        assert run(forge, monkeypatch, mock, *base, "--from", "2024-01-01", "--to", "2024-01-10").code == 0
        again = run(forge, monkeypatch, mock, *base, "--from", "auto", "--to", "2024-01-20")
    assert again.code == 0, again
    for symbol in ("BTCUSDT", "ETHUSDT"):
        name = f"Binance-{symbol}-1h-2024-01-01_2024-01-20.csv"
        assert rows_of((in_tmp / name).read_text())[1:] == expected(symbol, "1h", "2024-01-01", "2024-01-20")
    assert len(list(in_tmp.iterdir())) == 2, "the shorter files are superseded, nothing else is left"


# -- output paths and formats ----------------------------------------------------------------
def test_template_directories_source_and_label(forge, monkeypatch, in_tmp, only_rest):
    with MockExchange(MockConfig(now=NOW)) as mock:
        result = run(forge, monkeypatch, mock, "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01",
                     "--to", "2024-01-01", "--output", "data/{source}/{label}_{symbol}_{timeframe}.csv")
    assert result.code == 0, result
    assert rows_of((in_tmp / "data/binance/Binance_BTCUSDT_1h.csv").read_text())[1:] == \
        expected("BTCUSDT", "1h", "2024-01-01", "2024-01-01")


def test_gzip_output_is_streamed_and_resumes(forge, monkeypatch, in_tmp, only_rest, tmp_path):
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-04", "--workers", "1",
            "--commit-every", "1000", "--output", "b.csv.gz")
    with failing(4) as broken:
        assert run(forge, monkeypatch, broken, *args).code == 1
    part = (in_tmp / "b.csv.gz.part").read_bytes()
    with open(in_tmp / "b.csv.gz.part", "ab") as f:  # as a kill in the middle of a member leaves it
        f.write(part[:400])
    with MockExchange(MockConfig(now=NOW)) as healthy:
        again = run(forge, monkeypatch, healthy, *args)
    assert again.code == 0 and "resumed BTCUSDT after" in again.out, again
    text = gzip.decompress((in_tmp / "b.csv.gz").read_bytes()).decode()
    assert rows_of(text)[1:] == expected("BTCUSDT", "1m", "2024-01-01", "2024-01-04")


@pytest.mark.parametrize("name,pointer", [("x.parquet", "--sink parquet"), ("x.json", ".csv.gz")])
def test_other_formats_are_refused_with_a_pointer(forge, monkeypatch, in_tmp, only_rest, name, pointer):
    with MockExchange(MockConfig(now=NOW)) as mock:
        result = run(forge, monkeypatch, mock, "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to",
                     "2024-01-01", "--output", name)
        requests = mock.stats.get("binance.spot.requests", 0)
    assert result.code == 2 and pointer in result.err and len(result.err.strip().splitlines()) == 1, result
    assert requests == 0 and not list(in_tmp.iterdir())


def test_output_a_directory_fails_before_fetching(forge, monkeypatch, in_tmp, only_rest):
    (in_tmp / "data").mkdir()
    with MockExchange(MockConfig(now=NOW)) as mock:
        result = run(forge, monkeypatch, mock, "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to",
                     "2024-01-01", "--output", "data")
        requests = mock.stats.get("binance.spot.requests", 0)
    assert result.code == 2 and "--output data is a directory" in result.err, result
    assert requests == 0 and list(in_tmp.iterdir()) == [in_tmp / "data"]


def test_output_dash_writes_csv_to_stdout_and_the_summary_to_stderr(forge_process, tmp_path):
    with MockExchange(MockConfig(now=NOW)) as mock:
        result = forge_process("run", "-s", "binance", "--archive", "rest", "--symbol", "BTCUSDT", "-t", "1h",
                               "--from", "2024-01-01", "--to", "2024-01-02", "--output", "-",
                               env={"FORGE_BINANCE_URL": mock.url}, cwd=tmp_path)
    assert result.code == 0, result
    rows = rows_of(result.out)
    assert rows[0][:5] == ["source", "symbol", "timeframe", "open_ts", "end_ts"]
    assert rows[1:] == expected("BTCUSDT", "1h", "2024-01-01", "2024-01-02")
    assert "48 1h candles" in result.err and "-> stdout" in result.err
    assert not list(tmp_path.iterdir())


# -- hardening ---------------------------------------------------------------------------------
def test_a_second_run_on_the_same_output_fails_at_once_naming_the_holder(forge_process, tmp_path):
    from forge_core import RunInfo, SinkError
    from forge_sink_csv import CsvSink

    holder = CsvSink(output=str(tmp_path / "x.csv"))
    holder.open(RunInfo("binance", "Binance", ("BTCUSDT",), "1m", 0, 60_000, ()))
    try:
        with MockExchange(MockConfig(now=NOW)) as mock:
            result = forge_process("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", "2024-01-01",
                                   "--to", "2024-01-01", "--output", "x.csv", env={"FORGE_BINANCE_URL": mock.url},
                                   cwd=tmp_path)
            requests = mock.stats.get("binance.spot.requests", 0)
        assert result.code == 1 and requests == 0, result
        assert result.err.strip() == (f"forge: error: x.csv is being written by another forge run (PID {os.getpid()}); "
                                      "let it finish or stop it, or pass --wait-for-lock SECONDS to wait for it")
        with pytest.raises(SinkError, match="written twice by this run"):
            CsvSink(output=str(tmp_path / "x.csv")).open(RunInfo("binance", "Binance", ("BTCUSDT",), "1m", 0,
                                                                 60_000, ()))
        with MockExchange(MockConfig(now=NOW)) as mock:
            later = threading.Timer(1.0, holder.close, (False,))
            later.start()
            waited = forge_process("run", "-s", "binance", "--archive", "rest", "--symbol", "BTCUSDT", "-t", "1h",
                                   "--from", "2024-01-01", "--to", "2024-01-01", "--output", "x.csv",
                                   "--wait-for-lock", "30", env={"FORGE_BINANCE_URL": mock.url}, cwd=tmp_path)
            later.join()
        assert waited.code == 0, waited
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv"]
    finally:
        holder.close(False)


def test_sink_csv_given_twice_is_one_clear_line(forge, monkeypatch, in_tmp, only_rest):
    with MockExchange(MockConfig(now=NOW)) as mock:
        result = run(forge, monkeypatch, mock, "--sink", "csv", "--sink", "csv", "--symbol", "BTCUSDT",
                     "--from", "2024-01-01", "--to", "2024-01-01")
    assert result.code == 2 and "--sink csv is given twice; a run writes each sink once" in result.err, result
    assert len(result.err.strip().splitlines()) == 1
    assert not list(in_tmp.iterdir())


NOTES = '''
def fn(candle):
    candle["note"] = 'first line\\nsecond, "quoted" line\\n' + str(candle["close"])
    return candle
'''


def test_a_part_torn_inside_a_multi_line_field_resumes_exactly(forge, monkeypatch, in_tmp, only_rest, tmp_path):
    (tmp_path / "notes_tx.py").write_text(NOTES)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-03", "--workers", "1",
            "--commit-every", "1000", "--transform", "notes_tx:fn", "--output", "n.csv")
    with failing(5) as broken:
        first = run(forge, monkeypatch, broken, *args)
    assert first.code == 1, first
    part = in_tmp / "n.csv.part"
    data = part.read_bytes()
    torn = data.rindex(b"second, ")  # a kill right after the embedded newline of the last note
    part.write_bytes(data[:torn])
    with MockExchange(MockConfig(now=NOW)) as healthy:
        again = run(forge, monkeypatch, healthy, *args)
    assert again.code == 0 and "resumed BTCUSDT after" in again.out, again
    assert (in_tmp / "n.csv").read_bytes().decode() == reference(forge, monkeypatch, tmp_path, *args)


def test_a_symlink_is_followed_and_a_fifo_written_through(forge, monkeypatch, in_tmp, only_rest,
                                                          tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (in_tmp / "link.csv").symlink_to(elsewhere / "target.csv")
    fifo = in_tmp / "pipe.csv"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    base = ("--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01", "--to", "2024-01-01")
    with MockExchange(MockConfig(now=NOW)) as mock:
        linked = run(forge, monkeypatch, mock, *base, "--output", "link.csv")
        piped = run(forge, monkeypatch, mock, *base, "--output", "pipe.csv")
    reader.join(10)
    assert linked.code == 0 and piped.code == 0, (linked, piped)
    want = expected("BTCUSDT", "1h", "2024-01-01", "2024-01-01")
    assert (in_tmp / "link.csv").is_symlink() and rows_of((elsewhere / "target.csv").read_text())[1:] == want
    assert fifo.is_fifo() and rows_of(got[0].decode())[1:] == want
    assert sorted(p.name for p in in_tmp.iterdir()) == ["link.csv", "pipe.csv"]
    assert sorted(p.name for p in elsewhere.iterdir()) == ["target.csv"]


def test_a_corrupted_part_is_one_clear_line(forge, monkeypatch, in_tmp, only_rest):
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-02", "--workers", "1",
            "--commit-every", "1000", "--output", "c.csv")
    with failing(5) as broken:
        assert run(forge, monkeypatch, broken, *args).code == 1
    part = in_tmp / "c.csv.part"
    lines = part.read_bytes().split(b"\r\n")
    lines[5] = b"binance,BTCUSDT,1m,garbage"
    part.write_bytes(b"\r\n".join(lines))
    with MockExchange(MockConfig(now=NOW)) as healthy:
        result = run(forge, monkeypatch, healthy, *args)
        requests = healthy.stats.get("binance.spot.requests", 0)
    assert result.code == 1 and requests == 0, result
    assert result.err.strip() == (f"forge: error: {part}, left by an interrupted run, is corrupted "
                                  "(record 6: 4 fields, the header has 14); delete it to start over")


def test_disk_full_names_the_file(forge, monkeypatch, in_tmp, only_rest):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # what a full disk does to the commit of the last rows
    with MockExchange(MockConfig(now=NOW)) as mock:
        result = run(forge, monkeypatch, mock, "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to",
                     "2024-01-01", "--output", "f.csv")
    assert result.code == 1, result
    assert result.err.strip() == f"forge: error: cannot write CSV {in_tmp / 'f.csv.part'}: No space left on device"
    assert not list(in_tmp.iterdir()), "nothing committed, nothing kept"


def test_the_symbol_cannot_escape_the_folder(tmp_path):
    from forge_core import RunInfo
    from forge_sink_csv import CsvSink

    sink = CsvSink(output=str(tmp_path / "data" / "{symbol}" / "{symbol}.csv"))
    run_info = RunInfo("binance", "Binance", ("../../evil", ".."), "1m", 0, 86_400_000, ())
    for symbol in run_info.symbols:
        path = Path(sink.path_for(run_info, symbol)).resolve()
        assert path.is_relative_to(tmp_path / "data"), path


@pytest.fixture
def far_east(monkeypatch):
    """This machine's local time zone is UTC+14: its local date is a day ahead of UTC from 10:00 UTC."""
    import time

    monkeypatch.setenv("TZ", "Etc/GMT-14")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_run_to_now_is_named_by_the_exchange_s_utc_day(forge, monkeypatch, in_tmp, only_rest, far_east):
    """The exchange's clock (frozen at 2025-03-15 10:20 UTC; 2025-03-16 00:20 in UTC+14) names the
    file, not this machine's clock or its local date; the run and the name agree on that day."""
    from forge_core.times import day_label, now_ms

    assert day_label(NOW) == "2025-03-15" and day_label(now_ms()) != "2025-03-15"
    with MockExchange(MockConfig(now=NOW)) as mock:
        result = run(forge, monkeypatch, mock, "--symbol", "BTCUSDT", "-t", "1h", "--from", "2025-03-14", "--to", "now")
    assert result.code == 0, result
    name = "Binance-BTCUSDT-1h-2025-03-14_2025-03-15.csv"
    assert [p.name for p in in_tmp.iterdir()] == [name] and name in result.out
    assert rows_of((in_tmp / name).read_text())[1:] == expected("BTCUSDT", "1h", "2025-03-14", str(NOW))


def test_an_exchange_clock_days_behind_this_machine_names_the_file_and_ends_the_run(forge, monkeypatch, in_tmp,
                                                                                   only_rest, far_east):
    """A real-time exchange clock two days behind this machine's: the run ends at the exchange's now
    and the file says the exchange's day."""
    from forge_core.times import day_label, now_ms

    with MockExchange(MockConfig(clock_offset=-2 * 86_400_000)) as mock:
        exchange_day = day_label(mock.now())
        start = day_label(mock.now() - 86_400_000)
        result = run(forge, monkeypatch, mock, "--symbol", "BTCUSDT", "-t", "1h", "--from", start, "--to", "now")
    assert result.code == 0, result
    assert exchange_day != day_label(now_ms())
    assert [p.name for p in in_tmp.iterdir()] == [f"Binance-BTCUSDT-1h-{start}_{exchange_day}.csv"]


def test_an_interrupted_run_to_now_resumes_under_the_exchange_s_day(forge, monkeypatch, in_tmp, only_rest, far_east):
    args = ("--symbol", "BTCUSDT", "--from", "2025-03-13", "--to", "now", "--workers", "1", "--commit-every", "1000")
    name = "Binance-BTCUSDT-1m-2025-03-13_2025-03-15.csv"
    with failing(5) as broken:
        assert run(forge, monkeypatch, broken, *args).code == 1
    assert sorted(p.name for p in in_tmp.iterdir()) == [name + ".part", name + ".part.meta"]
    with MockExchange(MockConfig(now=NOW)) as healthy:
        again = run(forge, monkeypatch, healthy, *args)
    assert again.code == 0 and "resumed BTCUSDT after" in again.out, again
    assert sorted(p.name for p in in_tmp.iterdir()) == [name]
    assert rows_of((in_tmp / name).read_text())[1:] == expected("BTCUSDT", "1m", "2025-03-13", str(NOW))


def test_a_file_of_another_series_is_not_replaced(forge, exchange_env, in_tmp):
    """--output x.csv naming the file of another symbol or timeframe replaced it without a word;
    the same series is rewritten as before."""
    base = ("run", "-q", "-s", "binance", "--from", "2024-01-01", "--to", "2024-01-02", "--output", "x.csv")
    assert forge(*base, "--symbol", "ETHUSDT", "-t", "1h").code == 0
    held = (in_tmp / "x.csv").read_bytes()
    for other in (("--symbol", "BTCUSDT", "-t", "1h"), ("--symbol", "ETHUSDT", "-t", "4h")):
        result = forge(*base, *other)
        assert result.code == 1, result
        assert "x.csv holds binance ETHUSDT 1h candles, not this run's binance" in result.err
        assert (in_tmp / "x.csv").read_bytes() == held
        assert sorted(p.name for p in in_tmp.iterdir()) == ["x.csv"]
    again = forge(*base, "--symbol", "ETHUSDT", "-t", "1h")
    assert again.code == 0 and "0 rows changed" in again.out, again
