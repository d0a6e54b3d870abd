"""The embedding API and run loop: source -> transforms -> sinks.

::

    from forge_core import Pipeline

    result = Pipeline("binance", sinks=[("csv", {"output": "btc.csv"})]).run(
        ["BTCUSDT"], "1m", "2024-01-01", "2024-01-31"
    )
    print(result.rows)          # {'BTCUSDT': 44640}

Fetching runs ahead in a small thread pool (``workers``), bounded to twice its size, while the
calling thread cleans, transforms and writes the pages strictly in time order per symbol, so
memory stays flat however long the range. Every ``commit_every`` rows, and at the end of each
symbol, the sinks commit.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import budget, retrying
from .errors import BeforeListing, ForgeError, SinkError, SourceError, TransformError, UsageError
from .logs import get_logger
from .plugins import Plugins
from .records import Batch, Fetched, Row, TextRows, after_point, ascending, check_rows
from .sinks import RunInfo, Sink
from .sources import Source, Task
from .timeframes import Timeframe, source_timeframe
from .times import display, iso, parse_range
from .transforms import RowFunction, Transform

if TYPE_CHECKING:
    from .follow import Follower

log = get_logger(__name__)

PluginSpec = Any  # a name, (name, options), an instance, or (for transforms) a callable


@dataclass
class Progress:
    """Passed to ``on_progress`` after every page."""

    symbol: str
    done: int
    expected: int
    total_done: int
    total_expected: int
    elapsed: float

    @property
    def rate(self) -> float:
        return self.total_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if not self.rate or self.total_done >= self.total_expected:
            return None
        return (self.total_expected - self.total_done) / self.rate


@dataclass
class RunResult:
    """What a run did. ``rows`` counts rows written per symbol."""

    source: str
    timeframe: str
    start: int
    end: int
    rows: dict[str, int] = field(default_factory=dict)
    origins: dict[str, int] = field(default_factory=dict)
    tasks: int = 0
    duplicates_dropped: int = 0
    elapsed: float = 0.0
    source_stats: dict[str, int] = field(default_factory=dict)
    destinations: list[str] = field(default_factory=list)
    committed: int = 0
    resumed: dict[str, int] = field(default_factory=dict)
    # per symbol, in the fetched timeframe: the candle slots of the range from the listing on,
    # the candles the exchange served, and the holes between served candles ([start, end) ms),
    # which the exchange affirmed by serving candles on both sides
    slots: dict[str, int] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)
    holes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    # per symbol whose holes the exchange could not confirm (Source.holes_unconfirmed): why
    unconfirmed: dict[str, str] = field(default_factory=dict)
    # per symbol whose range goes past its end as the exchange confirmed it (SymbolInfo.ended):
    # the reason, the last candle (None: none at all) and what was not asked for ([start, end) ms)
    ended: dict[str, dict[str, Any]] = field(default_factory=dict)
    # per sink (by name; a repeated name gets #2, #3): rows the run inserted or changed there,
    # None where the sink cannot tell (Sink.rows_changed)
    rows_changed: dict[str, int | None] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def holes_text(self) -> str:
        """``BTCUSDT 44490 of 44640 slots, hole 2024-01-10 03:00..05:29 UTC`` per symbol with
        holes; empty when the exchange served every slot. Holes the source could not have the
        exchange confirm (:attr:`unconfirmed`) are said to be unconfirmed, with the reason."""
        parts, doubtful = [], []
        for symbol, holes in self.holes.items():
            if not holes:
                continue
            shown = ", ".join(_span(a, b) for a, b in holes[:3])
            more = f" and {len(holes) - 3} more" if len(holes) > 3 else ""
            text = (f"{symbol} {self.served.get(symbol, 0)} of {self.slots.get(symbol, 0)} slots, "
                    f"{'hole' if len(holes) == 1 else 'holes'} {shown}{more} UTC")
            why = self.unconfirmed.get(symbol)
            if why is None:
                parts.append(text)
            else:
                doubtful.append(f"{text} (unconfirmed: {why})")
        out = "; ".join(parts) + " (exchange affirmed empty: candles on both sides)" if parts else ""
        return "; ".join(x for x in (out, *doubtful) if x)

    def ended_text(self) -> str:
        """``OLDUSDT delisted (Binance status BREAK): last candle 2024-01-22 23:00:00 UTC, none after it``
        per symbol whose range reaches past the end the exchange confirmed."""
        parts = []
        for symbol, e in self.ended.items():
            last = e["last_open"]
            parts.append(f"{symbol} {e['reason']}: " + ("no candles at all" if last is None else
                                                       f"last candle {display(last)}, none after it"))
        return "; ".join(parts)

    def changed_text(self) -> str:
        """``0 rows changed`` (one sink), ``rows changed: csv 0, postgres 12`` (several);
        a sink that cannot tell is named as not counted."""
        if not self.rows_changed:
            return ""
        if len(self.rows_changed) == 1:
            (name, n), = self.rows_changed.items()
            return f"{n} {'row' if n == 1 else 'rows'} changed" if n is not None else f"rows changed not counted by {name}"
        return "rows changed: " + ", ".join(f"{name} {'not counted' if n is None else n}"
                                            for name, n in self.rows_changed.items())

    def summary(self) -> str:
        origins = ", ".join(f"{n} from {o}" for o, n in sorted(self.origins.items())) or "none"
        stats = ", ".join(f"{k} {v}" for k, v in self.source_stats.items())
        if self.resumed:
            origins += "; resumed " + ", ".join(f"{s} after {display(t)}" for s, t in self.resumed.items())
        return (
            f"{self.total} {self.timeframe} candles from {self.source} "
            f"({', '.join(f'{s} {n}' for s, n in self.rows.items())}) in {self.elapsed:.1f}s; "
            f"{origins}; {stats}; -> {', '.join(self.destinations)}"
            + (f"; {changed}" if (changed := self.changed_text()) else "")
            + (f"; {holes}" if (holes := self.holes_text()) else "")
            + (f"; {ended}" if (ended := self.ended_text()) else "")
        )


def _span(a: int, b: int) -> str:
    """``[a, b)`` the way users type times: ``2024-01-10 03:00..05:29:59``."""
    def text(ts: int) -> str:
        t = iso(ts).replace("T", " ").rstrip("Z").split(".")[0]
        return t[:-3] if t.endswith(":00") else t

    first, last = text(a), text(b - 1)
    return f"{first}..{last[11:] if last[:10] == first[:10] else last}"


# Concurrent requests: enough to hide 50-200 ms of latency (the rate limiter, not the worker
# count, keeps a run inside the exchange's limit); archive runs gain nothing from more.
DEFAULT_WORKERS = 8

class Pipeline:
    """A source, optional transforms and one or more sinks, ready to :meth:`run`.

    Each argument takes a registered name, ``(name, options)``, or an instance; transforms
    also take a plain ``fn(dict) -> dict`` (applied per row). Nothing is shared with other
    pipelines: each has its own plugin set, source (and so rate limiter) and sinks.
    """

    def __init__(
        self,
        source: PluginSpec,
        sinks: Sequence[PluginSpec] = ("csv",),
        transforms: Sequence[PluginSpec] = (),
        *,
        plugins: Plugins | None = None,
        workers: int = DEFAULT_WORKERS,
        commit_every: int = 50_000,
        on_progress: Callable[[Progress], None] | None = None,
        rate_budget: str | None = None,
    ) -> None:
        self._plugins = plugins  # built on first use: a pipeline of instances loads no entry points
        self.source: Source = self._make("source", source)
        self.sinks: list[Sink] = [self._make("sink", s) for s in sinks]
        if not self.sinks:
            raise UsageError("a pipeline needs at least one sink")
        self.transforms: list[Transform] = [
            RowFunction(t) if callable(t) and not isinstance(t, (Transform, type)) else self._make("transform", t)
            for t in transforms
        ]
        for t in self.transforms:
            _call_plugin("transform", t.label, t.bind_source, self.source)
        if workers < 1:
            raise UsageError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.commit_every = commit_every
        self.on_progress = on_progress
        self.rate_budget = rate_budget  # a shared store (sqlite:///..., postgresql://...), see forge_core.budget
        self.result: RunResult | None = None  # of the current or last run, even an interrupted one

    @property
    def plugins(self) -> Plugins:
        if self._plugins is None:
            self._plugins = Plugins()
        return self._plugins

    def _make(self, kind: str, spec: PluginSpec) -> Any:
        base = {"source": Source, "sink": Sink, "transform": Transform}[kind]
        if isinstance(spec, base):
            return spec
        name, options = (spec, {}) if isinstance(spec, str) else spec
        return self.plugins.get(kind, name)(**options)

    # -- running ----------------------------------------------------------------------------
    def run(
        self,
        symbols: str | Sequence[str],
        timeframe: str,
        start: str | int,
        end: str | int = "now",
        *,
        since: str | int | None = None,
    ) -> RunResult:
        """Fetch the closed candles of ``symbols`` opening from ``start`` to ``end`` (inclusive,
        see :func:`forge_core.times.parse_range`) and write them to every sink.

        ``start="auto"`` starts each symbol after the newest candle the sinks hold; a symbol
        they do not hold yet starts at ``since`` (an error without it). If a sink holds the
        committed part of an interrupted run of the same range, the run resumes after it, and
        each sink receives only the rows it lacks."""
        began = time.monotonic()
        symbols = _symbols(symbols)
        tf = source_timeframe(self.source, timeframe)
        auto = str(start).strip().lower() == "auto"
        if since is not None and not auto:
            raise UsageError("--since applies only with --from auto (it is where a series the sinks "
                             "do not hold yet starts)")
        first = since if auto and since is not None else "1970-01-01" if auto else start
        start_ms, end_ms = parse_range(str(first), str(end))
        source = self.source
        if self.result is not None:
            raise UsageError("a Pipeline runs once; build a new one for the next run")
        out_tf = _output_timeframe(self.transforms, tf.name)
        info = RunInfo(source.source_value, source.label or source.name.title(), tuple(symbols), tf.name,
                       start_ms, end_ms, source.columns,
                       transforms=";".join(f"{t.label}{sorted(t.settings.items())}" for t in self.transforms),
                       output_timeframe=out_tf)
        result = self.result = RunResult(source.source_value, out_tf, start_ms, end_ms)
        opened: list[Sink] = []
        ok = False
        # an unreachable budget store fails here, before any request; Pipeline(rate_budget=...)
        # holds only for this run, FORGE_RATE_BUDGET for the process
        shared = budget.scoped(self.rate_budget) if self.rate_budget else nullcontext(budget.current())
        try:
            with shared, _stop_signals():
                for sink in self.sinks:  # before any exchange request: a bad destination fails fast
                    _call_plugin("sink", sink.name, sink.open, info)
                    opened.append(sink)
                starts = self._starts(symbols, tf, out_tf, start_ms, auto, since is not None, result)
                now = source.server_time()
                # the exchange's now, not this machine's clock; a later --to is now too, so the
                # file is not named after days the run could not fetch
                if str(end).strip().lower() == "now" or end_ms > now + 1:
                    end_ms = result.end = now + 1
                    info = replace(info, end=end_ms)
                    for sink in opened:
                        _call_plugin("sink", sink.name, getattr(sink, "now_known", _no_hook), info)
                if not auto:
                    refuse_future_start(start_ms, now)
                limit = min(end_ms, tf.floor(now))  # the candle open at `now` is never requested
                plans = self._plan(symbols, tf, starts, limit)
                self._execute(plans, tf, now, result)
                ok = True
        finally:
            result.elapsed = time.monotonic() - began
            result.source_stats = source.stats()
            unconfirmed = getattr(source, "holes_unconfirmed", None)  # optional source hook
            if callable(unconfirmed):
                result.unconfirmed = {s: why for s in result.holes if result.holes[s] and (why := unconfirmed(s))}
            _close_sinks(opened, ok)
            result.destinations = [s.describe() for s in self.sinks]
            result.rows_changed = _rows_changed(opened)
            source.close()
        log.info("run_done", summary=result.summary())
        return result

    def follow(self, symbols: str | Sequence[str], timeframe: str, *, since: str | int | None,
               **options: Any) -> Follower:
        """A :class:`~forge_core.follow.Follower` that backfills, then keeps the series current
        until stopped: ``pipeline.follow(["BTCUSDT"], "1m", since="2024-01-01").run()``.
        Options: see :class:`~forge_core.follow.Follower`."""
        from .follow import Follower

        return Follower(self, symbols, timeframe, since=since, **options)

    def _starts(self, symbols: list[str], tf: Timeframe, out_tf: str, start: int, auto: bool,
                has_since: bool, result: RunResult) -> dict[str, int]:
        """Where each symbol starts: the range start, or after what the sinks already hold
        (``--from auto``), or after what an interrupted run of this range committed. Also
        records, per sink and symbol, the ``end_ts`` after which that sink needs rows."""
        starts = {}
        name = self.source.source_value
        self._needs = {}
        for symbol in symbols:
            begin = start
            if auto:
                held = [_call_plugin("sink", s.name, s.last_open, name, symbol, out_tf) for s in self.sinks]
                if any(h is None for h in held):
                    if not has_since:
                        empty = next(s for s, h in zip(self.sinks, held, strict=True) if h is None)
                        raise UsageError(f"--from auto: {empty.describe()} holds no {name} {symbol} {out_tf} "
                                         "candles yet; give --since DATE for series the sink does not hold")
                else:
                    begin = max(start, tf.next_open(tf.floor(min(h for h in held if h is not None))))
            points = [_call_plugin("sink", s.name, s.resume_after, name, symbol, out_tf) for s in self.sinks]
            for sink, point in zip(self.sinks, points, strict=True):
                self._needs[(id(sink), symbol)] = point
            if points and all(p is not None for p in points):
                resume = min(p for p in points if p is not None)
                if resume + 1 > begin:
                    begin = tf.ceil(resume + 1)
                    result.resumed[symbol] = resume
                    log.info("resuming", symbol=symbol, after=iso(resume))
            starts[symbol] = begin
        return starts

    def _plan(self, symbols: list[str], tf: Timeframe, starts: dict[str, int], end: int) -> list[tuple[str, list[Task], int]]:
        plans = []
        self._spans: dict[str, tuple[int, int]] = {}  # each series' range to fetch, [first, stop)
        self._asked_from = starts
        name = self.source.name
        _call_plugin("source", name, getattr(self.source, "prepare_symbols", _no_hook), symbols, tf)
        for symbol in symbols:
            info = _call_plugin("source", name, self.source.prepare, symbol, tf)
            start = starts[symbol]
            if info.first_open is not None and info.first_open >= end and start < end:
                raise BeforeListing(self.source.describe(), symbol, info.first_open, end)
            first = start if info.first_open is None else max(start, tf.floor(info.first_open))
            stop = self._series_end(symbol, tf, info, first, end)
            tasks = list(_call_plugin("source", name, self.source.plan, symbol, tf, first, stop)) if first < stop else []
            plans.append((symbol, tasks, tf.count(first, stop) if first < stop else 0))
            self._spans[symbol] = (first, stop)
        return plans

    def _series_end(self, symbol: str, tf: Timeframe, info: Any, first: int, end: int) -> int:
        """Where the series' fetching stops: ``end``, or after its last candle when the exchange
        confirmed it no longer trades (``SymbolInfo.ended``); the skipped tail is logged and
        named in the summary, never left a silent hole."""
        if info.ended is None:
            return end
        last = info.last_open
        if last is None and info.first_open is None:  # a pair announced, not open (Binance spot BREAK)
            raise SourceError(f"{self.source.describe()} has no {symbol} candles at all, and it is {info.ended}: it has "
                              "not opened for trading yet, so no range has any (the exchange gives no listing "
                              "date); run it once it trades")
        stop = min(end, first if last is None else tf.next_open(tf.floor(last)))
        if stop < end and first < end:
            skipped = (max(first, stop), end)
            assert self.result is not None
            self.result.ended[symbol] = {"reason": info.ended, "last_open": last,
                                         "skipped": [skipped[0], skipped[1]]}
            log.warning("series_ended", symbol=symbol, reason=info.ended,
                        last_candle=None if last is None else iso(last),
                        not_asked=f"{iso(skipped[0])}..{iso(tf.floor(skipped[1] - 1))}")
        return stop

    def _execute(self, plans: list[tuple[str, list[Task], int]], tf: Timeframe, now: int,
                 result: RunResult) -> None:
        total_expected = sum(expected for _, _, expected in plans)
        total_done = 0
        began = time.monotonic()
        uncommitted = 0
        tasks = (task for _, task_list, _ in plans for task in task_list)
        expected_by_symbol = {symbol: expected for symbol, _, expected in plans}
        # a series covers time up to the close of its last candle
        ranges = {symbol: (planned[0].start, tf.ceil(planned[-1].end)) for symbol, planned, _ in plans if planned}
        columns = self.source.columns
        i_open, i_end = columns.index("open_ts"), columns.index("end_ts")
        current: str | None = None
        for symbol, _, expected in plans:
            result.rows.setdefault(symbol, 0)
            result.slots[symbol] = expected
            result.served.setdefault(symbol, 0)
        last_seen: dict[str, int] = {}
        held = Held()
        stream: Any = None  # the stream of the previous task: no commit inside one (Task.stream)
        for task, rows, origin in _run_ahead(self.source, tasks, self.workers, held=held):
            if task.symbol != current:
                if current is not None:
                    uncommitted += self._end_series(current, tf, result)
                    self._commit()
                    uncommitted = 0
                current = task.symbol
                for transform in self.transforms:
                    first, stop = ranges[current]  # from before the listing: its period is whole
                    transform.start_series(current, min(first, self._asked_from.get(current, first)), stop)
            elif uncommitted >= self.commit_every and task.stream is not stream:
                self._commit()  # the commit the previous stream's tasks put off
                uncommitted = 0
            stream = task.stream
            result.tasks += 1
            clean, dropped = _clean(rows, task, now, i_open, i_end)
            del rows
            result.duplicates_dropped += dropped
            if clean:
                result.served[task.symbol] += len(clean)
                gaps = _gaps(clean, i_open, tf, last_seen.get(task.symbol, tf.ceil(ranges[task.symbol][0])))
                if gaps:
                    result.holes.setdefault(task.symbol, []).extend(gaps)
                last_seen[task.symbol] = tf.next_open(_last_open(clean, i_open))
                result.origins[origin] = result.origins.get(origin, 0) + len(clean)
                # rows read as text go on in the pieces they were read in: bounded batches,
                # each let go once written (the task's rows are not held to its end)
                parts = deque(clean.chunks()) if isinstance(clean, TextRows) else deque([clean])
                del clean
                while parts:
                    part = parts.popleft()
                    batch = Batch(self.source.source_value, task.symbol, tf.name, columns, part, origin)
                    uncommitted += self._emit(batch, result)
                    del batch
                    held.release(held_bytes(part))  # the next task may start
                    del part
                    if uncommitted >= self.commit_every and stream is None:
                        self._commit()
                        uncommitted = 0
            total_done += tf.count(task.start, task.end)
            if uncommitted >= self.commit_every and stream is None:
                self._commit()
                uncommitted = 0
            if self.on_progress is not None:
                done = min(result.rows[task.symbol], expected_by_symbol[task.symbol])
                self.on_progress(Progress(task.symbol, done, expected_by_symbol[task.symbol],
                                          min(total_done, total_expected), total_expected,
                                          time.monotonic() - began))
        if current is not None:
            self._end_series(current, tf, result)
        self._commit()
        self._unfetched_tails(tf, last_seen, result)

    def _unfetched_tails(self, tf: Timeframe, last_seen: dict[str, int], result: RunResult) -> None:
        """A series whose rows stop before its range does, where the source says it could not
        have the exchange confirm its holes (``holes_unconfirmed``: e.g. Binance's archive alone,
        REST refused): the rest of the range is one more hole, named unconfirmed, not left out
        of the summary (the days not archived yet)."""
        unconfirmed = getattr(self.source, "holes_unconfirmed", None)  # optional source hook
        if not callable(unconfirmed):
            return
        for symbol, (first, stop) in self._spans.items():
            seen = last_seen.get(symbol, tf.ceil(first))
            if seen < stop and unconfirmed(symbol):
                result.holes.setdefault(symbol, []).append((seen, stop))

    def _emit(self, batch: Batch, result: RunResult, transforms: list[Transform] | None = None) -> int:
        """Pass ``batch`` through ``transforms`` (default: all) and hand each sink the rows it
        lacks (after its own resume point)."""
        for transform in self.transforms if transforms is None else transforms:
            if not batch.rows:
                return 0
            batch = _apply(transform, batch)
        if not batch.rows:
            return 0
        for sink in self.sinks:
            part = _after(batch, self._needs.get((id(sink), batch.symbol)))
            if part.rows:
                _call_plugin("sink", sink.name, sink.write, part)
        result.rows[batch.symbol] = result.rows.get(batch.symbol, 0) + len(batch.rows)
        return len(batch.rows)

    def _end_series(self, symbol: str, tf: Timeframe, result: RunResult) -> int:
        """Flush stateful transforms at the end of a symbol; a flushed batch passes through
        the transforms after the one that produced it."""
        written = 0
        for i, transform in enumerate(self.transforms):
            tail = _call_plugin("transform", transform.label, transform.end_series)
            if tail is not None:
                written += self._emit(tail, result, self.transforms[i + 1:])
        return written

    def _commit(self) -> None:
        for sink in self.sinks:
            _call_plugin("sink", sink.name, sink.commit)
        if self.result is not None:
            self.result.committed = self.result.total


def _rows_changed(sinks: list[Sink]) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for sink in sinks:
        key, n = sink.name, 1
        while key in out:
            n += 1
            key = f"{sink.name}#{n}"
        try:
            out[key] = sink.rows_changed()
        except Exception as exc:  # a count never fails a run
            log.warning("rows_changed_failed", sink=sink.name, error=str(exc))
            out[key] = None
    return out


def _after(batch: Batch, point: int | None) -> Batch:
    """The rows of ``batch`` a sink that durably holds everything up to ``end_ts == point``
    still lacks."""
    if point is None:
        return batch
    rows = batch.rows
    if isinstance(rows, TextRows) and rows.columns == batch.columns:
        return batch.with_rows(rows[after_point(rows.end_ts, point):])  # type: ignore[arg-type]
    if "end_ts" in batch.columns:
        i = batch.columns.index("end_ts")
        if batch.rows[0][i] > point:
            return batch
        return batch.with_rows([r for r in batch.rows if r[i] > point])
    i = batch.columns.index("open_ts")  # a sink reports a point only for rows it can place in time
    return batch.with_rows([r for r in batch.rows if r[i] > point])



def _close_sinks(opened: Sequence[Sink], ok: bool) -> None:
    """Close every sink that was opened; after a failure, a failing close is logged, not raised,
    so that the first error is the one reported."""
    for sink in opened:
        try:
            sink.close(ok)
        except Exception:
            if ok:
                raise
            log.warning("sink_close_failed", sink=sink.name, error=str(sys.exc_info()[1]))

def _call_plugin(kind: str, name: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call plugin code; a ``SystemExit`` (or a ``KeyboardInterrupt`` no signal caused) raised
    inside it is that plugin's failure, never a silent end of the run."""
    try:
        return fn(*args)
    except SystemExit as exc:
        raise _plugin_exit(kind, name, exc) from None
    except KeyboardInterrupt as exc:
        if isinstance(exc, StopRequested) or _signalled.is_set():
            raise
        raise _plugin_exit(kind, name, exc) from None


