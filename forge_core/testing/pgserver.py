"""A throwaway PostgreSQL server for the test suite: ``initdb`` into a temp dir, ``pg_ctl`` start.

PostgreSQL refuses to run as root, so when we are root the data directory belongs to an
unprivileged system user (``forge-pg``, created with ``useradd`` if missing, else ``nobody``)
and every server command runs as that user. The server listens on 127.0.0.1 on a free port and
on a unix socket inside the temp dir. Authentication: the superuser ``postgres`` is trusted;
every other role needs its password (``scram-sha-256``), so tests can try wrong passwords.

    server = start()          # .url: postgresql://postgres@127.0.0.1:PORT/forge_test
    server.restart()          # e.g. in the middle of a run
    server.stop()             # pg_ctl stop -m fast, then the directory is removed
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

DATABASE = "forge_test"
SUPERUSER = "postgres"
HBA = f"""\
local all all trust
host all {SUPERUSER} 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""
_current: PgServer | None = None


@dataclass
class PgServer:
    directory: str
    port: int
    user: str | None  # the unprivileged OS user the server runs as, when we are root
    durable: bool = False  # fsync on (benchmarks); off by default, for fast tests
    log: str = field(init=False)

    def __post_init__(self) -> None:
        self.log = os.path.join(self.directory, "server.log")

    @property
    def data(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [_binary(args[0]), *args[1:]]
        if self.user is not None:  # drop root: postgres refuses to run as root
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.directory,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()} "
                               f"{_tail(self.log)}")
        return proc

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=50"
        if not self.durable:
            opts += " -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "30", "-o", opts, "start")

    def stop(self, remove: bool = True) -> None:
        if os.path.isdir(self.data):  # else already stopped and removed, or never initialised
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop", check=False)
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)
            global _current
            if _current is self:
                _current = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop (terminating every connection), stay down ``down_for`` seconds, start again."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        time.sleep(down_for)
        self.start()

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = self._run("psql", "-h", self.directory, "-p", str(self.port), "-U", SUPERUSER, "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-qAtc", sql)
        return proc.stdout


def start(durable: bool = False) -> PgServer:
    """Start a fresh server with an empty database ``forge_test``; the caller must ``stop()`` it.
    ``durable`` keeps fsync on (as a real server), for benchmarks."""
    global _current
    user = _unprivileged_user() if os.geteuid() == 0 else None
    directory = tempfile.mkdtemp(prefix="forge-pg-")
    os.chmod(directory, 0o755)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(directory, entry.pw_uid, entry.pw_gid)
    server = PgServer(directory, _free_port(), user, durable)
    try:
        server._run("initdb", "-D", server.data, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                    "--locale=C", "--no-sync")
        with open(os.path.join(server.data, "pg_hba.conf"), "w") as hba:
            hba.write(HBA)
        server.start()
        server.psql(f"CREATE DATABASE {DATABASE}")
    except BaseException:
        server.stop()
        raise
    _current = server
    atexit.register(server.stop)  # also on an interrupted session (idempotent after stop())
    return server


def current() -> PgServer | None:
    """The server :func:`start` started in this process and not yet stopped, if any."""
    return _current


def _unprivileged_user() -> str:
    for name in ("forge-pg",):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                           "forge-pg"], capture_output=True, text=True)
    if made.returncode == 0 or made.returncode == 9:  # 9: already exists (a concurrent session)
        return "forge-pg"
    return "nobody"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path) as f:
            return " | ".join(f.read().splitlines()[-lines:])
    except OSError:
        return ""


def _binary(name: str) -> str:
    """A PostgreSQL server program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not candidates:
        raise RuntimeError(f"{name} not found on PATH or in /usr/lib/postgresql/*/bin: install PostgreSQL "
                           "(apt-get install postgresql) or set FORGE_TEST_DATABASE_URL")
    return candidates[-1]
