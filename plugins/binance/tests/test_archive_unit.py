"""The archive client's pure parts: planning, checksum lines, CSV quirks, gaps; against the real
samples in ``fixtures/`` (copied from Binance's own repositories, see PROVENANCE.md)."""

from __future__ import annotations

import csv
import io
import time
import zipfile
from pathlib import Path

import pytest

from forge_binance.archive import (
    ArchiveFile,
    day_file,
    find_gaps,
    first_monday,
    month_file,
    parse_checksum,
    plan_segments,
    published,
    read_rows,
)
from forge_core.timeframes import parse_timeframe
from forge_core.times import parse_instant

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # real archive samples; see PROVENANCE.md


def ms(text: str) -> int:
    return parse_instant(text)[0]


def describe(segments) -> list[tuple[str, str, str]]:
    from forge_core.times import iso

    return [(iso(s.start), iso(s.end), s.file.date if s.file else "rest") for s in segments]


NOW = ms("2025-03-15 10:20:30")


def test_complete_months_monthly_partial_months_daily_unpublished_tail_rest():
    tf = parse_timeframe("1m")
    segs = plan_segments(tf, ms("2025-01-30 12:00"), tf.floor(NOW), NOW)
    assert describe(segs) == [
        ("2025-01-30T12:00:00Z", "2025-01-31T00:00:00Z", "2025-01-30"),
        ("2025-01-31T00:00:00Z", "2025-02-01T00:00:00Z", "2025-01-31"),
        ("2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z", "2025-02"),
        *[(f"2025-03-{d:02d}T00:00:00Z", f"2025-03-{d + 1:02d}T00:00:00Z", f"2025-03-{d:02d}") for d in range(1, 14)],
        # day 14 ended less than a day ago: not expected to be published yet; merged with today
        ("2025-03-14T00:00:00Z", "2025-03-15T10:20:00Z", "rest"),
    ]
    kinds = {s.file.period for s in segs if s.file}
    assert kinds == {"monthly", "daily"}


def test_a_month_not_yet_published_is_taken_from_daily_files():
    tf = parse_timeframe("5m")
    now = ms("2025-03-03 23:00")  # February's file is due on Monday 2025-03-03; planned from the 4th
    segs = plan_segments(tf, ms("2025-02-01"), ms("2025-03-01"), now)
    assert [s.file.period for s in segs] == ["daily"] * 28
    segs = plan_segments(tf, ms("2025-02-01"), ms("2025-03-01"), ms("2025-03-04"))
    assert [s.file.date for s in segs] == ["2025-02"]


def test_timeframes_without_daily_files_use_monthly_files_for_partial_months():
    for name in ("3d", "1w", "1M"):
        tf = parse_timeframe(name)
        segs = plan_segments(tf, ms("2024-01-15"), ms("2024-03-10"), NOW)
        assert describe(segs) == [
            ("2024-01-15T00:00:00Z", "2024-02-01T00:00:00Z", "2024-01"),
            ("2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z", "2024-02"),
            ("2024-03-01T00:00:00Z", "2024-03-10T00:00:00Z", "2024-03"),
        ], name


def test_one_second_candles_always_come_in_daily_files():
    tf = parse_timeframe("1s")
    segs = plan_segments(tf, ms("2024-02-01"), ms("2024-03-01"), NOW)
    assert len(segs) == 29 and {s.file.period for s in segs} == {"daily"}


def test_a_veto_turns_files_into_merged_rest_ranges():
    tf = parse_timeframe("1h")
    segs = plan_segments(tf, ms("2024-01-01"), ms("2024-04-01"), NOW, worth=lambda a, b: tf.count(a, b) > 1000)
    assert describe(segs) == [("2024-01-01T00:00:00Z", "2024-04-01T00:00:00Z", "rest")]


def test_segments_tile_the_range_exactly():
    for name in ("1m", "1h", "1d", "1w", "1M"):
        tf = parse_timeframe(name)
        start, end = ms("2023-11-17 13:00"), tf.floor(NOW)
        segs = plan_segments(tf, start, end, NOW)
        assert segs[0].start == start and segs[-1].end == end
        assert all(a.end == b.start for a, b in zip(segs, segs[1:], strict=False))
        assert sum(tf.count(s.start, s.end) for s in segs) == tf.count(start, end)