def _plugin_exit(kind: str, name: str, exc: BaseException) -> ForgeError:
    what = f"sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else type(exc).__name__
    error = {"source": SourceError, "sink": SinkError, "transform": TransformError}[kind]
    return error(f"{kind} {name!r} raised {what}; a plugin must raise an exception, not end the process")


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGHUP asked the run to stop: handled like Ctrl-C (the batch in flight is
    committed or rolled back, and the same command resumes)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_signalled = threading.Event()


@contextmanager
def _stop_signals() -> Iterator[None]:
    """While a run is in the main thread, SIGINT, SIGTERM and SIGHUP stop it the way Ctrl-C
    does, and a ``KeyboardInterrupt`` that no signal caused is known to be a plugin's."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: Any) -> None:
        _signalled.set()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise StopRequested(signum)

    # A C extension that runs Python code (psycopg2 decoding an error message while a commit
    # fails) prints the exception a signal raised there, traceback and all, and goes on: the
    # stop was lost and the run went on to the end, exit 0. Such an exception reaches these
    # hooks: the signal is sent again, for the next Python line to stop the run, and not shown.
    def lost(exc: BaseException | None) -> bool:
        if not (isinstance(exc, KeyboardInterrupt) and _signalled.is_set()):
            return False
        # from another thread, a moment later: sent from here, its handler would raise at once,
        # inside this hook (the main thread gets it, so that a sleep there ends at once)
        signum = getattr(exc, "signum", signal.SIGINT)
        lost_stops.append(signum)  # raised at the run's end if it ends before the signal is back
        again = threading.Timer(0.05, resend, (signum,))
        again.daemon = True
        again.start()
        return True

    def resend(signum: int) -> None:
        if live.is_set():  # (the run did not end meanwhile)
            signal.pthread_kill(threading.main_thread().ident, signum)  # type: ignore[arg-type]

    lost_stops: list[int] = []

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if not lost(exc):
            previous_hook(kind, exc, tb)

    def unraisablehook(unraisable: Any) -> None:
        if not lost(unraisable.exc_value):
            previous_unraisable(unraisable)

    names = ("SIGINT", "SIGTERM", "SIGHUP")
    previous = {}
    for n in names:
        if hasattr(signal, n):
            sig = getattr(signal, n)
            if n == "SIGINT" and signal.getsignal(sig) is not signal.default_int_handler:
                continue  # the embedding app handles Ctrl-C itself
            if n != "SIGINT" and signal.getsignal(sig) not in (signal.SIG_DFL, None):
                continue
            previous[sig] = signal.signal(sig, on_signal)
    _signalled.clear()
    previous_hook, previous_unraisable = sys.excepthook, sys.unraisablehook
    sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
    live = threading.Event()
    live.set()
    try:
        yield
        if lost_stops:  # the run ended before the signal came back (a loaded machine): still a stop
            live.clear()
            on_signal(lost_stops[0], None)
    finally:
        live.clear()
        sys.excepthook, sys.unraisablehook = previous_hook, previous_unraisable
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _apply(transform: Transform, batch: Batch) -> Batch:
    try:
        return _call_plugin("transform", transform.label, transform.apply, batch)
    except ForgeError:
        raise
    except Exception as exc:
        i = batch.columns.index("open_ts") if "open_ts" in batch.columns else None
        ts = batch.rows[0][i] if batch.rows and i is not None else None
        first = iso(ts) if isinstance(ts, int) else "?"
        raise TransformError(
            f"transform {transform.label} failed on {batch.symbol} batch starting {first}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def fetch_checked(source: Source, task: Task) -> tuple[Sequence[Row], str]:
    """``source.fetch(task)`` as rows (a list, or :class:`TextRows`) and their origin, every
    row checked against the row contract; plugin code cannot end the process."""
    got = _call_plugin("source", source.name, source.fetch, task)
    rows, origin = (got.rows, got.origin) if isinstance(got, Fetched) else (got, task.kind)
    if not isinstance(rows, (list, TextRows)):
        rows = list(rows)
    try:
        check_rows(rows, source.columns, task.timeframe, source.name, source=source.source_value,
                   symbol=task.symbol)
    except ValueError as exc:
        raise SourceError(f"{exc} (task {task.symbol} {task.timeframe.name} from {iso(task.start)})") from None
    return rows, origin


ROWS_AHEAD = 100_000
"""At most about this many candles fetched ahead of the writer (a page is 1,000, an archive
month of 1m 44,640): memory stays flat whatever the range and ``workers``."""
BYTES_AHEAD = 12 << 20
"""And at most about this many bytes of rows: those of the task the writer holds that it has not
written yet, and those of the tasks fetched or being fetched (at the most bytes per candle seen
so far). A REST page of 1,000 candles is 0.6-0.8 MB; an archive slice of 4,320 1m candles held
as text 0.8 MB (a month, 8.3 MB, is read in slices: :data:`STREAM_AHEAD`). One task always runs
ahead."""
STREAM_AHEAD = 2
"""Tasks of one stream (:attr:`Task.stream`: parts of one file, read in order) fetched or being
fetched ahead of the one the writer holds: enough to read the next part while one is written;
more would only hold a file's rows in memory (a month of 1m is 8 MB as text)."""
ROW_BYTES = 1000
"""Bytes a candle is taken to hold until a task is fetched (a row as a tuple of strings takes
about 750; as archive text 185): then the most a fetched task's took."""


