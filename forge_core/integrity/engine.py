"""Verify and repair one series of a store against the exchange, partition by partition.

1. The store summarizes its partitions itself (count, first/last open, digest; PostgreSQL in
   SQL), so an intact store sends a few dozen bytes per month, never its rows.
2. ``repair`` skips partitions whose store digest still equals the one the ledger recorded
   right after an earlier check and whose exchange side is provably the recorded one (archive
   files with the recorded ``.CHECKSUM``); ``verify`` always asks the exchange.
3. The exchange side is an ordinary :class:`~forge_core.Pipeline` run of the source over the
   partitions left (archive files where the source uses them), one slot wider on both sides
   for hole evidence, into an in-memory :class:`Collector` that digests each month as it
   completes and keeps only the rows of months that differ.
4. Only a differing partition is read from the store and diffed row by row; ``repair`` then
   writes the missing and changed candles, deletes duplicate copies (and extra rows with
   ``delete_extra``) and records the ledger entry, in one store transaction per partition:
   an interrupted repair resumes at the first partition not yet recorded.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any

from ..errors import RetryableError, SinkError, SourceError, UsageError
from ..logs import get_logger
from ..pipeline import Pipeline
from ..records import Batch, Fetched, Row
from ..sinks import Sink
from ..sources import Source
from ..timeframes import Timeframe, parse_timeframe, source_timeframe
from ..times import iso
from .digest import EMPTY_DIGEST, VALUE_FIELDS, digest_rows, normalized_columns, partitions
from .model import (
    AFTER_LAST_CANDLE,
    BEFORE_LISTING,
    EXCHANGE_EMPTY,
    NO_LATER_CANDLE,
    OUTAGE_MIN_SYMBOLS,
    VENUE_OUTAGE,
    Hole,
    IntegrityStore,
    LedgerEntry,
    PartitionState,
    StoredRow,
)

log = get_logger(__name__)
UNCONFIRMED = "unconfirmed"  # no candle seen before it in the range checked (one slot wider)
CHECK_FIELDS = ("end_ts", *VALUE_FIELDS)


@dataclass
class Issue:
    """A run of consecutive grid slots (or one off-grid row) with the same kind of difference."""

    kind: str  # missing | extra | duplicate | changed
    first: int
    last: int
    count: int
    reason: str = ""  # extra: off_grid | before_listing | in_exchange_hole | in_unconfirmed_hole | not_at_exchange
    fields: list[str] = field(default_factory=list)  # changed: which fields differ
    file: str = ""  # --deep: the archive file

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "from": iso(self.first), "to": iso(self.last),
                               "from_ms": self.first, "to_ms": self.last, "count": self.count}
        if self.file:
            out["file"] = self.file
        if self.reason:
            out["reason"] = self.reason
        if self.fields:
            out["fields"] = self.fields
        return out


@dataclass
class PartitionResult:
    partition: str
    start: int
    end: int
    status: str  # identical | differs | repaired | skipped (ledger current) | failed
    store_rows: int
    exchange_rows: int | None
    fetched: bool
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "from": iso(self.start), "to": iso(self.end - 1),
                "status": self.status, "store_rows": self.store_rows, "exchange_rows": self.exchange_rows,
                "fetched": self.fetched, **({"error": self.error} if self.error else {})}


@dataclass
class SeriesReport:
    source: str
    symbol: str
    timeframe: str
    start: int
    end: int
    partitions: list[PartitionResult] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)
    written: int = 0
    deleted: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. an archive file short of candles REST serves
    deep: dict[str, Any] | None = None  # --deep: {"days", "skipped_days", "disagreements": [Issue]}

    def count(self, kind: str) -> int:
        return sum(i.count for i in self.issues if i.kind == kind)

    @property
    def differences(self) -> int:
        return sum(self.count(k) for k in ("missing", "extra", "duplicate", "changed"))

    @property
    def failed(self) -> bool:
        return any(p.status == "failed" for p in self.partitions)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "symbol": self.symbol, "timeframe": self.timeframe,
            "from": iso(self.start), "to": iso(self.end - 1), "from_ms": self.start, "to_ms": self.end - 1,
            "counts": {k: self.count(k) for k in ("missing", "extra", "duplicate", "changed")},
            "missing": [i.as_json() for i in self.issues if i.kind == "missing"],
            "extra": [i.as_json() for i in self.issues if i.kind == "extra"],
            "duplicates": [i.as_json() for i in self.issues if i.kind == "duplicate"],
            "changed": [i.as_json() for i in self.issues if i.kind == "changed"],
            "holes": [hole_json(h) for h in self.holes],
            "partitions": [p.as_json() for p in self.partitions],
            "written": self.written, "deleted": self.deleted,
            **({"deep": {**self.deep, "disagreements": [i.as_json() for i in self.deep["disagreements"]]}}
               if self.deep is not None else {}),
        }

    @property
    def disagreements(self) -> int:
        return sum(i.count for i in self.deep["disagreements"]) if self.deep else 0


def hole_json(h: Hole) -> dict[str, Any]:
    return {"from": iso(h.first), "to": iso(h.last), "from_ms": h.first, "to_ms": h.last, "slots": h.slots,
            "reason": h.reason, "evidence": h.evidence}


@dataclass
class _Fetched:
    """The exchange's candles of one partition, ascending: raw rows and their digest fields
    (from a pipeline run into the :class:`Collector`)."""

    raw: list[Row] = field(default_factory=list)
    fields: list[tuple[Any, ...]] = field(default_factory=list)  # (open_ts, end_ts, open .. volume) as given
    origins: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def opens(self) -> list[int]:
        return [f[0] for f in self.fields]

    @property
    def origin(self) -> str:
        return "+".join(sorted(self.origins)) or "none"

    def digest(self) -> str:
        return digest_rows(self.fields)

    def digest_without(self, skip: list[int]) -> str:
        gone = set(skip)
        return digest_rows([f for i, f in enumerate(self.fields) if i not in gone])

    def rows(self, indices: list[int] | None = None) -> list[Row]:
        return self.raw if indices is None else [self.raw[i] for i in indices]

    def canon(self) -> list[tuple[int, int, tuple[str, ...]]]:
        """``(open_ts, end_ts, normalized values)`` per candle (only for partitions that differ)."""
        if not self.fields:
            return []
        cols = list(zip(*self.fields, strict=True))
        return list(zip(cols[0], cols[1], zip(*normalized_columns(cols[2:]), strict=True), strict=True))


class _FromSide:
    """The exchange's candles of one partition as a source's integrity hook gave them: canonical
    text straight from the archive (``forge_binance.integrity.ExchangePart``); rows on demand."""

    def __init__(self, part: Any) -> None:
        self.part = part
        self.text: bytes = part.text
        self.opens: list[int] = part.opens
        self.origin: str = part.origin
        self.notes: list[str] = list(getattr(part, "notes", ()))
        self.files: dict[str, str] = dict(getattr(part, "files", {}))

    def digest(self) -> str:
        return hashlib.sha256(self.text).hexdigest()

    def digest_without(self, skip: list[int]) -> str:
        lines = self.text.split(b"\n")
        for i in sorted(skip, reverse=True):
            del lines[i]
        return hashlib.sha256(b"\n".join(lines)).hexdigest()

    def rows(self, indices: list[int] | None = None) -> list[Row]:
        return self.part.rows(indices)

    def canon(self) -> list[tuple[int, int, tuple[str, ...]]]:
        out = []
        for text in self.text.decode().splitlines():
            ts, end, *values = text.split(",")
            out.append((int(ts), int(end), tuple(values)))
        return out


class _Recorded:
    """A partition whose archive files are, by their ``.CHECKSUM``, the very bytes an earlier
    check derived the ledger entry from: its digest and candles are the entry's, without a
    download. Anything beyond the digest (a store that differs) fetches the partition."""

    def __init__(self, entry: LedgerEntry, tf: Timeframe, fetch: Callable[[], Any]) -> None:
        self.entry, self.fetch = entry, fetch
        self.origin, self.notes, self.files = entry.origin, [], dict(entry.files)
        gone = [(h.first, h.last) for h in entry.holes]
        ts, opens = tf.ceil(entry.start), []
        while ts < entry.end:
            hole = next((hi for lo, hi in gone if lo <= ts <= hi), None)
            if hole is None:
                opens.append(ts)
                ts = tf.next_open(ts)
            else:
                ts = tf.next_open(hole)
        self.opens: list[int] = opens
        self._full: Any = None

    def digest(self) -> str:
        return self.entry.digest

    def full(self) -> Any:
        if self._full is None:
            got = self.fetch()
            if got is None:
                raise SourceError(f"the archive files of {self.entry.partition} could not be read again; run again")
            self._full = _FromSide(got)
        return self._full

    def digest_without(self, skip: list[int]) -> str:
        return self.full().digest_without(skip)

    def rows(self, indices: list[int] | None = None) -> list[Row]:
        return self.full().rows(indices)

    def canon(self) -> list[tuple[int, int, tuple[str, ...]]]:
        return self.full().canon()


class _Held:
    """The store's partition summaries, now or (a future) once the store has computed them."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> dict[str, PartitionState]:
        if isinstance(self._value, Future):
            self._value = self._value.result()
        return self._value

    def get(self, key: str) -> PartitionState | None:
        return self.result().get(key)

    def update(self, more: dict[str, PartitionState]) -> None:
        self._value = {**self.result(), **more}


