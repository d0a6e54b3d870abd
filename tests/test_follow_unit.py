"""The follow loop's pieces without an exchange: whole output periods only reach the
transforms, the exchange clock is a lower bound, the status line fits the terminal."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from forge_core import Batch, Pipeline, Sink, Source
from forge_core.errors import SinkError, SinkUnavailable
from forge_core.follow import ExchangeClock, SeriesState, StatusLine
from forge_core.pipeline import RunResult
from forge_core.timeframes import HOUR, MINUTE


class ListSink(Sink):
    name = "list"
    supports_follow = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.rows: list[tuple] = []

    def write(self, batch: Batch) -> None:
        self.rows += batch.rows


class StillSource(Source):
    name = "still"

    def __init__(self, clock: list[int] | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.clock = clock or [0]

    def server_time(self) -> int:
        return self.clock[0]


def minute(ts: int) -> tuple:
    return ("still", "X", "1m", ts, ts + MINUTE - 1, "1.0", "2.0", "0.5", "1.5", "3")


def resampling_follower() -> tuple[Any, ListSink]:
    sink = ListSink()
    pipeline = Pipeline(StillSource(), [sink], [("resample", {"resample_to": "1h"})])
    follower = pipeline.follow(["X"], "1m", since=0)
    follower.sink_points = [{}]
    return follower, sink


def test_an_hour_reaches_resample_only_when_its_last_minute_came() -> None:
    follower, sink = resampling_follower()
    s = follower.series["X"] = SeriesState("X", 0)
    follower.now = 2 * HOUR + 1000  # the 01:00 hour has closed; its minutes from 01:31 are not served yet
    rows = [minute(ts) for ts in range(0, HOUR + 31 * MINUTE, MINUTE)]
    follower._take(s, rows[:70], 2 * HOUR)
    follower._take(s, rows[70:], 2 * HOUR)
    follower._finish(s, 2 * HOUR)
    assert [r[3] for r in sink.rows] == [0]  # 00:00 complete; 01:00 held back, not resampled half
    assert sink.rows[0][4] == HOUR - 1 and sink.rows[0][5:9] == ("1.0", "2.0", "0.5", "1.5")
    assert s.next_start == HOUR  # asked again, whole, next time

    s.step_start, s.started = s.next_start, False
    follower._take(s, [minute(ts) for ts in range(HOUR, 2 * HOUR, MINUTE)], 2 * HOUR)
    follower._finish(s, 2 * HOUR)
    assert [r[3] for r in sink.rows] == [0, HOUR]
    assert sink.rows[1][9] == str(3 * 60)  # sixty minutes' volume: the whole hour
    assert s.next_start == 2 * HOUR


def test_a_candle_missing_at_the_newest_end_is_never_a_hole_until_a_later_one_comes() -> None:
    follower, sink = resampling_follower()
    s = follower.series["X"] = SeriesState("X", 0)
    follower.now = 5 * HOUR  # hours after 00:30, and still nothing newer: not affirmed
    follower._take(s, [minute(ts) for ts in range(0, 30 * MINUTE, MINUTE)], 5 * HOUR)
    follower._finish(s, 5 * HOUR)
    assert sink.rows == []  # the 00:00 hour is not resampled from half of it
    assert s.next_start == 0  # asked again from the hour's start

    s.step_start, s.started = s.next_start, False  # the exchange serves again from 04:00
    rows = [minute(ts) for ts in range(0, 30 * MINUTE, MINUTE)]
    rows += [minute(ts) for ts in range(4 * HOUR, 5 * HOUR, MINUTE)]
    follower._take(s, rows, 5 * HOUR)
    follower._finish(s, 5 * HOUR)
    assert [r[3] for r in sink.rows] == [0, 4 * HOUR]  # 01:00-03:59 affirmed empty by 04:00
    assert sink.rows[0][9] == str(3 * 30)  # the 00:00 hour holds the thirty minutes it has
    assert s.next_start == 5 * HOUR


def test_follow_never_skips_a_missing_newest_candle() -> None:
    sink = ListSink()
    clock = [3 * HOUR]

    class Stalled(StillSource):
        def fetch(self, task):  # serves 00:00-00:09 only, whatever is asked
            return [minute(ts) for ts in range(0, 10 * MINUTE, MINUTE) if task.start <= ts < task.end]

    pipeline = Pipeline(Stalled(clock), [sink])
    follower = pipeline.follow(["X"], "1m", since=0)
    follower.sink_points = [{}]
    s = follower.series["X"] = SeriesState("X", 0)
    follower.now = clock[0]
    pipeline.result = RunResult("still", "1m", 0, 0)
    with ThreadPoolExecutor(1) as follower._pool:
        follower._pass([s], 3 * HOUR)
    assert [r[3] for r in sink.rows] == [ts for ts in range(0, 10 * MINUTE, MINUTE)]
    assert s.next_start == 10 * MINUTE  # 00:10 is asked again next pass, not skipped


def test_the_exchange_clock_is_a_lower_bound_and_follows_the_server() -> None:
    local = [100.0]
    server = [1_000_000]
    clock = ExchangeClock(StillSource(server), local=lambda: local[0])
    clock.sync()
    assert clock.now() <= 1_000_000
    local[0] += 2.0  # two seconds later by the local clock
    assert 1_001_990 <= clock.now() <= 1_002_000
    assert clock.local_at(clock.now()) <= local[0] + 0.01
    assert clock.local_at(1_005_000) >= local[0] + 3.0  # the exchange reaches it no sooner
    server[0] = 900_000  # the exchange's clock jumped back: follow it
    local[0] += 60
    assert clock.due()
    clock.sync()
    assert clock.now() <= 900_000


def test_status_line_fits_the_terminal(monkeypatch) -> None:
    follower, _ = resampling_follower()
    follower.clock.sync()
    for i in range(40):
        follower.series[f"S{i}USDT"] = SeriesState(f"S{i}USDT", 0, last_open=0)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    monkeypatch.setenv("COLUMNS", "40")
    line = StatusLine(stream)
    line(follower)
    drawn = stream.getvalue().split("\r")[-1]
    assert 0 < len(drawn) <= 40 and "40 series" in drawn


def test_status_line_shows_a_series_at_its_end_as_ended_not_as_lagging(monkeypatch) -> None:
    """A delisted series left at its last candle (a year ago) is followed no further: the status
    line said 'lag 31536000.0s' beside it, and its lag was the 'max lag' of the short form."""
    follower, _ = resampling_follower()
    follower.source.clock[0] = 365 * 24 * HOUR
    follower.clock.sync()
    follower.series["X"] = SeriesState("X", 365 * 24 * HOUR - HOUR, last_open=365 * 24 * HOUR - 2 * HOUR)
    follower.series["OLDUSDT"] = SeriesState("OLDUSDT", HOUR, last_open=0, ended="delisted", ends_at=HOUR)
    stream = Tty()
    monkeypatch.setenv("COLUMNS", "120")
    StatusLine(stream)(follower)
    assert "OLDUSDT 00:00:00 ended" in stream.getvalue() and "X 22:00:00 lag 0.0s" in stream.getvalue()
    assert StatusLine._series(follower, 40) == "following 2 series, 1 current, 1 ended, max lag 0.0s"


def test_a_sink_that_publishes_only_at_the_end_cannot_follow() -> None:
    import pytest

    from forge_core import UsageError

    class AtTheEnd(ListSink):
        name = "atend"
        supports_follow = False

    with pytest.raises(UsageError, match="sink 'atend' cannot follow"):
        Pipeline(StillSource(), [AtTheEnd()]).follow(["X"], "1m", since=0)


def test_a_sink_that_calls_sys_exit_while_following_is_a_failure_naming_it() -> None:
    class Exiting(ListSink):
        name = "exiting"

        def write(self, batch: Batch) -> None:
            raise SystemExit(0)

    class Serving(StillSource):
        def fetch(self, task):
            return [minute(ts) for ts in range(task.start, task.end, MINUTE)]

    pipeline = Pipeline(Serving([HOUR]), [Exiting()])
    follower = pipeline.follow(["X"], "1m", since=0)
    follower.sink_points = [{}]
    s = follower.series["X"] = SeriesState("X", 0)
    follower.now = HOUR
    pipeline.result = RunResult("still", "1m", 0, 0)
    with ThreadPoolExecutor(1) as follower._pool, pytest.raises(SinkError, match="sink 'exiting' raised sys.exit"):
        follower._pass([s], HOUR)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_status_line_shows_a_request_waiting_to_be_retried(monkeypatch) -> None:
    """The run's progress line says what is retrying; the follow status line did not (it kept
    showing the lag grow, as if nothing happened)."""
    import time

    from forge_core import retrying

    follower, _ = resampling_follower()
    follower.clock.sync()
    follower.series["BTCUSDT"] = SeriesState("BTCUSDT", 0, last_open=0)
    monkeypatch.setenv("COLUMNS", "200")
    stream = Tty()
    now = time.time()
    retrying.begin(retrying.Retrying("api.binance.com", "/api/v3/klines", "BTCUSDT", "HTTP 503", 2, 10,
                                     now + 4, now + 300))
    try:
        StatusLine(stream)(follower)
    finally:
        retrying.end()
    drawn = stream.getvalue().split("\r")[-1]
    assert drawn.startswith("retrying BTCUSDT HTTP 503: attempt 2/10 at ") and "api.binance.com/api/v3/klines" in drawn
    assert "BTCUSDT 00:00:00 lag" in drawn and len(drawn) <= 199
    StatusLine(stream)(follower)  # retried: the line is the series again
    assert stream.getvalue().split("\r")[-1].startswith("following: ")


def test_status_line_shows_what_the_follow_run_waits_for(monkeypatch) -> None:
    import time

    follower, _ = resampling_follower()
    monkeypatch.setenv("COLUMNS", "100")
    stream = Tty()
    follower.waiting = ("exchange down", time.time() + 8)
    StatusLine(stream)(follower)  # before the exchange's clock is known, too
    assert stream.getvalue().split("\r")[-1].startswith("exchange down: next try at ")


class Minutes(StillSource):
    def fetch(self, task):
        return [minute(ts) for ts in range(task.start, task.end, MINUTE)]


class DownFor(ListSink):
    """A destination whose commits fail as PostgreSQL's do once its own retries are over."""

    name = "downfor"

    def __init__(self, fails: int, **options: Any) -> None:
        super().__init__(**options)
        self.fails, self.commits, self.closed_ok = fails, 0, None

    def commit(self) -> None:
        if self.fails:
            self.fails -= 1
            raise SinkUnavailable("PostgreSQL db:5432/x table klines: commit failed 3 times over 0s, giving up: "
                                  "server closed the connection unexpectedly")
        self.commits += 1

    def close(self, ok: bool) -> None:
        self.closed_ok = ok


