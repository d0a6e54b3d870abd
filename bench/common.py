"""Helpers shared by the benchmark scripts: the mock exchange in its own process, the
benchmark year, virtualenvs for the tools we compare against, and machine facts.

The mock runs in a separate process so that it has its own core and its own GIL: in the same
process its candle generation would compete with the client being measured.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"

# Runs inside the mock's process: a MockExchange with any MockConfig fields, until killed.
_SERVE = """
import json, sys, time
from forge_mock_exchange.server import MockConfig, MockExchange
config = MockConfig(**json.loads(sys.argv[1]))
mock = MockExchange(config, port=int(sys.argv[2])).start()
print(mock.url, flush=True)
while True:
    time.sleep(3600)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MockProcess:
    """``forge_mock_exchange.MockExchange(MockConfig(**config))`` in a child process; ``serve``
    is the child's script (``argv``: the config as JSON, the port), for a mock with more routes."""

    config: dict[str, Any]
    serve: str = _SERVE
    url: str = ""
    proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> MockProcess:
        port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", self.serve, json.dumps(self.config), str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                get_json(self.url + "/mock/stats")
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mock exchange did not start (config {self.config})") from None
                time.sleep(0.1)

    def stats(self) -> dict[str, int]:
        return get_json(self.url + "/mock/stats")

    def reset(self) -> None:
        get_json(self.url + "/mock/reset")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def installed_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a Forge process run as an installed Forge runs:
    from bytecode. Without it a ``PYTHONDONTWRITEBYTECODE`` in the environment would make every
    run compile Forge's modules from source (about 0.1 CPU s a run here), which no install does
    (pip compiles them) and no peer pays (their packages come with bytecode). The bytecode is
    kept out of the tree, in ``bench/.venvs/pycache``; the first run of a tree compiles it."""
    out = {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONDONTWRITEBYTECODE"}
    out["PYTHONPYCACHEPREFIX"] = str(VENVS / "pycache")
    return out


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def bench_year(today: date | None = None) -> tuple[str, str]:
    """Twelve whole months ending with the last published monthly archive, e.g. on 2026-11-22:
    2025-11-01 .. 2026-10-31. Binance publishes a month's zip on the first Monday after it; before
    that (plus a day of margin) the year ends a month earlier. streamforge fetches every month up
    to the previous one whatever ``to_date`` says, so ending there gives it exactly the same work."""
    today = today or date.today()
    first = today.replace(day=1)
    monday = first + timedelta(days=(7 - first.weekday()) % 7)
    if today <= monday:
        first = (first - timedelta(days=1)).replace(day=1)
    end = first - timedelta(days=1)  # last day of the month before `first`
    start = first.replace(year=first.year - 1)
    return start.isoformat(), end.isoformat()


def bench_month(today: date | None = None) -> tuple[str, str]:
    """The last month of :func:`bench_year`."""
    start, end = bench_year(today)
    return date.fromisoformat(end).replace(day=1).isoformat(), end


def ensure_venv(name: str, packages: list[str]) -> Path:
    """``bench/.venvs/NAME`` with ``packages`` installed (created once); returns its python."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".bench-installed"
    wanted = " ".join(packages)
    if marker.exists() and marker.read_text() == wanted:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
                   check=True, stdout=subprocess.DEVNULL)
    marker.write_text(wanted)
    return python


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    try:
        free = subprocess.run(["free", "-g"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        free = "n/a"
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": cpu or platform.processor(), "free -g": free,
            "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": load()}


def load() -> str:
    """1/5/15-minute load averages: other work on the machine slows everything measured."""
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
