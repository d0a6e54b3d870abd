"""Archive kline CSV as text, and a helper process that reads zips on the machine's other core.

Reading an archive symbol-year is one core's work: inflating the zips and turning their lines
into Forge's CSV records (the exchange's strings reordered, see :func:`steady_text`) take about
two thirds of a run's CPU. :class:`Helper` runs that part for some of the files in a child
process (this file run as a script: the standard library only, so it starts in ~20 ms and
~10 MiB), while the run's threads read the others: the run uses two cores, its output is the
same, record for record. The child answers each piece as the text of its records, or, for a
piece that is not one plain run of candles, the piece itself (the run reads those as before).
A child that fails is not retried: the files go on in-process from the piece it reached.
"""

from __future__ import annotations

import os
import queue
import struct
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import suppress
from io import BytesIO
from itertools import repeat
from operator import itemgetter
from typing import IO, Any

PIECE = 1 << 18  # bytes of CSV read at a time: the batches the run loop hands on (~1,700 1m rows)
MICROS = 10**13  # open times above this are microseconds (ms stay below until the year 2286)
_PLAIN = b"0123456789.,\n"  # all a kline CSV piece holds (no sign, space, quote, letter, CR)
_CUT = itemgetter(slice(None, -3))  # microseconds to milliseconds, as strings


def pieces(raw: IO[bytes]) -> Iterator[bytes]:
    """The CSV member ``raw`` in pieces of whole lines of about :data:`PIECE` bytes, a header
    row (newer futures files) dropped, the last line ended by ``\\n``."""
    rest, first = b"", True
    while True:
        chunk = raw.read(PIECE)
        if not chunk:
            if not rest.strip():
                return
            if first and not rest[:1].isdigit():
                rest = rest[rest.find(b"\n") + 1:] if b"\n" in rest else b""
            yield rest if rest.endswith(b"\n") else rest + b"\n"
            return
        cut = chunk.rfind(b"\n") + 1
        if not cut:
            rest += chunk
            continue
        piece, rest = rest + chunk[:cut], chunk[cut:]
        if first:
            first = False
            if not piece[:1].isdigit():
                piece = piece[piece.find(b"\n") + 1:]
        yield piece


def csv_member(data: bytes) -> tuple[zipfile.ZipFile, IO[bytes]]:
    """The zip ``data`` and its one CSV member, open; ValueError for any other zip."""
    zf = zipfile.ZipFile(BytesIO(data))
    members = [n for n in zf.namelist() if n.lower().endswith(".csv")]
    if len(members) != 1:
        zf.close()
        raise ValueError(f"expected one CSV in the zip, found {zf.namelist()}")
    return zf, zf.open(members[0])


def split_piece(piece: bytes) -> tuple[list[str], int] | None:
    """A piece's fields, 13 a line (the 12 of a kline, then ``"\\n"``), and its line count; None
    when it is not plain kline CSV of 12 fields a line."""
    if piece.translate(None, _PLAIN):
        return None
    text = piece.decode("ascii")
    n = text.count("\n")
    flat = text.replace("\n", ",\n,").split(",")
    if not n or len(flat) != 13 * n + 1 or flat[12::13].count("\n") != n:
        return None  # a line without 12 fields (or an empty line)
    flat.pop()  # the "" after the last line
    return flat, n