def test_a_destination_down_is_waited_for_then_committed() -> None:
    sink = DownFor(fails=1)
    follower = Pipeline(Minutes([HOUR]), [sink]).follow(["X"], "1m", since=0)
    follower.on_commit = lambda *a: follower.stop("test")
    result = follower.run()
    assert result.sink_outages == 1 and sink.commits == 1 and sink.closed_ok is True
    opens = [r[3] for r in sink.rows]  # kept through the outage, each once
    assert len(opens) >= 59 and opens == list(range(0, len(opens) * MINUTE, MINUTE))


def test_a_bounded_wait_for_a_destination_ends_the_follow_with_its_error() -> None:
    follower = Pipeline(Minutes([HOUR]), [DownFor(fails=99)]).follow(["X"], "1m", since=0, sink_give_up=0.5)
    with pytest.raises(SinkUnavailable, match="giving up: server closed"):
        follower.run()


def test_a_give_up_shorter_than_the_first_backoff_still_tries_again_once() -> None:
    """--sink-give-up 0.3 is not "give up at once": the commit is tried again after 0.3 s."""
    import time

    sink = DownFor(fails=1)
    follower = Pipeline(Minutes([HOUR]), [sink]).follow(["X"], "1m", since=0, sink_give_up=0.3)
    follower.on_commit = lambda *a: follower.stop("test")
    waits: list[tuple[str, float, float]] = []  # (what, seconds asked, seconds taken)
    real_wait = follower._wait

    def timed_wait(what: str, seconds: float) -> None:
        began = time.monotonic()
        real_wait(what, seconds)
        waits.append((what, seconds, time.monotonic() - began))

    follower._wait = timed_wait
    result = follower.run()
    assert result.sink_outages == 1 and sink.commits == 1 and sink.closed_ok is True
    # the wait was cut to the give-up, not the 1 s backoff (timed alone: the run's own work, a
    # backfill, is no part of it and took more than the margin on a loaded machine)
    assert [what for what, _, _ in waits] == ["destination down"], waits
    (_, asked, taken), = waits
    assert 0.2 < asked <= 0.3 and taken >= asked - 0.01, waits  # (0.3 less the moment before it)


