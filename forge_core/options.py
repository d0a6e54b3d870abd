"""Options a source, sink or transform accepts, declared once for the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UsageError


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


def settings(kind: str, name: str, declared: tuple[Option, ...], given: dict[str, Any]) -> dict[str, Any]:
    """The declared options' values, defaults filled in; an undeclared one is a usage error."""
    unknown = sorted(set(given) - {o.name for o in declared})
    if unknown:
        accepted = ", ".join(o.name for o in declared) or "none"
        raise UsageError(f"{kind} {name!r} has no option {unknown[0]!r}; accepted: {accepted}")
    return {o.name: given.get(o.name, o.default) for o in declared}