def steady_text(flat: list[str], n: int, ms: int, prefix: str) -> tuple[str, int] | None:
    """The usual piece, one unbroken run of candles, as Forge's CSV records (``prefix``, open,
    close, the exchange's other strings but ``ignore``; ``\\r\\n`` line ends) and its first open
    in milliseconds; None for anything else (a hole, another close time, a leading zero, ms and
    µs mixed: the caller's general path decides).

    The opens and closes are compared, as one string each, with those of the run the first open
    starts (written by one ``%`` format): that checks every one canonical, one candle after the
    previous and closing at the candle's last millisecond, without parsing a number."""
    opens, closes = flat[0::13], flat[6::13]
    head = opens[0]
    if not head.isdigit():
        return None
    first = int(head)
    scale = 1000 if first > MICROS else 1
    step = ms * scale
    stop = first + n * step
    if (scale == 1 and stop - step > MICROS) or first % scale or stop >= 1 << 63:
        return None  # ms running into the µs range (the year 2286), µs off a millisecond, > int64
    form = "%d," * (n - 1) + "%d"
    if (",".join(opens) != form % tuple(range(first, stop, step))
            or ",".join(closes) != form % tuple(range(first + step - 1, stop, step))):
        return None
    trades = flat[8::13]
    joined = ",".join(trades)
    if "." in joined or "" in trades or joined.count(",0") + (joined[:1] == "0") != trades.count("0"):
        return None  # not canonical decimal integers (a leading zero, an empty field)
    if prefix.count(",") != 2 or any(c in prefix for c in '"\r\n'):
        return None  # a constant that would need quoting
    if scale != 1:
        opens, closes, first = list(map(_CUT, opens)), list(map(_CUT, closes)), first // scale
    text = "\r\n".join(map(",".join, zip(repeat(prefix, n), opens, closes, flat[1::13], flat[2::13], flat[3::13],
                                         flat[4::13], flat[5::13], flat[7::13], trades, flat[9::13],
                                         flat[10::13], strict=True))) + "\r\n"
    return text, first


# -- the helper process -----------------------------------------------------------------------
# A request: ">QI" (zip bytes, candle ms), the prefix's length and bytes, the zip. Answers, one a
# piece in order, then an end: b"S" ">IQ I" (lines, first open, text bytes) + text; b"R" ">I" +
# the piece; b"E" the end; b"X" ">I" + a message: the zip could not be read (the run reads it
# itself, which raises the same error).
_REQUEST, _STEADY, _LEN = struct.Struct(">QQI"), struct.Struct(">IQI"), struct.Struct(">I")


def _serve(inp: IO[bytes], out: IO[bytes]) -> None:
    while True:
        head = inp.read(_REQUEST.size)
        if len(head) < _REQUEST.size:
            return  # the run closed the pipe (or ended)
        size, ms, plen = _REQUEST.unpack(head)
        prefix = inp.read(plen).decode()
        data = inp.read(size)
        try:
            zf, raw = csv_member(data)
            with zf, raw:
                for piece in pieces(raw):
                    split = split_piece(piece)
                    steady = None if split is None else steady_text(*split, ms, prefix)
                    if steady is None:
                        out.write(b"R" + _LEN.pack(len(piece)) + piece)
                    else:
                        text = steady[0].encode("ascii")
                        out.write(b"S" + _STEADY.pack(split[1], steady[1], len(text)) + text)  # type: ignore[index]
        except Exception as exc:  # noqa: BLE001 - said to the run, which reads the zip itself
            message = f"{type(exc).__name__}: {exc}".encode()
            out.write(b"X" + _LEN.pack(len(message)) + message)
        else:
            out.write(b"E")
        out.flush()


class HelperGone(Exception):
    """The helper process ended or failed mid-file: read the rest of the file in-process."""


class Parsed:
    """One file's answers, in order, as the helper sends them: ``("S", text, n, first)``,
    ``("R", piece)``, then None. :class:`HelperGone` if the helper failed."""

    def __init__(self, helper: Helper) -> None:
        self._helper = helper
        self._answers: queue.SimpleQueue[tuple[Any, ...] | None | HelperGone] = queue.SimpleQueue()
        self.delivered = 0  # pieces taken so far (reading on in-process skips as many)
        self.held = 0  # bytes of answers not taken yet
        self.abandoned = False

    def next(self) -> tuple[Any, ...] | None:
        try:
            answer = self._answers.get(timeout=self._helper.STALL)
        except queue.Empty:  # stopped, or stuck: it is not waited for again
            from forge_core import get_logger  # (the run's side only: the helper imports no Forge)

            get_logger(__name__).warning("archive_helper_stalled", seconds=self._helper.STALL,
                                         then="the run reads the zips itself")
            self._helper._end("the archive helper process stalled")
            raise HelperGone("the archive helper process stalled") from None
        if isinstance(answer, HelperGone):
            raise answer
        if answer is not None:
            self.delivered += 1
            self._helper._taken(self, len(answer[1]))
        return answer

    def abandon(self) -> None:
        """No more answers are wanted (the file is read in-process from here, or not at all)."""
        self._helper._abandon(self)


