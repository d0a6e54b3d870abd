"""What the sink keeps between commits: ``COPY`` text per target column set, and enough about
its keys to prove them unique (which lets a commit take a shortcut)."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from typing import Any

from forge_core.records import Row

from .copytext import encode

MAX_PROBES = 64  # series kept in one commit beyond which no key range is tracked


@dataclass(frozen=True)
class Mapping:
    """How rows of one batch column layout fill the target."""

    columns: tuple[str, ...]  # target columns filled, in table order
    indexes: tuple[int, ...]  # where each comes from in a row
    key_others: tuple[str, ...]  # conflict key columns other than open_ts
    key_other_indexes: tuple[int, ...]
    open_ts_index: int | None  # None: the key has no open_ts, no existence shortcut
    not_stored: tuple[str, ...] = ()  # batch columns the table has no column for

    @classmethod
    def build(cls, batch_columns: tuple[str, ...], target: tuple[str, ...], key: tuple[str, ...],
              not_stored: tuple[str, ...] = ()) -> Mapping:
        ranged = "open_ts" in key  # then a commit can check cheaply whether any key exists
        others = tuple(c for c in key if c != "open_ts") if ranged else ()
        return cls(target, tuple(batch_columns.index(c) for c in target), others,
                   tuple(batch_columns.index(c) for c in others),
                   batch_columns.index("open_ts") if ranged else None, not_stored)


@dataclass
class Pending:
    """COPY text kept for one target column set until its commit succeeds.

    ``ranges`` maps the values of the key columns other than ``open_ts`` (a series) to the
    ``open_ts`` range kept for it, while every batch is one series, ascending, after what was
    kept before: that proves the keys kept are unique. ``None`` once that is not so."""

    texts: list[str] = field(default_factory=list)
    rows: int = 0
    size: int = 0  # characters of COPY text
    mapping: Mapping | None = None
    ranges: dict[tuple[Any, ...], tuple[int, int]] | None = field(default_factory=dict)

    def add(self, mapping: Mapping, rows: list[Row]) -> None:
        text = encode(rows, mapping.indexes)
        self.texts.append(text)
        self.size += len(text)
        self.rows += len(rows)
        self.mapping = mapping
        if self.ranges is not None:
            self.ranges = _track(self.ranges, mapping, rows)

    def data(self) -> bytes:
        return "".join(self.texts).encode("utf-8")


def _track(ranges: dict[tuple[Any, ...], tuple[int, int]], mapping: Mapping,
           rows: list[Row]) -> dict[tuple[Any, ...], tuple[int, int]] | None:
    if mapping.open_ts_index is None:
        return None
    stamps = list(map(itemgetter(mapping.open_ts_index), rows))
    idx = mapping.key_other_indexes
    try:
        ascending = all(map(operator.lt, stamps, islice(stamps, 1, None)))
    except TypeError:  # not comparable
        return None
    if not ascending:
        return None
    if not idx:
        series: set[tuple[Any, ...]] = {()}
    elif len(idx) == 1:
        series = {(v,) for v in map(itemgetter(idx[0]), rows)}
    else:
        series = set(map(itemgetter(*idx), rows))
    if len(series) != 1:
        return None
    (values,) = series
    old = ranges.get(values)
    if old is not None and stamps[0] <= old[1]:
        return None
    ranges[values] = (stamps[0] if old is None else old[0], stamps[-1])
    return ranges if len(ranges) <= MAX_PROBES else None
