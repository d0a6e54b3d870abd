"""Where the database is, how to log in without ever showing the password, and a session that
runs transactions with retries, deadlines and a known fate for every COMMIT.

Sources of the connection settings, highest priority first: the keyword arguments ``host, port,
dbname, user, password`` (the seed's ``PostgresEmitter``), the URL (``--database-url`` /
``FORGE_DATABASE_URL``), ``password_file``, then libpq's own defaults (``PGHOST``, ``PGPORT``,
``PGDATABASE``, ``PGUSER``, ``PGPASSWORD``, ``PGPASSFILE``, ``~/.pgpass``), which psycopg2 applies
itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from forge_core import SinkError, SinkUnavailable, UsageError, retrying
from forge_core.logs import get_logger

log = get_logger(__name__)
T = TypeVar("T")

# Connection settings applied unless the URL's query string sets them: fail fast on a dead
# server, notice a silently dropped connection (keepalives; data unacknowledged for 30 s), and
# show up as "forge" in pg_stat_activity.
DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "30",
            "keepalives_interval": "10", "keepalives_count": "3", "tcp_user_timeout": "30000",
            "application_name": "forge"}
if psycopg2.__libpq_version__ < 120000:  # libpq learnt tcp_user_timeout in version 12
    del DEFAULTS["tcp_user_timeout"]


@dataclass(frozen=True)
class ConnectionSpec:
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def build(cls, url: str | None = None, *, host: str | None = None, port: int | str | None = None,
              dbname: str | None = None, user: str | None = None, password: str | None = None,
              password_file: str | None = None) -> ConnectionSpec:
        """Merge a URL and keyword arguments; the keywords win."""
        u_host = u_port = u_db = u_user = u_password = None
        params: dict[str, str] = {}
        if url:
            _refuse_unencoded_at(url)
            try:
                parsed = make_url(url)
            except (ArgumentError, ValueError):
                raise UsageError("bad database URL (it does not parse); expected "
                                 "postgresql://user@host:5432/dbname") from None
            if parsed.get_backend_name() not in ("postgresql", "postgres"):
                raise UsageError(f"database URL is for {parsed.get_backend_name()!r}, not PostgreSQL; "
                                 "expected postgresql://user@host:5432/dbname")
            u_host, u_port, u_db, u_user, u_password = (parsed.host, parsed.port, parsed.database,
                                                        parsed.username, parsed.password)
            for key, value in parsed.query.items():
                params[key] = value[-1] if isinstance(value, tuple) else value
            u_host = params.pop("host", None) or u_host  # ?host=/var/run/postgresql (socket dir)
        if port is not None and port != "":
            try:
                port = int(port)
            except ValueError:
                raise UsageError(f"bad database port {port!r}; expected a number such as 5432") from None
        if password is None and u_password is None and password_file:
            password = _read_password_file(password_file)
        return cls(host or u_host, port or u_port, dbname or u_db, user or u_user,
                   password if password is not None else u_password,
                   tuple(sorted({**DEFAULTS, **params}.items())))

    # -- display: never the password --------------------------------------------------------
    @property
    def where(self) -> str:
        """``host:port/dbname`` as libpq will resolve it (including its environment defaults)."""
        host = self.host or os.environ.get("PGHOST") or "localhost"
        port = self.port or os.environ.get("PGPORT") or 5432
        db = self.dbname or os.environ.get("PGDATABASE") or self.user or os.environ.get("PGUSER") or "(default)"
        return f"{host}:{port}/{db}"

    @property
    def safe_url(self) -> str:
        user = self.user or os.environ.get("PGUSER")
        return f"postgresql://{user + '@' if user else ''}{self.where}"

    def redact(self, text: str) -> str:
        """``text`` with the password (if any) masked: error messages echo what they are given."""
        if self.password and len(self.password) >= 3:
            text = text.replace(self.password, "***")
        return text

    # -- connecting ---------------------------------------------------------------------------
    def connect(self) -> psycopg2.extensions.connection:
        kwargs: dict[str, Any] = {k: v for k, v in self.params}
        for key in ("host", "port", "dbname", "user", "password"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        return psycopg2.connect(**kwargs)

    def connect_or_fail(self) -> psycopg2.extensions.connection:
        """Connect, or raise a one-line :class:`SinkError` naming host, port and database."""
        try:
            return self.connect()
        except psycopg2.Error as exc:
            who = f", user {self.user or os.environ.get('PGUSER') or '(default)'}"
            raise SinkError(f"cannot connect to PostgreSQL at {self.where}{who}: {self.reason(exc)}") from None

    def reason(self, exc: BaseException) -> str:
        """The useful line of a psycopg2 error, password masked."""
        return self.redact(one_line(exc))


def _refuse_unencoded_at(url: str) -> None:
    """libpq ends the user:password part at the first ``@``, so ``user:p@ss@host`` would send
    ``ss@host`` as the host name and echo that fragment of the password in its error. Refuse
    such a URL without showing any part of it."""
    _, sep, rest = url.partition("://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0] if sep else ""
    if authority.count("@") > 1:
        raise UsageError("bad database URL: its user:password part holds an unencoded '@' (libpq would take "
                         "what follows it for the host); write '@' in a password as %40, or give the password "
                         "through PGPASSWORD, ~/.pgpass or --password-file")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip()
    if "failed: " in line and line.startswith("connection to server"):
        line = line.split("failed: ", 1)[1]
    for prefix in ("FATAL:", "ERROR:"):
        if line.startswith(prefix):
            line = line[len(prefix):].strip()
    return line or type(exc).__name__


def _read_password_file(path: str) -> str:
    """The password: the file's one line, its line end (LF or CRLF) and a UTF-8 BOM removed,
    nothing else (spaces are part of it). Empty lines after it are ignored; a second line
    with text, or none at all, is an error that never shows the file's content."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"password file {path} is not UTF-8 text; it must hold the password on one line") from None
    lines = re.split(r"\r\n|\r|\n", text)
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise UsageError(f"password file {path} is empty; it must hold the password on one line")
    if len(lines) > 1:
        raise UsageError(f"password file {path} has {len(lines)} lines; it must hold only the password, on one "
                         "line (a ~/.pgpass-style host:port:db:user:password file goes in PGPASSFILE instead)")
    return lines[0]