class Helper:
    """A child process reading one zip at a time for the run (see the module's docstring).

    :meth:`offer` hands it a file when it is idle and fewer than :data:`HELD` bytes of its
    answers wait to be taken (memory stays bounded however many workers read files); else None,
    and the caller reads the file itself. A thread of the run takes its answers as they come
    (the child never waits on a full pipe) and queues them for the file's reader."""

    HELD = 12 << 20  # bytes of answers waiting to be taken, at most, before it takes another file
    PIPE = 1 << 20  # bytes a pipe holds (Linux's default maximum): one handoff of the GIL a piece
    STALL = 60.0  # seconds without an answer after which the helper is given up

    def __init__(self, command: list[str] | None = None) -> None:
        # -I: the standard library only (no site, no environment)
        self.command = command or [sys.executable, "-I", __file__]
        self.peak_mib = 0.0  # the helper's peak RSS, read when it is closed
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._current: Parsed | None = None  # the file being read
        self._held = 0
        self._gone = False
        self._ahead: dict[str, tuple[bytes, Parsed]] = {}  # zips read ahead of their task, by key

    def offer(self, data: bytes, ms: int, prefix: str, key: str = "") -> Parsed | None:
        """The helper's answers for the zip ``data``, or None when it takes no file now. With a
        ``key`` (a zip downloaded ahead of its task) they wait for :meth:`claim`."""
        with self._lock:  # the file is reserved here, and written outside the lock
            if self._gone or self._current is not None or self._held >= self.HELD:
                return None
            try:
                proc = self._start()
            except (OSError, ValueError):  # no process (or pipes too small): the run reads its zips
                self._gone = True
                return None
            parsed = self._current = Parsed(self)
            stale = self._ahead.pop(key, None) if key else None
            if key:
                self._ahead[key] = (data, parsed)
        if stale is not None:
            stale[1].abandon()
        try:
            encoded = prefix.encode()
            assert proc.stdin is not None
            proc.stdin.write(_REQUEST.pack(len(data), ms, len(encoded)) + encoded)
            proc.stdin.write(data)
            proc.stdin.flush()
        except (OSError, ValueError):  # it ended (or was closed) meanwhile: the run reads the file
            self._end("the archive helper process ended")
            return None
        return parsed

    def claim(self, key: str, data: bytes) -> Parsed | None:
        """The answers offered ahead for ``key``, if they were for this very ``data``."""
        with self._lock:
            entry = self._ahead.pop(key, None) if key else None
        if entry is None:
            return None
        if entry[0] is not data:  # (downloaded again: the checksum failed)
            entry[1].abandon()
            return None
        return entry[1]

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            # its own session: Ctrl-C and a terminal's hang-up are the run's to handle; the run's
            # end, however it ends, closes the pipe, and the helper exits
            self._proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, bufsize=self.PIPE, start_new_session=True)
            if not all(_big_pipe(pipe, self.PIPE) for pipe in (self._proc.stdin, self._proc.stdout)):
                self._proc.kill()  # 64 KiB pipes: a GIL handoff each, slower than no helper (measured)
                self._proc.wait()
                self._proc = None
                raise OSError("the pipes cannot hold 1 MiB")
            threading.Thread(target=self._read, args=(self._proc,), name="archive-helper", daemon=True).start()
        return self._proc

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        out = proc.stdout
        assert out is not None
        try:
            while kind := out.read(1):
                if kind == b"S":
                    n, first, size = _STEADY.unpack(_exactly(out, _STEADY.size))
                    self._answer(("S", _exactly(out, size).decode("ascii"), n, first), size)
                elif kind == b"R":
                    piece = _exactly(out, _LEN.unpack(_exactly(out, _LEN.size))[0])
                    self._answer(("R", piece), len(piece))
                elif kind in (b"E", b"X"):
                    if kind == b"X":  # the zip is unreadable: the caller reads it and says why
                        _exactly(out, _LEN.unpack(_exactly(out, _LEN.size))[0])
                    with self._lock:
                        current, self._current = self._current, None
                    if current is not None:
                        current._answers.put(None if kind == b"E" else HelperGone("unreadable zip"))
                else:
                    raise OSError(f"the archive helper answered {kind!r}")
        except Exception:  # noqa: BLE001 - whatever it was, the files go on in-process
            pass
        self._end("the archive helper process ended")

    def _end(self, why: str) -> None:
        """No more files for the helper: it is stopped, its current file's reader told."""
        with self._lock:
            self._gone = True
            current, self._current = self._current, None
            proc = self._proc
        if current is not None:
            current._answers.put(HelperGone(why))
        if proc is not None:
            with suppress(OSError):
                proc.kill()  # (a child blocked on a full pipe would wait for close otherwise)

    def _answer(self, answer: tuple[Any, ...], size: int) -> None:
        with self._lock:
            current = self._current
            if current is None or current.abandoned:
                return
            current.held += size
            self._held += size
            current._answers.put(answer)

    def _taken(self, parsed: Parsed, size: int) -> None:
        with self._lock:
            parsed.held -= size
            self._held -= size

    def _abandon(self, parsed: Parsed) -> None:
        with self._lock:
            parsed.abandoned = True
            self._held -= parsed.held
            parsed.held = 0
            while not parsed._answers.empty():
                parsed._answers.get_nowait()

    def close(self) -> None:
        """End the child (killed: nothing it holds is wanted now) and wait for it."""
        with self._lock:
            self._gone = True
            proc, self._proc = self._proc, None
            ahead, self._ahead = list(self._ahead.values()), {}
        for _, parsed in ahead:
            parsed.abandon()
        if proc is None:
            return
        self.peak_mib = _rss_mib(str(proc.pid), "VmHWM")
        PEAKS.append(self.peak_mib)
        with suppress(OSError):
            proc.kill()  # nothing it holds is wanted now (a writer blocked on its pipe gets EPIPE)
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            with suppress(OSError, ValueError):
                if pipe is not None:
                    pipe.close()


