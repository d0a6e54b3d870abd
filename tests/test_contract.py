"""The core's side of the plugin contract: rows by name and checked, paging that does not lose
candles to empty answers, resume owned by the run loop, plugin code that cannot end the run."""

from __future__ import annotations

from typing import Any

import pytest

import forge_core.pipeline as pipeline_module
from forge_core import (
    CANDLE_COLUMNS,
    Batch,
    Hole,
    Pipeline,
    Sink,
    Source,
    SourceError,
    SymbolInfo,
    Task,
    Transform,
    TransformError,
    backward_pages,
    forward_pages,
    parse_timeframe,
)
from forge_core.builtin_transforms import Resample, Select
from forge_core.timeframes import HOUR, MINUTE

T0 = 1704067200000  # 2024-01-01 00:00 UTC
NOW = T0 + 2 * 1440 * MINUTE + 5
M1 = parse_timeframe("1m")


class GridSource(Source):
    """A minute of candles for every minute: close = open_ts / 60000 as text."""

    name = "grid"
    columns = (*CANDLE_COLUMNS, "trades")

    def __init__(self, broken: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.broken = broken

    def server_time(self) -> int:
        return NOW

    def prepare(self, symbol: str, timeframe: Any) -> SymbolInfo:
        return SymbolInfo(symbol, T0)

    def fetch(self, task: Task) -> list[tuple]:
        rows = []
        ts = task.start
        while ts < task.end:
            n = str(ts // MINUTE)
            rows.append(self.row(task, open_ts=ts, open=n, high=n, low=n, close=n, volume="1", trades=2))
            ts = task.timeframe.next_open(ts)
        if self.broken == "symbol":
            rows[-1] = (*rows[-1][:1], "OTHER", *rows[-1][2:])
        elif self.broken == "end_ts":
            i = self.columns.index("end_ts")
            rows[-1] = (*rows[-1][:i], rows[-1][i] + 1, *rows[-1][i + 1:])
        elif self.broken == "grid":
            i = self.columns.index("open_ts")
            rows[-1] = (*rows[-1][:i], rows[-1][i] + 7, *rows[-1][i + 1:])
        elif self.broken == "exit":
            raise SystemExit(0)
        elif self.broken == "interrupt":
            raise KeyboardInterrupt
        return rows


class ListSink(Sink):
    """Keeps committed batches; reports a resume point given to it."""

    name = "list"

    def __init__(self, resume: int | None = None, held: int | None = None) -> None:
        super().__init__()
        self.resume, self.held = resume, held
        self.pending: list[Batch] = []
        self.batches: list[Batch] = []
        self.asked: list[tuple[str, str, str]] = []

    def write(self, batch: Batch) -> None:
        self.pending.append(batch)

    def commit(self) -> None:
        self.batches += self.pending
        self.pending = []

    def resume_after(self, source: str, symbol: str, timeframe: str) -> int | None:
        self.asked.append((source, symbol, timeframe))
        return self.resume

    def last_open(self, source: str, symbol: str, timeframe: str) -> int | None:
        return self.held

    def dicts(self) -> list[dict[str, Any]]:
        return [d for b in self.batches for d in b.dicts()]


def test_select_reordering_before_resample_writes_correct_candles():
    """The probe of issue 11: open_ts and end_ts swapped by select, then resample (which read
    row[3]) wrote them swapped."""
    order = "source,symbol,timeframe,end_ts,open_ts,open,high,low,close,volume,trades"
    sink = ListSink()
    Pipeline(GridSource(), [sink], [Select(columns=order), Resample(resample_to="1h")]).run(
        "X", "1m", "2024-01-01", "2024-01-01 02:59")
    got = sink.dicts()
    assert [d["open_ts"] for d in got] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    assert [d["end_ts"] for d in got] == [T0 + HOUR - 1, T0 + 2 * HOUR - 1, T0 + 3 * HOUR - 1]
    first = T0 // MINUTE
    assert got[0]["open"] == str(first) and got[0]["close"] == str(first + 59)
    assert got[0]["high"] == str(first + 59) and got[0]["low"] == str(first)
    assert got[0]["trades"] == 120 and got[0]["timeframe"] == "1h"
    assert sink.batches[0].columns[:5] == ("source", "symbol", "timeframe", "end_ts", "open_ts")


def test_resample_after_a_select_that_dropped_open_ts_is_a_clear_error():
    with pytest.raises(Exception, match="resample needs the columns open_ts"):
        Pipeline(GridSource(), [ListSink()], [Select(columns="close,volume"), Resample(resample_to="1h")]).run(
            "X", "1m", "2024-01-01", "2024-01-01 00:59")


@pytest.mark.parametrize("broken, words", [
    ("symbol", "symbol='OTHER'"), ("end_ts", "has end_ts"), ("grid", "not on the 1m grid")])
def test_rows_breaking_the_contract_are_refused_naming_the_plugin(broken, words):
    sink = ListSink()
    with pytest.raises(SourceError, match=f"source 'grid' broke the row contract.*{words}"):
        Pipeline(GridSource(broken=broken), [sink]).run("X", "1m", "2024-01-01", "2024-01-01 00:59")
    assert sink.batches == []


def test_row_helper_fills_series_columns_and_requires_every_declared_column():
    src = GridSource()
    task = Task("X", M1, T0, T0 + MINUTE)
    row = dict(zip(src.columns, src.row(task, open_ts=T0, open="1", high="1", low="1", close="1",
                                         volume="2", trades=3), strict=True))
    assert row["source"] == "grid" and row["symbol"] == "X" and row["timeframe"] == "1m"
    assert row["end_ts"] == T0 + MINUTE - 1
    with pytest.raises(TypeError, match="trades"):
        src.row(task, open_ts=T0, open="1", high="1", low="1", close="1", volume="2")
    month = parse_timeframe("1M")
    feb = src.row(Task("X", month, T0, T0), open_ts=T0, open="1", high="1", low="1", close="1",
                  volume="2", trades=3)
    assert feb[src.columns.index("end_ts")] == 1706745600000 - 1  # 2024-02-01 minus 1 ms


def test_systemexit_in_a_source_or_transform_fails_the_run_naming_the_plugin():
    with pytest.raises(SourceError, match=r"source 'grid' raised sys.exit\(0\)"):
        Pipeline(GridSource(broken="exit"), [ListSink()]).run("X", "1m", "2024-01-01", "2024-01-01 00:09")
    with pytest.raises(SourceError, match="source 'grid' raised KeyboardInterrupt"):
        Pipeline(GridSource(broken="interrupt"), [ListSink()]).run("X", "1m", "2024-01-01", "2024-01-01 00:09")

    class Quitter(Transform):
        name = "quitter"

        def apply(self, batch: Batch) -> Batch:
            raise SystemExit(0)

    with pytest.raises(TransformError, match=r"transform 'quitter' raised sys.exit\(0\)"):
        Pipeline(GridSource(), [ListSink()], [Quitter()]).run("X", "1m", "2024-01-01", "2024-01-01 00:09")


def test_each_sink_gets_only_what_it_lacks_and_the_fetch_starts_at_the_earliest_point():
    behind = ListSink(resume=T0 + 10 * MINUTE - 1)  # holds 00:00-00:09
    ahead = ListSink(resume=T0 + 30 * MINUTE - 1)  # holds 00:00-00:29
    result = Pipeline(GridSource(), [behind, ahead]).run("X", "1m", "2024-01-01", "2024-01-01 00:59")
    assert [d["open_ts"] for d in behind.dicts()] == [T0 + i * MINUTE for i in range(10, 60)]
    assert [d["open_ts"] for d in ahead.dicts()] == [T0 + i * MINUTE for i in range(30, 60)]
    assert result.resumed == {"X": T0 + 10 * MINUTE - 1}


def test_resume_points_are_asked_in_the_output_timeframe_and_resume_after_a_resample():
    sink = ListSink(resume=T0 + 2 * HOUR - 1)  # an interrupted 1m->1h run committed two hours
    Pipeline(GridSource(), [sink], [Resample(resample_to="1h")]).run("X", "1m", "2024-01-01", "2024-01-01 05:59")
    assert sink.asked == [("grid", "X", "1h")]
    assert [d["open_ts"] for d in sink.dicts()] == [T0 + h * HOUR for h in range(2, 6)]


def test_since_starts_series_the_sinks_do_not_hold_and_auto_continues_the_others():
    empty = ListSink(held=None)
    Pipeline(GridSource(), [empty]).run("X", "1m", "auto", "2024-01-01 00:09", since="2024-01-01 00:05")
    assert [d["open_ts"] for d in empty.dicts()] == [T0 + i * MINUTE for i in range(5, 10)]
    held = ListSink(held=T0 + 7 * MINUTE)
    Pipeline(GridSource(), [held]).run("X", "1m", "auto", "2024-01-01 00:09", since="2024-01-01 00:05")
    assert [d["open_ts"] for d in held.dicts()] == [T0 + 8 * MINUTE, T0 + 9 * MINUTE]
    with pytest.raises(Exception, match="--since DATE"):
        Pipeline(GridSource(), [ListSink()]).run("X", "1m", "auto", "2024-01-01 00:09")
    with pytest.raises(Exception, match="--since applies only with --from auto"):
        Pipeline(GridSource(), [ListSink()]).run("X", "1m", "2024-01-01", "2024-01-01 00:09", since="2024-01-01")


def test_a_pipeline_of_instances_loads_no_entry_points(monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Plugins() was built for a pipeline of instances")

    monkeypatch.setattr(pipeline_module, "Plugins", refuse)
    sink = ListSink()
    Pipeline(GridSource(), [sink], [lambda d: d]).run("X", "1m", "2024-01-01", "2024-01-01 00:01")
    assert len(sink.dicts()) == 2


# -- paging -------------------------------------------------------------------------------------
OPEN = CANDLE_COLUMNS.index("open_ts")


def candles(times: list[int]) -> list[tuple]:
    return [("x", "X", "1m", t, t + MINUTE - 1, "1", "1", "1", "1", "1") for t in times]


class Exchange:
    """Has candles at ``times``; answers the first ``empty`` requests with an empty page."""

    def __init__(self, times: list[int], empty: int = 0, page: int = 10) -> None:
        self.times, self.empty, self.page, self.requests = sorted(times), empty, page, 0

    def forward(self, cursor: int, stop: int | None) -> list[tuple]:
        self.requests += 1
        if self.empty:
            self.empty -= 1
            return []
        hits = [t for t in self.times if t >= cursor and (stop is None or t < stop)]
        return candles(hits[: self.page if stop is not None else 1])

    def backward(self, before: int) -> list[tuple]:
        self.requests += 1
        if self.empty:
            self.empty -= 1
            return []
        return candles([t for t in self.times if t < before][-self.page:][::-1])


def minutes(a: int, b: int) -> list[int]:
    return [T0 + i * MINUTE for i in range(a, b)]


def test_forward_walk_re_asks_a_transient_empty_page_instead_of_losing_it():
    ex = Exchange(minutes(0, 30), empty=1)
    rows = forward_pages(ex.forward, M1, T0, T0 + 30 * MINUTE, open_index=OPEN, sleep=lambda s: None)
    assert [r[OPEN] for r in rows] == minutes(0, 30)


def test_forward_walk_reports_an_affirmed_hole_with_its_evidence():
    ex = Exchange(minutes(0, 5) + minutes(20, 30), page=100)
    holes: list[Hole] = []
    rows = forward_pages(ex.forward, M1, T0, T0 + 15 * MINUTE, open_index=OPEN, on_hole=holes.append,
                         sleep=lambda s: None)
    assert [r[OPEN] for r in rows] == minutes(0, 5)
    assert holes == [Hole(T0 + 5 * MINUTE, T0 + 15 * MINUTE, "the exchange's next candle opens at 2024-01-01T00:20:00Z")]


def test_forward_walk_continues_after_short_pages():
    ex = Exchange(minutes(0, 95), page=7)
    rows = forward_pages(ex.forward, M1, T0, T0 + 95 * MINUTE, open_index=OPEN)
    assert [r[OPEN] for r in rows] == minutes(0, 95)


def test_backward_walk_never_believes_an_empty_page_above_a_known_candle():
    ex = Exchange(minutes(0, 30), empty=2)
    rows = backward_pages(ex.backward, M1, T0, T0 + 30 * MINUTE, open_index=OPEN, known_first=T0,
                          sleep=lambda s: None)
    assert [r[OPEN] for r in rows] == minutes(0, 30)
    always_empty = Exchange(minutes(0, 30), empty=99)
    with pytest.raises(SourceError, match="keeps answering empty"):
        backward_pages(always_empty.backward, M1, T0, T0 + 30 * MINUTE, open_index=OPEN, known_first=T0,
                       sleep=lambda s: None)


def test_backward_walk_stops_at_the_listing_without_extra_requests():
    ex = Exchange(minutes(20, 30), page=100)
    rows = backward_pages(ex.backward, M1, T0, T0 + 30 * MINUTE, open_index=OPEN)
    assert [r[OPEN] for r in rows] == minutes(20, 30)
    assert ex.requests == 2  # the page, then "nothing older"


def test_the_summary_counts_candles_in_the_output_timeframe():
    result = Pipeline(GridSource(), [ListSink()], [Resample(resample_to="1h")]).run(
        "X", "1m", "2024-01-01", "2024-01-01 05:59")
    assert result.timeframe == "1h" and result.summary().startswith("6 1h candles from grid")


def test_the_summary_names_the_holes_the_exchange_affirmed(exchange_env):
    """The mock's maintenance hole (2024-01-10 03:00-05:30) is served as candles on both sides."""
    from forge_core import Plugins

    sink = ListSink()
    result = Pipeline("binance", [sink], plugins=Plugins()).run("BTCUSDT", "1m", "2024-01-10", "2024-01-10")
    start = 1704844800000  # 2024-01-10 00:00
    assert result.holes == {"BTCUSDT": [(start + 3 * HOUR, start + 5 * HOUR + 30 * MINUTE)]}
    assert result.slots == {"BTCUSDT": 1440} and result.served == {"BTCUSDT": 1290}
    assert "BTCUSDT 1290 of 1440 slots, hole 2024-01-10 03:00..05:29:59 UTC (exchange affirmed empty" in result.summary()
    clean = Pipeline("binance", [ListSink()], plugins=Plugins()).run("BTCUSDT", "1m", "2024-01-11", "2024-01-11 12:00:30")
    assert clean.holes == {} and "slots" not in clean.summary()


def test_resampled_batches_say_their_own_timeframe():
    sink = ListSink()
    Pipeline(GridSource(), [sink], [Resample(resample_to="1h")]).run("X", "1m", "2024-01-01", "2024-01-01 02:59")
    assert {b.timeframe for b in sink.batches} == {"1h"}


@pytest.mark.parametrize("source, symbol", [("binance", "BTCUSDT"), ("okx", "BTC-USDT")])
def test_transient_empty_pages_from_the_exchange_lose_no_candle(source, symbol, monkeypatch):
    """Issue 17.1 end to end: the mock answers 25% of requests with an empty page."""
    from forge_core import Plugins
    from forge_mock_exchange import MockConfig, MockExchange
    from forge_mock_exchange.expected import binance_rows
    from forge_mock_exchange.expected_okx import okx_rows

    now = 1742034030456
    with MockExchange(MockConfig(now=now, faults={"empty": 0.25}, fault_seed=7)) as mock:
        for name in ("FORGE_BINANCE_URL", "FORGE_OKX_URL"):
            monkeypatch.setenv(name, mock.url)
        sink = ListSink()
        # one worker: the seeded faults then fall on the same requests every run
        Pipeline(source, [sink], plugins=Plugins(), workers=1).run(symbol, "1m", "2024-01-09", "2024-01-11")
        empties = mock.stats["fault.empty"]
    lo, hi = 1704758400000, 1705017600000
    want = (binance_rows if source == "binance" else okx_rows)(symbol, "1m", lo, hi, now)
    got = [tuple(d[c] for c in CANDLE_COLUMNS) for d in sink.dicts()]
    assert empties > 0 and got == [w[:10] for w in want]
