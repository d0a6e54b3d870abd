"""Where the database is and how to log in, without ever showing the password.

Sources, highest priority first: the keyword arguments ``host, port, dbname, user, password``
(the seed's ``PostgresEmitter``), the URL (``--database-url`` / ``FORGE_DATABASE_URL``),
``password_file``, then libpq's own defaults (``PGHOST``, ``PGPORT``, ``PGDATABASE``, ``PGUSER``,
``PGPASSWORD``, ``PGPASSFILE``, ``~/.pgpass``), which psycopg2 applies itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from forge_core import SinkError, UsageError

# Connection settings applied unless the URL's query string sets them: fail fast on a dead
# server, notice a silently dropped connection, and show up as "forge" in pg_stat_activity.
DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "30",
            "keepalives_interval": "10", "keepalives_count": "3", "application_name": "forge"}


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
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            return f.read().rstrip("\r\n")
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from None
