"""Keep series current: ``forge run ... --follow`` and :meth:`forge_core.Pipeline.follow`.

A follow run backfills what each sink lacks, then fetches every series again at each boundary
of the output timeframe, as soon as the candle that just closed can be had, writes it and
commits once for all series. What has closed is decided by the exchange's clock
(:meth:`~forge_core.Source.server_time`, re-read periodically), carried forward with a local
clock that does not jump (``CLOCK_BOOTTIME`` where it exists, which also counts a suspended
machine; otherwise ``time.monotonic``). The offset kept is a lower bound (the server's reading
against the local time the answer arrived), so Forge never believes a candle closed before the
exchange does.

Catch-up and the live tail are one loop: each pass asks every series from after its last
committed candle up to the last closed boundary, in pages when that is a lot. So after an
outage, a sleep of the machine, a clock jump or a restart (even after ``kill -9``: the start
comes from what the sinks hold) the next pass fills the gap over REST, or the Binance archive
for long ones, before the tail goes on. An exchange that stays down is retried with backoff
forever and logged as ``exchange_down`` warnings; a series whose lag passes ``lag_warning``
seconds logs ``lagging``; ``caught_up`` when it is current again; ``candle_committed`` after
every commit, per series, with the delay from the candle's close (exchange time) to the commit.

Only complete output periods reach the transforms and sinks: with ``resample`` a period waits
until its last input candle came or a later one did. A candle missing at the newest end is
never taken for a hole, however long ago it closed: only a later candle served by the exchange
affirms it.
"""

from __future__ import annotations

import bisect
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

import requests

from . import retrying
from .errors import RetryableError, SinkError, SinkUnavailable, SourceError, UsageError
from .http import Cancelled, GaveUp
from .logs import get_logger
from .pipeline import (
    RunResult,
    _apply,
    _call_plugin,
    _clean,
    _close_sinks,
    _output_timeframe,
    _symbols,
    fetch_checked,
)
from .progress import fit, retry_parts, throttle_parts
from .records import Batch, Row
from .sinks import RunInfo, Sink
from .sources import Source, Task
from .timeframes import parse_timeframe, source_timeframe
from .times import iso, parse_instant

log = get_logger(__name__)

FAILED_RETRY_MS = 5_000
"""A series whose fetch failed while others went on is asked again this much later (exchange
time), then after twice as long at each failure in a row, up to :data:`FAILED_RETRY_MAX_MS`."""
FAILED_RETRY_MAX_MS = 300_000
TRANSIENT = (GaveUp, RetryableError, requests.exceptions.RequestException, ConnectionError, TimeoutError)
"""Failures of the exchange a follow run outlives: retried with backoff, forever."""


def _local_seconds() -> float:
    """A local clock that never jumps; on Linux it also counts time the machine was suspended."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        try:
            return time.clock_gettime(boottime)
        except OSError:  # pragma: no cover - kernels without it
            pass
    return time.monotonic()


class ExchangeClock:
    """The exchange's time, as a lower bound: ``server_time()`` read between local instants
    ``t0`` and ``t1`` was at least ``serverTime`` at ``t1``; from there on it advances with
    the local clock. ``margin_ms`` plus 100 ppm of the time since the last reading cover
    clock-rate drift; :meth:`sync` again every ``resync`` seconds."""

    def __init__(self, source: Source, resync: float = 60.0, margin_ms: int = 5,
                 local: Callable[[], float] = _local_seconds) -> None:
        self.source, self.resync, self.margin_ms, self.local = source, resync, margin_ms, local
        self.offset_ms: float | None = None  # exchange ms minus local ms, lower bound
        self.synced_at = 0.0
        self.rtt = 0.0
        self.syncs = 0
        self.stale = True

    def sync(self) -> None:
        t0 = self.local()
        server = self.source.server_time()
        t1 = self.local()
        previous = self.offset_ms
        self.offset_ms = server - t1 * 1000.0
        self.synced_at, self.rtt = t1, t1 - t0
        self.syncs += 1
        self.stale = False
        if previous is not None and abs(self.offset_ms - previous) > 1000:
            log.warning("clock_jump", jump_ms=round(self.offset_ms - previous),
                        detail="the exchange's clock moved against the local one; following its clock")

    def due(self) -> bool:
        return self.stale or self.offset_ms is None or self.local() - self.synced_at >= self.resync

    def now(self) -> int:
        """Exchange time in epoch ms that has certainly passed."""
        assert self.offset_ms is not None, "sync() first"
        t = self.local()
        drift = (t - self.synced_at) * 0.1  # 100 ppm, in ms
        return int(t * 1000.0 + self.offset_ms - self.margin_ms - drift)

    def local_at(self, exchange_ms: int) -> float:
        """Local clock reading by which the exchange's clock has reached ``exchange_ms``."""
        assert self.offset_ms is not None, "sync() first"
        t = (exchange_ms + self.margin_ms - self.offset_ms) / 1000.0
        return t + max(0.0, t - self.synced_at) * 1.001e-4 + 0.001  # the drift allowance of now()


