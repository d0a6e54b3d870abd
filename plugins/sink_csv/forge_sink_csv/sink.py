"""Write candles to CSV files, one per symbol by default, named as streamforge names them:
``Binance-BTCUSDT-1m-2024-10-01_2024-10-31.csv``. The full story is ``docs/csv.md``.

Rows go to ``<name>.part`` beside the file, flushed and fsynced on every commit, and the file is
renamed into place only when the run succeeds: a file with the final name is always complete.
Rows are written in order, so a ``.part`` is a prefix of the right output: the same command
(same source, symbols, timeframe, start and transforms; the end may move) resumes after its last
complete record. A run that fails or is interrupted cuts its ``.part`` back to what it last
committed, so the count it reports is what the resume uses. A follow run (``--follow``, never
ending) appends to the final file itself: each commit appends complete records in one write and
fsyncs them, so readers only ever see whole records, in order.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import re
import shutil
import stat
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from forge_core import Batch, Option, RunInfo, Sink, SinkError, UsageError, parse_timeframe
from forge_core.logs import get_logger

from .changes import changed_records
from .lock import Lock, acquire
from .scan import complete_prefix, read_header, records_backward

log = get_logger(__name__)

DEFAULT_TEMPLATE = "{label}-{symbol}-{timeframe}-{start}_{end}.csv"
PLACEHOLDERS = "{source} {label} {symbol} {timeframe} {start} {end}"
FSYNC_THREADS = 16
"""Files a commit flushes and fsyncs side by side (each fsync waits for the disk; a follow run
of 400 series commits 400 files at every boundary)."""
_OTHER_FORMATS = {".parquet": "--sink parquet", ".pq": "--sink parquet", ".json": None, ".jsonl": None,
                  ".ndjson": None, ".xlsx": None, ".xls": None, ".feather": None, ".arrow": None,
                  ".avro": None, ".orc": None, ".tsv": None, ".zip": None, ".bz2": None, ".xz": None,
                  ".zst": None, ".db": "--sink postgres", ".sql": "--sink postgres"}
_DAY = r"\d{4}-\d{2}-\d{2}"
_START, _END = "\x01", "\x02"  # markers for the date placeholders when matching existing files


def safe(value: object) -> str:
    """A placeholder value as one file-name component: no separators, never ``.`` or ``..``."""
    text = re.sub(r"[^\w.+=@-]", "_", str(value), flags=re.ASCII)
    return "_" * len(text) if text and set(text) == {"."} else text


def render(template: str, values: dict[str, str]) -> str:
    clean = {k: v if v in (_START, _END) else safe(v) for k, v in values.items()}
    try:
        return str(template).format(**clean)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise SinkError(f"bad --output template {template!r}: {exc}; placeholders are {PLACEHOLDERS}") from None


def default_name(label: str, symbol: str, timeframe: str, start: str, end: str) -> str:
    return render(DEFAULT_TEMPLATE, {"label": label, "source": label.lower(), "symbol": symbol,
                                     "timeframe": timeframe, "start": start, "end": end})


def is_gzip(path: str) -> bool:
    """``.gz`` means gzip; ``.csv``, ``.txt`` or no suffix plain CSV; any other suffix is refused."""
    name = os.path.basename(path).lower()
    gz = name.endswith(".gz")
    ext = os.path.splitext(name[:-3] if gz else name)[1]
    if ext in ("", ".csv", ".txt") or not re.fullmatch(r"\.[a-z][a-z0-9]*", ext):
        return gz
    pointer = _OTHER_FORMATS.get(ext)
    raise UsageError(f"--output {path}: the csv sink writes .csv or .csv.gz files, not {ext}"
                     + (f"; use {pointer} for that" if pointer else ""))


class _GzipStream(io.RawIOBase):
    """A gzip file written one member per commit, so a torn file is cut at its last member."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.comp: Any = None

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        if self.comp is None:
            self.comp = zlib.compressobj(6, zlib.DEFLATED, 31)
        self.raw.write(self.comp.compress(bytes(b)))
        return len(b)

    def finish_member(self) -> None:
        if self.comp is not None:
            self.raw.write(self.comp.flush(zlib.Z_FINISH))
            self.comp = None

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


