"""The source contract: what an exchange plugin implements.

The run loop asks a source to :meth:`~Source.prepare` each symbol (validate it, find its
listing), to :meth:`~Source.plan` the range into :class:`Task` s, and then calls
:meth:`~Source.fetch` for many tasks concurrently from a small thread pool. A task's rows come
back as canonical tuples (see :mod:`forge_core.records`), ascending, each opening inside the
task's half-open range. The run loop drops duplicates, rows outside the task and candles that
have not closed yet, so a source need not be paranoid about those; but it must not stop early:
a page shorter than asked for is not the end of data unless the exchange says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from .options import Option, settings
from .records import CANDLE_COLUMNS, Row
from .timeframes import NAMES, Timeframe
from .times import now_ms


@dataclass(frozen=True)
class Task:
    """One unit of fetching: candles of ``symbol`` opening in ``[start, end)``.

    ``kind`` and ``detail`` are the source's own (e.g. ``"archive"`` and a file URL).
    """

    symbol: str
    timeframe: Timeframe
    start: int
    end: int
    kind: str = "rest"
    detail: Any = None


@dataclass(frozen=True)
class SymbolInfo:
    """What a source knows about a symbol before fetching: the first candle it has, if known."""

    symbol: str
    first_open: int | None = None


class Source:
    """Base class of sources. Subclass, set the class attributes, implement :meth:`fetch`.

    Class attributes:

    * ``name``: what users type after ``--source`` (and what fills the ``source`` column);
    * ``label``: for file names, e.g. ``Binance`` in ``Binance-BTCUSDT-1m-...csv``;
    * ``timeframes``: the Forge timeframes this exchange serves;
    * ``columns``: the canonical columns, then any extras the rows carry;
    * ``options``: keyword arguments of ``__init__``, shown as CLI options.

    An instance is one connection to the exchange for one pipeline: it owns its HTTP sessions
    and its rate limiter, shared by all symbols and worker threads of that pipeline.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    timeframes: ClassVar[tuple[str, ...]] = NAMES
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

    # -- optional hooks with sensible defaults ----------------------------------------------
    def server_time(self) -> int:
        """The exchange's clock in epoch ms; used to decide which candles are closed."""
        return now_ms()

    def prepare(self, symbol: str, timeframe: Timeframe) -> SymbolInfo:
        """Check the symbol exists (raise :class:`~forge_core.errors.SourceError` naming it if
        not) and say where its history starts, so empty history is skipped quickly."""
        return SymbolInfo(symbol)

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

    def fetch(self, task: Task) -> Iterable[Row]:
        """Return the candles opening in ``[task.start, task.end)`` as canonical tuples."""
        raise NotImplementedError(f"source {self.name!r} does not implement fetch()")

    def stats(self) -> dict[str, int]:
        """Counters for the run summary, e.g. ``{"requests": 12, "retries": 1}``."""
        return {}

    def close(self) -> None:
        """Release sessions and pools."""
