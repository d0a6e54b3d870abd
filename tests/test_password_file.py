"""``--password-file``: the password is the file's one line (its LF or CRLF line end removed);
a file with a second line, or nothing, is one clear line naming the file, never its content
(issue 16)."""

from __future__ import annotations

import pytest

from forge_core import UsageError
from forge_sink_postgres.connection import ConnectionSpec

SECRET = "s3cr-et pass"  # a space is part of a password


@pytest.mark.parametrize("content", [SECRET, SECRET + "\n", SECRET + "\r\n", SECRET + "\n\n", "\ufeff" + SECRET + "\r\n"])
def test_the_line_end_is_not_part_of_the_password(tmp_path, content):
    path = tmp_path / "pw"
    path.write_bytes(content.encode())
    assert ConnectionSpec.build("postgresql://me@db/crypto", password_file=str(path)).password == SECRET


@pytest.mark.parametrize("content, why", [(SECRET + "\nsecond-secret\n", "has 2 lines"),
                                          ("db:5432:crypto:me:" + SECRET + "\r\nx\r\ny", "has 3 lines"),
                                          ("", "is empty"), ("\n\r\n", "is empty"),
                                          (b"\xff\xfe" + SECRET.encode("utf-16-le"), "is not UTF-8 text")])
def test_a_password_file_that_is_not_one_line_is_one_clear_error(tmp_path, content, why):
    path = tmp_path / "pw"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UsageError, match=why) as caught:
        ConnectionSpec.build("postgresql://me@db/crypto", password_file=str(path))
    message = str(caught.value)
    assert str(path) in message and "one line" in message and "\n" not in message
    assert "secret" not in message.lower() and "s3cr" not in message


def test_the_cli_says_it_in_one_line_with_exit_2(forge, tmp_path):
    path = tmp_path / "pw"
    path.write_text(SECRET + "\nsecond-secret\n")
    result = forge("run", "-q", "-s", "binance", "--sink", "postgres", "--database-url", "postgresql://me@db/crypto",
                   "--password-file", str(path), "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-01")
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and f"password file {path} has 2 lines" in lines[0], result.err
    assert "secret" not in (result.err + result.out).lower() and "s3cr" not in result.err + result.out


def _unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


def test_a_password_in_database_url_on_a_terminal_is_one_warning_naming_the_alternatives(forge, monkeypatch):
    """argv is readable by every user (ps, /proc/PID/cmdline): the person who typed it is told
    once, without the password, what to use instead."""
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    url = f"postgresql://me:s3cr3t-pw@127.0.0.1:{_unused_port()}/crypto"
    result = forge("run", "-q", "-s", "binance", "--sink", "postgres", "--database-url", url,
                   "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-01")
    assert result.code == 1, result  # the run itself goes on (here: nothing listens)
    warning, error = result.err.strip().splitlines()
    assert warning.startswith("forge: warning: the password in --database-url can be read by every user of this "
                              "machine (ps, /proc/")
    for alternative in ("FORGE_DATABASE_URL", "--password-file", "PGPASSWORD", "~/.pgpass (PGPASSFILE)"):
        assert alternative in warning
    assert error.startswith("forge: error: cannot connect to PostgreSQL")
    assert "s3cr3t" not in result.err + result.out

    monkeypatch.setenv("FORGE_DATABASE_URL", url)  # the environment is not world-readable: no warning
    quiet = forge("run", "-q", "-s", "binance", "--sink", "postgres", "--symbol", "BTCUSDT",
                  "--from", "2024-01-01", "--to", "2024-01-01")
    assert quiet.code == 1 and "warning" not in quiet.err, quiet
