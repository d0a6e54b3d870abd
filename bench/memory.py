"""Peak RSS of one ``forge run``, measured in a process of its own.

    python bench/memory.py [--idle] [--without pandas] -- run -s binance --symbol BTCUSDT --from ... --to ... -q

Runs the ``forge`` CLI in this process (exactly what the console script does) and prints one
JSON line with the peak RSS of this process in MiB (``VmHWM``, see :func:`vm_hwm_mib`) plus that
of the Binance archive's helper process if the run started one (``own_mib``, ``helper_mib``: the
two, whose peaks need not coincide, so their sum is an upper bound), the exit code and the
wall time. ``--idle`` only imports Forge and loads its plugins: the floor any run starts from.
``--without MODULE`` makes ``import MODULE`` fail, as on an install without it: pyarrow imports
pandas (40 MiB) whenever it converts Python values, if pandas is there, and the development
install has it (a test extra).
"""

from __future__ import annotations

import importlib.abc
import json
import resource
import sys
import time
from typing import Any


def vm_hwm_mib() -> float:
    """This process's peak RSS. ``VmHWM`` from /proc, not ``ru_maxrss``: Linux carries the
    parent's RSS at fork into the child's ``ru_maxrss`` across exec, so a child of a big
    benchmark process would report the parent's size."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Without(importlib.abc.MetaPathFinder):
    """Makes importing the given top-level packages fail as if they were not installed."""

    def __init__(self, names: set[str]) -> None:
        self.names = names

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def main() -> None:
    argv = sys.argv[1:]
    idle = "--idle" in argv
    head = argv[: argv.index("--")] if "--" in argv else argv
    blocked = {head[i + 1] for i, word in enumerate(head) if word == "--without" and i + 1 < len(head)}
    if blocked:
        sys.meta_path.insert(0, _Without(blocked))
    if "--" in argv:
        argv = argv[argv.index("--") + 1:]
    began = time.perf_counter()
    code = 0
    if idle:
        from forge_core.plugins import Plugins

        plugins = Plugins()
        plugins.get("source", "binance")
        plugins.get("sink", "csv")
    else:
        from forge_core.cli import main as forge

        code = forge(argv)
    own = vm_hwm_mib()
    # the Binance archive's helper process (forge_binance.kline_text), if the run started one:
    # its peak is added to the run's, so the figure is what the run holds with its helper
    helpers = getattr(sys.modules.get("forge_binance.kline_text"), "PEAKS", None) or [0.0]
    peak = own + max(helpers)
    print(json.dumps({"maxrss_mib": round(peak, 1), "own_mib": round(own, 1), "helper_mib": round(max(helpers), 1),
                      "exit": code, "seconds": time.perf_counter() - began}))


if __name__ == "__main__":
    main()
