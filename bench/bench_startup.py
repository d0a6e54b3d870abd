"""Start-up: the time from ``forge run``'s process start to its first request at the mock.

    python bench/bench_startup.py [--runs 21] [--json]

Starts the mock exchange in this process (a thread; it only answers the one-day run's few
requests), then runs ``forge run --source binance --sink csv`` for one day ``--runs`` times in a
child process. The clock is the system-wide monotonic clock: read here just before the child is
spawned, and by the mock when it receives the child's first request. Prints the median, min and
max of that delay and of the whole run's wall time, and which heavy modules the run imported
(``-X importtime`` of one more run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from forge_core.testing.server import MockExchange

TARGET = 0.35  # issue 18: at most 0.35 s to the first request
HEAVY = ("sqlalchemy", "psycopg2", "pyarrow", "polars", "rich", "structlog", "forge_core.testing",
         "forge_core.integrity", "forge_sink_postgres", "forge_sink_parquet", "forge_okx")


class FirstRequest:
    """Wraps the mock's dispatch: the monotonic time of the first request after :meth:`arm`,
    and the CPU seconds the process ``pid`` had used by then (``/proc/PID/stat``; on a busy
    machine the wall time is mostly waiting for a core, the CPU time is what start-up costs)."""

    def __init__(self, mock: MockExchange) -> None:
        self.at: float | None = None
        self.cpu: float | None = None
        self.pid: int | None = None
        self._lock = threading.Lock()
        inner = mock.dispatch

        def dispatch(request: Any) -> Any:
            with self._lock:
                if self.at is None:
                    self.at = time.monotonic()
                    self.cpu = cpu_seconds(self.pid)
            return inner(request)

        mock.dispatch = dispatch  # type: ignore[method-assign]

    def arm(self, pid: int | None = None) -> None:
        with self._lock:
            self.at = self.cpu = None
            self.pid = pid


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` so far (Linux), ``None`` where unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def forge_command(url: str, out: Path) -> list[str]:
    forge = shutil.which("forge", path=str(Path(sys.executable).parent)) or "forge"
    return [forge, "run", "--source", "binance", "--sink", "csv", "--symbol", "BTCUSDT", "--from", "2024-01-01",
            "--to", "2024-01-01", "--base-url", url, "--archive", "rest", "--output", str(out / "out.csv"), "-q"]


def imported(command: list[str], env: dict[str, str]) -> dict[str, float]:
    """Cumulative import seconds of the top-level packages in ``HEAVY`` that a run imports."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True,
                          env=env, check=False)
    found: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        name = name.strip()
        for heavy in HEAVY:
            if name == heavy or name.startswith(heavy + "."):
                found[heavy] = max(found.get(heavy, 0.0), int(cumulative) / 1e6)
    return found


def measure(runs: int, baseline: str | None = None, *, warm: bool = True, imports: bool = True) -> dict[str, Any]:
    """``runs`` timed runs (after one warm-up); with ``baseline`` (a directory holding another
    ``forge_core``, put first on ``PYTHONPATH``) each run is paired with one of that tree, A B A B.
    ``warm=False`` times the first run too, ``imports=False`` skips the ``-X importtime`` run
    (both for the smoke test, which asserts nothing about the time)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_") and k != "PYTHONDONTWRITEBYTECODE"}
    with MockExchange(latency=0) as mock, tempfile.TemporaryDirectory(prefix="forge-startup-") as tmp:
        # as an installed Forge runs: from bytecode (compiled by the warm-up run, kept out of the tree)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        envs = {"a": env}
        if baseline:
            envs["b"] = {**env, "PYTHONPATH": os.pathsep.join(p for p in (baseline, env.get("PYTHONPATH")) if p),
                         "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache-b")}
        first = FirstRequest(mock)
        command = forge_command(mock.url, Path(tmp))
        delays: dict[str, list[float]] = {k: [] for k in envs}
        cpus: dict[str, list[float]] = {k: [] for k in envs}
        walls: dict[str, list[float]] = {k: [] for k in envs}
        skip = 1 if warm else 0  # the first run compiles the bytecode and warms the page cache
        for i in range(runs + skip):
            for key, run_env in envs.items():
                first.arm()
                began = time.monotonic()
                proc = subprocess.Popen(command, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True, cwd=tmp)
                first.arm(proc.pid)  # before its first request: start-up takes far longer than this
                _, err = proc.communicate()
                ended = time.monotonic()
                if proc.returncode != 0 or first.at is None:
                    raise SystemExit(f"forge run failed (exit {proc.returncode}): {err.strip()[-300:]}")
                if i >= skip:
                    delays[key].append(first.at - began)
                    walls[key].append(ended - began)
                    if first.cpu is not None:
                        cpus[key].append(first.cpu)
        heavy = imported(command, env) if imports else {}
    a = delays["a"]
    out: dict[str, Any] = {
        "runs": runs, "first_request_median": statistics.median(a), "first_request_min": min(a),
        "first_request_max": max(a), "wall_median": statistics.median(walls["a"]), "target": TARGET,
        "met": statistics.median(a) <= TARGET, "heavy_imports": heavy,
        "cpu_to_first_request_median": statistics.median(cpus["a"]) if cpus["a"] else None,
        "load": os.getloadavg()[0]}
    if baseline:
        b = delays["b"]
        out.update(baseline_first_request_median=statistics.median(b),
                   baseline_wall_median=statistics.median(walls["b"]),
                   baseline_cpu_to_first_request_median=statistics.median(cpus["b"]) if cpus["b"] else None,
                   pair_ratio_median=statistics.median(x / y for x, y in zip(a, b, strict=True)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--baseline", metavar="DIR",
                        help="a directory with another forge_core (e.g. git archive of an older commit) to pair with")
    parser.add_argument("--json", action="store_true", help="one JSON line (for bench/run.py)")
    args = parser.parse_args()
    r = measure(args.runs, args.baseline)
    if args.json:
        print(json.dumps(r))
        return
    print(f"time to first request: median {r['first_request_median']:.3f} s (min {r['first_request_min']:.3f}, "
          f"max {r['first_request_max']:.3f}) over {r['runs']} runs; target <= {TARGET} s: "
          f"{'met' if r['met'] else 'missed'}")
    print(f"CPU seconds used by then: median {r['cpu_to_first_request_median']}; whole one-day run: median "
          f"{r['wall_median']:.3f} s; load average {r['load']:.1f}")
    if args.baseline:
        print(f"baseline {args.baseline}: first request median {r['baseline_first_request_median']:.3f} s, CPU "
              f"{r['baseline_cpu_to_first_request_median']}, whole run {r['baseline_wall_median']:.3f} s; "
              f"this tree / baseline, pair by pair: median {r['pair_ratio_median']:.2f}")
    heavy = ", ".join(f"{k} {v:.3f} s" for k, v in sorted(r["heavy_imports"].items(), key=lambda kv: -kv[1]))
    print(f"heavy modules imported: {heavy or 'none'}")


if __name__ == "__main__":
    main()
