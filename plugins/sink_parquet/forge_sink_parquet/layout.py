"""Where things live: the Hive-partitioned dataset under ``--root`` and Forge's bookkeeping beside it.

::

    data/                                   the dataset: nothing but complete Parquet files
      source=binance/symbol=BTCUSDT/timeframe=1m/year=2024/month=1/part-0.parquet
    .data.forge/                            Forge's bookkeeping, beside the root (same filesystem)
      lock                                  one writer per root at a time (flock)
      tmp/                                  files being written, renamed into the root when whole
      runs/<id>.json                        what an interrupted run committed, for its resume

The bookkeeping is outside the root because polars refuses a directory that holds anything
but ``.parquet`` files, and DuckDB's ``**/*.parquet`` would pick up a half-written temporary
file of that name: so the root only ever holds complete partition files.
"""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import Iterator

from forge_core import SinkError

PART = "part-0.parquet"
LEVELS = ("source", "symbol", "timeframe", "year", "month")
_VALUE = re.compile(r"[A-Za-z0-9._-]+")
_DIGITS = re.compile(r"[0-9]{1,4}")


def check_value(key: str, value: str) -> None:
    """A Hive directory value must survive every reader's path parsing unchanged."""
    if not _VALUE.fullmatch(value) or value in (".", ".."):
        raise SinkError(f"the parquet sink cannot use {key} {value!r} as a partition directory name; "
                        "it takes letters, digits and . _ -")


def state_dir(root: str) -> str:
    """``<parent>/.<name>.forge`` for root ``<parent>/<name>``."""
    parent, name = os.path.split(os.path.abspath(root))
    return os.path.join(parent, f".{name}.forge")


def series_dir(root: str, source: str, symbol: str, timeframe: str) -> str:
    return os.path.join(root, f"source={source}", f"symbol={symbol}", f"timeframe={timeframe}")


def partition_path(root: str, source: str, symbol: str, timeframe: str, year: int, month: int) -> str:
    return os.path.join(series_dir(root, source, symbol, timeframe), f"year={year}", f"month={month}", PART)


def month_of(ts: int) -> tuple[int, int]:
    t = time.gmtime(ts // 1000)
    return t.tm_year, t.tm_mon


def next_month_start(year: int, month: int) -> int:
    """Epoch ms of 00:00 UTC on the first day of the month after ``year-month``."""
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0)) * 1000


def dataset_files(root: str) -> Iterator[str]:
    """Every partition file under ``root``; anything else in it (a file Forge does not write
    there, or a directory outside the layout) is refused, naming it."""
    root = os.path.abspath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        for name in dirnames:
            key, sep, value = name.partition("=")
            ok = (depth < len(LEVELS) and sep and key == LEVELS[depth]
                  and (_DIGITS.fullmatch(value) if key in ("year", "month") else _VALUE.fullmatch(value)))
            if not ok:
                raise _foreign(root, os.path.join(dirpath, name))
        for name in filenames:
            if depth != len(LEVELS) or name != PART:
                raise _foreign(root, os.path.join(dirpath, name))
            yield os.path.join(dirpath, name)


def _foreign(root: str, path: str) -> SinkError:
    return SinkError(f"parquet root {root} holds {os.path.relpath(path, root)!r}, which Forge did not write; "
                     "give --root an empty or new directory, or one Forge's parquet sink wrote")


def newest_partition(root: str, source: str, symbol: str, timeframe: str) -> str | None:
    """The partition file of the latest month of a series, from directory names alone."""
    base = series_dir(root, source, symbol, timeframe)
    for year in _numbered(base, "year"):
        for month in _numbered(os.path.join(base, f"year={year}"), "month"):
            path = os.path.join(base, f"year={year}", f"month={month}", PART)
            if os.path.exists(path):
                return path
    return None


def _numbered(path: str, key: str) -> list[int]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    found = [int(n[len(key) + 1:]) for n in names if n.startswith(key + "=") and n[len(key) + 1:].isdigit()]
    return sorted(found, reverse=True)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str) -> list[str]:
    """``os.makedirs``, with each new directory's entry fsynced into its parent; returns the
    directories this call created (parents first), not those another process made meanwhile."""
    if os.path.isdir(path):
        return []
    parent = os.path.dirname(path)
    made = makedirs_durable(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return made
    fsync_dir(parent)
    return [*made, path]
