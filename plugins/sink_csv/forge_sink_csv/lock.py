"""One run at a time per CSV output: an exclusive ``flock`` on a lock file beside it holding the
PID of the run that has it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from forge_core import SinkError


class Lock:
    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still held: a waiter re-checks the inode and retries
        os.close(self.fd)
        self.fd = -1


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
    except OSError:
        return "unknown"


def acquire(path: str, what: str, part: str, wait: float = 0.0) -> Lock:
    """Lock ``path`` (created if needed) for this process, or raise one line naming the holder.
    ``wait`` seconds: keep trying that long before giving up."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise SinkError(f"cannot write CSV {part}: {exc.strerror} (creating its lock file {path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            if holder == str(os.getpid()):
                raise SinkError(f"{what} is written twice by this run (is --sink csv given twice?); "
                                "give each sink its own --output") from None
            if time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            hint = "" if wait else ", or pass --wait-for-lock SECONDS to wait for it"
            raise SinkError(f"{what} is being written by another forge run (PID {holder}); "
                            f"let it finish or stop it{hint}") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed it as we opened it: lock the new one
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return Lock(path, fd)
