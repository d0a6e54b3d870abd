"""The exchange side of ``forge verify/repair`` for Binance, straight from the archive.

:meth:`ArchiveSide.partition` gives one partition's candles as the **canonical lines** of
``docs/verify.md`` derived from the verified zip's CSV bytes directly (split, re-ordered and
zero-stripped column by column), without building a row per candle: what the digest needs.
Rows are built (by :func:`forge_binance.archive.read_rows`, the loader's own reader) only
when the caller asks for them, for a partition whose digest differs from the store's.

The same planning and checks as a load: :func:`~forge_binance.archive.plan_segments`, every
zip checked against its ``.CHECKSUM``, a ``close_ts`` that is not ``open_ts + period - 1``
refused, candles missing inside a file asked from REST. Anything unusual (a file missing or
failing verification, values not plain decimals, ``1M``) returns ``None``: the caller then
takes the ordinary pipeline path, with all its fallbacks.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from operator import sub
from typing import TYPE_CHECKING

from forge_core import Row, SourceError, Timeframe
from forge_core.integrity.digest import line, normalize

from .archive import (
    COLUMNS,
    OPEN_INDEX,
    ArchiveFailure,
    ArchiveFile,
    find_gaps,
    parse_checksum,
    read_rows,
)
from .archive import _rows as parse_lines

if TYPE_CHECKING:
    from .source import BinanceSource

_MICROS = 10**13
_DIGITS = b"0123456789"
END_INDEX = COLUMNS.index("end_ts")


@dataclass
class Piece:
    """Candles of one archive file (or REST range) inside a partition: canonical ``text``, open
    times, and ``load(indices)``: the rows at those positions (all when ``None``)."""

    text: bytes
    opens: list[int]
    origin: str
    load: Callable[[list[int] | None], list[Row]]
    archive: bytes | None = None  # canonical lines the archive file itself gave (before REST filled gaps)
    archive_opens: list[int] | None = None
    file: tuple[str, str] | None = None  # the archive file's name and sha256


@dataclass
class ExchangePart:
    """One partition's exchange candles: canonical ``text`` (ascending, unique by open time), the
    open times, where they came from, and the rows on demand (by position in ``opens``)."""

    pieces: list[Piece]
    notes: list[str] = field(default_factory=list)

    @property
    def text(self) -> bytes:
        return b"".join(p.text for p in self.pieces)

    @property
    def opens(self) -> list[int]:
        return [t for p in self.pieces for t in p.opens]

    @property
    def origin(self) -> str:
        return "+".join(sorted({o for p in self.pieces if p.opens for o in p.origin.split("+")})) or "archive"

    @property
    def files(self) -> dict[str, str]:
        """Archive file name -> sha256 of the files the candles came from."""
        return dict(p.file for p in self.pieces if p.file is not None)

    def rows(self, indices: list[int] | None = None) -> list[Row]:
        if indices is None:
            return [r for p in self.pieces for r in p.load(None)]
        out: list[Row] = []
        base = 0
        todo = sorted(indices)
        k = 0
        for p in self.pieces:
            n = len(p.opens)
            mine = []
            while k < len(todo) and todo[k] < base + n:
                mine.append(todo[k] - base)
                k += 1
            if mine:
                out += p.load(mine)
            base += n
        return out


def csv_member(data: bytes) -> bytes:
    """The one CSV inside an archive zip (ValueError otherwise)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [n for n in zf.namelist() if n.lower().endswith(".csv")]
        if len(members) != 1:
            raise ValueError(f"expected one CSV in the zip, found {zf.namelist()}")
        return zf.read(members[0])


def csv_lines(csv: bytes) -> list[bytes]:
    """The kline lines of an archive CSV: without a header row and the final empty line."""
    lines = csv.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    if lines and not lines[0][:1].isdigit():
        lines = lines[1:]  # header row (newer futures files)
    return lines


