"""The source contract: what an exchange plugin implements.

The run loop asks a source to :meth:`~Source.prepare` each symbol (validate it, find its
listing), to :meth:`~Source.plan` the range into :class:`Task` s, and then calls
:meth:`~Source.fetch` for many tasks concurrently from a small thread pool. A task's rows come
back as rows in the order of the source's ``columns``, built by name with :meth:`Source.row`
or :meth:`Source.row_maker` (which fill ``source``, ``symbol``, ``timeframe`` and ``end_ts``).
The run loop checks every row against that contract and refuses, naming the plugin, a row of
another series, off the timeframe's grid or with a wrong ``end_ts``. It drops duplicates, rows
outside the task and candles that have not closed yet, so a source need not be paranoid about
those; but it must not stop early: a page shorter than asked for is not the end of data unless
the exchange says so (:mod:`forge_core.paging` walks pages the safe way).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from .options import Option, settings
from .records import CANDLE_COLUMNS, Fetched, Row, RowMaker, row_maker
from .timeframes import NAMES, Timeframe
from .times import now_ms


@dataclass(frozen=True)
class Task:
    """One unit of fetching: candles of ``symbol`` opening in ``[start, end)``.

    ``kind`` and ``detail`` are the source's own (e.g. ``"archive"`` and a file URL).
    ``stream``, when not None, is shared by consecutive tasks that are parts of one sequential
    read (the slices of one archive file, planned in order): the run loop fetches at most
    :data:`~forge_core.pipeline.STREAM_AHEAD` of them ahead of the one it writes (reading more
    of a file ahead only holds its rows), and commits between streams, not inside one.
    """

    symbol: str
    timeframe: Timeframe
    start: int
    end: int
    kind: str = "rest"
    detail: Any = None
    stream: Any = None


@dataclass(frozen=True)
class SymbolInfo:
    """What a source knows about a symbol before fetching: the first candle it has, if known;
    and, when the exchange itself confirms the symbol no longer trades (delisted, settled,
    delivered), ``ended``, the exchange's word for it (``"delisted (Binance status BREAK)"``),
    with ``last_open``, the open of its last candle (None: it has none at all).

    The run loop asks for nothing after that candle and names the reason in the summary: only
    such a confirmation makes the tail an exchange's hole, never an empty answer alone.
    ``final``: with ``ended``, the symbol cannot trade again (a delivery contract past its
    delivery): a follow run stops asking about it."""

    symbol: str
    first_open: int | None = None
    last_open: int | None = None
    ended: str | None = None
    final: bool = False


class Source:
    """Base class of sources. Subclass, set the class attributes, implement :meth:`fetch`.

    Class attributes:

    * ``name``: what users type after ``--source`` (and what fills the ``source`` column);
    * ``label``: for file names, e.g. ``Binance`` in ``Binance-BTCUSDT-1m-...csv``;
    * ``timeframes``: the Forge timeframes this exchange serves;
    * ``timeframe_aliases``: the exchange's own names for some of them that users may type,
      e.g. OKX's ``{"1H": "1h"}``; only names meaning exactly that Forge timeframe (same
      length, same alignment). Results always carry the Forge name;
    * ``timeframe_notes``: why a Forge timeframe is not served, said when it is asked for, e.g.
      Binance USD-M's ``{"1s": "Binance USD-M futures has no 1s klines; 1s exists on spot"}``;
    * ``columns``: the canonical columns, then any extras the rows carry;
    * ``options``: keyword arguments of ``__init__``, shown as CLI options.

    An instance is one connection to the exchange for one pipeline: it owns its HTTP sessions
    and its rate limiter, shared by all symbols and worker threads of that pipeline.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    timeframes: ClassVar[tuple[str, ...]] = NAMES
    timeframe_aliases: ClassVar[Mapping[str, str]] = {}
    timeframe_notes: ClassVar[Mapping[str, str]] = {}
    columns: ClassVar[tuple[str, ...]] = CANDLE_COLUMNS
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **options: Any) -> None:
        self.settings = settings("source", self.name, self.options, options)

    @property
    def source_value(self) -> str:
        """What fills the ``source`` column and keys a sink's series: the plugin name, unless
        one plugin serves markets whose symbols overlap (Binance spot and USD-M both have
        ``BTCUSDT``), which then need a value per market, e.g. ``binance-usdm``."""
        return self.name

    def describe(self) -> str:
        """The exchange, and the market where one plugin serves several, as messages name it
        (``Binance USD-M futures``); the plugin name by default."""
        return self.name

    # -- building rows by name ----------------------------------------------------------------
    def row_maker(self, task: Task) -> RowMaker:
        """A fast ``make(open_ts=..., open=..., high=..., low=..., close=..., volume=...,
        **extras)`` for the rows of ``task``'s series, in this source's ``columns`` order:
        ``source`` is :attr:`source_value`, ``symbol`` and ``timeframe`` the task's, and
        ``end_ts`` the period's last millisecond unless the exchange's own is passed (then the
        run loop checks it). Every extra column of ``columns`` is a required keyword."""
        key = (task.symbol, task.timeframe)
        makers = self.__dict__.setdefault("_row_makers", {})
        make = makers.get(key)
        if make is None:
            make = makers[key] = row_maker(self.columns, task.timeframe, source=self.source_value,
                                           symbol=task.symbol)
        return make

    def row(self, task: Task, **fields: Any) -> Row:
        """One row of ``task``'s series from its fields by name; see :meth:`row_maker`."""
        return self.row_maker(task)(**fields)

    # -- optional hooks with sensible defaults ----------------------------------------------
    def server_time(self) -> int:
        """The exchange's clock in epoch ms; used to decide which candles are closed."""
        return now_ms()

    def prepare_symbols(self, symbols: Sequence[str], timeframe: Timeframe) -> None:
        """Optional: told every symbol of a run before the first :meth:`prepare`, so a source
        can look them all up in one request (Binance's exchangeInfo costs the same for one
        symbol or all). Errors about a symbol belong in :meth:`prepare`."""

    def holes_unconfirmed(self, symbol: str) -> str | None:
        """Optional: why the exchange could not confirm the gaps between the candles served for
        ``symbol`` (e.g. its REST API was unreachable and they came from files alone), or None.
        Such holes are reported as unconfirmed, never as the exchange's."""
        return None

    def prepare(self, symbol: str, timeframe: Timeframe) -> SymbolInfo:
        """Check the symbol exists (raise :class:`~forge_core.errors.SourceError` naming it if
        not) and say where its history starts, so empty history is skipped quickly."""
        return SymbolInfo(symbol)

    def recheck(self, symbols: Sequence[str], timeframe: Timeframe) -> Mapping[str, SymbolInfo]:
        """For follow runs: :meth:`prepare` again, every few minutes, for the symbols that said
        they no longer trade (``SymbolInfo.ended``) or that lag without progress: an answer without ``ended`` (a
        maintenance is over) resumes the series after its last candle, a later ``last_open``
        extends it, an ``ended`` a lagging series did not have ends it. A source whose look-ups
        are kept for the run asks the exchange afresh here; a symbol left out is unchanged."""
        return {symbol: self.prepare(symbol, timeframe) for symbol in symbols}

    def page_size(self, timeframe: Timeframe) -> int:
        """Candles per request; the default plan makes one task per page."""
        return 1000

    def plan(self, symbol: str, timeframe: Timeframe, start: int, end: int) -> Iterator[Task]:
        """Split ``[start, end)`` into tasks, ascending and non-overlapping."""
        size = self.page_size(timeframe)
        ts = timeframe.ceil(start)
        while ts < end:
            nxt = min(timeframe.next_open(ts, size), end)
            yield Task(symbol, timeframe, ts, nxt)
            ts = nxt

    def fetch(self, task: Task) -> Iterable[Row] | Fetched:
        """Return the candles opening in ``[task.start, task.end)``, built with :meth:`row`;
        or a :class:`~forge_core.records.Fetched` to say where they came from."""
        raise NotImplementedError(f"source {self.name!r} does not implement fetch()")

    def stats(self) -> dict[str, int]:
        """Counters for the run summary, e.g. ``{"requests": 12, "retries": 1}``."""
        return {}

    def close(self) -> None:
        """Release sessions and pools."""