@dataclass
class _Target:
    path: str  # the final name, as the template gives it
    real: str  # where it is written: symlinks followed
    symbols: list[str]
    kind: str  # "file" (a .part renamed into place), "follow" (appended in place), "through"
    #            (device, FIFO) or "stdout"
    gzip: bool
    key: str = ""  # lock file
    locks: list[Lock] = field(default_factory=list)
    file: IO[bytes] | None = None
    gz: _GzipStream | None = None
    handle: IO[str] | None = None
    writer: Any = None
    header: list[str] | None = None
    header_from: str = ""
    resume: dict[str, int] = field(default_factory=dict)
    committed: int = 0  # bytes of the .part durably committed
    fresh_from: int = -1  # a .part this run created: where its own rows begin (-1: resumed)
    auto: bool = False
    base: str | None = None  # --from auto: the complete file this run extends
    start_label: str | None = None  # --from auto: the start day in its name (the base's)
    base_end: str = ""  # --from auto: the end day in the base's name
    prepared: bool = False
    buffer: io.BytesIO | None = None  # follow: what was written since the last commit
    changed: int | None = None  # records the finished file holds that the one it replaced did not
    written: int | None = 0  # records this run wrote, one line each; None once one may span lines
    created: bool = False  # follow: the file did not exist before this run

    @property
    def part(self) -> str:
        return self.real + ".part"


