"""The run loop with an in-memory source and sink: ordering, bounds, the closed-candle rule."""

from __future__ import annotations

import random
import threading
import time

import pytest

from forge_core import (
    CANDLE_COLUMNS,
    Batch,
    Pipeline,
    Plugins,
    Sink,
    Source,
    SourceError,
    SymbolInfo,
    Task,
    Transform,
)
from forge_core.errors import TransformError, UsageError
from forge_core.timeframes import MINUTE

T0 = 1704067200000  # 2024-01-01
NOW = T0 + 10 * 1440 * MINUTE + 30 * MINUTE + 5  # 2024-01-11 00:30:00.005


def row(symbol: str, ts: int) -> tuple:
    return ("fake", symbol, "1m", ts, ts + MINUTE - 1, "1", "2", "0.5", "1.5", "10")


class FakeSource(Source):
    name = "fake"

    def __init__(self, duplicate: bool = False, fail_at: int | None = None, listed: int | None = None) -> None:
        super().__init__()
        self.duplicate, self.fail_at, self.listed = duplicate, fail_at, listed
        self.in_flight = 0
        self.max_in_flight = 0
        self.fetched: list[Task] = []
        self.lock = threading.Lock()

    def server_time(self) -> int:
        return NOW

    def prepare(self, symbol, timeframe):
        if symbol == "NOPE":
            raise SourceError("unknown symbol 'NOPE' on fake")
        return SymbolInfo(symbol, self.listed)

    def page_size(self, timeframe):
        return 100

    def fetch(self, task: Task):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.fetched.append(task)
        try:
            time.sleep(random.random() * 0.003)  # finish out of order
            if self.fail_at is not None and task.start <= self.fail_at < task.end:
                raise SourceError("exchange down")
            ts = task.timeframe.ceil(task.start)
            rows = []
            while ts < task.end + 3 * MINUTE and ts <= NOW:  # also serves past the end and the open candle
                rows.append(row(task.symbol, ts))
                if self.duplicate:
                    rows.append(row(task.symbol, ts))
                ts += MINUTE
            return rows
        finally:
            with self.lock:
                self.in_flight -= 1


class MemorySink(Sink):
    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple] = []
        self.pending: list[tuple] = []
        self.commits = 0
        self.closed: bool | None = None

    def write(self, batch: Batch) -> None:
        self.pending.extend(batch.rows)

    def commit(self) -> None:
        self.rows.extend(self.pending)
        self.pending.clear()
        self.commits += 1

    def close(self, ok: bool) -> None:
        self.closed = ok


def run(source, sink=None, **kw):
    sink = sink or MemorySink()
    result = Pipeline(source, [sink], plugins=Plugins(entry_points=False), **kw.pop("pipeline", {})).run(**kw)
    return result, sink