def test_planning_does_not_depend_on_the_machine_time_zone(monkeypatch):
    tf = parse_timeframe("1m")
    args = (tf, ms("2024-12-30 22:00"), ms("2025-02-03 02:00"), NOW)
    utc = describe(plan_segments(*args))
    for zone in ("Pacific/Kiritimati", "America/St_Johns", "Asia/Kathmandu"):
        monkeypatch.setenv("TZ", zone)
        time.tzset()
        assert describe(plan_segments(*args)) == utc
        assert first_monday(ms("2025-03-01")) == ms("2025-03-03")
    monkeypatch.delenv("TZ")
    time.tzset()


def test_calendar_helpers():
    assert month_file(ms("2024-02-29 23:59")) == ArchiveFile("monthly", "2024-02", ms("2024-02-01"), ms("2024-03-01"))
    assert month_file(ms("2024-12-05")).end == ms("2025-01-01")
    assert day_file(ms("2024-02-29 23:59")) == ArchiveFile("daily", "2024-02-29", ms("2024-02-29"), ms("2024-03-01"))
    assert first_monday(ms("2024-04-01")) == ms("2024-04-01")
    assert first_monday(ms("2024-09-01")) == ms("2024-09-02")
    day = day_file(ms("2024-05-05"))
    assert not published(day, ms("2024-05-06 23:59")) and published(day, ms("2024-05-07"))
    tf = parse_timeframe("1M")
    assert ArchiveFile("monthly", "2024-05", 0, 0).path("coinm", "BTCUSD_PERP", tf) == \
        "/data/futures/cm/monthly/klines/BTCUSD_PERP/1mo/BTCUSD_PERP-1mo-2024-05.zip"


# -- .CHECKSUM --------------------------------------------------------------------------------
def test_real_checksum_lines_parse():
    with open(FIXTURES / "binance_public_data_2022-10-04_aggregate_trade_updates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) > 100
    for row in rows:
        for column in ("Original File Checksum", "New File Checksum"):
            line = row[column]
            name = row["File"] if row["File"].endswith(".zip") else row["File"] + ".zip"
            digest = parse_checksum(line + "\n", name)
            assert len(digest) == 64 and line.startswith(digest)


@pytest.mark.parametrize("text", ["", "\n", "abc  X.zip", "<Error><Code>NoSuchKey</Code></Error>",
                                  "0" * 64 + "  OTHER-1m-2024-01.zip"])
def test_bad_checksum_files_are_refused(text):
    with pytest.raises(ValueError):
        parse_checksum(text, "BTCUSDT-1m-2024-01.zip")


def test_binary_mode_checksum_line():
    assert parse_checksum("A" * 64 + " *BTCUSDT-1m-2024-01.zip", "BTCUSDT-1m-2024-01.zip") == "a" * 64


# -- CSV quirks, on the real sample rows ----------------------------------------------------------
def zipped(text: str, name: str = "X.csv") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, text)
    return out.getvalue()


def fixture_rows(name: str, tf: str, symbol: str = "S") -> list[tuple]:
    data = zipped((FIXTURES / name).read_text())
    return read_rows(data, "binance", symbol, parse_timeframe(tf), 0, 2**62)


def test_spot_microseconds_from_2025_become_the_same_milliseconds_as_before():
    new = fixture_rows("binance_vision_spot_kline_row_readme_2025_microseconds.csv", "1h")
    old = fixture_rows("binance_vision_spot_kline_row_readme_pre2025_milliseconds.csv", "1m")
    assert new == [("binance", "S", "1h", 1735689600000, 1735693199999, "4.15070000", "4.15870000", "4.15060000",
                    "4.15540000", "539.23000000", "2240.39860900", 13, "401.82000000", "1669.98121300")]
    assert old[0][3:5] == (1601510340000, 1601510399999) and old[0][5:] == new[0][5:]


def test_futures_header_row_is_skipped_and_headerless_files_keep_their_first_row():
    with_header = fixture_rows("binance_vision_cm_BTCUSD_PERP_1h_2023-10-27_head_with_header_freqtrade.csv", "1h")
    assert [r[3] for r in with_header] == [1698364800000, 1698368400000, 1698372000000]
    assert with_header[0][5:] == ("34161.6", "34182.5", "33977.4", "34024.2", "409953", "1202.97118037", 15095,
                                  "192220", "564.12041453")
    assert len(fixture_rows("binance_vision_cm_kline_row_readme.csv", "1m")) == 1
    um = fixture_rows("binance_vision_um_kline_row_readme.csv", "1w")
    assert um[0][3:6] == (1499040000000, 1499644799999, "0.01634790")


def test_rows_outside_the_range_are_dropped_and_crlf_is_accepted():
    text = "".join(f"{t},1,2,0.5,1.5,10,{t + 59_999},15,3,5,7.5,0\r\n" for t in range(0, 600_000, 60_000))
    rows = read_rows(zipped(text), "binance", "S", parse_timeframe("1m"), 120_000, 300_000)
    assert [r[3] for r in rows] == [120_000, 180_000, 240_000]