# -- the session: transactions that survive dropped, restarted and silent servers -------------------
@dataclass(frozen=True)
class Retry:
    """Backoff from ``first`` doubling to ``most`` seconds, giving up ``within`` seconds after the
    first failure; ``timeout``: seconds one transaction may go without finishing before the peer
    is taken for silent (client-side deadline, and the server's ``statement_timeout``)."""

    first: float = 0.25
    most: float = 5.0
    within: float = 120.0
    timeout: float = 60.0

    @property
    def attempts(self) -> int:
        """The most attempts that fit in ``within`` (for displays: 'attempt 3/24')."""
        n, spent, delay = 1, 0.0, self.first
        while spent + delay <= self.within:
            n, spent, delay = n + 1, spent + delay, min(delay * 2, self.most)
        return n


@dataclass
class _Backend:
    """The server process of a connection, to find it again from another one."""

    pid: int
    started: Any


@dataclass
class _Unknown:
    """A COMMIT whose answer never came: the transaction and what the attempt computed."""

    xid: int
    backend: _Backend | None
    result: Any


class Session:
    """One connection, used by one thread. :meth:`run` executes a unit of work as a
    transaction and commits it; a dropped connection, a server restart or a peer that went
    silent (no answer within the deadline) is retried on a new connection.

    A write transaction learns its transaction id first. If the connection is lost during
    ``COMMIT``, the new connection asks the server (``txid_status``) whether it committed, so a
    commit is never sent twice, whatever the table or the rights on ``forge_progress``. The old
    server process is terminated first, so it cannot hold locks or commit later."""

    def __init__(self, spec: ConnectionSpec, label: str, retry: Retry) -> None:
        self.spec, self.label, self.retry = spec, label, retry
        self.conn: psycopg2.extensions.connection | None = None
        self.backend: _Backend | None = None
        self.retries = 0

    def open(self) -> None:
        """Connect now, or raise the one-line connection error (no retries: fail fast)."""
        self.drop()
        conn = self.spec.connect_or_fail()
        try:
            self._setup(conn)
        except psycopg2.Error as exc:
            with contextlib.suppress(psycopg2.Error):
                conn.close()
            raise SinkError(f"PostgreSQL {self.spec.where} table {self.label}: {self.spec.reason(exc)}") from None
        self.conn = conn

    def connection(self) -> psycopg2.extensions.connection:
        if self.conn is None or self.conn.closed:
            self.drop()
            conn = self.spec.connect()
            try:
                self._setup(conn)
            except BaseException:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
                raise
            self.conn = conn
            log.info("postgres_connected", where=self.spec.where)
        return self.conn

    def _setup(self, conn: psycopg2.extensions.connection) -> None:
        """Let the server end a transaction of ours left idle (its client gone silent), and
        note which server process this is."""
        with self.deadline(conn, self.retry.timeout), conn.cursor() as cur:
            cur.execute("SELECT set_config('idle_in_transaction_session_timeout', %s, false), pid, backend_start "
                        "FROM pg_stat_activity WHERE pid = pg_backend_pid()", (str(_ms(self.retry.timeout)),))
            found = cur.fetchone()
        conn.commit()
        self.backend = _Backend(found[1], found[2]) if found else None

    def run(self, work: Callable[[Any], T], what: str, *, retry: bool = True, writes: bool = False,
            resend_unknown: bool = True, timeout: float | None = None) -> T:
        """``work(cursor)`` in one transaction, committed. ``writes``: learn the transaction id
        first, so a lost COMMIT acknowledgement can be resolved; ``resend_unknown``: whether the
        work may be sent again when the server cannot tell whether it committed (upserts may,
        plain inserts may not). ``timeout`` overrides the per-transaction deadline."""
        limit = timeout if timeout is not None else self.retry.timeout
        delay = self.retry.first
        give_up: float | None = None
        attempt = 0
        unknown: _Unknown | None = None
        lost: _Backend | None = None
        while True:
            attempt += 1
            committing = False
            xid: int | None = None
            expired: threading.Event | None = None
            result: Any = None
            try:
                conn = self.connection()
                if lost is not None:  # the previous attempt's server process, maybe still alive
                    fate = self._settle(conn, lost, unknown.xid if unknown else None)
                    if unknown is not None:
                        if fate == "committed":
                            log.info("postgres_commit_was_kept", what=what, where=self.spec.where)
                            return unknown.result  # type: ignore[no-any-return]
                        if fate is None and not resend_unknown:
                            raise SinkError(
                                f"PostgreSQL {self.spec.where} table {self.label}: the connection was lost during "
                                f"{what} and the server cannot tell whether it committed; not sending plain "
                                "inserts again blindly: check the table's newest rows, then re-run")
                    lost = unknown = None
                with self.deadline(conn, limit) as expired:
                    with conn.cursor() as cur:
                        if writes:
                            cur.execute("SELECT txid_current(), set_config('statement_timeout', %s, true)",
                                        (str(_ms(limit)),))
                            xid = int(cur.fetchone()[0])
                        else:
                            cur.execute("SELECT set_config('statement_timeout', %s, true)", (str(_ms(limit)),))
                        result = work(cur)
                    committing = True
                    conn.commit()
                return result
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                reason = (f"no answer from the server within {limit:g}s" if expired is not None and expired.is_set()
                          else self.spec.reason(exc))
                if writes and self.backend is not None and lost is None:
                    lost = self.backend
                if committing and xid is not None:
                    unknown = _Unknown(xid, lost, result)
                self.drop()
                if not retry:
                    raise SinkError(f"PostgreSQL {self.spec.where} table {self.label}: {reason}") from None
                now = time.monotonic()
                give_up = give_up or now + self.retry.within
                if now + delay > give_up:
                    # the rows are kept: a follow run waits and commits again (SinkUnavailable), unless
                    # plain inserts whose COMMIT may have gone through would then be sent twice
                    final = SinkError if unknown is not None and not resend_unknown else SinkUnavailable
                    raise final(f"PostgreSQL {self.spec.where} table {self.label}: {what} failed "
                                f"{attempt} times over {self.retry.within:.0f}s, giving up: {reason}") from None
                self.retries += 1
                # a retry is progress, as the HTTP client's are: the progress line says it (-q: not),
                # -v logs it; a retry that fails for good is the error
                log.info("postgres_retry", what=what, attempt=attempt, wait=round(delay, 2),
                         where=self.spec.where, error=reason)
                wall = time.time()
                retrying.begin(retrying.Retrying(self.spec.where, f" table {self.label} ({what})", None, reason,
                                                 attempt + 1, self.retry.attempts, wall + delay, wall + give_up - now))
                try:
                    time.sleep(delay)
                finally:
                    retrying.end()
                delay = min(delay * 2, self.retry.most)
            except psycopg2.Error as exc:
                self.rollback()
                prefix = f"{what} failed: " if retry else ""
                raise SinkError(f"PostgreSQL {self.spec.where} table {self.label}: {prefix}"
                                f"{self.spec.reason(exc)}") from None
            except BaseException:
                self.rollback()
                raise

    def _settle(self, conn: psycopg2.extensions.connection, old: _Backend, xid: int | None) -> str | None:
        """End the old server process if it still runs (its transaction then aborts unless it
        committed), and return the fate of transaction ``xid``: ``committed``, ``aborted`` or
        ``None`` when the server cannot tell."""
        waited = 0.0
        with self.deadline(conn, self.retry.timeout), conn.cursor() as cur:
            try:
                cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s "
                            "AND backend_start = %s AND pid <> pg_backend_pid()", (old.pid, old.started))
            except psycopg2.errors.InsufficientPrivilege:
                conn.rollback()
            status: str | None = None
            while xid is not None:
                try:
                    cur.execute("SELECT txid_status(%s)", (xid,))
                    status = cur.fetchone()[0]
                except psycopg2.errors.UndefinedFunction:  # before PostgreSQL 10
                    conn.rollback()
                    status = None
                if status != "in progress" or waited >= self.retry.timeout:
                    break
                time.sleep(0.05)  # the old process is ending
                waited += 0.05
        conn.commit()
        return status if status in ("committed", "aborted") else None

    @contextlib.contextmanager
    def deadline(self, conn: psycopg2.extensions.connection, seconds: float) -> Iterator[threading.Event]:
        """Shut the connection's socket down if the block takes longer than ``seconds``: libpq
        then fails at once, instead of waiting forever on a peer that stopped answering but
        keeps the connection open (TCP keepalives never fire while it acknowledges)."""
        expired = threading.Event()

        def fire() -> None:
            expired.set()
            with contextlib.suppress(OSError, psycopg2.Error):
                sock = socket.socket(fileno=os.dup(conn.fileno()))
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()

        timer = threading.Timer(seconds, fire)
        timer.daemon = True
        timer.start()
        try:
            yield expired
        finally:
            timer.cancel()

    def rollback(self) -> None:
        if self.conn is not None and not self.conn.closed:
            try:
                self.conn.rollback()
            except psycopg2.Error:
                self.drop()

    def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.close()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
