"""The archive helper process (issue 18): zips read on the other core give the same rows, the
same bytes, the same errors as read in-process; a helper that dies is replaced by the run's own
reading from the piece it reached; its memory is bounded; it never outlives the run."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest

from forge_binance import kline_text
from forge_binance.archive import read_rows
from forge_binance.kline_text import Helper
from forge_core.records import TextRows
from forge_core.timeframes import parse_timeframe

MINUTE = 60_000
START = 1_704_067_200_000


def zipped(text: str | bytes, name: str = "X.csv") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, text)
    return out.getvalue()


def lines(n: int, start: int = START, step: int = MINUTE, micros: bool = False, skip: tuple[int, ...] = (),
          eol: str = "\n") -> str:
    out = []
    for i in range(n):
        if i in skip:
            continue
        t = start + i * step
        o, c = (t * 1000, (t + step - 1) * 1000 + 999) if micros else (t, t + step - 1)
        out.append(f"{o},{40000 + i % 97}.12000000,{40100 + i % 89}.00000000,39990.50000000,40050.01000000,"
                   f"{i % 13}.{i:08d},{c},{i * 3}.5,{100 + i},1.25000000,0.00000000,0{eol}")
    return "".join(out)


def read(data: bytes, tf: str = "1m", helper: Helper | None = None, start: int = 0, end: int = 2**62):
    return read_rows(data, "binance", "BTCUSDT", parse_timeframe(tf), start, end, helper=helper)


def text_of(rows) -> str | None:
    return rows.text() if isinstance(rows, TextRows) else None


@pytest.fixture
def helper():
    h = Helper()
    yield h
    h.close()


CASES = {
    "a month of 1m, many pieces": zipped(lines(44_640)),
    "microseconds (spot from 2025)": zipped(lines(5_000, micros=True)),
    "holes inside pieces": zipped(lines(5_000, skip=(3, 2_000, 2_001, 4_998))),
    "a header row (newer futures files)": zipped("open_time,open,high,low,close,volume,close_time,quote_volume,"
                                                  "count,taker_buy_volume,taker_buy_quote_volume,ignore\n"
                                                  + lines(3_000)),
    "CRLF line ends (not plain: read line by line)": zipped(lines(3_000, eol="\r\n")),
    "a non-canonical piece in the middle": zipped(lines(2_000) + lines(1, start=START + 2_000 * MINUTE).replace(
        ",40050.01000000,", ",40050.01000000 ,") + lines(2_000, start=START + 2_001 * MINUTE)),
    "no trailing newline": zipped(lines(10).rstrip("\n")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_helper_reads_a_zip_to_the_same_rows_and_bytes_as_the_run(helper, name):
    data = CASES[name]
    here = read(data)
    there = read(data, helper=helper)
    assert helper._held == 0  # every answer taken
    assert type(there) is type(here)
    assert list(there) == list(here) and len(here) > 0
    assert text_of(there) == text_of(here)


def test_a_range_inside_the_file_is_cut_the_same(helper):
    data = CASES["a month of 1m, many pieces"]
    a, b = START + 1_234 * MINUTE, START + 30_000 * MINUTE
    assert list(read(data, helper=helper, start=a, end=b)) == list(read(data, start=a, end=b))


def test_a_helper_is_used_at_all(helper, monkeypatch):
    """Not a vacuous equality: the helper answered the file (the run's own parser did not)."""
    from forge_binance import archive

    monkeypatch.setattr(archive, "_text_rows", lambda *a: pytest.fail("parsed in-process"))
    rows = read(CASES["a month of 1m, many pieces"], helper=helper)
    assert len(rows) == 44_640


def test_a_zip_the_helper_cannot_inflate_fails_as_in_process(helper):
    """A corrupt deflate stream: the helper says so, the run reads the file itself and raises
    the same error the in-process path raises (the caller calls the file unusable)."""
    good = bytearray(zipped(lines(3_000)))
    at = good.find(b"X.csv") + 5 + 200  # inside the member's compressed data
    good[at:at + 40] = bytes(40)
    data = bytes(good)
    with pytest.raises(Exception) as here:
        read(data)
    with pytest.raises(Exception) as there:
        read(data, helper=helper)
    assert type(there.value) is type(here.value) and str(there.value) == str(here.value)


DIES_AFTER_3 = """
import os, sys
sys.path[:0] = {path!r}
from forge_binance import kline_text

class Out:
    answers = 0
    def write(self, b):
        if b[:1] in (b"S", b"R"):
            self.answers += 1
            if self.answers > 3:
                os._exit(1)  # dies after its third answer
        sys.stdout.buffer.write(b)
    def flush(self):
        sys.stdout.buffer.flush()

kline_text._serve(sys.stdin.buffer, Out())
"""


def test_a_helper_that_dies_mid_file_is_replaced_by_the_run_from_the_piece_it_reached():
    helper = Helper([sys.executable, "-c", DIES_AFTER_3.format(path=sys.path)])
    data = CASES["a month of 1m, many pieces"]
    try:
        rows = read(data, helper=helper)
        assert helper._gone and helper._held == 0
        assert list(rows) == list(read(data)) and text_of(rows) == text_of(read(data))
        assert helper.offer(data, MINUTE, "binance,BTCUSDT,1m") is None  # not started again
    finally:
        helper.close()


def test_the_helper_takes_no_file_while_busy_or_while_its_answers_wait(helper):
    data = CASES["a month of 1m, many pieces"]
    first = helper.offer(data, MINUTE, "binance,BTCUSDT,1m")
    assert first is not None
    assert helper.offer(data, MINUTE, "binance,BTCUSDT,1m") is None  # busy with the first
    deadline = time.monotonic() + 60
    while helper._current is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert helper._current is None and helper._held > 5 << 20  # done; a month's text waits
    helper.HELD = 4 << 20
    assert helper.offer(data, MINUTE, "binance,BTCUSDT,1m") is None  # too much not taken yet
    first.abandon()
    assert helper._held == 0
    assert helper.offer(data, MINUTE, "binance,BTCUSDT,1m") is not None


def test_the_helper_ends_with_the_run_and_ctrl_c_is_the_runs(helper):
    parsed = helper.offer(CASES["no trailing newline"], MINUTE, "binance,BTCUSDT,1m")
    assert parsed is not None
    while parsed.next() is not None:
        pass
    proc = helper._proc
    assert proc is not None
    assert os.getpgid(proc.pid) != os.getpgrp()  # Ctrl-C (the terminal's group) does not reach it
    helper.close()
    assert proc.poll() is not None


def test_the_helper_exits_when_the_run_dies_without_closing_it(tmp_path):
    """A run killed by SIGKILL cannot close the helper: its closed pipe ends it."""
    script = (f"import sys; sys.path[:0] = {sys.path!r}\n"
              "from forge_binance.kline_text import Helper\n"
              "h = Helper(); h.offer(b'', 60000, 'a,b,c'); print(h._proc.pid, flush=True)\n"
              "import time; time.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(run.stdout.readline())  # type: ignore[union-attr]
    run.kill()
    run.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return  # ended, not yet reaped by whoever adopted it
        except FileNotFoundError:
            return
        time.sleep(0.05)
    pytest.fail(f"the helper {pid} outlived the run")


def test_no_helper_on_one_core_without_room_or_when_turned_off(monkeypatch):
    """The run and its helper stay under 120 MiB: a run already holding more than ROOM MiB
    (a Parquet run, with pyarrow loaded) reads its zips itself, unless told otherwise."""
    monkeypatch.setattr(kline_text, "ROOM", 10_000)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert kline_text.new_helper() is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert kline_text.new_helper() is not None
    monkeypatch.setattr(kline_text, "ROOM", 1)
    assert kline_text.new_helper() is None
    monkeypatch.setenv("FORGE_BINANCE_ARCHIVE_HELPER", "1")
    assert kline_text.new_helper() is not None
    monkeypatch.setenv("FORGE_BINANCE_ARCHIVE_HELPER", "0")
    monkeypatch.setattr(kline_text, "ROOM", 10_000)
    assert kline_text.new_helper() is None


def test_the_helper_says_its_peak_memory_when_closed(helper):
    parsed = helper.offer(CASES["a month of 1m, many pieces"], MINUTE, "binance,BTCUSDT,1m")
    assert parsed is not None
    while parsed.next() is not None:
        pass
    helper.close()
    assert 5 < helper.peak_mib < 60  # read from /proc at close: what the benchmark adds to the run's


def test_a_zip_read_ahead_is_claimed_by_its_task_only_for_the_same_bytes(helper):
    data = CASES["holes inside pieces"]
    ahead = helper.offer(data, MINUTE, "binance,BTCUSDT,1m", key="a.zip")
    assert ahead is not None and helper.claim("a.zip", data) is ahead and helper.claim("a.zip", data) is None
    while ahead.next() is not None:
        pass
    again = helper.offer(data, MINUTE, "binance,BTCUSDT,1m", key="b.zip")
    assert again is not None
    assert helper.claim("b.zip", bytes(bytearray(data))) is None  # downloaded again (a checksum failed): not these answers
    deadline = time.monotonic() + 60
    while helper._current is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert helper._held == 0  # the unclaimed answers were let go


def test_a_stalled_helper_is_given_up_and_the_file_read_in_process(helper):
    data = CASES["a month of 1m, many pieces"]
    helper.STALL = 0.5
    assert helper.offer(b"", MINUTE, "a,b,c") is not None  # started
    proc = helper._proc
    assert proc is not None
    deadline = time.monotonic() + 30
    while helper._current is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        rows = read(data, helper=helper)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
    assert helper._gone and list(rows) == list(read(data))
    proc.wait(10)  # killed when given up
