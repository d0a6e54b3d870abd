"""Every code block of the README runs as pasted (issue 16), against the mock exchange and the
test PostgreSQL; the plugin example is complete and works, discovered like any plugin.

- ``bash`` blocks: each command (comments, ``\\`` continuations and ``NAME=value`` prefixes are
  understood; any other shell construct fails this test) is a ``forge`` command, run in order
  in one temporary directory, in-process (a ``forge`` process costs about a second of start-up
  per command; the console script itself is run by other tests). Every command must succeed,
  and a ``"quoted text"`` in its comment must appear in what it printed. The environment points
  every source at the mock (frozen clock: ``--to now`` is 2025-03-15) and ``FORGE_DATABASE_URL``
  at a database of this test.
- ``python`` blocks run as scripts in a subprocess in that directory. A block whose first line
  is ``# name.py`` is a file the reader saves (written there first; the plugin example is run by
  ``test_readme_plugin_backfills_exactly``). The streamforge snippet's connection keywords,
  the reader's database, are replaced by the test database's: the one change.
- A block preceded by ``<!-- readme: not run (why) -->`` is not run; there are at most two.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import types
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from forge_core import Pipeline, Plugins, Sink
from forge_core.times import parse_range
from forge_mock_exchange.expected import binance_rows

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^(?:<!-- readme: not run \((?P<why>[^)]+)\) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```[ \t]*$",
                   re.M | re.S)
READER_DB = 'host="localhost", dbname="crypto", user="postgres", password="secret"'


@dataclass
class Block:
    lang: str
    code: str
    line: int
    not_run: str | None

    @property
    def file(self) -> str | None:
        """``name.py`` for a block that is a file to save (its first line ``# name.py``)."""
        m = re.match(r"# ([\w./-]+\.(?:py|toml))\n", self.code)
        return m.group(1) if m else None


def blocks() -> list[Block]:
    text = README.read_text()
    return [Block(m["lang"], m["code"], text.count("\n", 0, m.start("code")) + 1, m["why"]) for m in BLOCK.finditer(text)]


def commands(code: str) -> list[tuple[dict[str, str], list[str], list[str], str]]:
    """``(env, argv, expected, line)`` per command of a shell block."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        command, comment = _split_comment(line)
        if not command.strip():
            continue
        words = shlex.split(command)
        env = {}
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        assert words and words[0] == "forge" and not set(";|&<>`$") & set(command), \
            f"README shell line is not a plain forge command: {line!r}"
        out.append((env, words[1:], re.findall(r'"([^"]+)"', comment), line))
    return out


def _split_comment(line: str) -> tuple[str, str]:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], line[i:]
    return line, ""


def test_every_block_is_run_or_marked_with_a_reason():
    found = blocks()
    kinds = {(b.lang, b.file is not None) for b in found}
    assert kinds <= {("bash", False), ("python", False), ("python", True), ("toml", True), ("", False)}, kinds
    marked = [b for b in found if b.not_run]
    assert len(marked) <= 2 and all(len(b.not_run) > 10 for b in marked), marked
    assert sum(b.lang == "bash" and not b.not_run for b in found) >= 3
    assert "KlineTable" in next(b.code for b in found if "PostgresEmitter" in b.code).split(".set_model")[0]
    for b in found:
        if b.lang == "toml" and tomllib is not None:
            tomllib.loads(b.code)
        if b.lang == "python":
            compile(b.code, f"README.md:{b.line}", "exec")


@pytest.fixture
def readme_db(pg_url: str, db):
    """A database of this test's own: the README's tables (``klines``) are nobody else's."""
    name = f"readme_{uuid.uuid4().hex[:10]}"
    db.execute(f"CREATE DATABASE {name}")
    url = make_url(pg_url).set(database=name)
    yield url
    db.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def readme_env(exchange_env, readme_db, monkeypatch, tmp_path):
    monkeypatch.setenv("FORGE_DATABASE_URL", readme_db.render_as_string(hide_password=False))
    for name in ("PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    for b in blocks():
        if b.file and b.lang == "python" and "/" not in b.file:
            (tmp_path / b.file).write_text(b.code)
    return tmp_path


@pytest.mark.slow  # 3-7 s: fourteen forge commands, a month of 1m candles among them
def test_readme_shell_blocks_run_as_pasted(forge, readme_env, db, readme_db, monkeypatch, exchange_env):
    ran = 0
    incremental = None
    try:
        for n, b in enumerate(blocks()):
            if b.lang != "bash" or b.not_run:
                continue
            here = readme_env / f"block{n}"  # each block in a directory of its own
            here.mkdir()
            for f in readme_env.glob("*.py"):
                (here / f.name).write_text(f.read_text())
            monkeypatch.chdir(here)
            if "--since" in b.code and "--follow" not in b.code:
                incremental = here
            for env, argv, expected, line in commands(b.code):
                saved = {k: os.environ.get(k) for k in env}
                os.environ.update(env)
                try:
                    result = forge(*argv)
                finally:
                    for k, v in saved.items():
                        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
                assert result.code == 0, f"README.md:{b.line}: {line}\n{result}"
                for text in expected:
                    assert text in result.out + result.err, f"README.md:{b.line}: {line}: no {text!r} in {result}"
                ran += 1
    finally:
        sys.modules.pop("my_indicators", None)
        for path in [p for p in sys.path if p.startswith(str(readme_env))]:
            sys.path.remove(path)
    assert ran >= 12
    assert not list(readme_env.rglob("*.part"))
    transformed = next(readme_env.rglob("Binance-ETHUSDT-1h-2024-01-01_2024-01-07.csv"))
    assert transformed.read_text().splitlines()[0].endswith(",range")
    # what the incremental-run section says it leaves: the first file extended to now, under the new end
    assert incremental is not None
    names = sorted(p.name for p in incremental.glob("*.csv"))
    assert len(names) == 2 and all(n.startswith("Binance-") and n.endswith(f"-1h-2024-01-01_{_today(exchange_env)}.csv")
                                   for n in names), names


def _today(exchange) -> str:
    """The exchange's UTC day (the mock's clock is frozen): a run to now is named by it."""
    from forge_core.times import day_label

    return day_label(exchange.now())


@pytest.mark.slow  # 2-4 s: two Python processes importing Forge, run side by side
def test_readme_python_blocks_run_as_scripts(readme_env, readme_db, db):
    code = [b for b in blocks() if b.lang == "python" and not b.file and not b.not_run]
    assert len(code) >= 2
    url = readme_db
    ours = ", ".join(f"{k}={v!r}" for k, v in (("host", url.host), ("port", url.port), ("dbname", url.database),
                                                 ("user", url.username), ("password", url.password)) if v is not None)
    procs = []
    for i, b in enumerate(code):
        text = b.code
        if "PostgresEmitter" in text:
            assert READER_DB in text
            text = text.replace(READER_DB, ours)
        script = readme_env / f"readme_block_{i}.py"
        script.write_text(text)
        procs.append((b, subprocess.Popen([sys.executable, script.name], cwd=readme_env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)))
    for b, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"README.md:{b.line}:\n{out}\n{err}"
    assert (readme_env / "btc.csv").is_file()
    import psycopg2

    conn = psycopg2.connect(url.render_as_string(hide_password=False).replace("postgresql+psycopg2", "postgresql"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), count(is_bullish), bool_or(is_bullish) FROM klines WHERE timeframe = '1m'")
            assert cur.fetchone() == (10080, 10080, True)  # a week of 1m candles, with the transformer's column
    finally:
        conn.close()


def readme_plugin() -> types.ModuleType:
    code = re.search(r"```python\n(# my_exchange/plugin.py\n.*?)```", README.read_text(), re.S).group(1)
    module = types.ModuleType("my_exchange_plugin")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    sys.modules.pop("my_exchange_plugin", None)
    return module


def test_readme_plugin_backfills_exactly(mock, monkeypatch):
    monkeypatch.setenv("MYEXCHANGE_URL", mock.url)
    plugins = Plugins(entry_points=False)
    plugins.register(readme_plugin(), name="myexchange")
    rows: list = []

    class Memory(Sink):
        name = "memory"

        def write(self, batch):
            rows.extend(batch.rows)

    result = Pipeline("myexchange", [Memory()], plugins=plugins).run("ETHUSDT", "1h", "2024-01-01", "2024-03-31")
    lo, hi = parse_range("2024-01-01", "2024-03-31")
    want = [("myexchange", *r[1:10]) for r in binance_rows("ETHUSDT", "1h", lo, hi, mock.config.now)]
    assert rows == want and result.rows == {"ETHUSDT": len(want)} and len(want) > 2000
