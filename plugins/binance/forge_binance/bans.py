"""Binance 418 bans remembered across runs on this machine.

A ban lasts from 2 minutes to 3 days and "scales in duration for repeat offenders"
(exchange-apis.md A): a run that meets one stops, and the next one, started by cron or an
orchestrator a minute later, sent its first request into the ban again. The ban's end is kept
in ``$XDG_STATE_HOME/forge/binance-bans.json`` (default ``~/.local/state``) per API host, so a
run before it refuses in one line without asking. A shared ``--rate-budget`` also pauses every
participant; this needs none. Best effort: a state file that cannot be read or written is no
memory, never an error.
"""

from __future__ import annotations

import json
import os
import tempfile

from forge_core.times import now_ms


def path() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "forge", "binance-bans.json")


def _read() -> dict[str, int]:
    try:
        with open(path(), encoding="utf-8") as f:
            data = json.load(f)
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError):
        return {}


def banned_until(host: str) -> int | None:
    """The end of a ban of ``host`` (epoch ms) still running, else None."""
    until = _read().get(host)
    return until if until is not None and until > now_ms() else None


def remember(host: str, until: int) -> None:
    now = now_ms()
    bans = {h: t for h, t in _read().items() if t > now}
    bans[host] = max(until, bans.get(host, 0))
    try:
        folder = os.path.dirname(path())
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(bans, f)
        os.replace(tmp, path())
    except OSError:
        pass
