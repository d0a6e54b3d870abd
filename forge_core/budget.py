"""One rate budget shared by every process and machine behind an IP.

Each :class:`~forge_core.RateLimiter` keeps its own sliding window, which is enough for one
process. With a shared budget configured (``forge run --rate-budget URL``,
``FORGE_RATE_BUDGET`` or :func:`use`), every acquire also reserves its cost in a store that all
participants see, keyed by the limiter's name (the exchange and limit class, e.g.
``binance-spot``) and the egress (``FORGE_EGRESS``, default ``default``: one public IP):

* ``sqlite:///path/budget.db``: processes on one host (a file, no server);
* ``postgresql://...``: many hosts, in the PostgreSQL Forge already writes to (a table
  ``forge_rate_budget`` in its own schema-less table; no new server).

The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp):
a key's *theoretical arrival time* ``tat`` moves forward by ``cost * window / capacity`` per
reservation, and a reservation is allowed while ``tat <= now + tolerance``. The tolerance (the
burst) is 5% of the window, so any window holds at most about ``1.05 * capacity`` units, and
limiters size ``capacity`` at 95% of the exchange's limit: the exchange never sees more than
its limit in any window, however the participants interleave. One atomic statement per acquire. Exchange feedback is
shared too: :func:`pause` (a 429's ``Retry-After``, a 418's ban) stops every participant until
then, and :func:`observe` (Binance's ``X-MBX-USED-WEIGHT-1M``) moves ``tat`` forward to what
the server counted since its (fixed, epoch-aligned: the exchange's window, not the limiter's
slackened one) window began. An unreachable store is a clear error before any request.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit

from .errors import UsageError

BURST = 0.05
"""The tolerance, as a share of the window: how far ahead of the steady pace a key may run."""


class Store(Protocol):
    def reserve(self, key: str, cost: float, capacity: float, window: float) -> float:
        """Reserve ``cost`` if allowed now (return 0), else return seconds to wait (no change)."""

    def pause(self, key: str, seconds: float) -> None: ...

    def observe(self, key: str, used: float, capacity: float, window: float, align: float) -> None:
        """The server counted ``used`` since its current window began (windows of ``align``
        seconds from the epoch): ``tat`` is at least that window's start plus ``used``."""

    def close(self) -> None: ...