def test_a_row_that_is_not_a_candle_of_the_timeframe_is_refused():
    text = "0,1,2,0.5,1.5,10,3599999,15,3,5,7.5,0\n"  # an hour, read as 1m
    with pytest.raises(ValueError, match="not a 1m candle"):
        read_rows(zipped(text), "binance", "S", parse_timeframe("1m"), 0, 2**62)


def test_large_file_streams_across_chunk_boundaries():
    n = 40_000  # ~2.4 MB of CSV: several 1 MiB pieces, lines cut at piece edges
    text = "".join(f"{t * 60_000},1.00000000,2.00000000,0.50000000,1.50000000,10.00000000,{t * 60_000 + 59_999},"
                   f"15.00000000,{t},5.00000000,7.50000000,0\n" for t in range(n))
    rows = read_rows(zipped(text), "binance", "S", parse_timeframe("1m"), 0, 2**62)
    assert len(rows) == n and [r[11] for r in rows] == list(range(n))


def test_gaps():
    tf = parse_timeframe("1m")
    rows = [("b", "S", "1m", t, t + 59_999) for t in (120_000, 180_000, 420_000)]
    assert find_gaps(rows, tf, 0, 600_000) == [(0, 120_000), (240_000, 420_000), (480_000, 600_000)]
    assert find_gaps(rows, tf, 120_000, 240_000) == []
    assert find_gaps([], tf, 0, 120_000) == [(0, 120_000)]


def test_gaps_in_calendar_months():
    tf = parse_timeframe("1M")
    jan, feb, mar, apr = ms("2024-01-01"), ms("2024-02-01"), ms("2024-03-01"), ms("2024-04-01")
    rows = [("b", "S", "1M", t, 0) for t in (jan, mar)]
    assert find_gaps(rows, tf, jan, apr) == [(feb, mar)]
    assert find_gaps(rows, tf, jan, ms("2024-05-01")) == [(feb, mar), (apr, ms("2024-05-01"))]


# -- rows as text (issue 18): the same rows and bytes as reading line by line ---------------------
def kline_text(n: int, start: int = 1_704_067_200_000, micros: bool = False, zero_trades: bool = False) -> str:
    lines = []
    for i in range(n):
        t = start + i * 60_000
        o, c = (t * 1000, (t + 59_999) * 1000 + 999) if micros else (t, t + 59_999)
        lines.append(f"{o},{40000 + i % 97}.12000000,{40100 + i % 89}.00000000,39990.50000000,40050.01000000,"
                     f"{i % 13}.{i:08d},{c},{i * 3}.5,{0 if zero_trades and i % 5 == 0 else 100 + i},"
                     f"1.25000000,0.00000000,0\n")
    return "".join(lines)


def line_by_line(data: bytes, tf: str, start: int = 0, end: int = 2**62) -> list[tuple]:
    from forge_binance import archive

    real = archive._text_rows
    archive._text_rows = lambda *a: None
    try:
        rows = read_rows(data, "binance", "S", parse_timeframe(tf), start, end)
    finally:
        archive._text_rows = real
    assert isinstance(rows, list)
    return rows


def use_parser(monkeypatch, arrow: bool) -> None:
    """FORGE_BINANCE_ARCHIVE_PARSER=pyarrow (for every piece) or the default Python path."""
    from forge_binance import archive

    monkeypatch.setattr(archive, "_ARROW", None)
    monkeypatch.setenv("FORGE_BINANCE_ARCHIVE_PARSER", "pyarrow" if arrow else "python")
    if arrow and archive._arrow() is None:
        pytest.skip("pyarrow>=16 is not installed")
    monkeypatch.setattr(archive, "ARROW_FROM", 1)


@pytest.mark.parametrize("arrow", [True, False])
@pytest.mark.parametrize("micros,zero_trades", [(False, False), (True, True)])
def test_archive_rows_come_as_text_equal_to_the_rows_read_line_by_line(monkeypatch, arrow, micros, zero_trades):
    from forge_core import TextRows
    from forge_sink_csv.sink import _plain_lines

    use_parser(monkeypatch, arrow)
    data = zipped(kline_text(9000, micros=micros, zero_trades=zero_trades))  # ~1.3 MB: several pieces
    want = line_by_line(data, "1m")
    rows = read_rows(data, "binance", "S", parse_timeframe("1m"), 0, 2**62)
    assert isinstance(rows, TextRows) and len(rows.texts) > 1
    assert list(rows) == want and rows[0] == want[0] and rows[-1] == want[-1] and rows[4500] == want[4500]
    assert rows.text() == _plain_lines(want, 14)  # what the CSV sink wrote from the tuples
    start, end = want[10][3], want[8990][3]
    part = read_rows(data, "binance", "S", parse_timeframe("1m"), start, end)
    assert isinstance(part, TextRows) and list(part) == want[10:8990]
    assert part.text() == _plain_lines(want[10:8990], 14)


