"""The integrity ledger as one JSON file, for stores without a table of their own (CSV's
``FILE.ledger.json`` sidecar, Parquet's ``_forge/ledger.json``).

An unreadable ledger (damaged, truncated, edited by hand) is one warning and is treated as
absent: it only records what earlier checks found, which a check from the data and the
exchange finds again, so verify and repair go on (every partition checked, none skipped on
the ledger's word) and the next save moves it aside to ``FILE.unreadable`` and writes a new
one. Failing instead would stop every scheduled verify until someone deletes the file, which
is all the error could tell them to do."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from ..errors import SinkError
from ..logs import get_logger
from .model import LedgerEntry

log = get_logger(__name__)


class LedgerFile:
    """``path`` holds the entries; ``meta`` (e.g. the file or root it describes) is written with
    them. Saving merges by partition and replaces the file atomically: a temporary file in
    ``tmp_dir`` (default: beside it), fsynced, then renamed."""

    def __init__(self, path: str, meta: dict[str, Any], *, label: str | None = None, tmp_dir: str | None = None) -> None:
        self.path, self.meta, self.label = path, meta, label or path
        self.tmp = os.path.join(tmp_dir or os.path.dirname(path) or ".", os.path.basename(path) + ".tmp")
        self.unsaved: str | None = None  # why a save_after_write failed
        self.unreadable: str | None = None  # why the file on disk could not be read (then: absent)
        self.denied = False  # ... because reading it failed (permissions, I/O), not its content

    def entries(self) -> list[LedgerEntry]:
        if self.unreadable is not None:
            return []
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or not isinstance(data.get("partitions", []), list):
                raise ValueError("not a forge ledger (an object with a list 'partitions')")
            return [LedgerEntry.from_json(e) for e in data.get("partitions", [])]
        except FileNotFoundError:
            return []
        except ValueError as exc:  # JSON, UTF-8 or the entries' shape
            self.unreadable = str(exc)
            then = f"the next save keeps it as {self.label}.unreadable and writes a new one"
        except OSError as exc:  # not its content: the file is left alone
            self.unreadable, self.denied = exc.strerror or str(exc), True
            then = "it is left as it is"
        log.warning("ledger_unreadable", ledger=self.label, error=self.unreadable,
                    meaning=f"checked as if there were none (every partition against the exchange); {then}")
        return []

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
        if self.denied:
            raise SinkError(f"cannot write {self.label}: it could not be read ({self.unreadable})")
        try:
            if self.unreadable is not None and os.path.exists(self.path):
                os.replace(self.path, self.path + ".unreadable")  # for whoever wants to see what broke
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