class Collector(Sink):
    """An in-memory sink: hands each completed partition of one series to ``done``."""

    name = "integrity-collector"

    def __init__(self, parts: list[tuple[str, int, int]],
                 done: Callable[[tuple[str, int, int], _Fetched, int | None, int | None], None],
                 prev: int | None = None) -> None:
        super().__init__()
        self.parts = list(parts)
        self.done = done
        self.prev = prev  # last exchange candle before the current partition
        self.current = _Fetched()
        self.columns: tuple[str, ...] = ()
        self.next_after: int | None = None

    def write(self, batch: Batch) -> None:
        cols = batch.columns
        self.columns = cols
        i_open, i_end = cols.index("open_ts"), cols.index("end_ts")
        pick = itemgetter(i_open, i_end, *(cols.index(c) for c in VALUE_FIELDS))
        rows = batch.rows
        while rows and self.parts and rows[0][i_open] >= self.parts[0][2]:
            self._finish(rows[0][i_open])
        if rows and self.parts and self.parts[0][1] <= rows[0][i_open] and rows[-1][i_open] < self.parts[0][2]:
            self.current.fields += map(pick, rows)  # the whole batch is in the current partition
            self.current.raw += rows
            self.current.origins.add(batch.origin)
            return
        for row in rows:
            ts = row[i_open]
            while self.parts and ts >= self.parts[0][2]:
                self._finish(ts)
            if not self.parts:
                if self.next_after is None:
                    self.next_after = ts
                continue
            if ts < self.parts[0][1]:  # the slot before the range: evidence only
                self.prev = ts
                continue
            self.current.fields.append(pick(row))
            self.current.raw.append(row)
            self.current.origins.add(batch.origin)

    def _finish(self, next_ts: int | None) -> None:
        part = self.parts.pop(0)
        fetched, self.current = self.current, _Fetched()
        self.done(part, fetched, self.prev, next_ts)
        if fetched.fields:
            self.prev = fetched.fields[-1][0]

    def close(self, ok: bool) -> None:
        if ok:
            while self.parts:
                self._finish(None)