class SqliteStore:
    """GCRA in a SQLite file: one ``BEGIN IMMEDIATE`` transaction per reservation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        try:
            with self._conn() as conn:
                conn.execute("CREATE TABLE IF NOT EXISTS forge_rate_budget "
                             "(key TEXT PRIMARY KEY, tat REAL NOT NULL, paused_until REAL NOT NULL)")
        except sqlite3.Error as exc:
            raise UsageError(f"rate budget sqlite:///{path} is not usable: {exc}") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # no fsync per reservation: a budget needs no durability
            self._local.conn = conn
        return conn

    def _row(self, conn: sqlite3.Connection, key: str) -> tuple[float, float]:
        row = conn.execute("SELECT tat, paused_until FROM forge_rate_budget WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row else (0.0, 0.0)

    def _put(self, conn: sqlite3.Connection, key: str, tat: float, paused: float) -> None:
        conn.execute("INSERT INTO forge_rate_budget (key, tat, paused_until) VALUES (?, ?, ?) "
                     "ON CONFLICT(key) DO UPDATE SET tat = excluded.tat, paused_until = excluded.paused_until",
                     (key, tat, paused))

    def reserve(self, key: str, cost: float, capacity: float, window: float) -> float:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            tat, paused = self._row(conn, key)
            if paused > now:
                conn.execute("COMMIT")
                return paused - now
            if tat - now > BURST * window:
                conn.execute("COMMIT")
                return tat - now - BURST * window
            self._put(conn, key, max(tat, now) + cost * window / capacity, paused)
            conn.execute("COMMIT")
            return 0.0
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def pause(self, key: str, seconds: float) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        tat, paused = self._row(conn, key)
        self._put(conn, key, tat, max(paused, time.time() + seconds))
        conn.execute("COMMIT")

    def observe(self, key: str, used: float, capacity: float, window: float, align: float) -> None:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        now = time.time()
        tat, paused = self._row(conn, key)
        self._put(conn, key, max(tat, now // align * align + used * window / capacity), paused)
        conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class PostgresStore:
    """GCRA in PostgreSQL: one ``INSERT ... ON CONFLICT ... RETURNING`` per reservation, on the
    server's clock (``clock_timestamp()``), so machines with skewed clocks agree."""

    RESERVE = """
        INSERT INTO forge_rate_budget AS b (key, tat, paused_until)
        VALUES (%(key)s, extract(epoch FROM clock_timestamp()) + %(inc)s, 0)
        ON CONFLICT (key) DO UPDATE SET tat = greatest(b.tat, extract(epoch FROM clock_timestamp())) + %(inc)s
        WHERE b.paused_until <= extract(epoch FROM clock_timestamp())
          AND b.tat <= extract(epoch FROM clock_timestamp()) + %(burst)s
        RETURNING 0"""
    WAIT = """
        SELECT greatest(paused_until - e, tat - e - %(burst)s, 0.001)
        FROM forge_rate_budget, extract(epoch FROM clock_timestamp()) AS e WHERE key = %(key)s"""

    def __init__(self, url: str) -> None:
        import psycopg2

        self._psycopg2 = psycopg2
        self.url = url
        # one connection per process, not per worker thread: 16 hosts x 4 processes x 5 threads
        # would be 320 connections; a statement takes ~1 ms, so the workers barely queue
        self._lock = threading.Lock()
        self._connection: Any = None
        try:
            with self._lock, self._conn().cursor() as cur:  # many participants start at once: create under a lock
                cur.execute("BEGIN; SELECT pg_advisory_xact_lock(7146835); CREATE UNLOGGED TABLE IF NOT EXISTS "
                            "forge_rate_budget (key text PRIMARY KEY, tat double precision NOT NULL, "
                            "paused_until double precision NOT NULL); COMMIT")
        except psycopg2.Error as exc:
            where = urlsplit(url)
            raise UsageError(f"rate budget at {where.hostname or 'localhost'}:{where.port or 5432} is not "
                             f"reachable: {str(exc).strip().splitlines()[0]}") from None

    # the table is UNLOGGED and commits are asynchronous: a reservation waits for no disk flush
    # (after a server crash the budget restarts empty, which costs nothing but a burst)
    def _conn(self) -> Any:
        conn = self._connection
        if conn is None or conn.closed:
            conn = self._psycopg2.connect(self.url, connect_timeout=10, application_name="forge-rate-budget",
                                          options="-c synchronous_commit=off")
            conn.autocommit = True
            self._connection = conn
        return conn

    def reserve(self, key: str, cost: float, capacity: float, window: float) -> float:
        args = {"key": key, "inc": cost * window / capacity, "burst": BURST * window}
        with self._lock, self._conn().cursor() as cur:
            cur.execute(self.RESERVE, args)
            if cur.fetchone() is not None:
                return 0.0
            cur.execute(self.WAIT, args)
            row = cur.fetchone()
            return float(row[0]) if row else 0.001

    def pause(self, key: str, seconds: float) -> None:
        with self._lock, self._conn().cursor() as cur:
            cur.execute("INSERT INTO forge_rate_budget AS b (key, tat, paused_until) "
                        "VALUES (%(key)s, 0, extract(epoch FROM clock_timestamp()) + %(s)s) "
                        "ON CONFLICT (key) DO UPDATE SET paused_until = greatest(b.paused_until, "
                        "extract(epoch FROM clock_timestamp()) + %(s)s)", {"key": key, "s": seconds})

    def observe(self, key: str, used: float, capacity: float, window: float, align: float) -> None:
        with self._lock, self._conn().cursor() as cur:
            cur.execute("INSERT INTO forge_rate_budget AS b (key, tat, paused_until) "
                        "VALUES (%(key)s, floor(extract(epoch FROM clock_timestamp()) / %(w)s) * %(w)s + %(inc)s, 0) "
                        "ON CONFLICT (key) DO UPDATE SET tat = greatest(b.tat, "
                        "floor(extract(epoch FROM clock_timestamp()) / %(w)s) * %(w)s + %(inc)s)",
                        {"key": key, "inc": used * window / capacity, "w": align})

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class SharedBudget:
    """The configured store, with the egress label that scopes its keys."""

    def __init__(self, store: Store, egress: str) -> None:
        self.store, self.egress = store, egress
        self.waited = 0.0

    def key(self, name: str) -> str:
        return f"{self.egress}:{name or 'default'}"

    def acquire(self, name: str, cost: float, capacity: float, window: float) -> None:
        key = self.key(name)
        while True:
            wait = self.store.reserve(key, cost, capacity, window)
            if wait <= 0:
                return
            self.waited += wait
            time.sleep(min(wait, 1.0))

    def pause(self, name: str, seconds: float) -> None:
        self.store.pause(self.key(name), seconds)

    def observe(self, name: str, used: float, capacity: float, window: float, align: float | None = None) -> None:
        """``align``: the exchange's own fixed window (the limiter's ``window`` may add a slack
        to it); the server's count is placed at the start of that window."""
        self.store.observe(self.key(name), used, capacity, window, align or window)


_current: SharedBudget | None = None
_lock = threading.Lock()


def open_store(url: str) -> Store:
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:  # e.g. "Invalid IPv6 URL": bad input, one line without the URL
        raise UsageError(f"rate budget URL does not parse ({exc}): use sqlite:///PATH (processes on one "
                         "host) or postgresql://HOST/DB (many hosts)") from None
    if scheme == "sqlite":
        # as SQLAlchemy spells it: sqlite:///relative.db, sqlite:////absolute/path.db
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise UsageError(f"rate budget {url!r} names no file: use sqlite:///budget.db or sqlite:////abs/path.db")
        return SqliteStore(path)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        return PostgresStore(url.replace("postgresql+psycopg2://", "postgresql://"))
    raise UsageError(f"unknown rate budget {scheme + '://' if scheme else url!r}: use sqlite:///PATH "
                     "(processes on one host) or postgresql://... (many hosts)")


def use(url: str | None, egress: str | None = None) -> SharedBudget | None:
    """Share every limiter of this process through the store at ``url`` (``None``: stop)."""
    global _current
    with _lock:
        if _current is not None:
            _current.store.close()
        _current = None if not url else SharedBudget(
            open_store(url), egress or os.environ.get("FORGE_EGRESS") or "default")
        return _current


@contextmanager
def scoped(url: str) -> Iterator[SharedBudget]:
    """Use the store at ``url`` for the duration of a run, then put back what was in use (a
    later run in the same process without a budget must not inherit this one)."""
    global _current
    shared = SharedBudget(open_store(url), os.environ.get("FORGE_EGRESS") or "default")
    with _lock:
        previous, _current = _current, shared
    try:
        yield shared
    finally:
        with _lock:
            _current = previous
        shared.store.close()


def current() -> SharedBudget | None:
    """The shared budget in use, configured lazily from ``FORGE_RATE_BUDGET``."""
    global _current
    if _current is None and os.environ.get("FORGE_RATE_BUDGET"):
        use(os.environ["FORGE_RATE_BUDGET"])
    return _current
