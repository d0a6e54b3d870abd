"""The statements the sink sends, built from quoted identifiers only
(:class:`psycopg2.sql.Identifier`): table and column names are used exactly as given."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from psycopg2 import sql

from .pending import Pending
from .target import TableInfo


def names(columns: Sequence[str], alias: str | None = None) -> sql.Composable:
    if alias is None:
        return sql.SQL(", ").join(map(sql.Identifier, columns))
    return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in columns)


def copy_into(table: TableInfo, columns: Sequence[str]) -> sql.Composable:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(table.ident, names(columns))


def copy_all(target: sql.Composable) -> sql.Composable:
    return sql.SQL("COPY {} FROM STDIN").format(target)


def stage(table: TableInfo, columns: Sequence[str]) -> tuple[sql.Composable, sql.Composable]:
    """A temporary table of the target's types for ``columns``, emptied at every commit (per
    session: no WAL, no index), and the statement that creates it if missing."""
    digest = hashlib.sha1("\x00".join((table.label, *columns)).encode()).hexdigest()[:12]
    ident = sql.Identifier(f"forge_stage_{digest}")
    return ident, sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS SELECT {} FROM {} "
                          "WITH NO DATA").format(ident, names(columns), table.ident)


def range_filter(pending: Pending, alias: str) -> tuple[sql.Composable, list[Any]]:
    """``alias.k = %s AND ... AND alias.open_ts BETWEEN %s AND %s``, OR-ed over the series kept."""
    assert pending.ranges is not None and pending.mapping is not None
    clauses, params = [], []
    for values, (lo, hi) in pending.ranges.items():
        where = [sql.SQL("{}.{} = %s").format(sql.Identifier(alias), sql.Identifier(c))
                 for c in pending.mapping.key_others]
        where.append(sql.SQL("{}.{} BETWEEN %s AND %s").format(sql.Identifier(alias), sql.Identifier("open_ts")))
        clauses.append(sql.SQL("(") + sql.SQL(" AND ").join(where) + sql.SQL(")"))
        params += [*values, lo, hi]
    return sql.SQL("(") + sql.SQL(" OR ").join(clauses) + sql.SQL(")"), params


def any_exists(table: TableInfo, pending: Pending) -> tuple[sql.Composable, list[Any]]:
    """Whether the table holds any row whose key falls in the ``open_ts`` ranges kept."""
    where, params = range_filter(pending, "t")
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM {} AS t WHERE {})").format(table.ident, where), params


def drop_unchanged(table: TableInfo, key: Sequence[str], pending: Pending, columns: Sequence[str],
                   stage: sql.Composable) -> tuple[sql.Composable, list[Any]]:
    """Delete from the stage the rows the table already holds with equal values: a hash join
    over the key range, one index range scan instead of a probe per row."""
    where, params = range_filter(pending, "t")
    rest = [c for c in columns if c not in key]
    match = [sql.SQL("s.{0} = t.{0}").format(sql.Identifier(c)) for c in key]
    if rest:
        match.append(sql.SQL("({}) IS NOT DISTINCT FROM ({})").format(names(rest, "s"), names(rest, "t")))
    return sql.SQL("DELETE FROM {} AS s USING {} AS t WHERE {} AND {}").format(
        stage, table.ident, where, sql.SQL(" AND ").join(match)), params


def upsert(table: TableInfo, key: Sequence[str], columns: Sequence[str], stage: sql.Composable,
           dedupe: bool) -> sql.Composable:
    """``INSERT ... SELECT`` from the stage ``ON CONFLICT (key)``, rewriting only changed rows;
    ``dedupe``: the same key may come twice in one commit, the last row sent wins."""
    source: sql.Composable = sql.SQL("SELECT {} FROM {}").format(names(columns), stage)
    if dedupe:
        source = sql.SQL("SELECT DISTINCT ON ({}) {} FROM {} ORDER BY {}, ctid DESC").format(
            names(key), names(columns), stage, names(key))
    query = sql.SQL("INSERT INTO {} AS t ({}) {} ON CONFLICT ({}) ").format(table.ident, names(columns), source,
                                                                           names(key))
    rest = [c for c in columns if c not in key]
    if not rest:
        return query + sql.SQL("DO NOTHING")
    return query + sql.SQL("DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})").format(
        sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in rest),
        names(rest, "t"), sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c)) for c in rest))


def last_open(table: TableInfo, source: str, symbol: str, timeframe: str) -> tuple[sql.Composable, list[Any]]:
    """``max(open_ts)`` of the series, filtered on the ``source, symbol, timeframe`` columns the
    table has."""
    where = [(c, v) for c, v in (("source", source), ("symbol", symbol), ("timeframe", timeframe))
             if c in table.columns]
    query = sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier("open_ts"), table.ident)
    if where:
        query += sql.SQL(" WHERE ") + sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c))
                                                            for c, _ in where)
    return query, [v for _, v in where]


DDL_LOCK = "SELECT pg_advisory_xact_lock(7146836)"
"""Taken before any ``CREATE TABLE IF NOT EXISTS``: runs starting together (partitions in many
processes) would otherwise race in PostgreSQL's catalog (``duplicate key ... pg_type``). Held
to the end of the transaction."""