class Checker:
    """Verify (or repair) series of ``store`` against the source ``make_source()`` builds."""

    GUIDED_MAX_WINDOWS = 16  # more windows of missing slots than this: fetch the partition whole

    def __init__(self, store: IntegrityStore, make_source: Callable[[], Source], *, repair: bool = False,
                 delete_extra: bool = False, recheck: bool = False, workers: int = 4, deep: int = 0,
                 deep_seed: int = 0) -> None:
        self.store = store
        self.make_source = make_source
        self.repair = repair
        self.delete_extra = delete_extra
        self.recheck = recheck
        self.workers = workers
        self.deep, self.deep_seed = deep, deep_seed  # --deep: days cross-checked, archive against REST
        self.fetches = 0  # pipeline runs (or guided fetches) against the exchange
        self._unsaved = False  # the store could not write the ledger (warned once)

    def _holds(self, sv: str, symbol: str, tf: Timeframe, start: int, limit: int) -> bool:
        """Whether the store holds a row of the series in ``[start, limit)`` (optional hook
        ``holds``: a cheap existence check; else its series' extents)."""
        holds = getattr(self.store, "holds", None)
        if holds is not None:
            return bool(holds(sv, symbol, tf.name, start, limit))
        return any(s.first_open < limit and s.last_open >= start for s in self.store.series(sv, symbol, tf.name))

    def check_held(self, symbols: list[str], timeframe: str, start: int, end: int) -> None:
        """Refuse, before any series is checked, symbols of which the store holds nothing in the
        range and has no ledger entry (else the refusal came after the series before it were
        checked, their reports lost)."""
        source = self.make_source()
        try:
            tf = source_timeframe(source, timeframe)
            sv = source.source_value
            limit = min(end, tf.floor(source.server_time()))
        finally:
            source.close()
        if start >= limit:
            return  # run() says so
        keys = {key for key, _, _ in partitions(start, limit)}
        absent = [s for s in symbols if not self._holds(sv, s, tf, start, limit)
                  and not keys & self.store.ledger(sv, s, tf.name).keys()]  # the ledger read once a symbol
        if absent:
            raise UsageError(f"{self.store.describe()} holds no {sv} {', '.join(absent)} {tf.name} candles from "
                             f"{iso(start)} to {iso(tf.floor(limit - 1))}; 'forge status' lists what it holds")

    def run(self, symbol: str, timeframe: str, start: int, end: int) -> SeriesReport:
        source = self.make_source()
        try:
            tf = source_timeframe(source, timeframe)
            sv = source.source_value
            limit = min(end, tf.floor(source.server_time()))
            if start >= limit:
                raise UsageError(f"the range from {iso(start)} holds no closed {tf.name} candle yet")
            info = source.prepare(symbol, tf)
        except BaseException:
            source.close()
            raise
        listing = None if info.first_open is None else tf.floor(info.first_open)
        report = SeriesReport(sv, symbol, tf.name, start, limit)
        parts = partitions(start, limit)
        ledger = self.store.ledger(sv, symbol, tf.name)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forge-digest")
        lost: set[str] = set()
        if self.repair:
            held: _Held = _Held(self._repair_states(sv, symbol, tf, start, limit, parts, ledger, lost))
            found = bool(held.result())
        else:  # the store digests its partitions while the exchange side downloads
            found = self._holds(sv, symbol, tf, start, limit)
            held = _Held(pool.submit(self.store.partitions, sv, symbol, tf.name, start, limit) if found else {})
        pool.shutdown(wait=False)
        if not found and not any(key in ledger for key, _, _ in parts):
            source.close()
            raise UsageError(f"{self.store.describe()} holds no {sv} {symbol} {tf.name} candles from "
                             f"{iso(start)} to {iso(tf.floor(limit - 1))}; 'forge status' lists what it holds")
        hook = getattr(source, "integrity", None)
        side = hook() if callable(hook) else None  # the source's own cheap exact exchange side (archive files)
        # repair: which partitions' exchange side is provably what the ledger recorded (their archive
        # files' .CHECKSUM); only those may be skipped or repaired against the ledger's digest
        same = self._exchange_same(side, symbol, tf, parts, ledger, listing) if self.repair and not self.recheck else {}
        need: list[tuple[str, int, int]] = []
        for part in parts:
            key, a, b = part
            entry, state = ledger.get(key), held.get(key)
            current = state.digest if state else EMPTY_DIGEST
            if (self.repair and not self.recheck and entry is not None and (entry.start, entry.end) == (a, b)
                    and entry.store_digest == current and entry.status in ("identical", "repaired")
                    and not (self.delete_extra and entry.extras_kept) and same.get(key)):
                report.partitions.append(PartitionResult(key, a, b, "skipped", state.rows if state else 0,
                                                         entry.rows, False))
                report.holes += entry.holes
            else:
                need.append(part)
        entries: list[LedgerEntry] = []
        state_box: dict[str, Any] = {"report": report, "held": held, "tf": tf, "listing": listing, "ledger": ledger,
                                     "entries": entries, "symbol": symbol, "first_open": info.first_open,
                                     "ended": (info.last_open, info.ended) if info.ended else None,
                                     "same": same}
        doubt = getattr(source, "holes_unconfirmed", None)
        if callable(doubt):  # asked as each partition is compared: a source learns it while fetching
            state_box["unconfirmed"] = lambda: doubt(symbol)
        if self.repair and not self.recheck:
            done = self._guided(source, side, [p for p in need if same.get(p[0])], ledger, held, tf, symbol, report)
            need = [part for part in need if part[0] not in done]
            for group in _contiguous([p for p in need if p[0] in lost]):  # their digest, now, for the full path
                held.update(self.store.partitions(sv, symbol, tf.name, group[0][1], group[-1][2]))
        owned = True  # `source` is still to be closed here (a pipeline run closes the source it is given)
        try:
            if self.deep:
                self._deep(source, side, symbol, tf, parts, report)
            for group in _contiguous(need):
                if side is not None and self._fetch_fast(side, source, group, tf, listing, state_box):
                    continue
                src, owned = (source, False) if owned else (self.make_source(), owned)
                self._fetch_group(src, group, tf, listing, state_box)
        finally:
            if owned:
                source.close()
        held.result()  # never leave the store's connection busy in the digest thread
        if entries:
            self._save_ledger(entries)
        unsaved = getattr(self.store, "ledger_unsaved", None)  # optional: apply wrote rows, not the ledger
        if unsaved and not self._unsaved:
            log.warning("ledger_not_saved", store=self.store.describe(), error=unsaved)
            self._unsaved = True
        report.partitions.sort(key=lambda p: p.start)
        report.holes.sort(key=lambda h: h.first)
        report.issues.sort(key=lambda i: (i.first, i.kind))
        return report

    def _save_ledger(self, entries: list[LedgerEntry]) -> None:
        """The ledger entries, or one warning when the store cannot write them (a read-only role,
        file or folder): the report stands, and the partitions are only checked again next time."""
        try:
            self.store.save_ledger(entries)
        except SinkError as exc:
            if not self._unsaved:
                log.warning("ledger_not_saved", store=self.store.describe(), error=str(exc))
            self._unsaved = True

    def _exchange_same(self, side: Any, symbol: str, tf: Timeframe, parts: list[tuple[str, int, int]],
                       ledger: dict[str, LedgerEntry], listing: int | None) -> dict[str, bool]:
        """Per partition the ledger knows (same range): whether the exchange side is provably the
        one its entry recorded. A partition wholly before the listing has no candle to change;
        one taken from archive files is the same when every file's ``.CHECKSUM`` still is the
        recorded sha256 and REST still has no candle in its affirmed holes (the source's
        ``unchanged``, asked concurrently). Anything else (REST, no archive) proves nothing: it is
        fetched again, as verify does, so repair acts on whatever verify would report (a file
        Binance re-published with other candles, whose store digest has not changed)."""
        unchanged = getattr(side, "unchanged", None)
        asked: list[tuple[str, int, int, LedgerEntry]] = []
        out: dict[str, bool] = {}
        for key, a, b in parts:
            entry = ledger.get(key)
            if entry is None or (entry.start, entry.end) != (a, b):
                continue
            if listing is not None and b <= listing and not entry.rows:
                out[key] = True
            elif unchanged is not None and entry.origin == "archive" and entry.files:
                asked.append((key, a, b, entry))
            else:
                out[key] = False

        def one(item: tuple[str, int, int, LedgerEntry]) -> bool:
            _, a, b, entry = item
            empty = [(h.first, tf.next_open(h.last)) for h in entry.holes if h.reason == EXCHANGE_EMPTY]
            try:
                return bool(unchanged(symbol, tf, a, b, entry.files, empty))
            except (SourceError, RetryableError) as exc:
                log.info("integrity_unchanged_unknown", symbol=symbol, partition=item[0], error=str(exc))
                return False

        if asked:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="forge-checksum") as pool:
                out.update(zip((k for k, *_ in asked), pool.map(one, asked), strict=True))
        return out

    # -- repair guided by the ledger: fetch only the candles that went missing --------------
    def _repair_states(self, sv: str, symbol: str, tf: Timeframe, start: int, end: int,
                       parts: list[tuple[str, int, int]], ledger: dict[str, LedgerEntry],
                       lost: set[str]) -> dict[str, PartitionState]:
        """The store's partitions for a repair. With the optional ``counts`` hook, a partition the
        ledger verified that now holds fewer rows has changed (its digest cannot be the one
        recorded) and goes to the guided repair, whose write is proven by the store's digest
        anyway: it is only counted here, not digested twice (its digest is left empty and
        computed if the guided repair does not take it). The others are digested. ``lost``
        receives the keys only counted."""
        counts = getattr(self.store, "counts", None)
        if counts is None or self.recheck:
            return self.store.partitions(sv, symbol, tf.name, start, end)
        counted: dict[str, PartitionState] = counts(sv, symbol, tf.name, start, end)
        for key, a, b in parts:
            entry, state = ledger.get(key), counted.get(key)
            if (entry is not None and state is not None and (entry.start, entry.end) == (a, b) and not entry.extras_kept
                    and entry.status in ("identical", "repaired") and state.rows < entry.rows):
                lost.add(key)
        states = {key: counted[key] for key in lost}
        for group in _contiguous([p for p in parts if p[0] not in lost and p[0] in counted]):
            states.update(self.store.partitions(sv, symbol, tf.name, group[0][1], group[-1][2]))
        return states

    def _deep(self, source: Source, side: Any, symbol: str, tf: Timeframe, parts: list[tuple[str, int, int]],
              report: SeriesReport) -> None:
        """``--deep``: for ``self.deep`` days of the range (drawn with ``self.deep_seed``), the
        candles the archive file itself holds against the candles REST serves, both as canonical
        lines: what one has and the other lacks, and values that differ (archive defects: short
        or re-uploaded files)."""
        if side is None or not hasattr(side, "archive_lines"):
            raise UsageError(f"--deep cross-checks archive files against REST; source {source.name} has no archive")
        days: list[tuple[tuple[str, int, int], int, int]] = []
        for part in parts:
            _, a, b = part
            d = a
            while d < b:
                nxt = min((d // 86_400_000 + 1) * 86_400_000, b)
                days.append((part, d, nxt))
                d = nxt
        picked = sorted(random.Random(self.deep_seed).sample(days, min(self.deep, len(days))), key=lambda x: x[1])
        checked: list[str] = []
        skipped: list[str] = []
        found: list[Issue] = []
        archive = [side.archive_lines(symbol, tf, (a, b), d0, d1) for (_, a, b), d0, d1 in picked]
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="forge-deep") as pool:
            rests = list(pool.map(lambda p: None if p[1] is None else side.rest_lines(symbol, tf, p[0][1], p[0][2]),
                                  zip(picked, archive, strict=True)))
        for (_, d0, _), got, rest_got in zip(picked, archive, rests, strict=True):
            day = iso(d0)[:10]
            if got is None or rest_got is None:
                skipped.append(day)  # that day comes from REST (not yet in the archive) or the file is unusable
                continue
            name, text, opens = got
            rest_text, rest_opens = rest_got
            arch = dict(zip(opens, text.decode().splitlines(), strict=True))
            rest = dict(zip(rest_opens, rest_text.decode().splitlines(), strict=True))
            lacks = [(t, 1, []) for t in sorted(set(rest) - set(arch))]
            only = [(t, 1, []) for t in sorted(set(arch) - set(rest))]
            differs = []
            for t in sorted(set(arch) & set(rest)):
                if arch[t] != rest[t]:
                    x, y = arch[t].split(",")[1:], rest[t].split(",")[1:]
                    differs.append((t, 1, [f for f, u, v in zip(CHECK_FIELDS, x, y, strict=True) if u != v]))
            for kind, items in (("archive_lacks", lacks), ("archive_only", only), ("archive_differs", differs)):
                for issue in _runs(tf, kind, items):
                    issue.file = name
                    found.append(issue)
            checked.append(day)
        if not checked and picked:
            raise UsageError(f"--deep: none of the {len(picked)} days drawn comes from archive files "
                             f"({', '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}); "
                             "they are not published yet, or --archive rest is set")
        report.deep = {"days": checked, "skipped_days": skipped, "seed": self.deep_seed, "disagreements": found}

    def _guided(self, source: Source, side: Any, need: list[tuple[str, int, int]], ledger: dict[str, LedgerEntry],
                held: _Held, tf: Timeframe, symbol: str, report: SeriesReport) -> set[str]:
        """Repair the partitions the ledger knows (exchange digest and holes, same range) whose
        store only lost rows: fetch just those candles (a few REST windows, or the lines of the
        archive file that hold them), write them, and accept a partition only if the store's
        digest, computed by the store, then equals the exchange digest the ledger recorded.
        Partitions are done concurrently. Returns the keys repaired; the others take the full
        path (fetch and diff)."""
        now = source.server_time()
        opens = getattr(self.store, "opens", None)  # optional hook: open times only
        plans: list[tuple[tuple[str, int, int], LedgerEntry, PartitionState, list[int]]] = []
        for part in need:
            key, a, b = part
            entry, state = ledger.get(key), held.get(key)
            if (entry is None or (entry.start, entry.end) != (a, b) or entry.status not in ("identical", "repaired")
                    or state is None or state.rows >= entry.rows):
                continue
            stamps = (opens(report.source, symbol, tf.name, a, b) if opens is not None else
                      [r.open_ts for r in self.store.rows(report.source, symbol, tf.name, a, b)])
            have = set(stamps)
            if len(have) != len(stamps) or any(tf.floor(t) != t for t in have):
                continue  # duplicates or off-grid rows: the full path reports and handles them
            holes = [(h.first, h.last) for h in entry.holes]
            missing: list[int] = []
            ts = tf.ceil(a)
            while ts < b:
                if ts not in have and not any(lo <= ts <= hi for lo, hi in holes):
                    missing.append(ts)
                ts = tf.next_open(ts)
            if missing and len(missing) + len(have) == entry.rows:  # else changed or extra rows too
                plans.append((part, entry, state, missing))
        if not plans:
            return set()
        rows_at = getattr(side, "rows_at", None)
        i_open, i_end = source.columns.index("open_ts"), source.columns.index("end_ts")

        def fetch(plan: tuple[tuple[str, int, int], LedgerEntry, PartitionState, list[int]]) -> list[Row] | None:
            (key, a, b), _, _, missing = plan
            windows = _windows(tf, missing, source.page_size(tf))
            try:
                if len(windows) > self.GUIDED_MAX_WINDOWS:  # scattered: the archive's lines, if it has them
                    got = rows_at(symbol, tf, a, b, missing) if rows_at is not None else None
                    if got is None:
                        return None
                    rows = list(got)
                else:
                    rows = []
                    for lo, hi in windows:
                        for task in source.plan(symbol, tf, lo, hi):
                            out = source.fetch(task)
                            rows += out.rows if isinstance(out, Fetched) else list(out)
            except (SourceError, RetryableError) as exc:
                log.warning("guided_repair_fetch_failed", partition=key, error=str(exc))
                return None
            want = set(missing)
            unique = {r[i_open]: r for r in rows if r[i_open] in want and r[i_end] < now}
            if set(unique) != want:
                return None  # the exchange no longer returns every candle it had: compare in full
            return [unique[t] for t in sorted(unique)]

        def write(plan: tuple[tuple[str, int, int], LedgerEntry, PartitionState, list[int]]) -> tuple[Any, ...]:
            got = fetch(plan)
            if got is None:
                return plan, None, None
            part, entry, _, _ = plan
            trial = replace(entry, status="differs", verified_at=_now_iso())  # "repaired" only once proven
            return plan, trial, self.store.apply(report.source, symbol, tf.name, source.columns, got, [], trial)

        self.fetches += 1
        parallel = getattr(self.store, "concurrent_apply", 1)
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, parallel)), thread_name_prefix="forge-repair") as pool:
            results = list(pool.map(write, plans))
        done: set[str] = set()
        proven: list[LedgerEntry] = []
        for (part, entry, state, missing), trial, digest_now in results:
            key, a, b = part
            if trial is None:
                continue
            report.issues += _runs(tf, "missing", [(t, 1, []) for t in missing])
            report.written += len(missing)
            if digest_now != entry.digest:
                continue  # written, yet something else differs too: the full comparison finds it
            proven.append(replace(trial, status="repaired", store_digest=digest_now))
            report.holes += entry.holes
            report.partitions.append(PartitionResult(key, a, b, "repaired", state.rows, entry.rows, True))
            done.add(key)
        if proven:
            self._save_ledger(proven)
        return done

    # -- the exchange side ------------------------------------------------------------------
    def _fetch_fast(self, side: Any, source: Source, group: list[tuple[str, int, int]], tf: Timeframe,
                    listing: int | None, box: dict[str, Any]) -> bool:
        """The group's partitions from the source's integrity hook, months concurrently. Returns
        False (nothing recorded) when the hook cannot give one of them: the pipeline path then
        fetches the group with all its fallbacks and failure reporting."""
        symbol = box["symbol"]

        ledger: dict[str, LedgerEntry] = box["ledger"]
        unchanged = getattr(side, "unchanged", None)

        def one(part: tuple[str, int, int]) -> Any:
            key, a, b = part
            if listing is not None and b <= listing:  # all before listing: nothing to ask for
                return _FromSide(_Nothing())
            entry = ledger.get(key)
            if (unchanged is not None and not self.recheck and entry is not None and entry.files
                    and entry.origin == "archive" and (entry.start, entry.end) == (a, b)):
                empty = [(h.first, tf.next_open(h.last)) for h in entry.holes if h.reason == EXCHANGE_EMPTY]
                known = box["same"].get(key)  # repair asked already
                if known if known is not None else unchanged(symbol, tf, a, b, entry.files, empty):
                    recorded = _Recorded(entry, tf, lambda: side.partition(symbol, tf, a, b))
                    if len(recorded.opens) == entry.rows:
                        return recorded
            got = side.partition(symbol, tf, a, b)
            return None if got is None else _FromSide(got)

        try:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="forge-verify") as pool:
                parts = list(pool.map(one, group))
        except (SourceError, RetryableError) as exc:
            log.info("integrity_fast_path_failed", symbol=symbol, error=str(exc))
            return False
        if any(p is None for p in parts):
            return False
        self.fetches += 1
        prev = None
        a0 = group[0][1]
        first_opens = parts[0].opens
        if (not first_opens or first_opens[0] != tf.ceil(a0)) and (listing is None or a0 > listing):
            prev = self._before(source, symbol, tf, a0, listing)  # hole evidence: the candle before the range
        for i, (part, ex) in enumerate(zip(group, parts, strict=True)):
            nxt = next((p.opens[0] for p in parts[i + 1:] if p.opens), None)
            self._partition(part, ex, prev, nxt, source.columns, box)
            if ex.opens:
                prev = ex.opens[-1]
        return True

    @staticmethod
    def _before(source: Source, symbol: str, tf: Timeframe, a: int, listing: int | None) -> int | None:
        lo = max(tf.floor(a - 1), listing or 0)
        if lo >= a:
            return None
        i_open = source.columns.index("open_ts")
        try:
            for task in source.plan(symbol, tf, lo, a):
                got = source.fetch(task)
                rows = got.rows if isinstance(got, Fetched) else list(got)
                if rows:
                    return max(r[i_open] for r in rows)
        except (SourceError, RetryableError):
            return None
        return None

    def _fetch_group(self, source: Source, group: list[tuple[str, int, int]], tf: Timeframe,
                     listing: int | None, box: dict[str, Any]) -> None:
        g_start, g_end = group[0][1], group[-1][2]
        report: SeriesReport = box["report"]

        def done(part: tuple[str, int, int], fetched: _Fetched, prev: int | None, nxt: int | None) -> None:
            self._partition(part, fetched, prev, nxt, collector.columns, box)

        collector = Collector(group, done)
        if listing is not None and listing >= g_end:  # all before listing: nothing to ask for
            source.close()
            collector.close(True)
            return
        fetch_from = max(tf.floor(g_start - 1), listing or 0)
        self.fetches += 1
        try:
            Pipeline(source, sinks=[collector], workers=self.workers).run(
                [box["symbol"]], tf.name, str(max(fetch_from, 10**11)), str(g_end))
        except (SourceError, RetryableError) as exc:  # the exchange failed: what was done is kept, the rest is reported
            for key, a, b in collector.parts:
                state = box["held"].get(key)
                report.partitions.append(PartitionResult(key, a, b, "failed", state.rows if state else 0,
                                                         None, True, str(exc)))

    # -- one partition ----------------------------------------------------------------------
    def _partition(self, part: tuple[str, int, int], ex: Any, prev: int | None, nxt: int | None,
                   columns: tuple[str, ...], box: dict[str, Any]) -> None:
        """Compare one partition (``ex``: a :class:`_Fetched` or :class:`_FromSide`) with the store."""
        key, a, b = part
        tf: Timeframe = box["tf"]
        report: SeriesReport = box["report"]
        state: PartitionState | None = box["held"].get(key)
        opens = ex.opens
        doubt = box.get("unconfirmed")
        holes = find_holes(tf, a, b, opens, prev, nxt, box["listing"], box["first_open"], box.get("ended"),
                           doubt() if callable(doubt) else None)
        report.holes += holes
        report.notes += ex.notes
        exch_digest = ex.digest()
        store_digest = state.digest if state else EMPTY_DIGEST
        entry = LedgerEntry(report.source, report.symbol, tf.name, key, a, b, len(opens),
                            opens[0] if opens else None, opens[-1] if opens else None, exch_digest, store_digest,
                            ex.origin, _now_iso(), "identical", holes,
                            files=dict(getattr(ex, "files", {})) if ex.origin == "archive" else {})
        store_rows = state.rows if state else 0
        box.setdefault("seen", []).append((part, ex))
        if exch_digest == store_digest:
            report.partitions.append(PartitionResult(key, a, b, "identical", store_rows, len(opens), True))
            if self.repair:
                self._save_ledger([entry])
            else:
                box["entries"].append(entry)
            return
        if self.repair and self._only_missing(part, ex, entry, state, columns, report):
            return
        stored = self.store.rows(report.source, report.symbol, tf.name, a, b)
        issues, upserts, deletes, kept = diff(tf, ex, stored, holes, box["listing"], self.delete_extra)
        report.issues += issues
        if not self.repair:
            entry.status = "differs"
            report.partitions.append(PartitionResult(key, a, b, "differs", store_rows, len(opens), True))
            box["entries"].append(entry)
            return
        entry.status = "repaired"
        entry.extras_kept = kept
        new_digest = self.store.apply(report.source, report.symbol, tf.name, columns, upserts, deletes, entry)
        if kept == 0 and new_digest != exch_digest:
            raise SinkError(f"{self.store.describe()}: {report.symbol} {key} still differs from the exchange after "
                            "repair (does the table round or reformat values?)")
        report.written += len(upserts)
        report.deleted += len(deletes)
        report.partitions.append(PartitionResult(key, a, b, "repaired", store_rows, len(opens), True))

    def _only_missing(self, part: tuple[str, int, int], ex: Any, entry: LedgerEntry, state: PartitionState | None,
                      columns: tuple[str, ...], report: SeriesReport) -> bool:
        """Repair shortcut when the store's open times (``opens`` hook) are a duplicate-free subset
        of the exchange's and the store's digest equals the digest of the exchange's lines at
        those open times: then the store holds exactly the exchange's candles there, and writing
        the missing candles makes it identical, proven without reading a stored row or digesting
        the partition again (the store checks the row count). Otherwise the caller diffs."""
        hook = getattr(self.store, "opens", None)
        if hook is None or state is None:
            return False
        key, a, b = part
        opens = ex.opens
        stamps = hook(report.source, report.symbol, entry.timeframe, a, b)
        have = set(stamps)
        if len(have) != len(stamps) or not have <= set(opens) or len(have) == len(opens):
            return False
        missing = [i for i, t in enumerate(opens) if t not in have]
        if ex.digest_without(missing) != state.digest:
            return False  # changed values too: the caller reads the rows and diffs
        tf = parse_timeframe(entry.timeframe)
        done = replace(entry, status="repaired")
        digest_now = self.store.apply(report.source, report.symbol, entry.timeframe, columns,
                                      ex.rows(missing), [], done, proven=entry.digest)
        if digest_now != entry.digest:
            raise SinkError(f"{self.store.describe()}: {report.symbol} {key} still differs from the exchange after "
                            "writing its missing candles (was it written to meanwhile?)")
        report.issues += _runs(tf, "missing", [(opens[i], 1, []) for i in missing])
        report.written += len(missing)
        report.partitions.append(PartitionResult(key, a, b, "repaired", state.rows, len(opens), True))
        return True


