"""Contract test suites a plugin's tests subclass: :class:`SourceContract`, :class:`SinkContract`.

Every test drives the plugin through Forge's public API (:class:`~forge_core.Pipeline` and the
:class:`~forge_core.Sink` methods), so a suite passes only if the plugin really behaves.
A source is run against the kit's mock exchange (its own routes, found through the entry point
group ``forge_etl_mock``) with faults injected; a sink is fed by :class:`SyntheticSource`, a
source without HTTP whose candles come from the kit's synthetic market. Guide with complete
examples: ``docs/testing-plugins.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import pytest

from forge_core import (
    CANDLE_COLUMNS,
    EXTRA_COLUMNS,
    Batch,
    ForgeError,
    Pipeline,
    RunInfo,
    Sink,
    SinkError,
    Source,
    SourceError,
    SymbolInfo,
    Task,
    Timeframe,
)
from forge_core.records import NUMERIC_COLUMNS
from forge_core.timeframes import NAMES
from forge_core.times import parse_range

from . import FROZEN_NOW
from .market import Market, candle, open_times

Rows = list[dict[str, Any]]

__all__ = ["MemorySink", "MemoryStore", "SinkContract", "SourceContract", "SyntheticSource", "synthetic_rows"]


# -- a source without HTTP, for sink tests -----------------------------------------------------
class SyntheticSource(Source):
    """Candles of the kit's synthetic market (Binance-like spot symbols such as ``BTCUSDT``,
    with a maintenance hole on 2024-01-10 03:00-05:30 UTC), no HTTP. ``page`` candles per task;
    ``fail_after=n`` makes the ``n+1``-th fetch raise :class:`~forge_core.SourceError`, as an
    exchange going down mid-run. ``calls`` records every method the pipeline called."""

    name = "synthetic"
    label = "Synthetic"
    description = "deterministic candles without HTTP (forge_core.testing)"
    columns = CANDLE_COLUMNS + EXTRA_COLUMNS

    def __init__(self, *, now: int = FROZEN_NOW, page: int = 24, fail_after: int | None = None,
                 market: Market | None = None) -> None:
        super().__init__()
        self.now, self.page, self.fail_after = now, page, fail_after
        self.market = market or Market.binance_spot()
        self.calls: list[tuple[str, Any]] = []
        self.fetched = 0

    def server_time(self) -> int:
        self.calls.append(("server_time", None))
        return self.now

    def prepare(self, symbol: str, timeframe: Timeframe) -> SymbolInfo:
        self.calls.append(("prepare", symbol))
        listing = self.market.get(symbol)
        if listing is None:
            raise SourceError(f"unknown symbol {symbol!r} on the synthetic market; try BTCUSDT")
        return SymbolInfo(symbol, listing.listed)

    def page_size(self, timeframe: Timeframe) -> int:
        return self.page

    def fetch(self, task: Task) -> list[tuple[Any, ...]]:
        self.calls.append(("fetch", (task.start, task.end)))
        if self.fail_after is not None and self.fetched >= self.fail_after:
            raise SourceError(f"synthetic exchange down after {self.fail_after} pages (injected by the test)")
        self.fetched += 1
        listing = self.market.get(task.symbol)
        assert listing is not None
        tf = task.timeframe
        return [(self.name, task.symbol, tf.name, ts, tf.end_ts(ts), *candle(listing, tf, ts))
                for ts in open_times(listing, tf, task.start, task.end)]


def synthetic_rows(symbol: str, timeframe: str, start: str, end: str, now: int = FROZEN_NOW) -> Rows:
    """What a correct run of :class:`SyntheticSource` delivers: closed candles opening in the
    range, as dicts by column name (computed from the market, not from the source)."""
    from forge_core import parse_timeframe

    market = Market.binance_spot()
    listing = market.get(symbol)
    assert listing is not None, symbol
    tf = parse_timeframe(timeframe)
    lo, hi = parse_range(start, end)
    rows = []
    for ts in open_times(listing, tf, lo, hi):
        if tf.end_ts(ts) >= now:
            break
        values = ("synthetic", symbol, tf.name, ts, tf.end_ts(ts), *candle(listing, tf, ts))
        rows.append(dict(zip(SyntheticSource.columns, values, strict=True)))
    return rows


# -- an in-memory destination with an honest resume point, for source tests -------------------
@dataclass
class MemoryStore:
    """What "durable" means for :class:`MemorySink`: it outlives the sink instances of one test.
    ``committed`` holds, per run identity and series, the rows of commits that returned."""

    committed: dict[tuple[Any, ...], Rows] = field(default_factory=dict)
    finished: dict[tuple[Any, ...], Rows] = field(default_factory=dict)


class MemorySink(Sink):
    """Keeps rows (as dicts by column name) in a :class:`MemoryStore`. A run's identity is
    everything in :class:`~forge_core.RunInfo` but the end of the range, so a rerun of an
    interrupted run (even with a later end) resumes after its last commit. ``fail_at_write=n``
    raises :class:`~forge_core.SinkError` on the ``n``-th write, as an interruption."""

    name = "memory"

    def __init__(self, store: MemoryStore | None = None, *, fail_at_write: int | None = None) -> None:
        super().__init__()
        self.store = store if store is not None else MemoryStore()
        self.fail_at_write = fail_at_write
        self.writes = 0
        self.run: RunInfo | None = None
        self.pending: dict[tuple[Any, ...], Rows] = {}
        self.batches: list[Batch] = []

    def _key(self, source: str, symbol: str, timeframe: str) -> tuple[Any, ...]:
        run = self.run
        assert run is not None, "open() first"
        return (run.source, run.start, run.transforms, run.output_timeframe or run.timeframe, source, symbol, timeframe)

    def open(self, run: RunInfo) -> None:
        self.run = run
        self.pending.clear()

    def write(self, batch: Batch) -> None:
        self.writes += 1
        if self.fail_at_write is not None and self.writes >= self.fail_at_write:
            raise SinkError(f"interrupted at write {self.writes} (injected by the test)")
        self.batches.append(batch)
        rows = [dict(zip(batch.columns, row, strict=True)) for row in batch.rows]
        self.pending.setdefault(self._key(batch.source, batch.symbol, batch.timeframe), []).extend(rows)

    def commit(self) -> None:
        for key, rows in self.pending.items():
            self.store.committed.setdefault(key, []).extend(rows)
        self.pending.clear()

    def resume_after(self, source: str, symbol: str, timeframe: str) -> int | None:
        rows = self.store.committed.get(self._key(source, symbol, timeframe))
        return int(rows[-1]["end_ts"]) if rows else None

    def close(self, ok: bool) -> None:
        self.pending.clear()
        if ok:  # a finished run: nothing left to resume, the rows are the result
            for key in [k for k in self.store.committed if k[:4] == self._key("", "", "")[:4]]:
                self.store.finished[key] = self.store.committed.pop(key)

    def rows(self, symbol: str | None = None) -> Rows:
        """Every row committed by the runs of this store (finished or not), in order."""
        out: Rows = []
        for table in (self.store.finished, self.store.committed):
            for key, rows in table.items():
                if symbol is None or key[5] == symbol:
                    out.extend(rows)
        return sorted(out, key=lambda r: (r["symbol"], r["open_ts"]))


def _same_value(column: str, held: Any, wanted: Any) -> bool:
    if str(held) == str(wanted):
        return True
    if column in NUMERIC_COLUMNS and held is not None:
        try:
            return Decimal(str(held)) == Decimal(str(wanted))
        except InvalidOperation:
            return False
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and "Traceback" not in text, f"not one clear line: {text!r}"
    return text


# -- the source contract ----------------------------------------------------------------------
class SourceContract:
    """Subclass in your source's tests (name the class ``Test...``) and set:

    * ``source``: the registered name (``"myexchange"``) or the :class:`~forge_core.Source` class;
    * ``symbol``, ``timeframe``, ``start``, ``end``: a range with candles that spans at least
      three of the source's tasks (pages), ideally across a hole of the mock's market;
    * ``recent_start``: a start shortly before the mock's frozen clock
      (:data:`~forge_core.testing.FROZEN_NOW`, 2025-03-15 10:20:30.456 UTC), for the
      closed-candle test (default ``"2025-03-14"``);
    * ``unknown_symbol``; ``unsupported_timeframe`` (default: the first Forge timeframe the
      source does not list; the test is skipped if it lists them all);
    * :meth:`expected_rows`: the rows a correct run produces, computed from your mock's market
      and not from your source (dicts by column name, or tuples in the source's column order);
    * optionally :meth:`source_options` (e.g. ``{"base_url": mock.url}``; by default the mock's
      ``ENVIRONMENT`` variables point the source at it), ``mock_routes`` (names of the
      ``forge_etl_mock`` entry points to serve; default all installed), ``fault_rate``.
    """

    source: ClassVar[str | type[Source]] = ""
    symbol: ClassVar[str] = ""
    timeframe: ClassVar[str] = ""
    start: ClassVar[str] = ""
    end: ClassVar[str] = ""
    recent_start: ClassVar[str] = "2025-03-14"
    unknown_symbol: ClassVar[str] = "NOSUCHSYMBOL"
    unsupported_timeframe: ClassVar[str | None] = None
    mock_routes: ClassVar[Sequence[str] | None] = None
    fault_rate: ClassVar[float] = 0.3
    workers: ClassVar[int] = 2

    # -- what the plugin author provides ----------------------------------------------------
    def expected_rows(self, symbol: str, timeframe: str, start: int, end: int, now: int) -> Sequence[Any]:
        """Closed candles opening in ``[start, end)`` (ms) when the exchange's clock is ``now``."""
        raise NotImplementedError("SourceContract: implement expected_rows(symbol, timeframe, start, end, now)")

    def source_options(self, mock: Any) -> dict[str, Any]:
        return {}

    # -- machinery ----------------------------------------------------------------------------
    @pytest.fixture
    def exchange(self, mock_exchange_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
                 ) -> Callable[..., Any]:
        """``exchange(**config)``: a fresh mock (frozen clock) the source is pointed at."""

        def make(**config: Any) -> Any:
            mock = mock_exchange_factory(routes=self.mock_routes, **config)
            for name, value in mock.environment.items():
                monkeypatch.setenv(name, value)
            return mock

        return make

    def pipeline(self, mock: Any, sink: Sink, **kwargs: Any) -> Pipeline:
        options = self.source_options(mock)
        spec: Any = (self.source, options) if isinstance(self.source, str) else self.source(**options)
        kwargs.setdefault("workers", self.workers)
        return Pipeline(spec, sinks=[sink], **kwargs)

    def expected(self, start: str, end: str, columns: Sequence[str]) -> Rows:
        lo, hi = parse_range(start, end)
        rows = self.expected_rows(self.symbol, self.timeframe, lo, hi, FROZEN_NOW)
        out = [dict(r) if isinstance(r, Mapping) else dict(zip(columns, r, strict=True)) for r in rows]
        assert out, "expected_rows() gave no rows for the contract's range: choose a range with candles"
        return out

    def fetch_all(self, mock: Any, start: str | None = None, end: str | None = None) -> tuple[Rows, Rows, Any]:
        sink = MemorySink()
        pipe = self.pipeline(mock, sink)
        pipe.run([self.symbol], self.timeframe, start or self.start, end or self.end)
        return sink.rows(), self.expected(start or self.start, end or self.end, pipe.source.columns), pipe

    @staticmethod
    def assert_same(got: Rows, want: Rows) -> None:
        assert len(got) == len(want), f"{len(got)} rows, expected {len(want)}"
        opens = [r["open_ts"] for r in got]
        assert len(set(opens)) == len(opens), "duplicated candles"
        for g, w in zip(got, want, strict=True):
            assert g == w, f"first difference at open_ts {w.get('open_ts')}: got {g}, expected {w}"

    # -- the tests ----------------------------------------------------------------------------
    def test_exact_range(self, exchange: Callable[..., Any]) -> None:
        got, want, _ = self.fetch_all(exchange())
        self.assert_same(got, want)

    def test_short_pages_are_not_the_end_of_data(self, exchange: Callable[..., Any]) -> None:
        mock = exchange(faults={"short": self.fault_rate})
        got, want, _ = self.fetch_all(mock)
        assert mock.stats["fault.short"] > 0, "no page was cut short: widen the range"
        self.assert_same(got, want)

    def test_duplicated_rows_are_dropped(self, exchange: Callable[..., Any]) -> None:
        mock = exchange(faults={"duplicate": self.fault_rate})
        got, want, _ = self.fetch_all(mock)
        assert mock.stats["fault.duplicate"] > 0, "no page had duplicated rows: widen the range"
        self.assert_same(got, want)

    def test_empty_pages_are_not_holes(self, exchange: Callable[..., Any]) -> None:
        """A page answered empty once although it has candles (an exchange under load) is
        asked again, never taken for a hole: a source that believes one empty answer fails."""
        mock = exchange(faults={"empty": self.fault_rate}, extra={"empty_once": True})
        got, want, _ = self.fetch_all(mock)
        assert mock.stats["fault.empty"] > 0, "no page was answered empty: widen the range"
        self.assert_same(got, want)

    def test_transient_errors_are_retried(self, exchange: Callable[..., Any]) -> None:
        """5xx, 429 (with ``Retry-After: 1``), a reset connection and a cut body are retried,
        never the end of the run: a ``check`` that makes any HTTP error final fails here."""
        rate = self.fault_rate / 6
        mock = exchange(faults={"http500": 2 * rate, "reset": rate, "truncated": 2 * rate, "burst429": rate})
        got, want, _ = self.fetch_all(mock)
        assert sum(mock.stats[f"fault.{k}"] for k in ("http500", "reset", "truncated", "burst429")) > 0, \
            "no fault was served: widen the range"
        self.assert_same(got, want)

    def test_only_closed_candles(self, exchange: Callable[..., Any]) -> None:
        got, want, _ = self.fetch_all(exchange(), self.recent_start, "now")
        assert got and all(r["end_ts"] < FROZEN_NOW for r in got), "a candle that had not closed was written"
        self.assert_same(got, want)

    def test_resume_after_an_interruption(self, exchange: Callable[..., Any]) -> None:
        mock = exchange()
        store = MemoryStore()
        first = MemorySink(store, fail_at_write=3)
        with pytest.raises(SinkError, match="injected by the test"):
            self.pipeline(mock, first, commit_every=1).run([self.symbol], self.timeframe, self.start, self.end)
        kept = first.rows()
        assert kept, "the interrupted run committed nothing: the range must span at least three pages"
        second = MemorySink(store)
        pipe = self.pipeline(mock, second)
        pipe.run([self.symbol], self.timeframe, self.start, self.end)
        fetched = [dict(zip(b.columns, row, strict=True)) for b in second.batches for row in b.rows]
        assert fetched, "the second run wrote nothing"
        assert min(r["open_ts"] for r in fetched) > kept[-1]["open_ts"], \
            "the second run fetched committed candles again instead of resuming after them"
        self.assert_same(second.rows(), self.expected(self.start, self.end, pipe.source.columns))

    def test_rerun_gives_the_same_rows(self, exchange: Callable[..., Any]) -> None:
        mock = exchange()
        store = MemoryStore()
        runs = []
        for _ in range(2):  # a finished range re-runs in full, into the same destination
            sink = MemorySink(store)
            pipe = self.pipeline(mock, sink)
            pipe.run([self.symbol], self.timeframe, self.start, self.end)
            runs.append([dict(zip(b.columns, row, strict=True)) for b in sink.batches for row in b.rows])
        want = self.expected(self.start, self.end, pipe.source.columns)
        self.assert_same(runs[0], want)
        self.assert_same(runs[1], want)

    def test_unknown_symbol_is_one_line(self, exchange: Callable[..., Any]) -> None:
        sink = MemorySink()
        with pytest.raises(ForgeError) as info:
            self.pipeline(exchange(), sink).run([self.unknown_symbol], self.timeframe, self.start, self.end)
        assert self.unknown_symbol in _one_line(info.value), "the message does not name the symbol"
        assert info.value.exit_code == 1
        assert sink.rows() == []

    def test_unsupported_timeframe_is_one_line(self, exchange: Callable[..., Any]) -> None:
        mock = exchange()
        sink = MemorySink()
        pipe = self.pipeline(mock, sink)
        bad = self.unsupported_timeframe or next((t for t in NAMES if t not in pipe.source.timeframes), None)
        if bad is None:
            pytest.skip("the source serves every Forge timeframe")
        with pytest.raises(ForgeError) as info:
            pipe.run([self.symbol], bad, self.start, self.end)
        assert bad in _one_line(info.value), "the message does not name the timeframe"
        assert info.value.exit_code == 2
        assert sink.rows() == []


    def test_recheck_answers_as_prepare(self, exchange: Callable[..., Any]) -> None:
        """``recheck(symbols, tf)`` (asked by a follow run every few minutes about the series
        that do not trade or lag) answers by symbol what ``prepare`` says, leaving out only a
        symbol it can say nothing about; ``holes_unconfirmed(symbol)`` is None or the reason in
        words (the run summary and ``verify`` print it)."""
        from forge_core.timeframes import source_timeframe

        source = self.pipeline(exchange(), MemorySink()).source
        try:
            tf = source_timeframe(source, self.timeframe)
            source.server_time()
            source.prepare_symbols([self.symbol], tf)
            info = source.prepare(self.symbol, tf)
            again = source.recheck([self.symbol], tf)
            assert isinstance(again, Mapping) and set(again) <= {self.symbol}, (
                f"recheck([{self.symbol!r}], tf) answered {again!r}: a mapping of the symbols asked about to SymbolInfo")
            if self.symbol in again:
                got = again[self.symbol]
                assert isinstance(got, SymbolInfo) and (got.symbol, got.first_open, got.last_open, got.ended) == (
                    info.symbol, info.first_open, info.last_open, info.ended), f"recheck said {got!r}, prepare {info!r}"
            why = source.holes_unconfirmed(self.symbol)
            assert why is None or (isinstance(why, str) and why.strip() != ""), (
                f"holes_unconfirmed({self.symbol!r}) gave {why!r}: None, or why the exchange could not confirm them")
        finally:
            source.close()

# -- the sink contract --------------------------------------------------------------------------
class _Recording(Sink):
    """Passes every call on to the sink under test and records what it was asked to make
    durable. ``abandon`` drops the sink without ``close()``, as a process killed after a commit."""

    def __init__(self, inner: Sink, abandon: bool = False) -> None:
        self.inner, self.abandon = inner, abandon
        self.name = inner.name
        self.settings = inner.settings
        self.run: RunInfo | None = None
        self.open_failed: BaseException | None = None
        self.written: Rows = []
        self.committed: Rows = []
        self._uncommitted: Rows = []

    def open(self, run: RunInfo) -> None:
        self.run = run
        try:
            self.inner.open(run)
        except BaseException as exc:
            self.open_failed = exc
            raise

    def write(self, batch: Batch) -> None:
        self.inner.write(batch)
        rows = [dict(zip(batch.columns, row, strict=True)) for row in batch.rows]
        self.written.extend(rows)
        self._uncommitted.extend(rows)

    def commit(self) -> None:
        self.inner.commit()
        self.committed.extend(self._uncommitted)
        self._uncommitted = []

    def last_open(self, source: str, symbol: str, timeframe: str) -> int | None:
        return self.inner.last_open(source, symbol, timeframe)

    def resume_after(self, source: str, symbol: str, timeframe: str) -> int | None:
        return self.inner.resume_after(source, symbol, timeframe)

    def close(self, ok: bool) -> None:
        if not self.abandon:
            self.inner.close(ok)

    def describe(self) -> str:
        return self.inner.describe()


class SinkContract:
    """Subclass in your sink's tests (name the class ``Test...``) and provide:

    * ``sink``: the registered name (``"mysink"``) or the :class:`~forge_core.Sink` class;
    * a ``sink_options`` fixture: the options of a fresh, empty destination for one test
      (e.g. a path under ``tmp_path``, or a new table on ``pg_url``);
    * a ``bad_sink_options`` fixture: options whose destination cannot work (unwritable path,
      unreachable server); ``open()`` must fail with one line;
    * :meth:`read_back`: the rows the destination holds for a symbol, as dicts by column name
      (values may be of any type whose ``str`` is the written text: ``Decimal``, ``int``...);
    * ``visible_before_close``: whether committed rows of an unfinished run are visible to
      :meth:`read_back` (a database: yes; a file that appears complete or not at all: no);
    * ``resumes``: whether the sink reports resume points (``resume_after``) at all.

    The rows come from :class:`SyntheticSource`: 1h BTCUSDT candles from 2024-01-08 (a
    maintenance hole on 2024-01-10), 24 per batch, 14 extra columns after the ten canonical.
    """

    sink: ClassVar[str | type[Sink]] = ""
    visible_before_close: ClassVar[bool] = True
    resumes: ClassVar[bool] = True
    symbol: ClassVar[str] = "BTCUSDT"
    other_symbol: ClassVar[str] = "ETHUSDT"
    timeframe: ClassVar[str] = "1h"
    start: ClassVar[str] = "2024-01-08"
    end: ClassVar[str] = "2024-01-20"
    later_end: ClassVar[str] = "2024-01-25"
    fail_after: ClassVar[int] = 5  # pages fetched before the exchange "goes down"
    commit_every: ClassVar[int] = 40  # rows: a commit every second page (24 rows each), page 5 uncommitted

    def read_back(self, options: dict[str, Any], symbol: str) -> Iterable[Mapping[str, Any]]:
        raise NotImplementedError("SinkContract: implement read_back(options, symbol)")

    @pytest.fixture
    def bad_sink_options(self) -> dict[str, Any]:
        pytest.skip("no bad_sink_options fixture: define one to test that open() fails fast")

    # -- machinery ----------------------------------------------------------------------------
    def make_sink(self, options: dict[str, Any]) -> Sink:
        if isinstance(self.sink, str):
            from forge_core import Plugins

            return Plugins().get("sink", self.sink)(**options)
        return self.sink(**options)

    def run_into(self, options: dict[str, Any], *, end: str | None = None, fail_after: int | None = None,
                 abandon: bool = False) -> tuple[_Recording, SyntheticSource, BaseException | None]:
        source = SyntheticSource(fail_after=fail_after)
        rec = _Recording(self.make_sink(options), abandon=abandon)
        error: BaseException | None = None
        try:
            Pipeline(source, sinks=[rec], workers=1, commit_every=self.commit_every).run(
                [self.symbol], self.timeframe, self.start, end or self.end)
        except ForgeError as exc:
            error = exc
        return rec, source, error

    def held(self, options: dict[str, Any]) -> Rows:
        rows = [{k: v for k, v in r.items()} for r in self.read_back(options, self.symbol)]
        return sorted(rows, key=lambda r: int(r["open_ts"]))

    @staticmethod
    def assert_same(got: Rows, want: Rows) -> None:
        """``got`` (read back) holds exactly ``want``: same candles, every canonical column and
        every other column the destination kept; compared as text, and prices and volumes as
        decimal numbers (a database's ``numeric`` shows ``0.00000000`` as ``0E-8``)."""
        assert len(got) == len(want), f"{len(got)} rows held, expected {len(want)}"
        assert got, "nothing to compare"
        kept = set(got[0])
        assert set(CANDLE_COLUMNS) <= kept, f"the destination lacks {sorted(set(CANDLE_COLUMNS) - kept)}"
        for g, w in zip(got, want, strict=True):
            diff = {c: (g[c], w[c]) for c in kept & set(w) if not _same_value(c, g[c], w[c])}
            assert not diff, f"at open_ts {w['open_ts']}: (held, expected) {diff}"

    def interrupted(self, options: dict[str, Any], *, end: str | None = None,
                    abandon: bool = False) -> _Recording:
        rec, _, error = self.run_into(options, end=end, fail_after=self.fail_after, abandon=abandon)
        assert isinstance(error, SourceError) and "injected by the test" in str(error), error
        assert rec.committed and len(rec.written) > len(rec.committed), \
            "the interrupted run must have committed some rows and written more"
        return rec

    def killed_after_commits(self, options: dict[str, Any]) -> tuple[Rows, Rows]:
        """The interrupted run in a forked child process that then dies without ``close()``
        (``os._exit``: no cleanup, its files and connections dropped by the kernel, as after
        ``kill -9``). Returns the rows it committed and the rows it wrote."""
        if not hasattr(os, "fork"):
            pytest.skip("needs os.fork to kill a run")
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run, report, die
            try:
                os.close(read_end)
                rec = self.interrupted(options, abandon=True)
                payload = {"committed": rec.committed, "written": rec.written}
            except BaseException as exc:  # noqa: BLE001 (reported to the parent)
                payload = {"error": f"{type(exc).__name__}: {exc}"}
            with os.fdopen(write_end, "w") as out:
                json.dump(payload, out, default=str)
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as got:
            payload = json.load(got)
        os.waitpid(pid, 0)
        assert "error" not in payload, f"the run to be killed failed otherwise: {payload.get('error')}"
        return payload["committed"], payload["written"]

    def resume_point(self, options: dict[str, Any], run: RunInfo) -> int | None:
        """What a new sink on the same destination reports for the run, as the pipeline asks."""
        sink = self.make_sink(options)
        sink.open(run)
        try:
            return sink.resume_after(run.source, self.symbol, run.output_timeframe or run.timeframe)
        finally:
            sink.close(False)

    # -- the tests ----------------------------------------------------------------------------
    def test_write_and_read_back_exactly(self, sink_options: dict[str, Any]) -> None:
        rec, _, error = self.run_into(sink_options)
        assert error is None, error
        self.assert_same(self.held(sink_options), synthetic_rows(self.symbol, self.timeframe, self.start, self.end))

    def test_rerun_of_a_finished_range_is_idempotent(self, sink_options: dict[str, Any]) -> None:
        want = synthetic_rows(self.symbol, self.timeframe, self.start, self.end)
        changed = []
        for _ in range(2):
            rec, _, error = self.run_into(sink_options)
            assert error is None, error
            changed.append(rec.inner.rows_changed())
        self.assert_same(self.held(sink_options), want)
        # rows_changed(): rows inserted or changed, or None (cannot tell); never a made-up count
        assert changed[0] in (None, len(want)), f"the first run reported {changed[0]} rows changed of {len(want)}"
        assert changed[1] in (None, 0), f"an identical re-run reported {changed[1]} rows changed, not 0"

    def test_columns_are_read_by_name(self, sink_options: dict[str, Any]) -> None:
        """The ``select`` transform hands the sink every column in reverse order (as
        ``--transform select --columns ...`` may): a sink reading a column by position, not by
        ``batch.index(name)``, writes wrong values or fails."""
        columns = ",".join(reversed(SyntheticSource.columns))
        Pipeline(SyntheticSource(), sinks=[self.make_sink(sink_options)], transforms=[("select", {"columns": columns})],
                 workers=1, commit_every=self.commit_every).run([self.symbol], self.timeframe, self.start, self.end)
        self.assert_same(self.held(sink_options), synthetic_rows(self.symbol, self.timeframe, self.start, self.end))

    def test_symbols_stay_apart(self, sink_options: dict[str, Any]) -> None:
        """Two symbols in one run: each reads back as its own exact rows (nothing of one is
        written over, or mixed into, the other's)."""
        other = self.other_symbol
        Pipeline(SyntheticSource(), sinks=[self.make_sink(sink_options)], workers=1,
                 commit_every=self.commit_every).run([self.symbol, other], self.timeframe, self.start, self.end)
        for symbol in (self.symbol, other):
            held = sorted(self.read_back(sink_options, symbol), key=lambda r: int(r["open_ts"]))
            self.assert_same([dict(r) for r in held], synthetic_rows(symbol, self.timeframe, self.start, self.end))

    def test_a_failed_rerun_keeps_the_finished_rows(self, sink_options: dict[str, Any]) -> None:
        """A finished range, then the same run again failing halfway (the exchange down): the
        destination still holds the finished rows, not a cut or emptied copy."""
        _, _, error = self.run_into(sink_options)
        assert error is None, error
        self.interrupted(sink_options)
        self.assert_same(self.held(sink_options), synthetic_rows(self.symbol, self.timeframe, self.start, self.end))

    def test_from_auto_continues_after_the_newest_candle(self, sink_options: dict[str, Any]) -> None:
        """For a sink with ``last_open``: it names the newest candle held, and ``--from auto``
        then continues right after it (skipped for a sink without ``last_open``)."""
        if type(self.make_sink(sink_options)).last_open is Sink.last_open:
            pytest.skip("the sink has no last_open(): --from auto needs one")
        _, _, error = self.run_into(sink_options)
        assert error is None, error
        want = synthetic_rows(self.symbol, self.timeframe, self.start, self.end)
        sink = _Recording(self.make_sink(sink_options))
        Pipeline(SyntheticSource(), sinks=[sink], workers=1).run([self.symbol], self.timeframe, "auto",
                                                                 self.later_end)
        assert sink.written and sink.written[0]["open_ts"] > want[-1]["open_ts"], (
            f"--from auto restarted at {sink.written[0]['open_ts'] if sink.written else None}: last_open() did not "
            f"name the newest candle held ({want[-1]['open_ts']})")
        self.assert_same(self.held(sink_options),
                         synthetic_rows(self.symbol, self.timeframe, self.start, self.later_end))

    def test_failed_run_keeps_only_what_was_committed(self, sink_options: dict[str, Any]) -> None:
        rec = self.interrupted(sink_options)
        held = self.held(sink_options)
        if self.visible_before_close:
            self.assert_same(held, rec.committed)
        else:
            assert held == [], "rows of an unfinished run are visible, but visible_before_close is False"
        if self.resumes:
            assert rec.run is not None
            point = self.resume_point(sink_options, rec.run)
            assert point == rec.committed[-1]["end_ts"], (
                f"resume point {point}: the last committed row ends at {rec.committed[-1]['end_ts']} "
                f"(rows written after the last commit end at {rec.written[-1]['end_ts']})")

    def test_commit_is_durable_without_close(self, sink_options: dict[str, Any]) -> None:
        committed, written = self.killed_after_commits(sink_options)
        held = self.held(sink_options)  # what a reader sees right after the kill
        if self.visible_before_close:
            self.assert_same(held, committed)  # a transaction or file not committed is not seen
        else:
            assert held == [], ("after a killed run the destination shows rows, but visible_before_close "
                                f"is False (a file must appear complete or not at all): {len(held)} rows")
        source = SyntheticSource()
        Pipeline(source, sinks=[self.make_sink(sink_options)], workers=1).run(
            [self.symbol], self.timeframe, self.start, self.end)
        if self.resumes:  # the run starts right after the reported point (end_ts + 1)
            point = min(start for call, (start, _) in ((c, a) for c, a in source.calls if c == "fetch")) - 1
            ends = [r["end_ts"] for r in written]
            assert point in ends and point >= committed[-1]["end_ts"], (
                f"resumed after {point}: expected the end of a row the run wrote, at or after the "
                f"last commit ({committed[-1]['end_ts']})")
        self.assert_same(self.held(sink_options), synthetic_rows(self.symbol, self.timeframe, self.start, self.end))

    def test_resume_after_the_end_moved_later(self, sink_options: dict[str, Any]) -> None:
        if not self.resumes:
            pytest.skip("resumes = False: the sink reports no resume points")
        rec = self.interrupted(sink_options)
        last = rec.committed[-1]["end_ts"]
        sink = _Recording(self.make_sink(sink_options))
        Pipeline(SyntheticSource(), sinks=[sink], workers=1).run([self.symbol], self.timeframe, self.start,
                                                                 self.later_end)
        assert sink.written and sink.written[0]["open_ts"] == last + 1, (
            f"with a later end the run restarted at {sink.written[0]['open_ts'] if sink.written else None}, "
            f"not after the last commit ({last})")
        self.assert_same(self.held(sink_options),
                         synthetic_rows(self.symbol, self.timeframe, self.start, self.later_end))

    def test_bad_destination_fails_in_open(self, bad_sink_options: dict[str, Any]) -> None:
        rec, source, error = self.run_into(bad_sink_options)
        assert error is not None, "a run into a bad destination succeeded"
        assert rec.open_failed is error, f"the failure did not come from open(): {error!r}"
        _one_line(error)
        assert not [c for c, _ in source.calls if c in ("prepare", "fetch")], "the exchange was asked first"

    # -- the integrity hooks (forge status/verify/repair), for sinks that offer integrity() ----
    def integrity_store(self, options: dict[str, Any]) -> Any:
        """The sink's integrity store over what ``options`` wrote (override when the store
        needs other options than the sink, e.g. one file instead of a ``{symbol}`` template)."""
        sink = self.make_sink(options)
        if not callable(getattr(sink, "integrity", None)):
            pytest.skip(f"sink {sink.name!r} has no integrity(): forge status/verify/repair refuse it")
        return sink.integrity()

    def _canonical_month(self) -> tuple[int, int, list[tuple[Any, ...]]]:
        from forge_core.integrity.digest import LINE_FIELDS

        lo, hi = parse_range(self.start, self.end)
        want = synthetic_rows(self.symbol, self.timeframe, self.start, self.end)
        return lo, hi, [tuple(r[c] for c in LINE_FIELDS) for r in want]

    def test_integrity_store_reports_counts_and_digest_of_what_it_holds(self, sink_options: dict[str, Any]) -> None:
        from forge_core.integrity.digest import digest_rows, normalize, partition_key

        _, _, error = self.run_into(sink_options)
        assert error is None, error
        store = self.integrity_store(sink_options)
        lo, hi, want = self._canonical_month()
        try:
            held = store.series(SyntheticSource.name, self.symbol, self.timeframe)
            assert [(h.rows, h.first_open, h.last_open) for h in held] == [(len(want), want[0][0], want[-1][0])], held
            parts = store.partitions(SyntheticSource.name, self.symbol, self.timeframe, lo, hi)
            month = parts[partition_key(lo)]
            assert (month.rows, month.first_open, month.last_open) == (len(want), want[0][0], want[-1][0])
            assert month.digest == digest_rows(want), "the store's digest is not the documented one of its rows"
            rows = store.rows(SyntheticSource.name, self.symbol, self.timeframe, lo, hi)
            assert [(r.open_ts, r.end_ts, r.values) for r in rows] == [
                (w[0], w[1], tuple(normalize(v) for v in w[2:])) for w in want]
        finally:
            store.close()

    def test_integrity_apply_deletes_and_upserts_then_the_digest_and_ledger_agree(
            self, sink_options: dict[str, Any]) -> None:
        from forge_core.integrity.digest import digest_rows, partition_key
        from forge_core.integrity.model import LedgerEntry

        _, _, error = self.run_into(sink_options)
        assert error is None, error
        store = self.integrity_store(sink_options)
        lo, hi, want = self._canonical_month()
        name, key = SyntheticSource.name, partition_key(lo)
        try:
            rows = store.rows(name, self.symbol, self.timeframe, lo, hi)
            gone, changed = rows[3], rows[5]
            full = {r["open_ts"]: r for r in synthetic_rows(self.symbol, self.timeframe, self.start, self.end)}
            new = dict(full[changed.open_ts], close="12345.67800000")
            columns = tuple(new)
            entry = LedgerEntry(name, self.symbol, self.timeframe, key, lo, hi, len(want) - 1, want[0][0],
                                want[-1][0], "", "", "rest", "2025-03-15T10:20:30Z", "repaired")
            result = store.apply(name, self.symbol, self.timeframe, columns, [tuple(new.values())], [gone.ref], entry)
            expect = [w if w[0] != changed.open_ts else (*w[:5], "12345.678", w[6])
                      for w in want if w[0] != gone.open_ts]
            assert result == digest_rows(expect) == entry.store_digest
            month = store.partitions(name, self.symbol, self.timeframe, lo, hi)[key]
            assert (month.rows, month.digest) == (len(want) - 1, result)
            saved = store.ledger(name, self.symbol, self.timeframe)
            assert saved[key].store_digest == result and saved[key].rows == len(want) - 1
        finally:
            store.close()
