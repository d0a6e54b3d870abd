"""What the streamforge-style ``sf.PostgresEmitter`` adds to the sink: the connection keywords
``host, port, dbname, user, password``, the chainable ``set_model`` and ``on_conflict``, and its
default of plain inserts until ``on_conflict()`` is called."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from forge_core import UsageError

from .target import load_model

# Python-API keyword arguments of the seed's PostgresEmitter; not CLI options (a password on the
# command line is visible in the process list: use the URL from the environment, PGPASSWORD,
# ~/.pgpass or --password-file there).
CONNECTION_KWARGS = ("host", "port", "dbname", "user", "password")
PLAIN = ("none", "no", "false", "off", "insert")


def connection_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    """Take the emitter's connection keywords out of ``options``."""
    return {k: options.pop(k) for k in CONNECTION_KWARGS if k in options}


class EmitterMethods:
    """``PostgresEmitter(...).set_model(KlineTable).on_conflict([...])``."""

    compat_defaults = {"on_conflict": "none"}  # sf.PostgresEmitter inserts unless on_conflict() is called
    model: Any
    schema: str | None
    table_name: str
    conflict: tuple[str, ...] | None

    def set_model(self, model: Any) -> Any:
        """Write into ``model``'s table (a declarative class, ``Table`` or ``module:Class``)."""
        self.model = load_model(model)
        self.schema, self.table_name = self.model.schema, self.model.name
        return self

    def on_conflict(self, columns: Sequence[str] | str | None) -> Any:
        """Upsert on ``columns``; ``None`` = the primary key; ``[]`` or ``"none"`` = plain inserts."""
        self.conflict = conflict_columns(columns)
        return self


def conflict_columns(value: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """``None`` (primary key), ``()`` (plain inserts) or the named columns."""
    if value is None or value is True:
        return None
    if value is False:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in PLAIN:
            return ()
        if text.lower() in ("", "pk", "primary", "primary_key", "primary-key"):
            return None
        parts = [p.strip() for p in text.split(",")]
    else:
        parts = [str(p).strip() for p in value]
    if any(not p for p in parts):
        raise UsageError(f"bad --on-conflict {value!r}; expected comma-separated column names such as "
                         "source,symbol,timeframe,open_ts, or 'none' for plain inserts")
    return tuple(dict.fromkeys(parts))