class _Nothing:
    """No candle (a partition before the listing): nothing is asked of the exchange."""

    text = b""
    opens: list[int] = []
    origin = "none"
    notes: list[str] = []

    def rows(self, indices: list[int] | None = None) -> list[Row]:
        return []


def mark_outages(store: IntegrityStore, reports: list[SeriesReport], min_symbols: int = OUTAGE_MIN_SYMBOLS) -> int:
    """Affirmed holes of the same range in at least ``min_symbols`` symbols of one venue (source
    column value) and timeframe, in ``reports`` or in the store's ledger of the other symbols
    (optional hook ``venue_ledger``), become ``venue_outage`` holes with the symbols as
    evidence, in the reports and in the ledger. Returns how many holes of ``reports`` changed."""
    shared = (EXCHANGE_EMPTY, VENUE_OUTAGE)
    changed = 0
    for source, timeframe in {(r.source, r.timeframe) for r in reports}:
        mine = [r for r in reports if (r.source, r.timeframe) == (source, timeframe)]
        names = {r.symbol for r in mine}
        hook = getattr(store, "venue_ledger", None)
        others = [e for e in (hook(source, timeframe) if hook is not None else []) if e.symbol not in names]
        seen: dict[tuple[int, int], set[str]] = defaultdict(set)
        for r in mine:
            for h in r.holes:
                if h.reason in shared:
                    seen[(h.first, h.last)].add(r.symbol)
        for e in others:
            for h in e.holes:
                if h.reason in shared:
                    seen[(h.first, h.last)].add(e.symbol)

        def mark(h: Hole, seen: dict[tuple[int, int], set[str]] = seen) -> bool:
            symbols = sorted(seen.get((h.first, h.last), ()))
            if h.reason not in shared or len(symbols) < min_symbols:
                return False
            evidence = {**h.evidence, "symbols": symbols}
            if (h.reason, h.evidence) == (VENUE_OUTAGE, evidence):
                return False
            h.reason, h.evidence = VENUE_OUTAGE, evidence
            return True

        for r in mine:
            changed += sum(mark(h) for h in r.holes)
        touched = []
        for r in mine:
            for e in store.ledger(source, r.symbol, timeframe).values():
                if sum(mark(h) for h in e.holes):
                    touched.append(e)
        touched += [e for e in others if sum(mark(h) for h in e.holes)]
        if touched:
            try:
                store.save_ledger(touched)
            except SinkError as exc:
                log.warning("ledger_not_saved", store=store.describe(), error=str(exc))
    return changed


