"""The integrity ledger as one JSON file, for stores without a table of their own (CSV's
``FILE.ledger.json`` sidecar, Parquet's ``_forge/ledger.json``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ..errors import SinkError
from .model import LedgerEntry


class LedgerFile:
    """``path`` holds the entries; ``meta`` (e.g. the file or root it describes) is written with
    them. Saving merges by partition and replaces the file atomically: a temporary file in
    ``tmp_dir`` (default: beside it), fsynced, then renamed."""

    def __init__(self, path: str, meta: dict[str, Any], *, label: str | None = None, tmp_dir: str | None = None) -> None:
        self.path, self.meta, self.label = path, meta, label or path
        self.tmp = os.path.join(tmp_dir or os.path.dirname(path) or ".", os.path.basename(path) + ".tmp")
        self.unsaved: str | None = None  # why a save_after_write failed

    def entries(self) -> list[LedgerEntry]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            return [LedgerEntry.from_json(e) for e in data.get("partitions", [])]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise SinkError(f"ledger {self.label} is unreadable ({exc}); delete it to start a new one") from None

    def series(self, source: str, symbol: str, timeframe: str) -> dict[str, LedgerEntry]:
        """One series' entries by partition (the store hook ``ledger``)."""
        return {e.partition: e for e in self.entries() if (e.source, e.symbol, e.timeframe) == (source, symbol, timeframe)}

    def venue(self, source: str, timeframe: str) -> list[LedgerEntry]:
        """Every symbol's entries of one source and timeframe (the store hook ``venue_ledger``)."""
        return [e for e in self.entries() if (e.source, e.timeframe) == (source, timeframe)]

    def save(self, entries: Sequence[LedgerEntry]) -> None:
        def key(e: LedgerEntry) -> tuple[str, str, str, str]:
            return e.source, e.symbol, e.timeframe, e.partition

        merged = {key(e): e for e in self.entries()}
        merged.update({key(e): e for e in entries})
        data = {"format": "forge-ledger", "version": 1, **self.meta,
                "partitions": [merged[k].as_json() for k in sorted(merged)]}
        try:
            with open(self.tmp, "w", encoding="utf-8", newline="\n") as f:
                f.write(json.dumps(data, indent=1) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.tmp, self.path)
            directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself survives a crash
            finally:
                os.close(directory)
        except OSError as exc:
            raise SinkError(f"cannot write {self.label}: {exc.strerror or exc}") from None

    def save_after_write(self, entries: Sequence[LedgerEntry]) -> None:
        """:meth:`save` right after a repair wrote the rows: a ledger that cannot be written (a
        read-only file or folder) does not fail the repair whose rows are written; why is kept in
        :attr:`unsaved` (the store's ``ledger_unsaved``, which the command warns about once).
        Without the entry the partition is only checked again next time."""
        try:
            self.save(entries)
        except SinkError as exc:
            self.unsaved = str(exc)
