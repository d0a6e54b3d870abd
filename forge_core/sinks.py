"""The sink contract: what a destination plugin implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .options import Option, settings
from .records import Batch
from .times import day_label, inclusive_end_label


@dataclass(frozen=True)
class RunInfo:
    """What a sink knows about the run before the first batch arrives."""

    source: str
    source_label: str
    symbols: tuple[str, ...]
    timeframe: str
    start: int
    end: int
    columns: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)
    transforms: str = ""  # the transform chain, names and options: part of a run's identity for resume
    output_timeframe: str = ""  # of the rows sinks receive, after transforms (e.g. resample)
    # a never-ending run (--follow): every commit must leave the rows readable in their final
    # place at once (no temporary file renamed at the end); ``end`` means nothing then
    follow: bool = False

    @property
    def start_label(self) -> str:
        return day_label(self.start)

    @property
    def end_label(self) -> str:
        return inclusive_end_label(self.end)


class Sink:
    """Base class of sinks.

    The run loop calls :meth:`open` once before any request to the exchange (so a bad
    database URL fails fast), then :meth:`write` per batch and :meth:`commit` every few
    batches and at the end of each symbol; rows are durable once ``commit`` returns. Finally
    :meth:`close` with ``ok=False`` after a failure (roll back, keep nothing that looks whole).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    # option values the streamforge-style ``sf.<Name>Emitter`` starts from, where its defaults
    # differ from Forge's (streamforge's PostgresEmitter inserts unless on_conflict() is called)
    compat_defaults: ClassVar[dict[str, Any]] = {}
    # can take part in a never-ending run (``--follow``, ``RunInfo.follow``): each commit leaves
    # the rows readable in their final place
    supports_follow: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.settings = settings("sink", self.name, self.options, options)

    def open(self, run: RunInfo) -> None:
        """Connect and check the destination is usable."""

    def write(self, batch: Batch) -> None:
        raise NotImplementedError(f"sink {self.name!r} does not implement write()")

    def commit(self) -> None:
        """Make everything written so far durable."""

    def now_known(self, run: RunInfo) -> None:
        """Optional. For a run ending ``now``, called once before the first :meth:`write`
        (after :meth:`open`, :meth:`last_open` and :meth:`resume_after`, which run before any
        request to the exchange) when the exchange's clock is known: ``run`` is the run given
        to :meth:`open` with ``end`` at the exchange's now (this machine's clock may differ).
        A sink that names things by the end date takes the name from here."""

    def last_open(self, source: str, symbol: str, timeframe: str) -> int | None:
        """Open time of the newest candle this sink already holds for the series, if it can
        tell; ``--from auto`` starts right after it."""
        return None

    def resume_after(self, source: str, symbol: str, timeframe: str) -> int | None:
        """``end_ts`` of the last row an interrupted earlier run of this same range (the
        :class:`RunInfo` given to :meth:`open`) durably committed for the series, or ``None``.
        The run continues after it instead of fetching everything again."""
        return None

    def close(self, ok: bool) -> None:
        """Finish (``ok``) or abandon the run."""

    def describe(self) -> str:
        """Where the rows went, for the run summary; never include secrets."""
        return self.name

    def rows_changed(self) -> int | None:
        """Rows this run inserted into the destination or changed there (stored with other
        values than before), asked after :meth:`close`: ``0`` for a re-run that found every
        row already stored as it is. ``None`` (the default) when the sink cannot tell: the
        summary then says it was not counted, never a made-up ``0``."""
        return None