def test_the_last_wait_for_a_destination_ends_at_the_give_up_deadline() -> None:
    import time

    follower = Pipeline(Minutes([HOUR]), [DownFor(fails=99)]).follow(["X"], "1m", since=0, sink_give_up=1.5)
    asked: list[float] = []
    real_wait = follower._wait
    follower._wait = lambda what, seconds: (asked.append(seconds), real_wait(what, seconds))
    began = time.monotonic()
    with pytest.raises(SinkUnavailable):
        follower.run()
    # tried again after 1 s, then after 0.5 more (not the 2 s backoff): down 1.5 s. Bounded by
    # what was asked, not by the clock: on a loaded machine the first wait can end past the
    # deadline (then there is no second one), which a count of exactly 2 took for a failure
    assert asked[0] == 1.0 and all(a <= 0.5 for a in asked[1:]) and sum(asked) <= 1.5, asked
    assert follower.result.sink_outages == len(asked)
    assert time.monotonic() - began >= 1.5


def test_stopped_while_the_destination_is_down_abandons_what_it_did_not_commit() -> None:
    import threading

    sink = DownFor(fails=99)
    follower = Pipeline(Minutes([HOUR]), [sink]).follow(["X"], "1m", since=0)
    threading.Timer(0.3, follower.stop, ("SIGTERM",)).start()
    result = follower.run()
    assert result.stopped_by == "SIGTERM" and result.sink_outages >= 1 and sink.closed_ok is False