def find_holes(tf: Timeframe, a: int, b: int, opens: list[int], prev: int | None, nxt: int | None,
               listing: int | None, first_open: int | None,
               ended: tuple[int | None, str] | None = None, unconfirmed: str | None = None) -> list[Hole]:
    """The grid slots of ``[a, b)`` without an exchange candle, as holes with reason and evidence.
    ``ended``: ``(last_open, why)`` when the exchange confirmed the symbol no longer trades
    (``SymbolInfo.ended``): slots after that candle are the exchange's, with that evidence.
    ``unconfirmed``: why the source could not have the exchange confirm gaps between candles
    (``Source.holes_unconfirmed``): such a gap is then unconfirmed, not the exchange's."""
    holes: list[Hole] = []
    stop = None if ended is None else (a if ended[0] is None else tf.next_open(tf.floor(ended[0])))

    def add(lo: int, hi: int, before: int | None, after: int | None) -> None:
        if listing is not None and lo < listing:
            cut = min(hi, listing)
            holes.append(Hole(lo, tf.floor(cut - 1), tf.count(lo, cut), BEFORE_LISTING,
                              {"listing": iso(first_open or listing)}))
            lo = cut
        tail = None  # after the last candle of a symbol the exchange says no longer trades
        if stop is not None and ended is not None and hi > stop and after is None:
            cut = max(lo, stop)
            tail = Hole(cut, tf.floor(hi - 1), tf.count(cut, hi), AFTER_LAST_CANDLE,
                        {"last_candle": None if ended[0] is None else iso(ended[0]), "exchange": ended[1]})
            hi = cut
        if lo < hi:
            if before is not None and after is not None and unconfirmed is not None:
                reason, evidence = UNCONFIRMED, {"candle_before": iso(before), "candle_after": iso(after),
                                                 "why": unconfirmed}
            elif before is not None and after is not None:
                reason, evidence = EXCHANGE_EMPTY, {"candle_before": iso(before), "candle_after": iso(after)}
            elif after is None and unconfirmed is not None:  # e.g. not archived yet, and REST refused
                reason, evidence = UNCONFIRMED, {"candle_before": iso(before) if before is not None else None,
                                                 "why": unconfirmed}
            elif after is None:
                reason, evidence = NO_LATER_CANDLE, {"candle_before": iso(before) if before is not None else None}
            else:  # no candle before it: with the source's reason, a row there is never deleted
                reason, evidence = UNCONFIRMED, {"candle_after": iso(after)}
                if unconfirmed is not None:  # e.g. OKX no longer keeps these 1s bars
                    evidence["why"] = unconfirmed
            holes.append(Hole(lo, tf.floor(hi - 1), tf.count(lo, hi), reason, evidence))
        if tail is not None:
            holes.append(tail)

    cursor, before = tf.ceil(a), prev
    step = tf.ms
    for ts in [*opens, *([nxt] if nxt is not None else [])]:
        if ts == cursor and step is not None:  # the usual case: the next slot is there
            before, cursor = ts, ts + step
            continue
        stop = min(ts, b)
        if cursor < stop:
            add(cursor, stop, before, ts)
        if ts >= b:
            break
        before, cursor = ts, tf.next_open(ts)
    else:
        if cursor < b:
            add(cursor, b, before, None)
    return holes