def test_rows_arrive_in_order_exactly_once_and_only_closed():
    source = FakeSource(duplicate=True)
    result, sink = run(source, symbols="A,B", timeframe="1m", start="2024-01-01", end="now",
                       pipeline={"workers": 4, "commit_every": 1000})
    expected = [row(s, ts) for s in "AB" for ts in range(T0, NOW - MINUTE + 1, MINUTE) if ts + MINUTE - 1 < NOW]
    assert sink.rows == expected
    assert result.rows == {"A": len(expected) // 2, "B": len(expected) // 2}
    assert result.duplicates_dropped == len(expected)
    assert sink.closed is True and sink.commits > 2
    # the candle open at NOW was never requested, and nothing past the range was kept
    assert max(t.end for t in source.fetched) <= NOW - 5


def test_run_ahead_is_bounded_by_twice_the_workers():
    source = FakeSource()
    run(source, symbols="A", timeframe="1m", start="2024-01-01", end="2024-01-05", pipeline={"workers": 3})
    assert 1 < source.max_in_flight <= 3


class TextSource(FakeSource):
    """Pages of 1,000 candles held as text, about 0.35 MB each (a wide column), that count the
    bytes fetched and not yet written: from the moment a task starts until the sink takes them."""

    def __init__(self) -> None:
        super().__init__()
        self.outstanding = self.most = 0

    def page_size(self, timeframe):
        return 1000

    def fetch(self, task: Task):
        from forge_core import TextRows

        opens = list(range(task.start, task.end, MINUTE))
        fields = {"open_ts": [str(t) for t in opens], "end_ts": [str(t + MINUTE - 1) for t in opens],
                  **{c: ["1"] * len(opens) for c in ("open", "high", "low", "close")}, "volume": ["9" * 300] * len(opens)}
        rows = TextRows.build(CANDLE_COLUMNS, fields, fixed={"source": "fake", "symbol": task.symbol, "timeframe": "1m"})
        with self.lock:
            self.outstanding += rows.nbytes
            self.most = max(self.most, self.outstanding)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(0.002)
        with self.lock:
            self.in_flight -= 1
        return rows


class SlowSink(MemorySink):
    def __init__(self, source: TextSource) -> None:
        super().__init__()
        self.source = source

    def write(self, batch: Batch) -> None:
        time.sleep(0.004)  # slower than the source: the read-ahead fills up to its bound
        with self.source.lock:
            self.source.outstanding -= batch.rows.nbytes
        super().write(batch)


def test_run_ahead_is_bounded_by_the_bytes_of_the_rows_held(monkeypatch):
    from forge_core import pipeline

    monkeypatch.setattr(pipeline, "BYTES_AHEAD", 2 << 20)
    source = TextSource()
    sink = SlowSink(source)
    run(source, sink, symbols="A", timeframe="1m", start="2024-01-01", end="2024-01-10", pipeline={"workers": 8})
    page = 1000 * (300 + 40)  # about one page's text
    assert len(sink.rows) == 10 * 1440 and source.outstanding == 0
    # fetched and not yet written: the bound, and one page more at most (one task always runs
    # ahead of the writer); 16 pages (2 x workers) without it
    assert source.most <= (2 << 20) + page
    assert source.max_in_flight > 1  # still fetched concurrently



class StreamSource(FakeSource):
    """Each day in slices of 100 candles, the slices of a day one stream (as an archive file's
    slices are): counts the slices of a day fetched and not yet written."""

    def __init__(self) -> None:
        super().__init__()
        self.outstanding: dict[int, int] = {}
        self.most_ahead = 0

    def plan(self, symbol, timeframe, start, end):
        day = 1440 * MINUTE
        for d in range(start, end, day):
            stream = object()
            for a in range(d, min(d + day, end), 100 * MINUTE):
                yield Task(symbol, timeframe, a, min(a + 100 * MINUTE, d + day, end), stream=stream)

    def fetch(self, task: Task):
        with self.lock:
            held = self.outstanding[id(task.stream)] = self.outstanding.get(id(task.stream), 0) + 1
            self.most_ahead = max(self.most_ahead, held)
        return [row(task.symbol, ts) for ts in range(task.start, task.end, MINUTE)]


class StreamSink(MemorySink):
    def __init__(self, source: StreamSource) -> None:
        super().__init__()
        self.source = source
        self.committed_at: list[int] = []

    def write(self, batch: Batch) -> None:
        time.sleep(0.002)  # slower than the source: the read-ahead fills up to its bound
        with self.source.lock:
            for stream, n in self.source.outstanding.items():
                if n:
                    self.source.outstanding[stream] = n - 1
                    break
        super().write(batch)

    def commit(self) -> None:
        if self.pending:
            self.committed_at.append(self.pending[-1][3])
        super().commit()


def test_a_stream_is_fetched_at_most_stream_ahead_tasks_ahead_and_committed_between_streams():
    from forge_core import pipeline

    source = StreamSource()
    sink = StreamSink(source)
    run(source, sink, symbols="A", timeframe="1m", start="2024-01-01", end="2024-01-04",
        pipeline={"workers": 8, "commit_every": 500})
    assert sink.rows == [row("A", ts) for ts in range(T0, T0 + 4 * 1440 * MINUTE, MINUTE)]
    # the slice written and STREAM_AHEAD more (15 of a day's with 2 x workers alone)
    assert source.most_ahead <= 1 + pipeline.STREAM_AHEAD
    # every 500 rows, but never inside a day: the commits come at the ends of days
    assert sink.committed_at == [T0 + d * 1440 * MINUTE - MINUTE for d in range(1, 5)]


def test_listing_date_skips_empty_history():
    source = FakeSource(listed=T0 + 5 * 1440 * MINUTE + 17)
    result, sink = run(source, symbols="A", timeframe="1m", start="2024-01-01", end="2024-01-06")
    assert sink.rows[0][3] == T0 + 5 * 1440 * MINUTE
    assert all(t.start >= T0 + 5 * 1440 * MINUTE for t in source.fetched)


def test_a_failing_page_fails_the_run_and_keeps_committed_rows():
    source = FakeSource(fail_at=T0 + 2 * 1440 * MINUTE)
    sink = MemorySink()
    with pytest.raises(SourceError, match="exchange down"):
        run(source, sink, symbols="A", timeframe="1m", start="2024-01-01", end="2024-01-05",
            pipeline={"commit_every": 500})
    assert sink.closed is False
    assert sink.rows and sink.rows[-1][3] < T0 + 2 * 1440 * MINUTE
    assert [r[3] for r in sink.rows] == list(range(T0, sink.rows[-1][3] + 1, MINUTE))


def test_unknown_symbol_fails_before_any_row_is_written():
    sink = MemorySink()
    with pytest.raises(SourceError, match="unknown symbol 'NOPE'"):
        run(FakeSource(), sink, symbols=["A", "NOPE"], timeframe="1m", start="2024-01-01", end="2024-01-02")
    assert sink.rows == [] and sink.pending == []


def test_future_range_is_a_usage_error():
    with pytest.raises(UsageError, match="is in the future"):
        run(FakeSource(), symbols="A", timeframe="1m", start="2024-02-01", end="2024-03-01")


def test_progress_reaches_the_expected_total():
    seen = []
    run(FakeSource(), symbols="A", timeframe="1m", start="2024-01-01", end="2024-01-02",
        pipeline={"on_progress": seen.append})
    assert seen[-1].total_done == seen[-1].total_expected == 2 * 1440
    assert [p.total_done for p in seen] == sorted(p.total_done for p in seen)


class Doubler(Transform):
    name = "doubler"

    def apply(self, batch):
        return batch.with_rows([r[:9] + (str(float(r[9]) * 2),) for r in batch.rows])


def test_transforms_apply_in_order_and_row_functions_see_floats():
    result, sink = run(FakeSource(), symbols="A", timeframe="1m", start="2024-01-01", end="2024-01-01 00:09",
                       pipeline={"transforms": None} if False else {})
    plain = sink.rows
    sink = MemorySink()
    Pipeline(FakeSource(), [sink], [Doubler(), lambda d: {**d, "up": d["close"] > d["open"]}],
             plugins=Plugins(entry_points=False)).run("A", "1m", "2024-01-01", "2024-01-01 00:09")
    assert len(sink.rows) == len(plain) == 10
    # issue 16: a column the function passes through keeps its exact text (it was 20.0, a float)
    assert sink.rows[0][9] == "20.0" and sink.rows[0][-1] is True


def test_a_row_function_keeps_untouched_prices_exact_and_writes_what_it_computes():
    plain, computed = MemorySink(), MemorySink()
    run(FakeSource(), plain, symbols="A", timeframe="1m", start="2024-01-01", end="2024-01-01 00:00")

    def fn(d):
        return {**d, "close": d["close"] * 2, "mid": (d["high"] + d["low"]) / 2}

    Pipeline(FakeSource(), [computed], [fn], plugins=Plugins(entry_points=False)).run(
        "A", "1m", "2024-01-01", "2024-01-01 00:00")
    (raw,), (row,) = plain.rows, computed.rows
    cols = (*CANDLE_COLUMNS, "mid")
    for name in ("open", "high", "low", "volume"):
        assert row[cols.index(name)] == raw[cols.index(name)]  # the exact string, not a float
    assert row[cols.index("close")] == float(raw[cols.index("close")]) * 2
    assert row[cols.index("mid")] == (float(raw[cols.index("high")]) + float(raw[cols.index("low")])) / 2


def test_a_raising_row_function_names_itself_and_the_candle():
    def boom(d):
        if d["open_ts"] == T0 + 5 * MINUTE:
            raise ZeroDivisionError("division by zero")
        return d

    sink = MemorySink()
    with pytest.raises(TransformError, match=r"transform .*boom failed on A candle 2024-01-01T00:05:00Z"):
        Pipeline(FakeSource(), [sink], [boom], plugins=Plugins(entry_points=False)).run(
            "A", "1m", "2024-01-01", "2024-01-01 00:09")
    assert sink.rows == [] and sink.closed is False


def test_pipelines_share_nothing():
    one, two = Pipeline(FakeSource(), [MemorySink()], plugins=Plugins(entry_points=False)), \
        Pipeline(FakeSource(), [MemorySink()], plugins=Plugins(entry_points=False))
    assert one.source is not two.source and one.sinks[0] is not two.sinks[0]
    assert one.plugins is not two.plugins


def test_a_pipeline_runs_once():
    pipeline = Pipeline(FakeSource(), [MemorySink()], plugins=Plugins(entry_points=False))
    pipeline.run("A", "1m", "2024-01-01", "2024-01-01 00:09")
    with pytest.raises(UsageError, match="a Pipeline runs once; build a new one"):
        pipeline.run("A", "1m", "2024-01-01", "2024-01-01 00:09")
