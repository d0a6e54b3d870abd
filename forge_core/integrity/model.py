"""What the integrity commands exchange with a store: the ledger and the store hooks.

A sink supports ``forge status/verify/repair`` when it has a method ``integrity()`` returning
an object with the methods of :class:`IntegrityStore` (see ``docs/plugin-hooks.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from ..records import Row

# hole reasons
BEFORE_LISTING = "before_listing"
EXCHANGE_EMPTY = "exchange_affirmed_empty"
NO_LATER_CANDLE = "no_later_candle"  # nothing after it yet: not yet published, or the end of data
AFTER_LAST_CANDLE = "after_last_candle"  # after the last candle of a symbol the exchange says no longer trades
FETCH_FAILED = "fetch_failed"
VENUE_OUTAGE = "venue_outage"  # the same affirmed hole in several symbols of the venue
OUTAGE_MIN_SYMBOLS = 2  # symbols sharing one affirmed hole range for it to be called an outage
REASON_TEXT = {
    BEFORE_LISTING: "before listing",
    EXCHANGE_EMPTY: "exchange affirmed empty",
    VENUE_OUTAGE: "the same hole in several symbols of the venue: an outage",
    NO_LATER_CANDLE: "no later candle at the exchange yet",
    AFTER_LAST_CANDLE: "after its last candle: the exchange says it no longer trades",
    FETCH_FAILED: "fetch failed, to retry",
}


@dataclass
class Hole:
    """Grid slots ``first..last`` (open times, inclusive) for which the exchange has no candle."""

    first: int
    last: int
    slots: int
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass
class LedgerEntry:
    """What is known about one partition, as of ``verified_at``.

    ``rows``/``first_open``/``last_open``/``digest`` describe the exchange's candles in
    ``[start, end)``; ``store_digest`` is the store's digest right after that check (equal
    to ``digest`` unless differences were kept, e.g. extra rows without ``--delete-extra``).
    """

    source: str
    symbol: str
    timeframe: str
    partition: str
    start: int
    end: int
    rows: int
    first_open: int | None
    last_open: int | None
    digest: str
    store_digest: str
    origin: str
    verified_at: str
    status: str  # "identical", "differs" (verify found differences), "repaired"
    holes: list[Hole] = field(default_factory=list)
    extras_kept: int = 0
    files: dict[str, str] = field(default_factory=dict)  # archive file name -> its sha256, when origin is "archive"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LedgerEntry:
        """The entry ``as_json`` wrote; ``ValueError`` naming the first field of another shape
        (a ledger edited or damaged by hand is then unreadable, never half believed)."""
        if not isinstance(data, dict):
            raise ValueError(f"an entry is {type(data).__name__}, not an object")
        data = dict(data)
        _check(data, _ENTRY_TYPES, "entry")
        holes = data.get("holes") or []
        if not isinstance(holes, list):
            raise ValueError("field 'holes' is not a list")
        for h in holes:
            if not isinstance(h, dict):
                raise ValueError("a hole is not an object")
            _check(h, _HOLE_TYPES, "hole")
        files = data.get("files") or {}
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ValueError("field 'files' is not an object of sha256 strings")
        data["holes"] = [Hole(**{k: v for k, v in h.items() if k in _HOLE_TYPES}) for h in holes]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_S, _I, _O = (str,), (int,), (int, type(None))
_ENTRY_TYPES = {"source": _S, "symbol": _S, "timeframe": _S, "partition": _S, "start": _I, "end": _I, "rows": _I,
                "first_open": _O, "last_open": _O, "digest": _S, "store_digest": _S, "origin": _S,
                "verified_at": _S, "status": _S, "extras_kept": _I}
_HOLE_TYPES = {"first": _I, "last": _I, "slots": _I, "reason": _S, "evidence": (dict,)}


def _check(data: dict[str, Any], types: dict[str, tuple[type, ...]], what: str) -> None:
    for name, allowed in types.items():
        if name in ("evidence", "extras_kept") and name not in data:  # have defaults
            continue
        if name not in data:
            raise ValueError(f"{what} has no field {name!r}")
        if not isinstance(data[name], allowed):
            raise ValueError(f"{what} field {name!r} is {type(data[name]).__name__} {data[name]!r:.40}")


@dataclass(frozen=True)
class PartitionState:
    """A store's own summary of one partition: computed by the store, not from fetched rows."""

    partition: str
    rows: int
    first_open: int | None
    last_open: int | None
    digest: str


@dataclass(frozen=True)
class StoredRow:
    """One row as the store holds it: times, the five normalized values, and a reference the
    store understands for deleting exactly this row (a line number, a ``ctid``)."""

    open_ts: int
    end_ts: int
    values: tuple[str, ...]
    ref: Any


@dataclass(frozen=True)
class SeriesHeld:
    source: str
    symbol: str
    timeframe: str
    rows: int
    first_open: int
    last_open: int


class IntegrityStore(Protocol):
    def describe(self) -> str: ...

    def series(self, source: str | None, symbol: str | None, timeframe: str | None) -> list[SeriesHeld]: ...

    def partitions(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> dict[str, PartitionState]:
        """Per calendar month in ``[start, end)``: count, first/last open and digest of the rows
        held. Months without rows may be left out."""

    def rows(self, source: str, symbol: str, timeframe: str, start: int, end: int) -> list[StoredRow]: ...

    def ledger(self, source: str, symbol: str, timeframe: str) -> dict[str, LedgerEntry]: ...

    # optional: ``venue_ledger(source, timeframe) -> list[LedgerEntry]``, the entries of every
    # symbol of one source column value and timeframe (for holes shared by many symbols)

    def save_ledger(self, entries: Sequence[LedgerEntry]) -> None: ...

    def apply(self, source: str, symbol: str, timeframe: str, columns: tuple[str, ...], upserts: list[Row],
              deletes: list[Any], entry: LedgerEntry) -> str:
        """In one transaction where the store allows it: delete the rows ``deletes`` refer to,
        insert or replace (by series and ``open_ts``) ``upserts``, compute the partition's new
        digest over ``[entry.start, entry.end)``, set it as ``entry.store_digest`` and save
        ``entry``. Returns that digest."""

    def close(self) -> None: ...
