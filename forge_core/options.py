"""Options a source, sink or transform accepts, declared once for the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One keyword argument of a plugin class, shown as ``--name-with-dashes`` on the CLI.

    ``envvar`` is documentation only: the plugin reads it itself, so the Python API honours it
    too. ``secret`` values are never echoed. Two plugins declaring the same name share one
    CLI option (e.g. ``--base-url``).
    """

    name: str
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    envvar: str | None = None
    multiple: bool = False
    is_flag: bool = False
    secret: bool = False
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")