def diff(tf: Timeframe, fetched: Any, stored: list[StoredRow], holes: list[Hole], listing: int | None,
         delete_extra: bool) -> tuple[list[Issue], list[Row], list[Any], int]:
    """Differences of one partition, and what repairs them: ``(issues, upserts, deletes, extras kept)``."""
    exch = {ts: (i, end_ts, values) for i, (ts, end_ts, values) in enumerate(fetched.canon())}
    by_ts: dict[int, list[StoredRow]] = defaultdict(list)
    for row in stored:
        by_ts[row.open_ts].append(row)
    missing = sorted(ts for ts in exch if ts not in by_ts)
    picked = [exch[ts][0] for ts in missing]  # indexes into fetched.raw, kept ascending below
    deletes: list[Any] = []
    dups: list[tuple[int, int]] = []
    changed: list[tuple[int, list[str]]] = []
    extras: dict[str, list[int]] = defaultdict(list)
    kept = 0
    affirmed = [(h.first, h.last) for h in holes if h.reason == EXCHANGE_EMPTY]
    # holes the source could not have the exchange confirm (Source.holes_unconfirmed says why):
    # the exchange was not asked about their slots, so a row there may well be the exchange's
    doubted = [(h.first, h.last) for h in holes if h.reason == UNCONFIRMED and "why" in h.evidence]
    for ts in sorted(by_ts):
        copies = by_ts[ts]
        if len(copies) > 1:
            dups.append((ts, len(copies) - 1))
            deletes += [c.ref for c in copies[1:]]
        found = exch.get(ts)
        if found is not None:
            _, end_ts, values = found
            keep = copies[0]
            if keep.values == values and keep.end_ts == end_ts:
                continue
            fields = ([] if keep.end_ts == end_ts else ["end_ts"]) + [
                f for f, x, y in zip(VALUE_FIELDS, keep.values, values, strict=True) if x != y]
            if fields:
                changed.append((ts, fields))
                picked.append(exch[ts][0])
            continue
        if tf.floor(ts) != ts:
            reason = "off_grid"
        elif listing is not None and ts < listing:
            reason = "before_listing"
        elif any(lo <= ts <= hi for lo, hi in affirmed):
            reason = "in_exchange_hole"
        elif any(lo <= ts <= hi for lo, hi in doubted):
            reason = "in_unconfirmed_hole"  # the exchange may have it: never deleted
        else:
            reason = "not_at_exchange"
        extras[reason].append(ts)
        if delete_extra and reason != "in_unconfirmed_hole":
            deletes.append(copies[0].ref)
        else:
            kept += 1
    upserts = fetched.rows(sorted(picked))
    issues = [*_runs(tf, "missing", [(t, 1, []) for t in missing]),
              *_runs(tf, "duplicate", [(t, n, []) for t, n in dups]),
              *_runs(tf, "changed", [(t, 1, f) for t, f in changed])]
    for reason, stamps in extras.items():
        issues += _runs(tf, "extra", [(t, 1, []) for t in stamps], reason)
    return issues, upserts, deletes, kept