def held_bytes(rows: Sequence[Row]) -> int:
    """About the memory fetched ``rows`` hold (:attr:`TextRows.nbytes`; tuples: measured on the
    first row)."""
    if isinstance(rows, TextRows):
        return rows.nbytes
    if not rows:
        return 0
    first = rows[0]
    return len(rows) * (8 + sys.getsizeof(first) + sum(map(sys.getsizeof, first)))


class Held:
    """The bytes of rows :func:`_run_ahead` handed on that the caller has not written yet: the
    caller releases them as it writes them, which lets the next tasks start."""

    def __init__(self) -> None:
        self.bytes = 0
        self.refill: Callable[[], None] = lambda: None

    def release(self, nbytes: int) -> None:
        self.bytes = max(0, self.bytes - nbytes)
        self.refill()


def _run_ahead(source: Source, tasks: Iterator[Task], workers: int, rows_ahead: int | None = None,
               bytes_ahead: int | None = None, held: Held | None = None) -> Iterator[tuple[Task, Sequence[Row], str]]:
    """Fetch tasks concurrently, yielding results in task order: at most ``2 * workers`` tasks
    and about ``rows_ahead`` candles ahead, and about ``bytes_ahead`` bytes of rows with what
    the caller still ``held`` of those handed on (always at least one task ahead). The next
    tasks start before a result is handed on, and as the caller releases its rows; nothing here
    keeps a result handed on. Every row is checked against the row contract in the worker."""

    def fetch(task: Task) -> tuple[Sequence[Row], str]:
        with retrying.symbol_context(task.symbol):  # a retry's display names the symbol
            return fetch_checked(source, task)

    def size(task: Task) -> int:
        return task.timeframe.count(task.start, task.end)

    rows_ahead = ROWS_AHEAD if rows_ahead is None else rows_ahead
    bytes_ahead = BYTES_AHEAD if bytes_ahead is None else bytes_ahead
    state = held if held is not None else Held()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forge-fetch")
    pending: deque[tuple[Task, Future[tuple[Sequence[Row], str]]]] = deque()
    ahead = 0  # candles of the pending tasks
    per_row, seen = float(ROW_BYTES), 0.0  # bytes a candle is counted at; the most a fetched one took
    todo = iter(tasks)
    upcoming = next(todo, None)

    def fill() -> None:
        nonlocal ahead, upcoming
        while upcoming is not None:
            n = size(upcoming)
            if pending and (len(pending) >= 2 * workers or ahead + n > rows_ahead
                            or state.bytes + (ahead + n) * per_row > bytes_ahead
                            or (upcoming.stream is not None
                                and sum(t.stream is upcoming.stream for t, _ in pending) >= STREAM_AHEAD)):
                return
            pending.append((upcoming, pool.submit(fetch, upcoming)))
            ahead += n
            upcoming = next(todo, None)

    def take() -> tuple[Task, Sequence[Row], str]:
        nonlocal ahead, per_row, seen
        head, future = pending.popleft()
        ahead -= size(head)
        rows, origin = future.result()
        state.bytes = held_bytes(rows)  # (the caller is done with the rows handed on before)
        if rows:
            seen = max(seen, state.bytes / len(rows))
            per_row = seen
        return head, rows, origin

    state.refill = fill
    try:
        while True:
            state.bytes = 0
            fill()
            if not pending:
                return
            out = [take()]
            fill()  # the next tasks run while the caller writes this one
            yield out.pop()  # (held by the caller only: it frees the rows as it writes them)
    finally:
        state.refill = lambda: None
        pool.shutdown(wait=False, cancel_futures=True)