@dataclass
class SeriesState:
    """Where one series stands. ``next_start`` is the open time (input timeframe) of the first
    candle not handed on yet; ``last_open`` the newest output candle committed."""

    symbol: str
    next_start: int
    last_open: int | None = None
    written: int = 0
    committed: int = 0
    lagging: bool = False
    lag_logged: float = 0.0
    current: bool = False
    was_current: bool = False
    first_open: int | None = None
    # the exchange says the symbol does not trade (SymbolInfo.ended): why, and where its candles
    # end (after the last one); nothing at or after ``ends_at`` is asked for until a recheck
    # says it trades again (a maintenance is over) or has a later last candle
    ended: str | None = None
    ends_at: int | None = None
    last_candle: int | None = None
    stood_at: int | None = None  # next_start at the last recheck: a lagging series that has not moved is asked about
    final: bool = False  # ended for good (SymbolInfo.final): never asked about again
    # within a pass
    held: list[Row] = field(default_factory=list)
    pending_open: int | None = None  # newest output candle written, not committed yet
    step_start: int = 0
    started: bool = False
    waiting_for: int | None = None  # a boundary whose newest candle the exchange did not have yet
    repoll_at: int | None = None
    # the exchange failed this series while serving others: since when (exchange time, the
    # first failure in a row), how often, and when it is asked again (not before, whatever
    # boundary comes); reset when it is served
    failing_since: int | None = None
    failures: int = 0
    retry_at: int | None = None
    last_error: str = ""


@dataclass
class FollowResult:
    """Where each series stands when a follow run ends."""

    source: str
    timeframe: str
    series: dict[str, SeriesState]
    stopped_by: str = ""
    elapsed: float = 0.0
    passes: int = 0
    outages: int = 0
    sink_outages: int = 0  # waits for a destination that was down
    source_stats: dict[str, int] = field(default_factory=dict)
    destinations: list[str] = field(default_factory=list)

    @property
    def rows(self) -> dict[str, int]:
        return {s: st.written for s, st in self.series.items()}

    def summary(self) -> str:
        lines = []
        for symbol, st in self.series.items():
            last = iso(st.last_open) if st.last_open is not None else "none yet"
            ended = "" if st.ended is None else (
                f" ({st.ended}: " + ("no candles at all" if st.last_candle is None else
                                     f"last candle {iso(st.last_candle)}")
                + (", ended for good)" if st.final else ", not followed past it unless it trades again)"))
            failing = "" if st.failing_since is None else (
                f" (failing since {iso(st.failing_since)}, {st.failures} failure(s) in a row: {st.last_error})")
            lines.append(f"  {symbol}: last committed candle opens {last}; {st.committed} written this run{ended}"
                         f"{failing}")
        stats = ", ".join(f"{k} {v}" for k, v in self.source_stats.items())
        head = (f"followed {len(self.series)} {self.timeframe} series from {self.source} for {self.elapsed:.1f}s"
                f"{f', stopped by {self.stopped_by}' if self.stopped_by else ''}; {stats}; "
                f"-> {', '.join(self.destinations)}")
        if all(st.final for st in self.series.values()):
            return "\n".join([head, *lines])  # nothing can come any more
        return "\n".join([head, *lines, "  run the same command to continue after the last committed candle"])


