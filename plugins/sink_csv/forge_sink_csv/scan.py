"""Reading CSV files the sink wrote, without trusting them: where the last complete record of a
torn ``.part`` ends, and the newest record of a series in a complete file, read from its end.

Both understand CSV quoting: a newline inside a quoted field (a transform's free-text column)
is not a record boundary. The rule used is exact: a newline ends a record iff the number of
``"`` before it is even (an escaped ``""`` counts twice, so it never changes the parity). From
the end of a complete file, which is outside any quote, the same holds for the ``"`` after it.
"""

from __future__ import annotations

import bisect
import csv
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from forge_core import SinkError

_QUOTE = re.compile(b'"')
_NEWLINE = re.compile(b"\n")


def last_boundary(data: bytes) -> int:
    """Offset just after the last newline of ``data`` that is outside quotes (0 if none)."""
    if b'"' not in data:
        return data.rfind(b"\n") + 1
    parts = data.split(b'"')
    ends = []  # offset where each part ends
    pos = 0
    for part in parts:
        pos += len(part)
        ends.append(pos)
        pos += 1  # the quote after it
    for i in range(len(parts) - 1, -1, -1):
        if i % 2 == 0:  # even parts are outside quotes
            nl = parts[i].rfind(b"\n")
            if nl >= 0:
                return ends[i] - len(parts[i]) + nl + 1
    return 0


def _record_starts(window: bytes) -> list[int]:
    """Offsets in ``window`` (which ends at a record boundary) just after each newline that ends a
    record, ascending."""
    newlines = [m.start() for m in _NEWLINE.finditer(window)]
    if b'"' not in window:
        return [n + 1 for n in newlines]
    quotes = [m.start() for m in _QUOTE.finditer(window)]
    total = len(quotes)
    # quotes after a newline at n: total - (quotes before n); boundary iff that is even
    return [n + 1 for n in newlines if (total - bisect.bisect_left(quotes, n)) % 2 == 0]


def parse_record(text: str, where: str) -> list[str]:
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as exc:
        raise SinkError(f"{where} is not a CSV file Forge can read ({exc}); move it away or delete it") from None
    return rows[0] if rows else []


@dataclass
class Header:
    columns: list[str]
    end: int  # byte offset just after the header record


def read_header(raw: io.BufferedReader | io.BytesIO, where: str) -> Header | None:
    raw.seek(0)
    data = raw.read(1 << 16)
    if not data:
        return None
    # the first newline with an even number of quotes before it
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise SinkError(f"{where} has no complete header line; move it away or delete it")
        if data.count(b'"', 0, nl) % 2 == 0:
            break
        pos = nl + 1
    text = _decode(data[:nl + 1], where)
    return Header(parse_record(text, where), nl + 1)


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SinkError(f"{where} is not UTF-8 CSV (byte {exc.start}); move it away or delete it") from None


def records_backward(raw: io.BufferedReader, size: int, stop: int, where: str,
                     block: int = 1 << 16) -> Iterator[list[str]]:
    """The records of a complete file from its last back to offset ``stop`` (the header's end),
    reading blocks from the end."""
    end = size  # a record boundary: everything from here on was handled
    while end > stop:
        start = max(stop, end - block)
        raw.seek(start)
        window = raw.read(end - start)
        starts = [s for s in _record_starts(window[:-1]) if s < len(window)] if window.endswith(b"\n") \
            else _record_starts(window)
        if start == stop:
            starts = [0, *starts]
        elif not starts:
            block *= 2  # one record longer than the window
            continue
        bounds = [*starts, len(window)]
        for a, b in zip(reversed(bounds[:-1]), reversed(bounds[1:]), strict=True):
            text = _decode(window[a:b], where)
            if text.strip("\r\n"):
                yield parse_record(text, where)
        end = start + starts[0]


@dataclass
class Partial:
    """What an interrupted run left in a ``.part``: the complete prefix and its records."""

    keep: int  # bytes of the file that hold complete records (the rest is torn)
    text: str  # the decoded complete prefix (header included)
    members: int = 0  # gzip: complete members
    notes: list[str] = field(default_factory=list)


def complete_prefix(data: bytes, gzip: bool, where: str) -> Partial:
    """The complete prefix of a torn ``.part`` (plain CSV, or gzip written one member per
    commit)."""
    if not gzip:
        keep = last_boundary(data)
        return Partial(keep, _decode(data[:keep], where))
    pos, out, members = 0, [], 0
    while pos < len(data):
        d = zlib.decompressobj(wbits=31)
        try:
            chunk = d.decompress(data[pos:])
        except zlib.error as exc:
            raise SinkError(f"{where} is not a gzip file Forge wrote ({exc}); delete it to start over") from None
        if not d.eof:
            break  # a member torn by a kill: everything from it on is dropped
        out.append(chunk)
        members += 1
        pos = len(data) - len(d.unused_data)
    text = _decode(b"".join(out), where)
    cut = last_boundary(text.encode("utf-8"))
    if cut != len(text.encode("utf-8")):
        raise SinkError(f"{where} ends inside a record although its gzip members are complete; delete it to start over")
    return Partial(pos, text, members)