@pytest.mark.parametrize("bad", [
    "01704067200000,1,2,0.5,1.5,10,1704067259999,15,3,5,7.5,0\n",  # a leading zero: int() drops it
    "1704067200000,1,2,0.5,1.5,10,1704067259999,15,+3,5,7.5,0\n",  # a sign
    "1704067200000,1,2,0.5,1.5,10,1704067259999,15,3,5,7.5\n",  # 11 fields
    "1704067200000,1,2,0.5,1.5,1e3,1704067259999,15,3,5,7.5,0\n",  # a letter
    '1704067200000,1,2,0.5,1.5,"1",1704067259999,15,3,5,7.5,0\n',  # a quote
])
@pytest.mark.parametrize("arrow", [True, False])
def test_archive_lines_that_are_not_plain_are_read_line_by_line_as_before(monkeypatch, bad, arrow):

    use_parser(monkeypatch, arrow)
    good = kline_text(3, start=1_704_067_260_000)
    data = zipped(bad + good)
    try:
        want = line_by_line(data, "1m")
    except (ValueError, IndexError) as exc:
        with pytest.raises(type(exc)):
            read_rows(data, "binance", "S", parse_timeframe("1m"), 0, 2**62)
        return
    rows = read_rows(data, "binance", "S", parse_timeframe("1m"), 0, 2**62)
    assert isinstance(rows, list) and rows == want


def test_ramp_is_the_int64_array_of_a_range():
    from array import array

    from forge_core.records import ramp

    for first, n, step in [(0, 0, 1), (5, 1, 7), (1_704_067_200_000, 1747, 60_000), (1_735_689_600_000_000, 1000, 60_000_000),
                           (2**62, 3, 2**60 - 1), (123, 1025, 0), (2**63 - 3, 3, 1), (5, 9, 2**60 - 1)]:
        assert ramp(first, n, step) == array("q", [first + k * step for k in range(n)]), (first, n, step)
    with pytest.raises(ValueError):
        ramp(2**63 - 1, 2, 1)  # the second value does not fit an int64


@pytest.mark.parametrize("micros", [False, True])
def test_an_unbroken_piece_is_read_without_parsing_a_number(monkeypatch, micros):
    """The usual piece is checked by comparing its opens and closes as text with the run its
    first open starts: no int is parsed per row (issue 18: the archive path at its floor)."""
    from forge_core import TextRows, records

    use_parser(monkeypatch, False)
    data = zipped(kline_text(4000, micros=micros))
    want = line_by_line(data, "1m")

    def no_parsing(values):
        raise AssertionError("parsed the opens one by one")

    monkeypatch.setattr(records, "_ints", no_parsing)
    rows = read_rows(data, "binance", "S", parse_timeframe("1m"), 0, 2**62)
    assert isinstance(rows, TextRows) and len(rows.texts) > 1 and rows.step == 60_000
    assert list(rows) == want and list(rows.open_ts) == [r[3] for r in want] and list(rows.end_ts) == [r[4] for r in want]


@pytest.mark.parametrize("line,problem", [
    ("{o},1,2,0.5,1.5,10,{c1},15,3,5,7.5,0\n", ValueError),  # a close one millisecond late
    ("0{o},1,2,0.5,1.5,10,{c},15,3,5,7.5,0\n", None),  # a leading zero: read line by line
    ("{o},1,2,0.5,1.5,10,{c},15,03,5,7.5,0\n", None),  # trades with a leading zero
    ("{o},1,2,0.5,1.5,10,{c},15,,5,7.5,0\n", ValueError),  # no trades
    ("{o2},1,2,0.5,1.5,10,{c2},15,3,5,7.5,0\n", None),  # a hole of one candle
])
def test_a_piece_that_is_not_one_unbroken_run_takes_the_general_path(monkeypatch, line, problem):
    """One odd line in the middle of a piece: the same rows (or the same error) as reading
    every line one by one."""
    use_parser(monkeypatch, False)
    lines = kline_text(3000).splitlines(keepends=True)
    o = 1_704_067_200_000 + 1500 * 60_000
    lines[1500] = line.format(o=o, c=o + 59_999, c1=o + 60_000, o2=o + 60_000, c2=o + 119_999)
    if "{o2}" in line:
        del lines[1501]
    data = zipped("".join(lines))
    try:
        want = line_by_line(data, "1m")
    except (ValueError, IndexError) as exc:
        assert problem is type(exc)
        with pytest.raises(type(exc)):
            read_rows(data, "binance", "S", parse_timeframe("1m"), 0, 2**62)
        return
    assert problem is None
    rows = read_rows(data, "binance", "S", parse_timeframe("1m"), 0, 2**62)
    assert list(rows) == want