class DownInWrite(ListSink):
    """A sink that gives up inside write (e.g. a commit it makes itself when its buffer is full)."""

    def write(self, batch: Batch) -> None:
        raise SinkUnavailable("PostgreSQL db:5432/x table klines: commit failed 3 times over 0s, giving up")


def test_a_destination_down_inside_write_ends_the_follow_instead_of_sending_rows_twice() -> None:
    first = ListSink()
    follower = Pipeline(Minutes([HOUR]), [first, DownInWrite()]).follow(["X"], "1m", since=0)
    with pytest.raises(SinkError, match="in write, not commit") as caught:
        follower.run()
    assert not isinstance(caught.value, SinkUnavailable)  # not waited out: the next pass would resend
    opens = [r[3] for r in first.rows]
    assert len(opens) == len(set(opens))  # the sink before it got no row twice


class AskedSource(StillSource):
    """Records the symbols each recheck asks about."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.asked: list[list[str]] = []

    def recheck(self, symbols, timeframe):  # type: ignore[no-untyped-def]
        self.asked.append(list(symbols))
        return {}


def test_a_lagging_series_is_rechecked_only_when_it_made_no_progress_since_the_last_recheck() -> None:
    """A series catching up is not asked about (400 symbols backfilling asked the whole
    exchangeInfo every 5 minutes); one that lags without moving is, and so is one at its end."""
    source = AskedSource()
    follower = Pipeline(source, [ListSink()]).follow(["A", "B", "C"], "1m", since=0)
    a = follower.series["A"] = SeriesState("A", 0)
    b = follower.series["B"] = SeriesState("B", 0)
    c = follower.series["C"] = SeriesState("C", 5 * MINUTE)
    a.lagging = b.lagging = True
    c.ended, c.ends_at = "delisted", 5 * MINUTE  # at its end
    follower._recheck()  # where each lagging series stands
    assert source.asked == [["C"]]
    a.next_start += MINUTE  # A catches up, B stands still
    follower._recheck()
    assert source.asked[1] == ["B", "C"]


class FailsFor(Minutes):
    """Serves minutes, except for ``BAD`` while ``failing``: its retries give up (GaveUp)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.failing, self.asked = True, []

    def fetch(self, task):
        from forge_core.http import GaveUp

        if task.symbol == "BAD":
            self.asked.append(self.clock[0])
            if self.failing:
                raise GaveUp("HTTP 503 after 10 attempts", 503)
        return [("still", task.symbol, *minute(ts)[2:])
                for ts in range(task.start, task.end, MINUTE)]


