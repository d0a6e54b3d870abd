"""The destination table: the default ``klines`` or a user's SQLAlchemy model, its real columns
as the database catalog reports them, and how a batch's columns map onto them.

Names only ever reach SQL as :class:`psycopg2.sql.Identifier` (quoted, used exactly as given).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from psycopg2 import sql

from forge_core import CANDLE_COLUMNS, SinkError, UsageError

DEFAULT_TABLE = "klines"
PRIMARY_KEY = ("source", "symbol", "timeframe", "open_ts")
DEFAULT_TYPES = {"source": "text", "symbol": "text", "timeframe": "text", "open_ts": "bigint",
                 "end_ts": "bigint", "open": "numeric", "high": "numeric", "low": "numeric",
                 "close": "numeric", "volume": "numeric"}
# Columns sources commonly add (Binance); others take their type from the values of the first batch.
KNOWN_TYPES = {**DEFAULT_TYPES, "quote_volume": "numeric", "trades": "bigint",
               "taker_buy_base_volume": "numeric", "taker_buy_quote_volume": "numeric"}
# The comment on tables the sink creates: such a table keeps every column a run produces.
MARKER = "forge: candles; every column a run produces is stored"
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INT64 = 2**63


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    required: bool  # NOT NULL and nothing fills it by itself (no default, identity, generated)
    generated: bool


@dataclass(frozen=True)
class TableInfo:
    """A table as the catalog describes it."""

    schema: str | None
    name: str
    columns: dict[str, ColumnInfo]
    primary_key: tuple[str, ...]
    unique: tuple[frozenset[str], ...]  # column sets of plain unique indexes (incl. the primary key)
    comment: str | None = None

    @property
    def keeps_every_column(self) -> bool:
        """Created by this sink (or the default table by name): a column a run produces that
        the table lacks is an error, never a silent drop."""
        return self.comment == MARKER or self.name == DEFAULT_TABLE

    @property
    def ident(self) -> sql.Composable:
        return qualified(self.schema, self.name)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def writable(self, available: Iterable[str]) -> tuple[str, ...]:
        """Columns of this table a batch with columns ``available`` fills, in table order."""
        have = set(available)
        return tuple(c.name for c in self.columns.values() if c.name in have and not c.generated)

    def check_fillable(self, available: Sequence[str], what: str) -> None:
        """Refuse (one line) when a required column is not among ``available``."""
        have = set(available)
        for col in self.columns.values():
            if col.required and col.name not in have:
                raise SinkError(f"table {self.label} column {col.name!r} is required (NOT NULL, no default) "
                                f"but {what} has no such column; it has: {', '.join(available)}")


def split_name(table: str) -> tuple[str | None, str]:
    """``schema.table`` or ``table``; names are used exactly as given (case-sensitive)."""
    table = str(table).strip()
    schema, _, name = table.rpartition(".")
    for part in (schema, name) if schema else (name,):
        if not part or "\x00" in part or len(part.encode()) > 63:
            raise UsageError(f"bad table name {table!r}; expected a name such as klines or "
                             "market.klines (at most 63 bytes per part)")
    return schema or None, name


def qualified(schema: str | None, name: str) -> sql.Composable:
    return sql.Identifier(schema, name) if schema else sql.Identifier(name)


def column_type(name: str, values: Iterable[Any] = ()) -> str:
    """The type of a new column: known by name, else from its values: ``bigint`` for ints,
    ``numeric`` for decimal strings and decimals, ``double precision`` for floats, ``boolean``,
    ``text`` for anything else (or when nothing but NULLs was seen)."""
    known = KNOWN_TYPES.get(name)
    if known is not None:
        return known
    seen = [v for v in values if v is not None]
    if not seen:
        return "text"
    if all(isinstance(v, bool) for v in seen):
        return "boolean"
    if any(isinstance(v, bool) for v in seen):
        return "text"
    if all(isinstance(v, int) for v in seen):
        return "bigint" if all(-_INT64 <= v < _INT64 for v in seen) else "numeric"
    if all(isinstance(v, (int, float)) for v in seen):
        return "double precision"
    if all(isinstance(v, (int, Decimal)) or (isinstance(v, str) and _DECIMAL.fullmatch(v)) for v in seen):
        return "numeric"
    return "text"


def default_table_ddl(schema: str | None, name: str, types: dict[str, str]) -> list[sql.Composable]:
    """``CREATE TABLE`` with a column per entry of ``types`` (in order; the canonical ones NOT
    NULL), the primary key ``source, symbol, timeframe, open_ts`` when the run has those
    columns, and the comment that marks the table as the sink's own."""
    cols = [sql.SQL("{} {}{}").format(sql.Identifier(c), sql.SQL(t), sql.SQL(" NOT NULL" if c in CANDLE_COLUMNS else ""))
            for c, t in types.items()]
    if all(c in types for c in PRIMARY_KEY):
        cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, PRIMARY_KEY))))
    table = qualified(schema, name)
    return [sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(table, sql.SQL(", ").join(cols)),
            sql.SQL("COMMENT ON TABLE {} IS {}").format(table, sql.Literal(MARKER))]