# -- downloading ahead (issue 18): the next zips arrive while a task reads its own ----------------
class FakeArchive:
    """An ArchiveClient whose host is a dict (path -> bytes, or an exception to raise); every
    GET is recorded with the thread that sent it."""

    def __init__(self, files: dict[str, object], gate=None):
        import threading

        from forge_binance.archive import ArchiveClient

        client = ArchiveClient("http://127.0.0.1:9")
        self.calls: list[tuple[str, str]] = []
        self.gate = gate

        def get(path: str):
            self.calls.append((path, threading.current_thread().name))
            if self.gate is not None and path.endswith(".zip"):
                self.gate.wait(10)
            got = files.get(path)
            if isinstance(got, Exception):
                raise got
            return got

        client.get = get  # type: ignore[method-assign]
        self.client = client

    def zips(self) -> list[str]:
        return [p for p, _ in self.calls if p.endswith(".zip")]


def month_files(months: int, text=kline_text) -> tuple[dict[str, object], list]:
    """Monthly 1m archive files of S from 2024-01 (each a few rows), and their segments."""
    import hashlib

    from forge_binance.archive import Segment, month_file

    files: dict[str, object] = {}
    segments = []
    tf = parse_timeframe("1m")
    for m in range(months):
        f = month_file(ms(f"2024-{m + 1:02d}-01"))
        data = zipped(text(3, start=f.start))
        files[f.path("spot", "S", tf)] = data
        files[f.path("spot", "S", tf) + ".CHECKSUM"] = f"{hashlib.sha256(data).hexdigest()}  {f.name('S', tf)}\n".encode()
        segments.append(Segment(f.start, f.end, f))
    return files, segments


def fetcher(client, rest=None, strict=False):
    from forge_binance.archive import ArchiveFetcher

    return ArchiveFetcher(client, "spot", "binance", rest or (lambda *a: []), strict)


def test_the_next_zips_are_downloaded_ahead_of_their_tasks_each_once():

    tf = parse_timeframe("1m")
    files, segments = month_files(6)
    fake = FakeArchive(files)
    f = fetcher(fake.client)
    planned = f.resolve("S", tf, segments)
    assert planned == segments
    # the first zip was asked while the other files were probed, ahead of any task
    assert fake.zips() == [segments[0].file.path("spot", "S", tf)]
    paths = [s.file.path("spot", "S", tf) for s in segments]
    for k, seg in enumerate(segments):
        got = f.fetch("S", tf, seg.file, seg.start, seg.end)
        assert [r[3] for r in got.rows][:3] == [seg.start + i * 60_000 for i in range(3)]
        asked = fake.zips()  # in plan order, at most AHEAD beyond the task reading its own
        assert asked == paths[:len(asked)] and k + 1 <= len(asked) <= k + 1 + fake.client.ahead
    assert sorted(fake.zips()) == sorted(paths)  # each zip downloaded once
    assert all(t.startswith("forge-archive-ahead") for p, t in fake.calls if p in paths)  # none by a task
    fake.client.close()


def test_at_most_AHEAD_zips_wait_for_their_tasks():
    import threading


    tf = parse_timeframe("1m")
    files, segments = month_files(8)
    gate = threading.Event()  # zip downloads hang until the gate opens
    fake = FakeArchive(files, gate)
    f = fetcher(fake.client)
    f.resolve("S", tf, segments)
    f._ahead_of(segments[0].file.path("spot", "S", tf))  # what a task reading the first file does
    assert len(fake.client._ahead) == fake.client.ahead and len(fake.zips()) <= fake.client.ahead
    gate.set()
    fake.client.close()