def _big_pipe(pipe: IO[bytes] | None, size: int) -> bool:
    """Whether ``pipe`` holds ``size`` bytes, made to if it can (Linux's F_SETPIPE_SZ)."""
    try:
        import fcntl

        fcntl.fcntl(pipe, fcntl.F_SETPIPE_SZ, size)  # type: ignore[arg-type, attr-defined]
        return fcntl.fcntl(pipe, fcntl.F_GETPIPE_SZ) >= size  # type: ignore[arg-type, attr-defined]
    except (ImportError, AttributeError, OSError):  # not Linux, or a lower pipe-max-size
        return False


def _exactly(stream: IO[bytes], size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise OSError("the archive helper's answer was cut short")
    return data


def _rss_mib(pid: str, field: str) -> float:
    """``VmRSS`` or ``VmHWM`` of a process in MiB, from /proc; without it, this process's peak
    (``ru_maxrss``, kilobytes on Linux, bytes on macOS: taken as kilobytes, the larger), or 0."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    if pid == "self":
        with suppress(ImportError, OSError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return 0.0


PEAKS: list[float] = []
"""The peak RSS (MiB) of every helper this process closed: ``bench/memory.py`` adds the largest
to the run's own, so the 120 MiB it checks is the run's and its helper's together."""

ROOM = 40
"""MiB: a run holding more than this when its source starts uses no helper, so that the run and
its helper (~25 MiB, and ~20 MiB of zips and answers read ahead) stay under Forge's 120 MiB.
Measured when the source starts: a CSV run 34 MiB (peak 51 alone, 85-104 with its helper), a
PostgreSQL run 53 (SQLAlchemy and psycopg2; peak 70-92 alone, 126-141 with one), a Parquet
run 85 (pyarrow; peak 116-119 alone): those two read every zip themselves."""


def new_helper() -> Helper | None:
    """A helper for a run, or None: ``FORGE_BINANCE_ARCHIVE_HELPER`` ``0`` turns it off, ``1``
    on whatever the run's memory; by default it is used with two cores or more for this
    process and at most :data:`ROOM` MiB held."""
    from forge_core.options import (  # (the run's side: the helper imports no Forge)
        FALSE_WORDS,
        TRUE_WORDS,
    )

    setting = os.environ.get("FORGE_BINANCE_ARCHIVE_HELPER", "").strip().lower()
    if setting and setting in FALSE_WORDS:
        return None
    if setting in TRUE_WORDS:
        return Helper() if sys.executable else None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return Helper() if cores > 1 and sys.executable and _rss_mib("self", "VmRSS") <= ROOM else None


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