def test_a_series_the_exchange_keeps_failing_backs_off_alone_and_resets_when_served() -> None:
    """BAD fails at every try: asked again after 5, 10, 20 ... s of exchange time, at most 5
    minutes apart (it was every 5 s for ever: an exchangeInfo and ~7 s of retries each); GOOD
    is served at every boundary meanwhile; its lone retry failing is no outage of the exchange.
    Served again, the backoff starts over, and the status line and the summary say since when."""
    source = FailsFor(clock=[HOUR])
    follower = Pipeline(source, [ListSink()]).follow(["GOOD", "BAD"], "1m", since=HOUR - MINUTE)
    follower._pool = ThreadPoolExecutor(4)
    follower.pipeline.result = RunResult("still", "1m", 0, 0)
    follower._setup()

    def run_until(t: int) -> None:
        while source.clock[0] < t:
            source.clock[0] += 1000
            follower.clock.stale = True  # read the exchange's clock at each step
            follower._follow_step(1.0)

    run_until(HOUR + 20 * MINUTE)
    gaps = [b - a for a, b in zip(source.asked, source.asked[1:], strict=False)]
    assert gaps[:6] == [5_000, 10_000, 20_000, 40_000, 80_000, 160_000] and set(gaps[6:]) == {300_000}
    bad, good = follower.series["BAD"], follower.series["GOOD"]
    assert bad.failing_since == HOUR + 995 and bad.failures == len(source.asked)  # (the clock's 5 ms margin)
    assert good.last_open == HOUR + 18 * MINUTE and follower.result.outages == 0
    assert (f"BAD: last committed candle opens none yet; 0 written this run (failing since "
            f"1970-01-01T01:00:00.995Z, {bad.failures} failure(s) in a row: HTTP 503") in follower.result.summary()
    stream = Tty()
    StatusLine(stream)(follower)
    assert "BAD - lag" in stream.getvalue() and "failing since 01:00:00" in stream.getvalue()

    source.failing = False
    run_until(source.asked[-1] + 300_000)
    assert bad.failing_since is None and bad.last_open == good.last_open  # caught up
    source.failing, tries = True, len(source.asked)
    run_until(source.clock[0] + 2 * MINUTE)
    assert [b - a for a, b in zip(source.asked[tries:], source.asked[tries + 1:], strict=False)][:2] == [5_000, 10_000]


def test_a_failing_series_backing_off_is_slept_through_not_spun_on() -> None:
    """BAD backs off until its retry_at while GOOD is current: the follower sleeps (until the
    retry or the next boundary), as it does for a series waiting for the exchange's candle;
    taken for a series behind, it returned at once and the loop spun until the retry (up to 5
    minutes of a busy loop asking nothing)."""
    source = FailsFor(clock=[HOUR])
    follower = Pipeline(source, [ListSink()]).follow(["GOOD", "BAD"], "1m", since=HOUR - MINUTE)
    follower._pool = ThreadPoolExecutor(4)
    follower.pipeline.result = RunResult("still", "1m", 0, 0)
    follower._setup()
    while len(source.asked) < 3:
        source.clock[0] += 1000
        follower.clock.stale = True
        follower._follow_step(1.0)
    bad = follower.series["BAD"]
    assert bad.retry_at is not None and bad.retry_at > source.clock[0]
    slept: list[float] = []
    follower._wait_local = slept.append
    follower._sleep_until_due()
    assert slept, "returned at once: the backing-off series was taken for one behind"


def test_a_csv_commit_fsyncs_its_files_side_by_side(tmp_path, monkeypatch) -> None:
    """A follow run commits every series' file at each boundary: one fsync after the other, 50
    files took 124 ms a commit on a busy disk (6 ms side by side). Two files: each fsync waits
    for the other to have begun."""
    import os
    import threading

    from forge_core import RunInfo
    from forge_sink_csv import CsvSink

    both = threading.Barrier(2, timeout=5)
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (both.wait(), real(fd)))
    columns = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume")
    sink = CsvSink(output=str(tmp_path / "{symbol}.csv"))
    sink.open(RunInfo("still", "Still", ("A", "B"), "1m", 0, 1, columns, follow=True))
    for symbol in ("A", "B"):
        sink.write(Batch("still", symbol, "1m", columns, [("still", symbol, *minute(0)[2:])], "rest"))
    sink.commit()
    sink.close(True)
    assert (tmp_path / "B.csv").read_text().splitlines()[-1].startswith("still,B,1m,0,59999,")