def planned(schema: str | None, name: str, columns: Sequence[str]) -> TableInfo:
    """The default table as :func:`default_table_ddl` will create it for ``columns``."""
    infos = {c: ColumnInfo(c, column_type(c), c in CANDLE_COLUMNS, False) for c in columns}
    key = PRIMARY_KEY if all(c in infos for c in PRIMARY_KEY) else ()
    return TableInfo(schema, name, infos, key, (frozenset(key),) if key else (), MARKER)


def missing_columns_error(table: TableInfo, missing: dict[str, str], what: str) -> SinkError:
    """One line: what the table lacks, and the statement that adds it."""
    adds = ", ".join(f"ADD COLUMN {_quote(c)} {t}" for c, t in missing.items())
    names = ", ".join(repr(c) for c in missing)
    return SinkError(f"table {table.label} has no column {names} that {what} produces; add "
                     f"{'it' if len(missing) == 1 else 'them'} (ALTER TABLE {_quote_label(table)} {adds}) "
                     "or leave it out with --transform select")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_label(table: TableInfo) -> str:
    return f"{_quote(table.schema)}.{_quote(table.name)}" if table.schema else _quote(table.name)


# -- models -------------------------------------------------------------------------------------
def load_model(spec: Any) -> Any:
    """A SQLAlchemy ``Table`` from a declarative class, a ``Table``, or ``package.module:Class``."""
    obj = spec
    if isinstance(spec, str):
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise UsageError(f"bad model {spec!r}; expected package.module:Class")
        obj = _import_attr(spec, module_name, attr)
    table = getattr(obj, "__table__", obj)
    from sqlalchemy import Table

    if not isinstance(table, Table):
        raise UsageError(f"model {_describe(spec)} is not a SQLAlchemy declarative model or Table "
                         "(it has no __table__)")
    return table


def _import_attr(spec: str, module_name: str, attr: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A console script does not have the current directory on sys.path as `python -m` does;
        # look there too (last, so it never shadows an installed module).
        if exc.name != module_name.split(".")[0] or os.getcwd() in sys.path:
            raise UsageError(f"cannot import model {spec!r}: {exc}") from None
        sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except Exception as again:  # found in the current directory, but it raises on import
            raise UsageError(f"cannot import model {spec!r}: {type(again).__name__}: {again}") from None
    except Exception as exc:
        raise UsageError(f"cannot import model {spec!r}: {type(exc).__name__}: {exc}") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UsageError(f"cannot load model {spec!r}: module {module_name} has no {attr!r}") from None
    return obj


def _describe(spec: Any) -> str:
    return repr(spec) if isinstance(spec, str) else getattr(spec, "__name__", repr(spec))


def model_required(table: Any) -> list[str]:
    """Columns of a model that an INSERT must fill: NOT NULL or primary key, with no default,
    server default, identity, computed value or autoincrement."""
    auto = table.autoincrement_column
    out = []
    for col in table.columns:
        fills_itself = (col.default is not None or col.server_default is not None or col is auto
                        or col.computed is not None or col.identity is not None)
        if (not col.nullable or col.primary_key) and not fills_itself:
            out.append(col.name)
    return out


def check_model(table: Any, available: Sequence[str], what: str) -> None:
    have = set(available)
    for name in model_required(table):
        if name not in have:
            raise SinkError(f"model table {table.fullname} column {name!r} is required (NOT NULL or primary "
                            f"key, no default) but {what} has no such column; it has: {', '.join(available)}")


# -- the catalog --------------------------------------------------------------------------------
def regclass(cur: Any, schema: str | None, name: str) -> int | None:
    if schema:
        cur.execute("SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))::oid", (schema, name))
    else:
        cur.execute("SELECT to_regclass(format('%%I', %s::text))::oid", (name,))
    oid = cur.fetchone()[0]
    return int(oid) if oid is not None else None


def inspect(cur: Any, schema: str | None, name: str) -> TableInfo | None:
    oid = regclass(cur, schema, name)
    if oid is None:
        return None
    cur.execute("SELECT obj_description(%s, 'pg_class')", (oid,))
    comment = cur.fetchone()[0]
    cur.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull AND NOT a.atthasdef "
        "AND a.attidentity = '' AND a.attgenerated = '', a.attgenerated <> '' "
        "FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum", (oid,))
    columns = {r[0]: ColumnInfo(r[0], r[1], bool(r[2]), bool(r[3])) for r in cur.fetchall()}
    cur.execute(
        "SELECT i.indisprimary, ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o) "
        "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o) "
        "FROM pg_index i WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL "
        "AND i.indexprs IS NULL", (oid,))
    primary: tuple[str, ...] = ()
    unique = []
    for is_primary, cols in cur.fetchall():
        unique.append(frozenset(cols))
        if is_primary:
            primary = tuple(cols)
    return TableInfo(schema, name, columns, primary, tuple(unique), comment)