def _clean(rows: Sequence[Row], task: Task, now: int, i_open: int, i_end: int) -> tuple[Any, int]:
    """Keep rows opening in the task's range that have closed by ``now``, ascending and unique.
    Returns the rows (a list, or :class:`TextRows` for TextRows already in order) and how many
    duplicates were dropped."""
    start, end = task.start, task.end
    if isinstance(rows, TextRows):
        opens = rows.open_ts
        if rows.step is not None or ascending(opens):
            lo, hi = bisect_left(opens, start), bisect_left(opens, end)
            hi = min(hi, max(lo, bisect_left(rows.end_ts, now)))  # end_ts rises with open_ts
            return rows[lo:hi], 0
        rows = list(rows)
    out: list[Row] = []
    last = -1
    dropped = 0
    ordered = True
    for row in rows:
        ts = row[i_open]
        if ts < start or ts >= end or row[i_end] >= now:
            continue
        if ts <= last:
            if ts == last:
                dropped += 1
                continue
            ordered = False
        out.append(row)
        last = ts
    if not ordered:
        unique = {row[i_open]: row for row in out}
        dropped += len(out) - len(unique)
        out = [unique[ts] for ts in sorted(unique)]
    return out, dropped


def _last_open(rows: Sequence[Row], i_open: int) -> int:
    return rows.open_ts[-1] if isinstance(rows, TextRows) else rows[-1][i_open]  # type: ignore[no-any-return]