class Follower:
    """Backfill, then keep ``symbols`` current until :meth:`stop` (or a signal, from the CLI).

    Built by :meth:`forge_core.Pipeline.follow`, which lends it the pipeline's source (one rate
    limiter for everything), transforms and sinks. ``since`` is where a series no sink holds
    yet starts; every other series continues after the newest candle its sinks hold (each sink
    gets only the candles it lacks).
    """

    def __init__(self, pipeline: Any, symbols: Sequence[str], timeframe: str, *, since: str | int | None,
                 lag_warning: float = 30.0, poll_delay: float = 0.05, resync: float = 60.0,
                 workers: int | None = None, recheck: float = 300.0,
                 on_commit: Callable[[str, int, float], None] | None = None,
                 on_tick: Callable[[Follower], None] | None = None,
                 sink_give_up: float | None = None) -> None:
        self.pipeline = pipeline
        self.source: Source = pipeline.source
        self._open, self._end = self.source.columns.index("open_ts"), self.source.columns.index("end_ts")
        self.sinks: list[Sink] = pipeline.sinks
        self.transforms = pipeline.transforms
        self.symbols = _symbols(symbols)
        self.tf = source_timeframe(self.source, timeframe)
        self.out_tf = parse_timeframe(_output_timeframe(self.transforms, self.tf.name))
        if self.out_tf.ms is not None and self.tf.ms is not None and self.out_tf.ms % self.tf.ms:
            raise UsageError(f"cannot follow {self.tf.name} candles into {self.out_tf.name} periods")
        unable = [sink.name for sink in self.sinks if not getattr(sink, "supports_follow", False)]
        if unable:
            raise UsageError(f"sink {unable[0]!r} cannot follow (it publishes its output only at the end of "
                             "a run); --follow works with sinks that commit in place, e.g. csv, postgres")
        if since is None:
            raise UsageError("--follow needs --since (or --from DATE): where a series the sinks do not hold "
                             "yet starts, e.g. --since 2024-01-01")
        self.since = since if isinstance(since, int) else parse_instant(str(since), what="since date")[0]
        self.lag_warning = lag_warning
        self.poll_delay = poll_delay
        # seconds between two look-ups of the series that do not trade or lag (Source.recheck)
        self.recheck = recheck
        self._recheck_at = 0.0
        self.workers = workers or max(pipeline.workers, min(32, len(self.symbols)))
        self.commit_every = pipeline.commit_every
        self.on_commit = on_commit
        self.on_tick = on_tick
        self.sink_give_up = sink_give_up  # seconds a destination may stay down (None: wait forever)
        self._sink_down = False
        self.clock = ExchangeClock(self.source, resync=resync)
        self.stopping = threading.Event()
        self.stopped_by = ""
        self.series: dict[str, SeriesState] = {}
        self.sink_points: list[dict[str, int | None]] = []  # per sink: newest output open it holds
        self.result = FollowResult(self.source.source_value, self.out_tf.name, self.series)
        self._uncommitted = 0
        self._same_tf = self.tf.name == self.out_tf.name
        self._pool: ThreadPoolExecutor | None = None
        self._last_tick = 0.0
        self.now = 0  # exchange time of the current pass
        self.waiting: tuple[str, float] | None = None  # what the run waits for, and until when (epoch s)

    # -- control --------------------------------------------------------------------------
    def stop(self, reason: str = "stop()") -> None:
        """Stop after the commit in flight (callable from a signal handler or another thread)."""
        if not self.stopping.is_set():
            self.stopped_by = reason
            self.stopping.set()

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> FollowResult:
        began = time.monotonic()
        source = self.source
        if self.pipeline.result is not None:
            raise UsageError("a Pipeline runs once; build a new one for the next run")
        self.pipeline.result = RunResult(source.source_value, self.out_tf.name, self.since, 0)
        info = RunInfo(source.source_value, source.label or source.name.title(), tuple(self.symbols), self.tf.name,
                       self.since, self.since + 1, source.columns,
                       transforms=";".join(f"{t.label}{sorted(t.settings.items())}" for t in self.transforms),
                       output_timeframe=self.out_tf.name, follow=True)
        opened: list[Sink] = []
        ok = False
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="forge-follow")
        try:
            for sink in self.sinks:
                _call_plugin("sink", sink.name, sink.open, info)
                opened.append(sink)
            try:
                self._setup()
                self._loop()
            except Cancelled:
                if not self.stopping.is_set():
                    raise
            # stopped while a destination was down: what it did not commit is abandoned, and
            # the next run continues after the last commit
            ok = not self._sink_down
        finally:
            self.result.elapsed = time.monotonic() - began
            self.result.stopped_by = self.stopped_by
            self.result.source_stats = source.stats()
            _close_sinks(opened, ok)
            self.result.destinations = [s.describe() for s in self.sinks]
            source.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
        log.info("follow_done", stopped_by=self.stopped_by, series={s: (iso(st.last_open) if st.last_open else None)
                                                                   for s, st in self.series.items()})
        return self.result

    def _setup(self) -> None:
        """Where each series starts: after the newest candle the sinks hold, else at ``since``."""
        name, out = self.source.source_value, self.out_tf
        self.sink_points = [{} for _ in self.sinks]
        self._retrying(self.clock.sync)
        now = self.clock.now()
        if self.since > now:  # a typo (2030 for 2023) would wait for years, silently
            raise UsageError(f"--since {iso(self.since)} is after the exchange's clock ({iso(now // 1000 * 1000)}): "
                             "nothing has closed there yet; give a date in the past")
        # every symbol told first, as in a bounded run (Binance: one exchangeInfo for all)
        prepare_symbols = getattr(self.source, "prepare_symbols", None)
        if prepare_symbols is not None:
            self._retrying(lambda: _call_plugin("source", name, prepare_symbols, self.symbols, self.tf))
        for symbol in self.symbols:
            held = [_call_plugin("sink", sink.name, sink.last_open, name, symbol, out.name) for sink in self.sinks]
            for points, h in zip(self.sink_points, held, strict=True):
                points[symbol] = h
            starts = [out.next_open(h) if h is not None else out.ceil(self.since) for h in held]
            start = min(starts)
            info = self._retrying(lambda s=symbol: _call_plugin("source", name, self.source.prepare, s, self.tf))
            if info.first_open is not None:
                start = max(start, self.tf.floor(info.first_open))
            known = [h for h in held if h is not None]
            state = SeriesState(symbol, start, last_open=min(known) if len(known) == len(held) else None,
                                first_open=info.first_open)
            self._ended(state, info)
            self.series[symbol] = state
            log.info("follow_start", symbol=symbol, start=iso(start),
                     held=[iso(h) if h is not None else None for h in held])
        self._recheck_at = _local_seconds() + self.recheck

    def _ended(self, s: SeriesState, info: Any) -> None:
        """Take the source's word that ``s`` does not trade (``info.ended``), or no longer."""
        if info.ended is None:
            if s.ended is not None:
                log.warning("series_resumed", symbol=s.symbol, reason=s.ended,
                            last_candle=None if s.last_candle is None else iso(s.last_candle),
                            detail="it trades again: followed from after its last candle")
                s.ended = s.ends_at = s.last_candle = None
                s.final = False
            return
        ends_at = s.next_start if info.last_open is None else self.tf.next_open(self.tf.floor(info.last_open))
        if info.last_open is not None and self.out_tf.next_open(self.out_tf.floor(ends_at - 1)) > ends_at:
            # the candles end inside an output period: it can never be whole, and a run over
            # the same range leaves it out too; waited for, the series would never be done
            ends_at = self.out_tf.floor(ends_at - 1)
        final = bool(getattr(info, "final", False))
        if (info.ended, info.last_open, final) == (s.ended, s.last_candle, s.final):
            return
        s.ended, s.last_candle, s.ends_at, s.final = info.ended, info.last_open, ends_at, final
        s.lagging = False  # (no lag is reported past its end)
        if final:  # it cannot come back: nothing to warn about, nothing to ask again
            log.info("series_final", symbol=s.symbol, reason=info.ended,
                     last_candle=None if info.last_open is None else iso(info.last_open),
                     detail="it cannot trade again: followed up to its last candle, then no more")
            return
        log.warning("series_ended", symbol=s.symbol, reason=info.ended,
                    last_candle=None if info.last_open is None else iso(info.last_open),
                    detail="not followed past its last candle unless it trades again "
                           f"(its status is asked again every {self.recheck:g} s)")

    def _recheck(self) -> None:
        """Ask the source again about the series that do not trade and those that lag
        (:meth:`~forge_core.Source.recheck`): a maintenance that is over, a delisting while
        following. Every ``recheck`` seconds, all of them in one call."""
        self._recheck_at = _local_seconds() + self.recheck
        asked = [s for s in self.series.values() if _rechecked(s)]
        for s in self.series.values():
            s.stood_at = s.next_start
        if not asked:
            return
        source = self.source
        try:
            answers = _call_plugin("source", source.name, source.recheck, [s.symbol for s in asked], self.tf)
        except TRANSIENT:
            raise  # the exchange is down: the loop's backoff
        except SourceError as exc:  # a status look-up refused: nothing changes, asked again later
            log.warning("recheck_failed", error=str(exc)[:300], retry_in=self.recheck)
            return
        for s in asked:
            info = answers.get(s.symbol)
            if info is not None:
                self._ended(s, info)

    def _loop(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self._follow_step(backoff)
                backoff = 1.0
            except TRANSIENT as exc:
                try:
                    self._commit()  # keep what came before the failure
                except SinkUnavailable as down:
                    self._await_sinks(down)
                if self.stopping.is_set():
                    break
                self.result.outages += 1
                log.warning("exchange_down", error=str(exc)[:300], retry_in=round(backoff, 1),
                            detail="still following: retrying with backoff until the exchange answers")
                self._wait("exchange down", backoff)
                backoff = min(backoff * 2, 30.0)
                self.clock.stale = True  # re-read the exchange's clock before the next pass
                continue
            except SinkUnavailable as down:
                self._await_sinks(down)
                continue
            except Cancelled:
                if self.stopping.is_set():
                    break
                raise
            if self.stopping.is_set():
                break
            if all(s.final and _done(s) for s in self.series.values()):
                self.stop("every series ended for good")
                break
            self._sleep_until_due()

    def _follow_step(self, backoff: float) -> None:
        if self.clock.due():
            self.clock.sync()
        self.now = self.clock.now()
        # before fetching too: after an outage ridden out inside one request's retries, the lag
        # it left is seen (lagging, then caught_up) before the catch-up commits hide it
        self._check_lag(self.now)
        limit = self.out_tf.floor(self.now)
        due = [s for s in self.series.values() if self._is_due(s, limit)]
        if due:
            self._pass(due, limit)
        if _local_seconds() >= self._recheck_at and not self.stopping.is_set():
            self._recheck()  # after the boundary's candles are committed: it may take a while
        if self.result.outages and backoff > 1.0:
            log.warning("exchange_back", detail="the exchange answers again; catching up")

    def _await_sinks(self, error: SinkUnavailable) -> None:
        """A destination stays down past its own retries: following is meant to run for days,
        so wait with backoff (one warning per wait) and commit the kept rows again, until it
        answers, the run is stopped, or ``sink_give_up`` seconds have passed (then ``error``):
        always after one commit tried again at least, the last wait shortened to end at the
        deadline (``--sink-give-up 0.5`` tries again after 0.5 s; 10 after 1, 3, 7 and 10 s)."""
        began, backoff, tried = _local_seconds(), 1.0, False
        self._sink_down = True
        while True:
            waited = _local_seconds() - began
            wait = backoff
            if self.sink_give_up is not None:
                if tried and waited >= self.sink_give_up:
                    log.warning("sink_gave_up", error=str(error)[:300], waited=round(waited, 1))
                    raise error
                wait = min(backoff, max(self.sink_give_up - waited, 0.0))
            self.result.sink_outages += 1
            log.warning("sink_down", error=str(error)[:300], retry_in=round(wait, 1), waited=round(waited, 1),
                        detail="still following: the rows are kept; committing again after the wait")
            self._wait("destination down", wait)
            tried = True
            if self.stopping.is_set():
                return  # rows not committed stay uncommitted: the next run continues after the last commit
            try:
                self._commit()
            except SinkUnavailable as again:
                error, backoff = again, min(backoff * 2, 60.0)
                continue
            self._sink_down = False
            log.warning("sink_back", waited=round(_local_seconds() - began, 1),
                        detail="the destination answers again; catching up")
            self.clock.stale = True
            return

    def _is_due(self, s: SeriesState, limit: int) -> bool:
        if s.next_start >= limit or _done(s):
            return False
        if s.retry_at is not None and self.now < s.retry_at:  # failing: backing off
            return False
        if s.waiting_for == limit:  # the exchange lacked this boundary's newest candle a moment ago
            return s.repoll_at is not None and self.now >= s.repoll_at
        return True

    def _sleep_until_due(self) -> None:
        now = self.clock.now()
        limit = self.out_tf.floor(now)
        wake = self.out_tf.next_open(limit) + int(self.poll_delay * 1000)
        for s in self.series.values():
            if _done(s):
                continue
            if s.retry_at is not None and s.retry_at > now and s.next_start < limit:
                wake = min(wake, s.retry_at)
                continue
            if s.waiting_for == limit and s.repoll_at is not None:
                wake = min(wake, s.repoll_at)
            elif s.next_start < limit and s.waiting_for != limit:
                return  # a series is behind: no sleeping
        target = self.clock.local_at(wake)
        if self.clock.synced_at + self.clock.resync < target:
            target = max(_local_seconds(), self.clock.synced_at + self.clock.resync)
        if self._recheck_at < target and any(_rechecked(s) for s in self.series.values()):
            target = max(_local_seconds(), self._recheck_at)
        planned = target
        self._wait_local(target)
        late = _local_seconds() - planned
        if late > 2.0 and not self.stopping.is_set():  # the process was stopped or starved
            log.warning("woke_late", seconds=round(late, 1), detail="catching up over REST")
            self.clock.stale = True

    def _wait(self, what: str, seconds: float) -> None:
        """Back off ``seconds`` with the status line saying ``what`` and when the next try is."""
        self.waiting = (what, time.time() + seconds)
        try:
            self._tick(force=True)
            self._wait_local(_local_seconds() + seconds)
        finally:
            self.waiting = None

    def _wait_local(self, target: float) -> None:
        while not self.stopping.is_set():
            left = target - _local_seconds()
            if left <= 0:
                return
            self.stopping.wait(min(left, 0.5))
            self._tick()

    # -- one pass over the series that are due -----------------------------------------------
    def _pass(self, due: list[SeriesState], limit: int) -> None:
        self.result.passes += 1
        tasks: list[Task] = []
        for s in due:
            s.step_start, s.started, s.held = s.next_start, False, []
            tasks += list(_call_plugin("source", self.source.name, self.source.plan, s.symbol, self.tf, s.next_start, limit))
        by_symbol = {s.symbol: s for s in due}
        current: SeriesState | None = None
        done: set[str] = set()
        failed: dict[str, Exception] = {}  # series the exchange failed this pass: asked again next pass
        try:
            for task, rows, error in self._fetch(tasks):
                s = by_symbol[task.symbol]
                if s is not current:
                    if current is not None:
                        self._finish(current, limit)
                        done.add(current.symbol)
                    current = s
                if error is not None or s.symbol in failed:
                    failed.setdefault(s.symbol, error)  # type: ignore[arg-type]
                    continue
                clean, _ = _clean(rows, task, self.now, self._open, self._end)
                self._take(s, list(clean), limit)
                if self._uncommitted >= self.commit_every:
                    self._commit()
                if self.stopping.is_set():
                    break
        finally:
            if current is not None and current.symbol not in done:
                self._finish(current, limit)
        if failed and len(failed) == len(due) and any(s.failing_since is None for s in due):
            raise next(iter(failed.values()))  # the exchange is down: the outage backoff
        if not self.stopping.is_set():  # (a pass cut short by a stop served some series only)
            for s in due:
                if s.symbol in failed:
                    self._failed(s, failed[s.symbol])
                elif s.failing_since is not None:
                    log.warning("series_back", symbol=s.symbol, failing_since=iso(s.failing_since),
                                failures=s.failures, detail="the exchange serves it again")
                    s.failing_since, s.failures, s.retry_at, s.last_error = None, 0, None, ""
            for s in due:
                if s.next_start >= limit or s.symbol in failed:
                    continue
                if s.waiting_for == limit:
                    s.repoll_at = None  # one quick second try per boundary, then the next boundary
                else:  # the exchange lacked the newest candle: ask once more shortly
                    s.waiting_for = limit
                    s.repoll_at = self.now + min(1000, max(200, (self.tf.ms or 60_000) // 4))
        self._commit()

    def _failed(self, s: SeriesState, error: Exception) -> None:
        """One series failing does not hold back the others: it is asked again after a backoff
        of its own (5 s of exchange time, doubling to 5 minutes), so a pair the exchange keeps
        failing costs one attempt every 5 minutes, not an exchangeInfo and a round of retries every 5 s."""
        if s.failing_since is None:
            s.failing_since = self.now
        retry_ms = min(FAILED_RETRY_MS * 2 ** min(s.failures, 16), FAILED_RETRY_MAX_MS)
        s.failures += 1
        s.retry_at, s.last_error = self.now + retry_ms, str(error)[:300]
        s.waiting_for = s.repoll_at = None
        log.warning("series_failed", symbol=s.symbol, error=s.last_error, failing_since=iso(s.failing_since),
                    failures=s.failures, retry_in=retry_ms / 1000,
                    detail="the other series went on; this one is asked again after the backoff")

    def _fetch(self, tasks: list[Task]) -> Iterator[tuple[Task, list[Row] | None, Exception | None]]:
        """Fetch concurrently, yield in task order (with the exchange's failure instead of rows
        when a task's retries gave up); between waits, update the status and see whether a stop
        was asked. Once a task of a series failed, that series' later tasks are neither yielded
        nor asked: those not begun are cancelled, those running are left to end unheard (each
        would be a whole retry cycle against the failing pair, its 5xx pausing every worker)."""
        assert self._pool is not None
        source = self.source
        pending: deque[tuple[Task, Future[list[Row]]]] = deque()
        todo = iter(tasks)
        ahead = 2 * self.workers
        dead: set[str] = set()

        def fill() -> None:
            while len(pending) < ahead:
                task = next(todo, None)
                if task is None:
                    return
                if task.symbol not in dead:
                    pending.append((task, self._pool.submit(lambda t=task: fetch_checked(source, t)[0])))  # type: ignore[union-attr]

        fill()
        while pending:
            task, future = pending[0]
            error: Exception | None = None
            while True:
                try:
                    rows = future.result(timeout=0.25)
                    break
                except FutureTimeout:
                    self._tick()
                    if self.stopping.is_set():
                        return
                except TRANSIENT as exc:
                    rows, error = None, exc
                    break
            pending.popleft()
            if error is not None:
                dead.add(task.symbol)
                for later in [p for p in pending if p[0].symbol == task.symbol]:
                    later[1].cancel()
                    pending.remove(later)
            fill()
            yield task, rows, error

    def _take(self, s: SeriesState, rows: list[Row], limit: int) -> None:
        """Hand on the complete output periods among ``s.held + rows``; hold the last one back
        until its last input candle has come."""
        if not rows:
            return
        if self._same_tf:
            self._emit(s, rows, limit)
            s.next_start = self.tf.next_open(rows[-1][self._open])
            return
        rows = s.held + rows
        out, tf = self.out_tf, self.tf
        period = out.floor(rows[-1][self._open])
        if rows[-1][self._open] == tf.floor(out.next_open(period) - 1):
            ready, s.held = rows, []
        else:
            cut = bisect.bisect_left(rows, period, key=lambda r: r[self._open])
            ready, s.held = rows[:cut], rows[cut:]
        if ready:
            self._emit(s, ready, limit)
            s.next_start = out.next_open(out.floor(ready[-1][self._open]))

    def _finish(self, s: SeriesState, limit: int) -> None:
        """End of a series' part of a pass. Candles missing before a candle the exchange served
        are its holes (affirmed: candles on both sides) and were passed already. What is missing
        at the newest end is not affirmed, however long ago it closed: the series asks again
        from there, and a partly served output period waits for a later candle."""
        if s.held:
            s.next_start = max(s.next_start, self.out_tf.floor(s.held[0][self._open]))
            s.held = []
        if s.started:
            self._end_transforms(s)
        if s.next_start >= limit:
            s.waiting_for, s.repoll_at = None, None

    # -- transforms and sinks -----------------------------------------------------------------
    def _emit(self, s: SeriesState, rows: list[Row], limit: int) -> None:
        if not s.started:
            s.started = True
            start = s.step_start
            if s.first_open is not None and start <= self.tf.floor(s.first_open):
                # from the listing (the start clamped to it): nothing comes before it, so its
                # period is whole, as a run from before the listing writes it
                start = self.out_tf.floor(start)
            for transform in self.transforms:
                _call_plugin("transform", transform.label, transform.start_series, s.symbol, start, limit)
        batch = Batch(self.source.source_value, s.symbol, self.tf.name, self.source.columns, rows, "rest")
        self._write(s, batch, self.transforms)

    def _end_transforms(self, s: SeriesState) -> None:
        for i, transform in enumerate(self.transforms):
            tail = _call_plugin("transform", transform.label, transform.end_series)
            if tail is not None:
                self._write(s, tail, self.transforms[i + 1:])

    def _write(self, s: SeriesState, batch: Batch, transforms: Sequence[Any]) -> None:
        for transform in transforms:
            if not batch.rows:
                return
            batch = _apply(transform, batch)
        if not batch.rows:
            return
        at = batch.columns.index("open_ts") if "open_ts" in batch.columns else None
        for sink, points in zip(self.sinks, self.sink_points, strict=True):
            held = points.get(s.symbol)
            part = batch
            if held is not None and at is not None:
                if batch.rows[-1][at] <= held:
                    continue
                part = batch.with_rows([r for r in batch.rows if r[at] > held])
                points[s.symbol] = None  # past it: every later row is new to this sink
            try:
                _call_plugin("sink", sink.name, sink.write, part)
            except SinkUnavailable as exc:
                # only a commit is waited out: a batch some sinks took would come to them again
                raise SinkError(f"{exc} (in write, not commit: the follow stops rather than write a row "
                                "twice; the next run continues after the last commit)") from None
        s.written += len(batch.rows)
        self._uncommitted += len(batch.rows)
        # the newest output candle written; without an open_ts column, the period of the input
        s.pending_open = batch.rows[-1][at] if at is not None else self.out_tf.floor(s.next_start - 1)

    def _commit(self) -> None:
        changed = [s for s in self.series.values() if s.pending_open is not None or s.committed != s.written]
        if not changed:
            return
        for sink in self.sinks:
            _call_plugin("sink", sink.name, sink.commit)
        self._uncommitted = 0
        now = self.clock.now() if self.clock.offset_ms is not None else 0
        for s in changed:
            s.committed = s.written
            if s.pending_open is None:
                continue
            s.last_open = s.pending_open
            s.pending_open = None
            close = self.out_tf.next_open(s.last_open)
            delay = (now - close) / 1000.0
            log.info("candle_committed", symbol=s.symbol, open=iso(s.last_open), delay=round(delay, 3),
                     written=s.committed)
            if self.on_commit is not None:
                self.on_commit(s.symbol, s.last_open, delay)
        self.pipeline.result.committed = sum(s.committed for s in self.series.values())
        self._check_lag(now)

    def lag(self, s: SeriesState, now: int | None = None) -> float:
        """Seconds since the first candle not committed yet closed (0 when current)."""
        now = self.clock.now() if now is None else now
        first = self.out_tf.next_open(s.last_open) if s.last_open is not None else self.out_tf.floor(s.next_start)
        return max(0.0, (now - self.out_tf.next_open(first)) / 1000.0)

    def _check_lag(self, now: int) -> None:
        wall = time.monotonic()
        for s in self.series.values():
            if _done(s):
                continue  # it no longer trades: no lag to warn about
            lag = self.lag(s, now)
            last = iso(s.last_open) if s.last_open is not None else None
            if lag > self.lag_warning:
                # a warning once the series was current (the first backfill is expected to lag)
                if wall - s.lag_logged > 60 or not s.lagging:
                    (log.warning if s.was_current else log.info)(
                        "lagging" if s.was_current else "catching_up", symbol=s.symbol, lag=round(lag, 1), last=last)
                    s.lag_logged = wall
                s.lagging, s.current = True, False
            elif lag < 1.0 and not s.current:
                s.current, s.lagging, s.was_current = True, False, True
                log.info("caught_up", symbol=s.symbol, last=last)
            elif lag >= 1.0 and s.current and lag > min(self.lag_warning, 5.0):
                s.current = False

    def _tick(self, force: bool = False) -> None:
        wall = time.monotonic()
        if wall - self._last_tick < 0.5 and not force:
            return
        self._last_tick = wall
        if self.clock.offset_ms is not None:
            self._check_lag(self.clock.now())
        if self.on_tick is not None:
            self.on_tick(self)

    def _retrying(self, work: Callable[[], Any]) -> Any:
        backoff = 1.0
        while True:
            try:
                return work()
            except TRANSIENT as exc:
                if self.stopping.is_set():
                    raise Cancelled("stopped") from None
                log.warning("exchange_down", error=str(exc)[:300], retry_in=round(backoff, 1),
                            detail="still following: retrying with backoff until the exchange answers")
                self._wait("exchange down", backoff)
                if self.stopping.is_set():
                    raise Cancelled("stopped") from None
                backoff = min(backoff * 2, 30.0)


class StatusLine:
    """One stderr line on a terminal: per series its last candle and lag, fitted to the width.
    While a request waits to be retried (``forge_core.retrying``), or the follow run waits for
    the exchange or a destination to come back, the line says that first."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._drawn = False

    def __call__(self, follower: Follower) -> None:
        if not self.enabled:
            return
        width = max(20, shutil.get_terminal_size((80, 20)).columns - 1)
        first = retry_parts(retrying.active()) or throttle_parts(retrying.throttled())
        waiting = getattr(follower, "waiting", None)
        if waiting is not None:
            first.insert(0, f"{waiting[0]}: next try at {retrying.clock(waiting[1])} UTC")
        if follower.clock.offset_ms is None:  # before the exchange's clock is known: only waits
            if not first:
                return
            line = fit(first, width)
        else:
            line = fit([*first, self._series(follower, width)], width)
        self.stream.write("\r" + line[:width].ljust(min(width, 79)))
        self.stream.flush()
        self._drawn = True

    @staticmethod
    def _series(follower: Follower, width: int) -> str:
        now = follower.clock.now()
        # a series at its end (it does not trade) has no lag: it is followed no further
        lags = {sym: follower.lag(s, now) for sym, s in follower.series.items() if not _done(s)}
        parts = []
        for sym, s in follower.series.items():
            last = iso(s.last_open)[11:19] if s.last_open is not None else "-"
            failing = "" if s.failing_since is None else f" failing since {iso(s.failing_since)[11:19]}"
            parts.append(f"{sym} {last} " + (f"lag {lags[sym]:.1f}s{failing}" if sym in lags else "ended"))
        line = "following: " + " | ".join(parts)
        if len(line) > width:
            behind = sum(1 for lag in lags.values() if lag > (follower.out_tf.ms or 0) / 1000 + 2)
            failing = [s for s in follower.series.values() if s.failing_since is not None]
            ended = len(parts) - len(lags)
            line = (f"following {len(parts)} series, {len(lags) - behind} current, "
                    f"{f'{ended} ended, ' if ended else ''}max lag {max(lags.values(), default=0):.1f}s")
            if failing:
                first = min(failing, key=lambda s: s.failing_since or 0)
                line += f", {len(failing)} failing ({first.symbol} since {iso(first.failing_since)[11:19]})"
        return line

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 79 + "\r")
            self.stream.flush()


def run_cli(pipeline: Any, symbols: Sequence[str], timeframe: str, since: str | None, *,
            lag_warning: float, quiet: bool, echo: Callable[[str], None],
            sink_give_up: float | None = None) -> int:
    """``forge run --follow``: follow until SIGTERM (exit 0) or Ctrl-C (exit 130), each
    stopping after the commit in flight and printing where every series stands."""
    status = None if quiet else StatusLine()
    follower = pipeline.follow(symbols, timeframe, since=since, lag_warning=lag_warning, on_tick=status,
                               sink_give_up=sink_give_up)
    signals = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if follower.stopping.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        follower.stop(signals.get(signum, str(signum)))

    if threading.current_thread() is threading.main_thread():
        for signum in signals:
            previous[signum] = signal.signal(signum, handler)
    try:
        result = follower.run()
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
        if status is not None:
            status.finish()
    echo(result.summary())
    return 130 if result.stopped_by == "Ctrl-C" else 0


__all__ = ["ExchangeClock", "FollowResult", "Follower", "SeriesState", "StatusLine", "run_cli"]


def _done(s: SeriesState) -> bool:
    """The series reached the end the exchange confirmed (it does not trade)."""
    return s.ends_at is not None and s.next_start >= s.ends_at


def _rechecked(s: SeriesState) -> bool:
    """Whose status a follow run asks again: a series left at its last candle, or one lagging
    that has not moved since the last recheck (not one catching up); never one ended for good."""
    return not s.final and (_done(s) or (s.lagging and s.ended is None and s.next_start == s.stood_at))
