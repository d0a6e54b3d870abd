"""How many records a finished run changed: the new file against the one it replaces.

A re-run of a finished range writes the whole file again; the summary says how many of its
records the old file did not hold exactly (``0 rows changed`` when nothing differs). The usual
case, an identical file, is one streaming comparison; otherwise the old file's records are kept
as a set of hashes (about 60 bytes a record) and each new record is looked up; line
endings do not count."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from typing import IO

CHUNK = 1 << 20


def _open(path: str, gz: bool) -> IO[bytes]:
    return gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115 (callers close)


def _same(a: str, b: str, gz: bool) -> bool:
    with _open(a, gz) as x, _open(b, gz) as y:
        while True:
            cx, cy = x.read(CHUNK), y.read(CHUNK)
            if cx != cy:
                return False
            if not cx:
                return True


def _count(path: str, gz: bool) -> int:
    """Records after the header, by counting line ends (a new file: every record is new)."""
    lines, last = 0, b"\n"
    with _open(path, gz) as f:
        while chunk := f.read(CHUNK):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return max(lines + (last != b"\n") - 1, 0)


def _records(path: str, gz: bool) -> Iterator[bytes]:
    """The file's lines, the header first, streamed. A record is one line unless a quoted field
    holds a line break (never in candles; a transform's text might): its lines count apart."""
    with _open(path, gz) as f:
        for line in f:
            yield line.rstrip(b"\r\n")


def changed_records(new: str, old: str | None, gz: bool, old_gz: bool | None = None) -> int:
    """Records of ``new`` (header excluded) that ``old`` does not hold identically; all of them
    when there is no ``old``, or when its header differs."""
    old_gz = gz if old_gz is None else old_gz
    if old is None:
        return _count(new, gz)
    if old_gz == gz and _same(new, old, gz):
        return 0
    records = _records(new, gz)
    header = next(records, None)
    if header is None:
        return 0
    held: set[int] = set()
    if old is not None:
        previous = _records(old, old_gz)
        if next(previous, None) == header:
            held = {hash(r) for r in previous}
    return sum(1 for r in records if r and hash(r) not in held)
