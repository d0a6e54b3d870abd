"""One commit's statements: how the kept ``COPY`` text reaches the table.

Upserts whose kept rows are known to have unique keys (one series per batch, ascending
``open_ts``, the key includes ``open_ts``) take one of two shortcuts:

- none of their keys exists yet (a fresh range, one index probe per series): ``COPY`` straight
  into the table, in a savepoint; a unique violation there (a concurrent writer) rolls back to
  it and takes the staging path;
- otherwise, after the staging ``COPY``, rows equal to the stored ones are deleted from the
  stage by one hash join over the table's key range, so an unchanged re-run neither locks nor
  rewrites anything; the rest is upserted.

Anything else is staged and upserted with ``DISTINCT ON`` the key (the last row wins). Plain
inserts (no key) ``COPY`` straight into the table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg2.errors
from psycopg2 import sql

from . import sql as q
from .pending import Pending
from .target import TableInfo


def send(cur: Any, table: TableInfo, key: tuple[str, ...], kept: Iterable[tuple[tuple[str, ...], Pending]]) -> int:
    """Send every kept column set (the caller commits); returns rows inserted or changed."""
    changed = 0
    for columns, pending in kept:
        data = pending.texts
        if not key:
            changed += copy(cur, q.copy_into(table, columns), data)
            continue
        unique = pending.ranges is not None
        if unique and not exists(cur, table, pending):
            cur.execute("SAVEPOINT forge_copy")
            try:
                changed += copy(cur, q.copy_into(table, columns), data)
                cur.execute("RELEASE SAVEPOINT forge_copy")
                continue
            except psycopg2.errors.UniqueViolation:
                cur.execute("ROLLBACK TO SAVEPOINT forge_copy")
        stage, create = q.stage(table, columns)
        cur.execute(create)
        copy(cur, q.copy_all(stage), data)
        if unique:
            cur.execute("SET LOCAL enable_nestloop = off")  # the stage has no statistics; ends at commit
            cur.execute(*q.drop_unchanged(table, key, pending, columns, stage))
            if max(cur.rowcount, 0) == pending.rows:
                continue
        cur.execute(q.upsert(table, key, columns, stage, dedupe=not unique))
        changed += max(cur.rowcount, 0)
    return changed


def exists(cur: Any, table: TableInfo, pending: Pending) -> bool:
    """Whether any key of the kept ranges is in the table already."""
    cur.execute(*q.any_exists(table, pending))
    return bool(cur.fetchone()[0])


class _Texts:
    """The kept texts as the file ``copy_expert`` reads: one batch's bytes per ``read`` (psycopg2
    sends whatever a read returns), so a commit never joins its rows into one more copy."""

    def __init__(self, texts: list[str]) -> None:
        self._texts = iter(texts)

    def read(self, size: int = -1) -> bytes:
        for text in self._texts:
            if text:
                return text.encode("utf-8")
        return b""


def copy(cur: Any, statement: sql.Composable, texts: list[str]) -> int:
    cur.copy_expert(statement, _Texts(texts))
    return max(cur.rowcount, 0)