def test_a_download_ahead_that_fails_is_the_tasks_failure_as_if_it_had_downloaded_itself():
    from forge_binance.archive import ArchiveFailure

    tf = parse_timeframe("1m")
    files, segments = month_files(3)
    second = segments[1].file.path("spot", "S", tf)
    files[second] = ArchiveFailure(f"{second}: HTTP 403")
    fake = FakeArchive(files)
    rest_asked = []

    def rest(symbol, tf, start, end):
        rest_asked.append((start, end))
        return []

    f = fetcher(fake.client, rest)
    f.resolve("S", tf, segments)
    for seg in segments:
        f.fetch("S", tf, seg.file, seg.start, seg.end)
    assert (segments[1].start, segments[1].end) in rest_asked  # its month from REST, as before
    assert fake.client.counts["archive_errors"] == 1 and fake.client.counts["archive_fallbacks"] == 1
    assert fake.zips().count(second) == 1  # the failed download was not sent twice
    assert [t[:19] for p, t in fake.calls if p == second] == ["forge-archive-ahead"]  # it was the one ahead
    fake.client.close()


def test_a_zip_ahead_whose_checksum_is_unreadable_gives_back_its_slot():
    """The zip downloaded ahead is taken by its task even when the task never reads it (an
    unreadable .CHECKSUM): left in place it would hold a zip in memory and one of the AHEAD
    slots for the rest of the run, and the later zips would not download ahead."""
    tf = parse_timeframe("1m")
    files, segments = month_files(3)
    first = segments[0].file.path("spot", "S", tf)
    files[first + ".CHECKSUM"] = b"not a checksum line\n"
    fake = FakeArchive(files)
    f = fetcher(fake.client)
    f.resolve("S", tf, segments)
    f.fetch("S", tf, segments[0].file, segments[0].start, segments[0].end)  # REST in its place
    assert first not in fake.client._ahead
    assert fake.client.prefetch(segments[2].file.path("spot", "S", tf)) is True
    fake.client.close()


def test_closing_cancels_the_downloads_ahead_not_yet_started():
    import threading

    tf = parse_timeframe("1m")
    files, segments = month_files(6)
    gate = threading.Event()
    fake = FakeArchive(files, gate)
    f = fetcher(fake.client)
    f.resolve("S", tf, segments)
    f._ahead_of(segments[0].file.path("spot", "S", tf))
    fake.client.close()
    gate.set()
    assert fake.client.prefetch(segments[5].file.path("spot", "S", tf)) is False
    assert not fake.client._ahead


# -- gaps asked from REST while the file is still being read (issue 18) ----------------------------
def test_a_hole_inside_a_file_is_asked_from_rest_before_the_file_is_read_to_its_end():
    import threading

    tf = parse_timeframe("1m")
    files, segments = month_files(1, text=lambda n, start: kline_text(6000, start=start))
    path = segments[0].file.path("spot", "S", tf)
    lines = zipfile.ZipFile(io.BytesIO(files[path])).read("X.csv").decode().splitlines(keepends=True)
    del lines[5990:]  # the file ends ten candles early
    del lines[2000:2150]  # and 150 minutes are missing a third into it: in its fifth piece or so
    import hashlib

    files[path] = zipped("".join(lines))
    files[path + ".CHECKSUM"] = f"{hashlib.sha256(files[path]).hexdigest()}  {segments[0].file.name('S', tf)}\n".encode()
    fake = FakeArchive(files)
    asked = []

    def rest(symbol, tf_, start, end):
        asked.append((start, end, threading.current_thread().name))
        return []

    f = fetcher(fake.client, rest)
    seg = f.resolve("S", tf, segments)[0]
    got = f.fetch("S", tf, seg.file, seg.start, seg.end)
    t0 = seg.start
    hole, tail = (t0 + 2000 * 60_000, t0 + 2150 * 60_000), (t0 + 5990 * 60_000, seg.end)
    assert [(a, b) for a, b, _ in asked] == [hole, tail]
    assert asked[0][2].startswith("forge-archive-gaps")  # asked while the rest of the file was read
    assert asked[1][2] == threading.current_thread().name  # known only at the end: asked then
    assert [r[3] for r in got.rows] == [t0 + i * 60_000 for i in range(5990) if not 2000 <= i < 2150]
    f.close()
    fake.client.close()


