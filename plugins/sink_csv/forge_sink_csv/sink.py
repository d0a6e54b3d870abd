"""Write candles to CSV files, one per symbol by default, named as streamforge names them:
``Binance-BTCUSDT-1m-2024-10-01_2024-10-31.csv``.

Rows go to ``<name>.part`` in the same directory, flushed and fsynced on every commit, and the
file is renamed into place only when the run succeeds: a file with the final name is always
complete. ``output`` may name one file (all symbols together) or a template with
``{source} {symbol} {timeframe} {start} {end}`` placeholders.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import IO, Any

from forge_core import Batch, Option, RunInfo, Sink, SinkError


def default_name(label: str, symbol: str, timeframe: str, start: str, end: str) -> str:
    return f"{label}-{symbol}-{timeframe}-{start}_{end}.csv"


@dataclass
class _File:
    path: str
    handle: IO[str]
    writer: Any
    header_written: bool = False


class CsvSink(Sink):
    name = "csv"
    description = "CSV files, complete or absent (atomic rename); the default sink"
    options = (
        Option("output", "CSV path or template ({source} {symbol} {timeframe} {start} {end}); "
               "default Label-SYMBOL-TF-FROM_TO.csv per symbol.", metavar="PATH"),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.files: dict[str, _File] = {}
        self.by_symbol: dict[str, _File] = {}
        self.run: RunInfo | None = None

    def path_for(self, run: RunInfo, symbol: str) -> str:
        template = self.settings["output"]
        values = {"source": run.source_label, "symbol": symbol, "timeframe": run.timeframe,
                  "start": run.start_label, "end": run.end_label}
        if not template:
            return default_name(run.source_label, symbol, run.timeframe, run.start_label, run.end_label)
        try:
            return str(template).format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise SinkError(f"bad --output template {template!r}: {exc}; "
                            "placeholders are {source} {symbol} {timeframe} {start} {end}") from None

    def open(self, run: RunInfo) -> None:
        self.run = run
        for symbol in run.symbols:
            path = os.path.abspath(self.path_for(run, symbol))
            if path not in self.files:
                part = path + ".part"
                try:
                    handle = open(part, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
                except OSError as exc:
                    raise SinkError(f"cannot write CSV {part}: {exc.strerror}") from None
                self.files[path] = _File(path, handle, csv.writer(handle))
            self.by_symbol[symbol] = self.files[path]

    def write(self, batch: Batch) -> None:
        f = self.by_symbol[batch.symbol]
        if not f.header_written:
            f.writer.writerow(batch.columns)
            f.header_written = True
        f.writer.writerows(batch.rows)

    def commit(self) -> None:
        for f in self.files.values():
            f.handle.flush()
            os.fsync(f.handle.fileno())

    def close(self, ok: bool) -> None:
        for f in self.files.values():
            if ok and not f.header_written and self.run is not None:
                f.writer.writerow(self.run.columns)
            f.handle.close()
            if ok:
                os.replace(f.path + ".part", f.path)

    def describe(self) -> str:
        return ", ".join(os.path.relpath(p) for p in self.files) or "csv"