def _runs(tf: Timeframe, kind: str, items: list[tuple[int, int, list[str]]], reason: str = "") -> list[Issue]:
    """Merge items on consecutive grid slots into one issue each."""
    out: list[Issue] = []
    for ts, n, fields in sorted(items, key=lambda x: x[0]):
        last = out[-1] if out else None
        on_grid = tf.floor(ts) == ts
        if last is not None and on_grid and tf.floor(last.last) == last.last and tf.next_open(last.last) == ts:
            last.last, last.count = ts, last.count + n
            last.fields = sorted(set(last.fields) | set(fields), key=CHECK_FIELDS.index)
        else:
            out.append(Issue(kind, ts, ts, n, reason, list(fields)))
    return out


def _windows(tf: Timeframe, missing: list[int], page: int) -> list[tuple[int, int]]:
    """Half-open ranges of at most ``page`` slots covering the ``missing`` open times (ascending)."""
    out: list[tuple[int, int]] = []
    for ts in missing:
        if out and ts < tf.next_open(out[-1][0], page):
            out[-1] = (out[-1][0], tf.next_open(ts))
        else:
            out.append((ts, tf.next_open(ts)))
    return out


def _contiguous(parts: list[tuple[str, int, int]]) -> list[list[tuple[str, int, int]]]:
    groups: list[list[tuple[str, int, int]]] = []
    for part in parts:
        if groups and groups[-1][-1][2] == part[1]:
            groups[-1].append(part)
        else:
            groups.append([part])
    return groups


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