@pytest.mark.parametrize("seed", range(30))
def test_gaps_seen_piece_by_piece_are_the_gaps_find_gaps_finds_but_the_last(seed):
    import random
    from array import array

    from forge_binance.archive import _GapWatch
    from forge_core import TextRows

    rnd = random.Random(seed)
    tf = parse_timeframe("1m")
    opens = sorted(rnd.sample(range(0, 400 * 60_000, 60_000), rnd.randint(1, 380)))
    start = rnd.choice([0, opens[0], opens[len(opens) // 2] + rnd.choice([0, 60_000, 30_000])])
    end = rnd.choice([400 * 60_000, opens[-1], opens[-1] + 60_000, opens[len(opens) // 3] + 60_000])
    reported = []
    watch = _GapWatch(tf, start, end, lambda a, b: reported.append((a, b)))
    cut = sorted(rnd.sample(range(1, len(opens)), min(len(opens) - 1, rnd.randint(0, 6))))
    for lo, hi in zip([0, *cut], [*cut, len(opens)], strict=True):
        part = opens[lo:hi]
        arr = array("q", part)
        rows = TextRows(("open_ts",), ["x\r\n" * len(part)], [len(part)], arr, arr, (), {})
        if part == list(range(part[0], part[0] + 60_000 * len(part), 60_000)):
            rows.step = 60_000
        watch.see(rows)
    inside = [("b", "S", "1m", t, t + 59_999) for t in opens if start <= t < end]
    want = find_gaps(inside, tf, start, end)
    assert reported == want[:len(reported)] and len(reported) >= len(want) - 1


# -- the bucket listing (S3 ListObjects v1) ----------------------------------------------------------
def test_the_listing_is_the_real_buckets_s3_endpoint_or_a_mirrors_root():
    from forge_binance.archive import ARCHIVE_URL, S3_LISTING, listing_url

    assert listing_url(ARCHIVE_URL) == listing_url(ARCHIVE_URL + "/") == S3_LISTING
    assert listing_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/"


def test_a_listing_page_is_read_in_s3s_shape():
    """ListBucketResult as S3's API reference documents it (namespace, Contents/Key,
    IsTruncated, NextMarker with a delimiter); not a capture of the real bucket (unverified)."""
    from forge_binance.archive import parse_listing

    key = "data/spot/monthly/klines/BTCUSDT/1h/BTCUSDT-1h-2024-0{}.zip"
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            "<Name>data.binance.vision</Name><Prefix>data/spot/monthly/klines/BTCUSDT/1h/</Prefix><Marker></Marker>"
            "<MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>"
            + "".join(f"<Contents><Key>{key.format(m)}</Key><Size>1</Size></Contents>" for m in (1, 2))
            + f"<NextMarker>{key.format(3)}</NextMarker></ListBucketResult>").encode()
    assert parse_listing(body) == ([key.format(1), key.format(2)], True, key.format(3))
    assert parse_listing(body.replace(b"<NextMarker>", b"<Other>").replace(b"</NextMarker>", b"</Other>")) == (
        [key.format(1), key.format(2)], True, key.format(2))  # without NextMarker: from the last key
    folders = body.replace(b"<Contents><Key>", b"<CommonPrefixes><Prefix>").replace(
        b"</Key><Size>1</Size></Contents>", b"</Prefix></CommonPrefixes>")
    assert parse_listing(folders) == ([key.format(1), key.format(2)], True, key.format(3))  # delimiter=/
    for bad in (b"<html>not xml", b"<Error><Code>AccessDenied</Code></Error>"):
        with pytest.raises(ValueError):
            parse_listing(bad)


def test_every_page_of_a_long_listing_is_read(mock_exchange_factory):
    """BTCUSDT's daily 1m folder holds ~5,500 keys: pages of 1000, each from the last key."""
    from forge_binance.archive import ArchiveClient, listed_files
    from forge_binance.mock_archive import listed_keys

    mock = mock_exchange_factory()
    client = ArchiveClient(mock.url)
    try:
        prefix = "data/spot/daily/klines/BTCUSDT/1m/"
        keys = client.keys(prefix)
        assert keys == listed_keys(mock, prefix) and len(keys) > 5000
        assert mock.stats["archive.listing"] == -(-len(keys) // 1000)
        days = listed_files(client, "spot", "BTCUSDT", parse_timeframe("1m"), "daily", "2024-02")
        assert [d.date for d in days] == [f"2024-02-{d:02d}" for d in range(1, 30)]
        assert client.date == mock.now() // 1000 * 1000  # the Date header: the mock's clock
    finally:
        client.close()

def test_a_listing_host_that_ignores_the_marker_is_a_failure_not_a_thousand_requests(mock_exchange_factory):
    """A mirror answering every page as the first (``marker`` ignored, IsTruncated true) was
    asked 1000 times for the same keys; the second page that does not move on stops it."""
    from dataclasses import replace

    from forge_binance.archive import ArchiveClient, ArchiveFailure

    mock = mock_exchange_factory()
    real = mock.routes["/"]
    mock.routes["/"] = lambda req: real(replace(req, query={
        **{k: v for k, v in req.query.items() if k != "marker"}, "max-keys": ["2"]}))
    client = ArchiveClient(mock.url)
    try:
        with pytest.raises(ArchiveFailure, match="marker ignored"):
            client.keys("data/spot/monthly/klines/BTCUSDT/1h/")
        assert mock.stats["archive.listing"] == 2
    finally:
        client.close()


# -- a big file read in slices, one download (issue 18: peak memory) -------------------------------
def full_month(broken_at: int | None = None, newline: str = "\n"):
    """A whole month (2024-01) of 1m candles in one zip; ``broken_at``: that line is not a kline."""
    import hashlib

    tf = parse_timeframe("1m")
    files, segments = month_files(1)
    seg = segments[0]
    path = seg.file.path("spot", "S", tf)
    lines = kline_text(31 * 1440, start=seg.start).splitlines(keepends=True)
    if broken_at is not None:
        lines[broken_at] = "not,a,kline\n"
    files[path] = zipped("".join(lines).replace("\n", newline))
    files[path + ".CHECKSUM"] = f"{hashlib.sha256(files[path]).hexdigest()}  {seg.file.name('S', tf)}\n".encode()
    return tf, files, seg, path


def test_a_month_of_1m_is_read_in_slices_of_days_from_one_download_with_every_row_of_the_file():
    import threading

    from forge_core.timeframes import DAY

    tf, files, seg, path = full_month()
    fake = FakeArchive(files)
    f = fetcher(fake.client)
    tasks = f.tasks("S", tf, f.resolve("S", tf, [seg])[0])
    assert len(tasks) == 11 and len({id(t.stream) for t in tasks}) == 1  # one stream: read in order
    assert [t.end - t.start for t in tasks] == [3 * DAY] * 10 + [DAY] and tasks[-1].end == seg.end
    got: dict[int, list] = {}

    def fetch(task):
        got[task.start] = f.fetch("S", tf, task.detail, task.start, task.end, task.stream).rows

    later = threading.Thread(target=fetch, args=(tasks[1],))  # the second slice waits for the first
    later.start()
    time.sleep(0.05)
    for task in [tasks[0], *tasks[2:]]:
        fetch(task)
    later.join(5)
    whole = read_rows(files[path], "binance", "S", tf, seg.start, seg.end)
    assert [r for t in tasks for r in got[t.start]] == list(whole)
    assert fake.zips() == [path]  # downloaded once
    assert fake.client.counts["archive_files"] == 1 and fake.client.counts["archive_fallbacks"] == 0
    f.close()
    fake.client.close()


def test_a_file_unusable_in_a_later_slice_gives_that_slice_and_the_rest_to_rest_said_once():
    tf, files, seg, path = full_month(broken_at=10 * 1440)  # on day 11: in the fourth slice
    fake = FakeArchive(files)
    asked = []

    def rest(symbol, tf_, start, end):
        asked.append((start, end))
        return [("binance", "S", "1m", t, t + 59_999, "1", "1", "1", "1", "1", "1", 1, "1", "1")
                for t in range(start, end, 60_000)]

    f = fetcher(fake.client, rest)
    tasks = f.tasks("S", tf, f.resolve("S", tf, [seg])[0])
    got = [f.fetch("S", tf, t.detail, t.start, t.end, t.stream) for t in tasks]
    assert [g.origin for g in got] == ["archive"] * 3 + ["rest"] * 8
    assert asked == [(t.start, t.end) for t in tasks[3:]]
    assert [r[3] for g in got for r in g.rows] == list(range(seg.start, seg.end, 60_000))
    assert fake.client.counts["archive_errors"] == 1 and fake.client.counts["archive_fallbacks"] == 1
    assert fake.zips() == [path]
    f.close()
    fake.client.close()


def test_a_month_not_in_the_plain_form_is_read_in_slices_with_every_row_of_the_file():
    """CRLF lines (not the plain form: rows as tuples): the rows a piece holds past a slice's
    end are the next slice's, not lost to it (it then asked REST for them as a gap)."""
    tf, files, seg, path = full_month(newline="\r\n")
    fake = FakeArchive(files)
    asked = []
    f = fetcher(fake.client, lambda *a: asked.append(a[2:]) or [])
    tasks = f.tasks("S", tf, f.resolve("S", tf, [seg])[0])
    got = [f.fetch("S", tf, t.detail, t.start, t.end, t.stream) for t in tasks]
    assert [r[3] for g in got for r in g.rows] == list(range(seg.start, seg.end, 60_000))
    assert asked == [] and [g.origin for g in got] == ["archive"] * len(tasks)
    assert fake.zips() == [path]
    f.close()
    fake.client.close()