def canonical(csv: bytes, tf: Timeframe, start: int, end: int) -> tuple[bytes, list[int], int] | None:
    """Canonical lines and open times of the archive CSV's candles opening in ``[start, end)``,
    and the position in :func:`csv_lines` of the first; None when the file is not the usual
    form (then its rows are read one by one elsewhere).

    The usual form: kline lines of one field count (at least 7), an optional header, ascending
    unique open times on the grid, ``close_ts = open_ts + period - 1``, the five values plain
    decimals with a point (``42000.50000000``); times in ms or (2025 spot files) microseconds.
    Everything is done on whole columns by C-level bytes operations: the file is split once on
    commas (a line end made a field of its own, to check every line's field count)."""
    ms = tf.ms
    if ms is None or b"\r" in csv or b"\x00" in csv:
        return None
    lines = csv_lines(csv)
    n = len(lines)
    if not n:
        return b"", [], 0
    width = lines[0].count(b",") + 2  # fields of a line, and its end marker
    if width < 9:
        return None
    flat = b",\x00,".join(lines).split(b",")
    if len(flat) != width * n - 1 or flat[width - 1::width].count(b"\x00") != n - 1:
        return None  # a line with another field count
    ts_col, end_col = flat[0::width], flat[6::width]
    for col in (ts_col, end_col):
        if b"\n".join(col).translate(None, _DIGITS) != b"\n" * (n - 1) or b"" in col:
            return None
    opens, closes = list(map(int, ts_col)), list(map(int, end_col))
    if opens[0] > _MICROS:
        if min(opens) <= _MICROS:
            return None
        opens, closes = [t // 1000 for t in opens], [t // 1000 for t in closes]
        ts_col, end_col = [b"%d" % t for t in opens], [b"%d" % t for t in closes]
    elif max(opens) > _MICROS:
        return None
    first = opens[0]
    if tf.floor(first) != first:
        return None
    if opens == list(range(first, first + n * ms, ms)):  # the usual: no gap
        if closes != list(range(first + ms - 1, first + n * ms, ms)):
            return None
    else:
        steps = set(map(sub, opens[1:], opens))
        if any(d <= 0 or d % ms for d in steps) or set(map(sub, closes, opens)) != {ms - 1}:
            return None
    values = []
    for k in range(1, 6):
        buf = b"\n" + b"\n".join(flat[k::width]) + b"\n"
        # plain decimals: digits around exactly one point, no empty or zero-led integer part
        if (buf[1:].translate(None, _DIGITS) != b".\n" * n or b"\n." in buf
                or buf.count(b"\n0") != buf.count(b"\n0.")):
            return None
        # trailing zeros of the fraction (a point is in every value), then a point left bare
        values.append(list(map(bytes.rstrip, map(bytes.rstrip, flat[k::width], repeat(b"0")), repeat(b"."))))
    lo, hi = bisect_left(opens, start), bisect_left(opens, end)
    if (lo, hi) != (0, n):
        ts_col, end_col, opens = ts_col[lo:hi], end_col[lo:hi], opens[lo:hi]
        values = [v[lo:hi] for v in values]
        if not opens:
            return b"", [], lo
    text = b"\n".join(map(b",".join, zip(ts_col, end_col, *values, strict=True))) + b"\n"
    return text, opens, lo


def rows_text(rows: list[Row]) -> tuple[bytes, list[int]]:
    """Canonical lines of Binance rows (REST), ascending."""
    picks = [COLUMNS.index(c) for c in ("open", "high", "low", "close", "volume")]
    text = "".join(line(r[OPEN_INDEX], r[END_INDEX], (normalize(r[i]) for i in picks)) for r in rows)
    return text.encode(), [r[OPEN_INDEX] for r in rows]


def _rest_piece(rows: list[Row]) -> Piece:
    text, opens = rows_text(rows)
    return Piece(text, opens, "rest", lambda idx: rows if idx is None else [rows[i] for i in idx])


class ArchiveSide:
    """Partitions of one Binance source from archive files (see the module docstring)."""

    def __init__(self, source: BinanceSource) -> None:
        self.source = source
        self._lines_cache: dict[str, tuple[list[int], list[bytes]] | None] = {}

    def partition(self, symbol: str, tf: Timeframe, start: int, end: int) -> ExchangePart | None:
        src = self.source
        if src.archive_mode == "rest" or tf.ms is None:
            return None
        strict = src.archive_mode == "archive"
        part = ExchangePart([])
        for seg in src.segments(symbol, tf, start, end):  # none after a delisted pair's last candle
            if seg.file is None:
                part.pieces.append(_rest_piece(src._fetch_rest(symbol, tf, seg.start, seg.end)))
                continue
            piece = self._file(symbol, tf, seg.file, seg.start, seg.end, strict, part.notes)
            if piece is None:
                return None
            part.pieces.append(piece)
        return part

    def _file(self, symbol: str, tf: Timeframe, f: ArchiveFile, start: int, end: int, strict: bool,
              notes: list[str]) -> Piece | None:
        src = self.source
        client = src.archive
        try:
            data = client.verified(f.path(src.market, symbol, tf))
            if data is None:
                return None  # missing (404): the pipeline path takes the daily files or REST
            got = canonical(csv_member(data), tf, start, end)
        except (ArchiveFailure, ValueError, zipfile.BadZipFile):
            return None
        if got is None:
            return None
        client.count("archive_files")
        text, opens, offset = got
        make = src.archive_fetcher.maker(symbol, tf)

        def load(idx: list[int] | None) -> list[Row]:
            if idx is None:
                return read_rows(data, src.source_value, symbol, tf, start, end, make)
            lines = csv_lines(csv_member(data))
            out: list[Row] = []
            parse_lines([lines[offset + i].decode() for i in idx], out, make, tf, start, end)
            return out

        file = (f.name(symbol, tf), hashlib.sha256(data).hexdigest())
        piece = Piece(text, opens, "archive", load, text, opens, file)
        extra: list[Row] = []
        for a, b in find_gaps([(t,) for t in opens], tf, start, end, open_index=0):  # type: ignore[misc]
            extra += src._check_gap(symbol, tf, a, b)  # [] when REST cannot tell: holes_unconfirmed says so
        if not extra:
            return piece
        # a short file: the exchange serves candles the file lacks (as the loader, REST fills them)
        if strict:
            return None  # the pipeline path raises the usual error naming the file
        notes.append(f"archive file {f.name(symbol, tf)} lacks {len(extra)} candles REST serves")
        client.count("archive_gap_rows", len(extra))
        rest = _rest_piece(extra)
        merged = sorted([*((t, 0, i) for i, t in enumerate(opens)), *((t, 1, i) for i, t in enumerate(rest.opens))])
        lines = [text.splitlines(keepends=True), rest.text.splitlines(keepends=True)]

        def load_merged(idx: list[int] | None) -> list[Row]:
            picked = merged if idx is None else [merged[i] for i in idx]
            arch = load([i for _, k, i in picked if k == 0])
            rows = [*arch, *(extra[i] for _, k, i in picked if k == 1)]
            return sorted(rows, key=lambda r: r[OPEN_INDEX])

        return Piece(b"".join(lines[k][i] for _, k, i in merged), [t for t, _, _ in merged], "archive+rest",
                     load_merged, text, opens, file)

    def unchanged(self, symbol: str, tf: Timeframe, start: int, end: int, files: dict[str, str],
                  empty: list[tuple[int, int]]) -> bool:
        """Whether ``[start, end)`` still comes from exactly ``files`` (name -> sha256, as the
        archive's ``.CHECKSUM`` files say now) and REST still has no candle in the ``empty``
        ranges: then the candles are those an earlier check derived from those bytes."""
        src = self.source
        if src.archive_mode == "rest" or not files:
            return False
        segments = src.segments(symbol, tf, start, end)
        if any(seg.file is None for seg in segments) or {s.file.name(symbol, tf) for s in segments if s.file} != set(files):
            return False
        for seg in segments:
            assert seg.file is not None
            name = seg.file.name(symbol, tf)
            try:
                text = src.archive.get(seg.file.path(src.market, symbol, tf) + ".CHECKSUM")
                if text is None or parse_checksum(text.decode("utf-8", "replace"), name) != files[name]:
                    return False
            except (ArchiveFailure, ValueError):
                return False
        if empty and src.holes_unconfirmed(symbol):
            return False  # REST cannot say those holes are still empty now
        return all(not src._fetch_rest(symbol, tf, a, b) for a, b in empty)

    def rows_at(self, symbol: str, tf: Timeframe, start: int, end: int, wanted: list[int]) -> list[Row] | None:
        """The candles opening at ``wanted`` (ascending, inside ``[start, end)``): from the lines of
        the verified archive files that hold them (only those lines become rows), REST for what
        the plan takes from REST. None when a file cannot be used (the caller compares in full)."""
        src = self.source
        if src.archive_mode == "rest":
            return None
        out: list[Row] = []
        for seg in src.segments(symbol, tf, start, end):
            mine = wanted[bisect_left(wanted, seg.start):bisect_left(wanted, seg.end)]
            if not mine:
                continue
            if seg.file is None:
                want = set(mine)
                out += [r for r in src._fetch_rest(symbol, tf, mine[0], tf.next_open(mine[-1])) if r[OPEN_INDEX] in want]
                continue
            try:
                data = src.archive.verified(seg.file.path(src.market, symbol, tf))
                if data is None:
                    return None
                lines = csv_lines(csv_member(data))
            except (ArchiveFailure, ValueError, zipfile.BadZipFile):
                return None

            def open_of(text: bytes) -> int:
                ts = int(text[:text.index(b",")])
                return ts // 1000 if ts > _MICROS else ts

            picked = []
            for ts in mine:
                i = bisect_left(lines, ts, key=open_of)
                if i < len(lines) and open_of(lines[i]) == ts:
                    picked.append(lines[i].decode())
            try:
                parse_lines(picked, out, src.archive_fetcher.maker(symbol, tf), tf, seg.start, seg.end)
            except (ValueError, IndexError):
                return None
        return out

    # -- --deep: the archive's own lines against REST -----------------------------------------
    def archive_lines(self, symbol: str, tf: Timeframe, part: tuple[int, int], start: int,
                      end: int) -> tuple[str, bytes, list[int]] | None:
        """The canonical lines the archive file itself holds for ``[start, end)`` (inside the
        partition ``part``, planned as verify plans it: the month's file for a whole month),
        before REST fills any gap: ``(file name, text, opens)``; None when that range comes
        from REST or the file is missing or unusable."""
        src = self.source
        if src.archive_mode == "rest" or tf.ms is None:
            return None
        seg = next((g for g in src.segments(symbol, tf, part[0], part[1])
                    if g.start <= start and end <= g.end), None)
        if seg is None or seg.file is None:
            return None
        path = seg.file.path(src.market, symbol, tf)
        cached = self._lines_cache.get(path)
        if cached is None:
            try:
                data = src.archive.verified(path)
                got = None if data is None else canonical(csv_member(data), tf, seg.start, seg.end)
            except (ArchiveFailure, ValueError, zipfile.BadZipFile):
                got = None
            cached = None if got is None else (got[1], got[0].split(b"\n"))
            self._lines_cache = {path: cached}  # one file at a time: the days drawn come in order
        if cached is None:
            return None
        opens, lines = cached
        lo, hi = bisect_left(opens, start), bisect_left(opens, end)
        text = b"\n".join(lines[lo:hi]) + b"\n" if hi > lo else b""
        return seg.file.name(symbol, tf), text, opens[lo:hi]

    def rest_lines(self, symbol: str, tf: Timeframe, start: int, end: int) -> tuple[bytes, list[int]]:
        """REST's canonical lines for ``[start, end)``."""
        if self.source._rest_down is not None:
            raise SourceError("--deep compares archive files with REST, which refused this location (HTTP 451): "
                              "verify without --deep checks the store against the archive alone")
        return rows_text(self.source._fetch_rest(symbol, tf, start, end))