def _seconds(value: Any) -> float:
    """``--wait-for-lock``, checked when the sink is built: by ``forge verify`` and ``repair`` too,
    which take the option and used to accept any value unread."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError("give seconds to wait, a number >= 0, e.g. 60")
    return seconds


class CsvSink(Sink):
    name = "csv"
    description = "CSV files (.csv or .csv.gz), complete or absent (atomic rename); the default sink"
    supports_follow = True  # a follow run appends complete records to the final file (_open_follow)
    options = (
        Option("output", f"CSV path, '-' for stdout, or a template ({PLACEHOLDERS}); .gz writes gzip; "
               "default Label-SYMBOL-TF-FROM_TO.csv per symbol.", metavar="PATH"),
        Option("wait_for_lock", "Seconds to wait for another run writing the same CSV (default: fail at once).",
               metavar="SECONDS", type=_seconds),
    )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.targets: list[_Target] = []
        self.by_symbol: dict[str, _Target] = {}
        self.run: RunInfo | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- names ------------------------------------------------------------------------------
    @property
    def template(self) -> str:
        return str(self.settings["output"] or DEFAULT_TEMPLATE)

    def _values(self, run: RunInfo, symbol: str, start: str | None = None, end: str | None = None) -> dict[str, str]:
        if end is None:
            end = "follow" if getattr(run, "follow", False) else run.end_label  # a follow run has no end
        return {"source": run.source, "label": run.source_label, "symbol": symbol,
                "timeframe": _out_tf(run), "start": run.start_label if start is None else start, "end": end}

    def path_for(self, run: RunInfo, symbol: str) -> str:
        return render(self.template, self._values(run, symbol))

    def _key(self, run: RunInfo, symbol: str, start: str | None = None) -> str:
        """The lock file: the name without its end date, so runs whose ``--to`` differs (and
        which may continue each other's ``.part``) exclude each other."""
        return os.path.realpath(render(self.template, self._values(run, symbol, start, ""))) + ".lock"

    # -- lifecycle --------------------------------------------------------------------------
    def open(self, run: RunInfo) -> None:
        self.run = run
        self.targets, self.by_symbol = [], {}
        self._made: list[str] = []  # directories this run created, deepest first
        wait = self.settings["wait_for_lock"] or 0.0
        groups: dict[str, list[str]] = {}
        for symbol in run.symbols:
            groups.setdefault("-" if self.template == "-" else self.path_for(run, symbol), []).append(symbol)
        try:
            for path, symbols in groups.items():
                target = self._target(run, path, symbols, wait)
                self.targets.append(target)
                for symbol in symbols:
                    self.by_symbol[symbol] = target
        except BaseException:
            self._release()
            self._remove_made()
            raise

    def _remove_made(self) -> None:
        """The directories this run created and left empty (it failed before writing a row)."""
        for folder in getattr(self, "_made", ()):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        self._made = []

    def _target(self, run: RunInfo, path: str, symbols: list[str], wait: float) -> _Target:
        if path == "-":
            t = _Target("-", "-", symbols, "stdout", False)
            self._open_stdout(t)
            return t
        if path.endswith(("/", os.sep)) or os.path.isdir(path):
            raise UsageError(f"--output {path} is a directory; give a file name in it, "
                             f"e.g. {os.path.join(path, '{symbol}.csv')}")
        gz = is_gzip(path)
        real = os.path.realpath(path)  # a symlink is followed: the file it points to is written
        try:
            mode = os.stat(real).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                t = _Target(path, real, symbols, "through", gz)
                try:  # written through, never replaced; no .part, no resume
                    t.file = open(real, "wb")  # noqa: SIM115 (closed in close())
                except OSError as exc:
                    raise SinkError(f"cannot write CSV {path}: {exc.strerror}") from None
                self._wrap(t)
                t.prepared = True
                return t
            raise UsageError(f"--output {path} is not a regular file, device or FIFO; give a file path")
        t = _Target(path, real, symbols, "file", gz)
        folder = os.path.dirname(real) or "."
        while folder and not os.path.lexists(folder):  # removed again by a run that wrote nothing
            self._made.append(folder)
            folder = os.path.dirname(folder)
        try:
            os.makedirs(os.path.dirname(real) or ".", exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot write CSV {t.part}: {exc.strerror}") from None
        t.key = self._key(run, symbols[0])
        t.locks.append(acquire(t.key, path, t.part, wait))
        if getattr(run, "follow", False):
            t.kind = "follow"
            self._open_follow(t)
        return t

    def _open_follow(self, t: _Target) -> None:
        """Append to the final file (created when missing), so other programs can read it while
        Forge follows. A torn last record left by a crash is cut off first (quote-aware); the
        newest candle of each series in the file is where the run continues (``last_open``)."""
        try:
            t.created = not os.path.lexists(t.real)
            t.file = open(t.real, "a+b")  # noqa: SIM115 (closed in close())
            size = t.file.seek(0, os.SEEK_END)
            cut = _complete_end(t.file, size, t.gzip, t.path)
            if cut < size:
                t.file.truncate(cut)
                log.info("csv_torn_tail_cut", file=t.path, bytes=size - cut)
            if cut and not t.gzip:
                h = read_header(t.file, t.path)  # type: ignore[arg-type]
                t.header = h.columns if h else None
            elif cut:
                import gzip

                with gzip.open(t.real, "rt", encoding="utf-8", newline="") as f:
                    t.header = next(csv.reader(f), None)
            t.header_from = t.path
        except OSError as exc:
            raise SinkError(f"cannot write CSV {t.path}: {exc.strerror}") from None
        t.buffer = io.BytesIO()
        t.handle = io.TextIOWrapper(t.buffer, encoding="utf-8", newline="", write_through=False)
        t.writer = csv.writer(t.handle)
        t.prepared = True

    def _open_stdout(self, t: _Target) -> None:
        """Rows go to the process's standard output; everything else printed to it afterwards
        (the summary, progress) goes to stderr, so the CSV stream stays clean."""
        out = sys.stdout
        out.flush()
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            fd = -1
        if fd >= 0:
            t.file = os.fdopen(os.dup(fd), "wb")
            with contextlib.suppress(AttributeError, OSError, ValueError):
                os.dup2(sys.stderr.fileno(), fd)
        else:  # a captured stream (tests, notebooks)
            t.file = _Unclosable(out.buffer if hasattr(out, "buffer") else io.BytesIO())
        self._wrap(t)
        t.prepared = True

    def _wrap(self, t: _Target) -> None:
        assert t.file is not None
        inner: Any = t.file
        if t.gzip:
            t.gz = _GzipStream(t.file)
            inner = io.BufferedWriter(t.gz, 1 << 16)
        t.handle = io.TextIOWrapper(inner, encoding="utf-8", newline="", write_through=False)
        t.writer = csv.writer(t.handle)

    def now_known(self, run: RunInfo) -> None:
        """``--to now``: a name with ``{end}`` holds the exchange's UTC day, not this machine's.
        A ``.part`` already opened under the machine's day moves to the new name (its identity
        holds no end, so a resume finds it under either)."""
        self.run = run
        for t in self.targets:
            if t.kind != "file":
                continue
            end = max(t.base_end, run.end_label) if t.base_end else run.end_label
            path = render(self.template, self._values(run, t.symbols[0], t.start_label, end))
            if path == t.path:
                continue
            real = os.path.realpath(path)
            if t.prepared:
                try:
                    os.replace(t.part, real + ".part")
                    os.replace(t.part + ".meta", real + ".part.meta")
                except OSError as exc:
                    raise SinkError(f"cannot write CSV {real}.part: {exc.strerror}") from None
            t.path, t.real = path, real

    # -- what the file already holds --------------------------------------------------------
    def last_open(self, source: str, symbol: str, timeframe: str) -> int | None:
        t = self.by_symbol.get(symbol)
        if t is None or self.run is None:
            return None
        if t.kind == "follow":
            assert t.file is not None
            if not t.file.seek(0, os.SEEK_END):
                return None
            return self._newest(t.real, source, symbol, self._timeframes(timeframe))
        if t.kind != "file":
            return None
        if not t.auto:
            t.auto = True
            self._find_base(t)
        if t.base is None:
            return None
        return self._newest(t.base, source, symbol, self._timeframes(timeframe))

    def resume_after(self, source: str, symbol: str, timeframe: str) -> int | None:
        t = self.by_symbol.get(symbol)
        if t is None:
            return None
        self._prepare(t)
        assert self.run is not None
        if timeframe not in (_out_tf(self.run), self.run.timeframe):
            return None
        return t.resume.get(symbol)

    def _timeframes(self, asked: str) -> set[str]:
        """What the file's rows may carry for a series asked for as ``asked``: the run's output
        timeframe (a core that still passes the input timeframe is understood too)."""
        assert self.run is not None
        out = _out_tf(self.run)
        return {asked, out} if asked in (out, self.run.timeframe) else {asked}

    def _find_base(self, t: _Target) -> None:
        """``--from auto``: the complete file of the series to extend. A name with ``{start}``
        or ``{end}`` (the default) matches existing files of any dates: the one ending last wins;
        the new file keeps its start and takes the run's end."""
        run = self.run
        assert run is not None
        template, symbol = self.template, t.symbols[0]
        if "{start" not in template and "{end" not in template:
            t.base = t.real if os.path.isfile(t.real) else None
            return
        pattern = render(template, self._values(run, symbol, _START, _END))
        regex = _dates_regex(pattern)
        found: list[tuple[str, int, str, str]] = []  # (end, -start, start, path)
        for path in glob.glob(glob.escape(pattern).replace(_START, "*").replace(_END, "*")):
            m = regex.match(path)
            if m is not None and os.path.isfile(path):
                got = m.groupdict()
                start = got.get("start") or ""
                found.append((got.get("end") or "", -int(start.replace("-", "") or 0), start, path))
        if not found:
            return
        end, _, start, path = max(found)  # the one ending last; of those, the one starting first
        t.base = os.path.realpath(path)
        new_start = start or run.start_label
        new_end = max(end, run.end_label) if end else run.end_label
        t.start_label, t.base_end = new_start, end
        t.path = render(template, self._values(run, symbol, new_start, new_end))
        t.real = os.path.realpath(t.path)
        key = self._key(run, symbol, new_start)
        if key != t.key:
            t.locks.append(acquire(key, t.path, t.part, self.settings["wait_for_lock"] or 0.0))
            t.key = key

    def _newest(self, path: str, source: str, symbol: str, timeframes: set[str]) -> int | None:
        """Open time of the newest record of the series in a complete file, read from its end
        (a ``.gz`` is read whole)."""
        try:
            if is_gzip(path):
                import gzip

                with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
                    reader = csv.reader(f, strict=True)
                    header = next(reader, None)
                    if header is None:
                        return None
                    last = None
                    match = _matcher(header, source, symbol, timeframes)
                    for row in reader:
                        if match(row):
                            last = row
                    return None if last is None else _open_of(header, last, path)
            with open(path, "rb") as raw:
                h = read_header(raw, path)
                if h is None:
                    return None
                match = _matcher(h.columns, source, symbol, timeframes)
                size = os.fstat(raw.fileno()).st_size
                for row in records_backward(raw, size, h.end, path):  # type: ignore[arg-type]
                    if match(row):
                        return _open_of(h.columns, row, path)
            return None
        except (OSError, EOFError, csv.Error, UnicodeDecodeError, zlib.error) as exc:
            raise SinkError(f"--from auto: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None

    # -- the .part --------------------------------------------------------------------------
    def _identity(self, t: _Target) -> dict[str, Any]:
        """What makes a run the same run, for continuing its ``.part``: not the end (``--to``
        may move later), and not the file name, which contains the end."""
        run = self.run
        assert run is not None
        return {"format": 2, "source": run.source, "symbols": t.symbols, "timeframe": run.timeframe,
                "output_timeframe": _out_tf(run), "start": run.start, "transforms": run.transforms,
                "key": os.path.basename(t.key), "base": os.path.basename(t.base) if t.base else None,
                "gzip": t.gzip}

    def _same(self, meta: Any, identity: dict[str, Any]) -> bool:
        if meta == identity:
            return True
        # a .part left by the previous version of this sink (its identity held the end day)
        legacy = ("source", "symbols", "timeframe", "start", "transforms")
        return (isinstance(meta, dict) and set(meta) == {*legacy, "end_day"} and identity["base"] is None
                and identity["timeframe"] == identity["output_timeframe"] and not identity["gzip"]
                and all(meta[k] == identity[k] for k in legacy))

    def _find_part(self, t: _Target, identity: dict[str, Any]) -> str | None:
        if os.path.exists(t.part) and self._same(_read_json(t.part + ".meta"), identity):
            return t.part
        # the same run under another name: a default name holds the end date, and --to moved
        candidates = []
        for meta in glob.glob(os.path.join(glob.escape(os.path.dirname(t.real)), "*.part.meta")):
            part = meta[:-5]
            if part != t.part and os.path.isfile(part) and _read_json(meta) == identity:
                candidates.append((os.path.getmtime(part), part))
        return max(candidates)[1] if candidates else None

    def _prepare(self, t: _Target) -> None:
        """Open the ``.part``: continue the one an interrupted run of the same identity left,
        or start one (for ``--from auto``, as a copy of the file being extended)."""
        if t.prepared:
            return
        t.prepared = True
        if not t.auto and os.path.isfile(t.real):
            self._check_same_series(t)
        identity = self._identity(t)
        try:
            found = self._find_part(t, identity)
            if found is not None and found != t.part:
                os.replace(found, t.part)
                os.replace(found + ".meta", t.part + ".meta")
                log.info("csv_part_continued", was=os.path.basename(found), now=os.path.basename(t.part))
            resumed = self._scan(t) if found is not None else None
            if resumed is not None:
                t.file = open(t.part, "r+b")  # noqa: SIM115 (closed in close())
                t.file.truncate(t.committed)
                t.file.seek(t.committed)
            else:
                t.file = open(t.part, "wb")  # noqa: SIM115
                t.header, t.resume = None, {}
                if t.auto and t.base is not None:
                    self._copy_base(t)
                t.committed = t.fresh_from = t.file.tell()
            with open(t.part + ".meta", "w", encoding="utf-8") as meta:
                json.dump(identity, meta)
        except OSError as exc:
            raise SinkError(f"cannot write CSV {t.part}: {exc.strerror}") from None
        self._wrap(t)

    def _check_same_series(self, t: _Target) -> None:
        """A file about to be replaced holds this run's series, not another's: ``--output x.csv``
        naming the file of another symbol, timeframe or exchange would silently destroy it."""
        assert self.run is not None
        try:
            if t.gzip:
                import gzip

                with gzip.open(t.real, "rt", encoding="utf-8", newline="") as f:
                    head = f.read(1 << 16)
            else:
                with open(t.real, encoding="utf-8", newline="") as f:
                    head = f.read(1 << 16)
            records = list(csv.reader(io.StringIO(head)))[:2]
        except (OSError, EOFError, UnicodeDecodeError, csv.Error, zlib.error):
            return  # not a CSV Forge can read: the run's own checks say what it is
        if len(records) < 2 or not {"source", "symbol", "timeframe"} <= set(records[0]):
            return
        row = dict(zip(records[0], records[1], strict=False))
        held = (row.get("source"), row.get("symbol"), row.get("timeframe"))
        if held[0] != self.run.source or held[1] not in t.symbols or held[2] != _out_tf(self.run):
            raise SinkError(f"{t.path} holds {' '.join(str(v) for v in held)} candles, not this run's "
                            f"{self.run.source} {','.join(t.symbols)} {_out_tf(self.run)}; give another "
                            "--output, or delete the file to replace it")

    def _copy_base(self, t: _Target) -> None:
        assert t.file is not None and t.base is not None
        with open(t.base, "rb") as src:
            if not t.gzip:
                h = read_header(src, t.base)
                t.header = h.columns if h else None
                src.seek(0)
            shutil.copyfileobj(src, t.file, 1 << 20)
        if t.gzip:
            import gzip

            with gzip.open(t.base, "rt", encoding="utf-8", newline="") as f:
                t.header = next(csv.reader(f), None)
        elif t.file.tell():
            with open(t.base, "rb") as src:
                src.seek(-1, os.SEEK_END)
                if src.read(1) != b"\n":
                    t.file.write(b"\r\n")
        t.header_from = t.base

    def _scan(self, t: _Target) -> dict[str, int] | None:
        """Header and per-symbol last ``end_ts`` of a ``.part`` left by an interrupted run, after
        dropping a torn tail; ``None`` when it cannot be continued (start over)."""
        run = self.run
        assert run is not None
        with open(t.part, "rb") as f:
            data = f.read()
        partial = complete_prefix(data, t.gzip, t.part)
        rows = csv.reader(io.StringIO(partial.text, newline=""), strict=True)
        out_tf = _out_tf(run)
        try:
            header = next(rows, None)
            if not header or "end_ts" not in header:
                return None  # e.g. a select transform dropped end_ts: start over
            col = {c: header.index(c) if c in header else None for c in ("source", "symbol", "timeframe", "open_ts")}
            i_end = header.index("end_ts")
            if col["symbol"] is None and len(t.symbols) > 1:
                return None
            resume: dict[str, int] = {}
            for n, row in enumerate(rows, 2):
                if len(row) != len(header):
                    raise _corrupt(t, n, f"{len(row)} fields, the header has {len(header)}")
                try:
                    end = int(row[i_end])
                    opened = int(row[col["open_ts"]]) if col["open_ts"] is not None else end
                except ValueError:
                    raise _corrupt(t, n, f"end_ts {row[i_end]!r} is not epoch milliseconds") from None
                symbol = row[col["symbol"]] if col["symbol"] is not None else t.symbols[0]
                if ((col["timeframe"] is not None and row[col["timeframe"]] != out_tf)
                        or (col["source"] is not None and row[col["source"]] != run.source)
                        or symbol not in t.symbols or opened >= run.end):
                    return None  # other rows, or beyond a --to that moved earlier: start over
                resume[symbol] = end
        except csv.Error as exc:
            raise _corrupt(t, rows.line_num, str(exc)) from None
        t.header, t.header_from, t.resume, t.committed = header, t.part, resume, partial.keep
        return resume

    # -- rows -------------------------------------------------------------------------------
    def write(self, batch: Batch) -> None:
        t = self.by_symbol[batch.symbol]
        self._prepare(t)
        try:
            if t.header is None:
                t.header = list(batch.columns)
                t.writer.writerow(t.header)
            elif t.header != list(batch.columns):
                what = f"{t.header_from}, left by an earlier run," if t.header_from == t.part else t.header_from
                raise SinkError(f"{what} has other columns ({','.join(t.header)}) than this run writes "
                                f"({','.join(batch.columns)}); "
                                + ("delete it to start over" if t.header_from == t.part else "give another --output"))
            text = batch.csv_text()  # rows held as CSV text (Binance's archive): written as they are
            if text is None:
                text = _plain_lines(batch.rows, len(t.header))
            if text is None:
                t.writer.writerows(batch.rows)
                t.written = None  # a quoted field may hold a line break
            else:
                assert t.handle is not None
                t.handle.write(text)
                if t.written is not None:
                    t.written += len(batch.rows)
        except OSError as exc:
            raise SinkError(f"cannot write CSV {t.part if t.kind == 'file' else t.path}: {exc.strerror}") from None

    def commit(self) -> None:
        todo = [t for t in self.targets if t.handle is not None]
        if len(todo) > 1:  # the fsyncs side by side: one after the other, 20 files took 72 ms (9 ms)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(min(FSYNC_THREADS, len(todo)), thread_name_prefix="forge-csv-fsync")
            failed = [e for e in self._pool.map(self._flush_one, todo) if e is not None]
            if failed:
                raise failed[0]
        elif todo and (error := self._flush_one(todo[0])) is not None:
            raise error
        for t in self.targets:  # only once every file is durable: all or none count
            if t.kind == "file" and t.file is not None:
                t.committed = t.file.tell()


    def _flush_one(self, t: _Target) -> SinkError | None:
        try:
            self._flush(t)
        except OSError as exc:
            return SinkError(f"cannot write CSV {t.part if t.kind == 'file' else t.path}: {exc.strerror}")
        return None

    def _flush(self, t: _Target) -> None:
        assert t.handle is not None and t.file is not None
        t.handle.flush()
        if t.buffer is not None:  # follow: the records since the last commit, in one append
            data = t.buffer.getvalue()
            if data:
                if t.gzip:
                    import gzip

                    data = gzip.compress(data)  # one member per commit
                t.file.write(data)
                t.file.flush()
                os.fsync(t.file.fileno())
                t.buffer.seek(0)
                t.buffer.truncate()
            return
        if t.gz is not None:
            t.gz.finish_member()
        t.file.flush()
        if t.kind == "file":
            os.fsync(t.file.fileno())

    def close(self, ok: bool) -> None:
        try:
            for t in self.targets:
                if ok:
                    self._finish(t)
                else:
                    self._abandon(t)
        finally:
            self._release()
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None
            if not ok:
                self._remove_made()

    def _finish(self, t: _Target) -> None:
        assert self.run is not None
        where = t.part if t.kind == "file" else t.path
        try:
            self._prepare(t)
            assert t.handle is not None and t.file is not None
            if t.header is None and t.kind != "follow":
                t.writer.writerow(self.run.columns)
            self._flush(t)
            t.handle.close()
            if t.kind == "follow":
                t.file.close()
            if t.kind != "file":
                return
            if os.path.lexists(t.real) and not stat.S_ISREG(os.lstat(t.real).st_mode):
                raise SinkError(f"{t.path} is no longer a regular file; the rows are kept in {t.part}")
            old = t.base or (t.real if os.path.isfile(t.real) else None)
            if old is None and t.fresh_from == 0 and t.written is not None:
                t.changed = t.written  # a new file this run wrote whole: every record is new, no re-read
            else:
                t.changed = changed_records(t.part, old, t.gzip)
            os.replace(t.part, t.real)
            _fsync_dir(os.path.dirname(t.real))
            os.remove(t.part + ".meta")
            if t.base is not None and t.base != t.real and os.path.isfile(t.base):
                os.remove(t.base)  # extended under its new name: the new file holds all of it
                log.info("csv_extended", was=os.path.basename(t.base), now=os.path.basename(t.real))
        except OSError as exc:
            raise SinkError(f"cannot write CSV {where}: {exc.strerror}") from None

    def _abandon(self, t: _Target) -> None:
        """Keep exactly what was committed: the count the run reports is what a resume uses."""
        if t.buffer is not None:  # follow: what was not committed is dropped
            t.buffer.seek(0)
            t.buffer.truncate()
        if t.handle is not None:
            with contextlib.suppress(OSError, ValueError):
                t.handle.close()
        if t.kind == "follow" and t.file is not None:
            with contextlib.suppress(OSError):
                empty = t.created and t.file.seek(0, os.SEEK_END) == 0
                t.file.close()
                if empty:  # a run that failed before its first commit leaves no file of its own
                    os.remove(t.real)
        if t.kind != "file" or t.file is None:
            return
        try:
            os.truncate(t.part, t.committed)
            if t.fresh_from >= 0 and t.committed <= t.fresh_from:
                os.remove(t.part)  # nothing of this run was committed: nothing to resume
                os.remove(t.part + ".meta")
        except OSError as exc:
            log.warning("csv_part_cleanup_failed", part=t.part, error=exc.strerror)

    def _release(self) -> None:
        for t in self.targets:
            for lock in t.locks:
                lock.release()
            t.locks.clear()

    def describe(self) -> str:
        return ", ".join("stdout" if t.kind == "stdout" else os.path.relpath(t.path) for t in self.targets) or "csv"

    def rows_changed(self) -> int | None:
        """Records of the finished files that the files they replaced (or, for ``--from auto``,
        extended) did not hold exactly; ``None`` for stdout, devices and follow runs, or
        when a file was not finished."""
        counts = [t.changed for t in self.targets]
        return None if not counts or None in counts else sum(c for c in counts if c is not None)

    def integrity(self) -> Any:
        """Hooks of ``forge status/verify/repair`` on the file ``--output`` names (integrity.py)."""
        from .integrity import CsvIntegrity

        return CsvIntegrity(self.settings["output"], self.settings["wait_for_lock"] or 0.0)


class _Unclosable(io.RawIOBase):
    def __init__(self, out: Any) -> None:
        self.out = out

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.out.write(bytes(b))
        return len(b)

    def flush(self) -> None:
        self.out.flush()


def _out_tf(run: RunInfo) -> str:
    return run.output_timeframe or run.timeframe  # what the file holds, after a resample


def _complete_end(f: IO[bytes], size: int, gz: bool, where: str) -> int:
    """Where the complete records of a file a follow run appends to end (a crash may have torn
    the last one): from its last 64 KiB when they hold no quote, else from the whole file."""
    if not size:
        return 0
    if not gz:
        start = max(0, size - (1 << 16))
        f.seek(start)
        tail = f.read()
        if b'"' not in tail and b"\n" in tail:
            return start + tail.rfind(b"\n") + 1
    f.seek(0)
    return complete_prefix(f.read(), gz, where).keep


def _dates_regex(pattern: str) -> re.Pattern[str]:
    """Matches the names ``pattern`` gives for any start and end dates (its date placeholders
    are the ``_START`` and ``_END`` markers)."""
    out, seen = [], set()
    for piece in re.split(f"([{_START}{_END}])", pattern):
        if piece in (_START, _END):
            name = "start" if piece == _START else "end"
            out.append(f"(?P={name})" if name in seen else f"(?P<{name}>{_DAY})")
            seen.add(name)
        else:
            out.append(re.escape(piece))
    return re.compile("".join(out) + r"\Z")


def _matcher(header: list[str], source: str, symbol: str, timeframes: set[str]) -> Any:
    col = {c: header.index(c) for c in ("source", "symbol", "timeframe") if c in header}

    def match(row: list[str]) -> bool:
        return (len(row) == len(header)
                and ("source" not in col or row[col["source"]] == source)
                and ("symbol" not in col or row[col["symbol"]] == symbol)
                and ("timeframe" not in col or row[col["timeframe"]] in timeframes))

    return match


def _open_of(header: list[str], row: list[str], path: str) -> int | None:
    try:
        if "open_ts" in header:
            return int(row[header.index("open_ts")])
        if "end_ts" in header and "timeframe" in header:
            return parse_timeframe(row[header.index("timeframe")]).floor(int(row[header.index("end_ts")]))
    except ValueError as exc:
        raise SinkError(f"--from auto: {path} has a record that is not a candle ({exc})") from None
    return None


def _corrupt(t: _Target, record: int, why: str) -> SinkError:
    return SinkError(f"{t.part}, left by an interrupted run, is corrupted (record {record}: {why}); "
                     "delete it to start over")


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as meta:
            return json.load(meta)
    except (OSError, ValueError):
        return None


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _plain_lines(rows: list, width: int) -> str | None:
    """The rows as ``csv.writer`` would write them, about 2.5x faster, when no field needs
    quoting or is ``None``; otherwise ``None`` and the caller uses ``csv.writer``."""
    text = "\r\n".join([",".join(map(str, row)) for row in rows]) + "\r\n"
    n = len(rows)
    if ('"' in text or "None" in text or text.count(",") != n * (width - 1)
            or text.count("\n") != n or text.count("\r") != n):
        return None
    return text