def _gaps(rows: Sequence[Row], i_open: int, tf: Timeframe, expect: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` ranges without a candle between ``expect`` (the next open after
    the previous batch) and the last of ``rows`` (ascending, unique)."""
    text = isinstance(rows, TextRows)
    first, last = (rows.open_ts[0], rows.open_ts[-1]) if text else (rows[0][i_open], rows[-1][i_open])
    if first == expect and tf.ms is not None and (last - first) // tf.ms + 1 == len(rows):
        return []  # the usual case, without a loop
    gaps = []
    for ts in rows.open_ts if text else (row[i_open] for row in rows):
        if ts > expect:
            gaps.append((expect, ts))
        expect = tf.next_open(ts)
    return gaps


def _no_hook(*args: Any) -> None:
    """An optional plugin method the plugin does not have."""


def refuse_future_start(start: int, now: int) -> None:
    """A range opening after the exchange's ``now`` has no closed candle to fetch."""
    if start > now:
        raise UsageError(f"from date {iso(start)} is in the future (exchange time {iso(now)})")


def _output_timeframe(transforms: list[Transform], timeframe: str) -> str:
    for transform in transforms:
        timeframe = transform.output_timeframe(timeframe)
    return timeframe


def _symbols(symbols: str | Iterable[str]) -> list[str]:
    items = [symbols] if isinstance(symbols, str) else list(symbols)
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    if not out:
        raise UsageError("no symbol given: pass at least one, e.g. BTCUSDT")
    return out
