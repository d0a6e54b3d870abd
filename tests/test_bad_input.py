"""Bad input, across the CLI and the Python API: one clear line naming the bad value and what is
accepted, exit 2 for usage errors and 1 for runtime failures, no traceback, no output file."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

import forge_core as sf
from forge_core import Pipeline
from forge_core.errors import ForgeError, SourceError, UsageError

RUN = ["run", "-q"]
B = ["-s", "binance", "--symbol", "BTCUSDT"]
DATES = ["--from", "2024-01-01", "--to", "2024-01-02"]


@pytest.fixture(scope="module")
def db(pg_url):
    """A role with a password, to try wrong ones, and the URL pieces."""
    conn = psycopg2.connect(pg_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS forge_bad_input")
        cur.execute("CREATE ROLE forge_bad_input LOGIN PASSWORD 'right-secret-123'")
    conn.close()
    parts = urlsplit(pg_url)
    return parts


def with_user(parts, user: str, password: str, db: str | None = None, port: int | None = None) -> str:
    netloc = f"{user}:{password}@{parts.hostname}:{port or parts.port}"
    return urlunsplit((parts.scheme, netloc, "/" + (db or parts.path.lstrip("/")), "", ""))


CLI_CASES = [
    # (id, args, exit code, text that must be in the one line)
    ("unknown source", ["-s", "kraken", "--symbol", "X", *DATES], 2, "unknown source 'kraken'; installed sources: binance"),
    ("unknown sink", [*B, *DATES, "--sink", "s3"], 2, "unknown sink 's3'; installed sinks: csv, parquet, postgres"),
    ("unknown transform", [*B, *DATES, "--transform", "ema"], 2, "unknown transform 'ema'; installed transforms: resample, select"),
    ("transform module missing", [*B, *DATES, "--transform", "nomodule:fn"], 2, "cannot load transform 'nomodule:fn'"),
    ("binance unknown symbol", ["-s", "binance", "--symbol", "FOOBAR", *DATES], 1, "unknown symbol 'FOOBAR' on Binance spot"),
    ("binance lowercase symbol", ["-s", "binance", "--symbol", "btcusdt", *DATES], 1, "use upper case letters"),
    ("binance okx-style symbol", ["-s", "binance", "--symbol", "BTC-USDT", *DATES], 1, "'BTC-USDT'"),
    ("okx unknown instrument", ["-s", "okx", "--symbol", "BTCUSDT", *DATES], 1, "BTC-USDT"),
    ("okx nonsense instrument", ["-s", "okx", "--symbol", "NOPE-NOPE", *DATES], 1, "NOPE-NOPE"),
    ("usdm has no 1s", [*B, "--market", "usdm", "-t", "1s", *DATES], 2,
     "unsupported timeframe '1s': Binance USD-M futures has no 1s klines; 1s exists on spot (--market spot); "
     "choose one of: 1m"),
    ("coinm has no 1s", ["-s", "binance", "--market", "coinm", "--symbol", "BTCUSD_PERP", "-t", "1s", *DATES], 2,
     "unsupported timeframe '1s': Binance COIN-M futures has no 1s klines; 1s exists on spot"),
    ("okx has no 8h", ["-s", "okx", "--symbol", "BTC-USDT", "-t", "8h", *DATES], 2, "unsupported timeframe '8h'"),
    ("timeframe typo", [*B, "-t", "1hour", *DATES], 2, "unsupported timeframe '1hour'; choose one of"),
    ("month as 1mo", [*B, "-t", "1mo", *DATES], 2, "(1M is a month, 1m a minute)"),
    ("malformed from", [*B, "--from", "2024-02-30", "--to", "2024-03-01"], 2, "bad from date '2024-02-30': use YYYY-MM-DD"),
    ("malformed to", [*B, "--from", "2024-01-01", "--to", "tomorrow"], 2, "bad to date 'tomorrow'"),
    ("epoch seconds", [*B, "--from", "1704067200", "--to", "2024-01-02"], 2, "looks like epoch seconds; give epoch milliseconds"),
    ("date without dashes", [*B, "--from", "20240101", "--to", "2024-01-02"], 2, "looks like a date without dashes; write 2024-01-01"),
    ("epoch microseconds", [*B, "--from", "1704067200000000", "--to", "2024-01-02"], 2, "looks like epoch microseconds"),
    ("superscript digits", [*B, "--from", "2024-01-01", "--to", "2024-01-0²"], 2, "bad to date '2024-01-0²'"),
    ("transform without module", [*B, *DATES, "--transform", ":tx"], 2, "bad transform ':tx'"),
    ("from after to", [*B, "--from", "2024-03-01", "--to", "2024-02-01"], 2, "from date '2024-03-01' is after to date '2024-02-01'"),
    ("future range", [*B, "--from", "2030-01-01", "--to", "2030-02-01"], 2, "is in the future"),
    ("before listing", ["-s", "binance", "--symbol", "NEWUSDT", "--from", "2023-01-01", "--to", "2023-12-31"], 1,
     "has no NEWUSDT candles before 2024-01-15T08:00:00Z"),
    ("missing symbol", ["-s", "binance", *DATES], 2, "Missing option '--symbol'"),
    ("empty symbol", ["-s", "binance", "--symbol", " , ", *DATES], 2, "no symbol given"),
    ("missing from", [*B, "--to", "2024-01-02"], 2, "Missing option '--from'"),
    ("bad market", [*B, *DATES, "--market", "margin"], 2, "'margin' is not one of 'spot', 'usdm'"),
    ("zero workers", [*B, *DATES, "--workers", "0"], 2, "Invalid value for '--workers'"),
    ("unknown option", [*B, *DATES, "--colour", "red"], 2, "No such option '--colour'"),
    ("option of another plugin", [*B, *DATES, "--table", "x"], 2, "option --table belongs to sink postgres"),
    ("resample without target", [*B, *DATES, "-t", "1h", "--transform", "resample"], 2, "--resample-to 1h"),
    ("bad base url", [*B, *DATES, "--base-url", "api.binance.com"], 2, "bad base URL 'api.binance.com'"),
    ("bad output template", [*B, *DATES, "--output", "{symbol}-{nope}.csv"], 1, "bad --output template"),
    ("unwritable csv path", [*B, *DATES, "--output", "/proc/forge/x.csv"], 1, "cannot write CSV /proc/forge/x.csv.part"),
    ("give-up without follow", [*B, *DATES, "--sink-give-up", "600"], 2,
     "--sink-give-up 600 applies only with --follow; add --follow or drop --sink-give-up"),
    ("lag warning without follow", [*B, *DATES, "--lag-warning", "2.5"], 2, "--lag-warning 2.5 applies only with --follow"),
    ("since with a fixed from", [*B, *DATES, "--since", "2023-01-01"], 2,
     "--since 2023-01-01 applies only with --from auto or --follow (--from 2024-01-01 says where the run starts)"),
    # two starts for a series the sinks do not hold: --since won, --from said nothing
    # (an expired contract: where this is not refused, the follow run ends by itself)
    ("follow from and since", ["-s", "binance", "--market", "usdm", "--symbol", "BTCUSDT_240329", "--from",
                               "2024-03-28", "--since", "2024-03-27", "--follow"], 2,
     "--follow starts a series the sinks do not hold at --since or at --from DATE, not both: drop "
     "--from 2024-03-28 or --since 2024-03-27"),
    ("follow with partition", ["--partition", "binance:spot:BTCUSDT:1h:2024-01", "--follow"], 2,
     "--follow keeps series current until stopped, --partition runs fixed months"),
    ("parquet sink twice", [*B, *DATES, "--sink", "parquet", "--sink", "parquet", "--root", "pq"], 2,
     "--sink parquet is given twice; a run writes each sink once"),
    ("partition with another source", ["--partition", "binance:spot:BTCUSDT:1h:2024-01", "-s", "okx"], 2,
     "--source okx is not the source of the partition keys (binance); drop --source"),
    ("partition with another market", ["--partition", "binance:spot:BTCUSDT:1h:2024-01", "--market", "usdm"], 2,
     "--market usdm is not the market of the partition keys (spot); drop --market"),
    ("summary json unwritable", [*B, *DATES, "--summary-json", "/proc/forge/s.json"], 2,
     "cannot write --summary-json /proc/forge/s.json: No such file or directory; give a file path"),
    # FOOBAR: a follow run that ignored --summary-json would fail on it at once, not follow
    ("summary json with follow", ["-s", "binance", "--symbol", "FOOBAR", "--from", "auto", "--since", "2024-01-01", "--follow", "--summary-json", "s.json"], 2,
     "--summary-json applies to one bounded run, not to --follow; drop --summary-json"),
    ("summary json with partition", ["--partition", "binance:spot:BTCUSDT:1h:2024-01", "--summary-json", "s.json"], 2,
     "--summary-json applies to one bounded run, not to --partition"),
    ("from auto with csv", [*B, "--from", "auto", "--to", "2024-01-02"], 2, "--from auto: "),
    ("wait for lock not seconds", [*B, *DATES, "--wait-for-lock", "-5"], 2,
     "option wait_for_lock (--wait-for-lock): '-5' is not accepted: give seconds to wait, a number >= 0, e.g. 60"),
]


@pytest.mark.parametrize("args,code,text", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(forge, exchange_env, in_tmp, args, code, text):
    result = forge(*RUN, *args)
    assert result.code == code, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert text in lines[0], result.err
    assert "Traceback" not in result.err
    assert not list(in_tmp.glob("*.csv")), "no partial output"
    assert not (in_tmp / "pq").exists()


@pytest.mark.parametrize("command", ["verify", "repair"])
@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_verify_and_repair_check_wait_for_lock(forge, in_tmp, command, value):
    """They take the CSV sink's --wait-for-lock and accepted any value unread (exit 0)."""
    (in_tmp / "btc.csv").write_text("source,symbol,timeframe,open_ts,end_ts,open,high,low,close,volume\n")
    result = forge(command, *B, "-t", "1h", *DATES, "--output", "btc.csv", "--wait-for-lock", value)
    assert result.code == 2, result
    assert result.err == (f"forge: error: sink 'csv' option wait_for_lock (--wait-for-lock): {value!r} is not "
                          "accepted: give seconds to wait, a number >= 0, e.g. 60\n")


def test_a_raising_transform_names_itself(forge, exchange_env, in_tmp, tmp_path, monkeypatch):
    (tmp_path / "raising.py").write_text("def fn(c):\n    raise ValueError('no volume data')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = forge(*RUN, *B, *DATES, "--transform", "raising:fn")
    assert result.code == 1 and "transform fn failed on BTCUSDT candle 2024-01-01T00:00:00Z: ValueError: no volume data" in result.err
    assert not list(in_tmp.glob("*.csv"))


def test_traceback_only_with_verbose(forge, exchange_env, in_tmp):
    result = forge("-v", *RUN, "-s", "binance", "--symbol", "FOOBAR", *DATES)
    assert result.code == 1 and "Traceback" in result.err


@pytest.mark.parametrize("value,traceback", [("1", True), ("yes", True), ("0", False), ("false", False), ("", False)])
def test_forge_debug_is_a_flag(forge, exchange_env, in_tmp, monkeypatch, value, traceback):
    """FORGE_DEBUG=0 (and =false) turned tracebacks on: any non-empty value did."""
    monkeypatch.setenv("FORGE_DEBUG", value)
    result = forge(*RUN, "-s", "binance", "--symbol", "FOOBAR", *DATES)
    assert result.code == 1 and ("Traceback" in result.err) == traceback, result


@pytest.mark.parametrize("case", ["wrong password", "unreachable server", "missing database", "malformed url"])
def test_database_errors_name_host_port_db_never_the_password(forge, exchange_env, in_tmp, db, case):
    url = {
        "wrong password": with_user(db, "forge_bad_input", "wrong-secret-456"),
        "unreachable server": with_user(db, "forge_bad_input", "wrong-secret-456", port=1),
        "missing database": with_user(db, "forge_bad_input", "right-secret-123", db="no_such_db"),
        "malformed url": "postgres:/nohost",
    }[case]
    result = forge(*RUN, *B, *DATES, "--sink", "postgres", "--database-url", url)
    assert result.code in (1, 2), result
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "secret" not in line
    if case != "malformed url":
        assert f"127.0.0.1:{1 if case == 'unreachable server' else db.port}" in line
        assert ("no_such_db" if case == "missing database" else db.path.lstrip("/")) in line


def test_database_errors_come_before_any_exchange_request(forge, fresh_mock, in_tmp, db, monkeypatch):
    monkeypatch.setenv("FORGE_BINANCE_URL", fresh_mock.url)
    url = with_user(db, "forge_bad_input", "wrong-secret-456")
    assert forge(*RUN, *B, *DATES, "--sink", "postgres", "--database-url", url).code == 1
    assert sum(v for k, v in fresh_mock.stats.items() if k.endswith("requests")) == 0


def test_model_missing_a_required_column(forge, exchange_env, in_tmp, tmp_path, monkeypatch, pg_url):
    (tmp_path / "narrow_model.py").write_text(
        "from sqlalchemy import Column, String, BigInteger, Float\n"
        "from sqlalchemy.orm import declarative_base\n"
        "Base = declarative_base()\n"
        "class Narrow(Base):\n"
        "    __tablename__ = 'narrow_bad_input'\n"
        "    symbol = Column(String, primary_key=True)\n"
        "    open_ts = Column(BigInteger, primary_key=True)\n"
        "    close = Column(Float)\n"
        "    exchange_rank = Column(BigInteger, nullable=False)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = forge(*RUN, *B, *DATES, "--sink", "postgres", "--database-url", pg_url, "--model", "narrow_model:Narrow")
    assert result.code in (1, 2), result
    assert "exchange_rank" in result.err and len(result.err.strip().splitlines()) == 1


# -- the Python API: the same errors, as exceptions with the same one-line messages ----------------
API_CASES = [
    ("unknown compat name", lambda: sf.KrakenBackfilling, AttributeError, "available: BinanceBackfilling"),
    ("unknown emitter method", lambda: sf.CsvEmitter().set_colour("red"), AttributeError, "options: output"),
    ("unknown source option", lambda: sf.BinanceBackfilling("BTCUSDT", "1m", "2024-01-01", "2024-01-02", colour="red").run(),
     UsageError, "source 'binance' has no option 'colour'"),
    ("bad date", lambda: sf.BinanceBackfilling("BTCUSDT", "1m", "2024-13-01", "2024-12-02").run(), UsageError, "bad from date"),
    ("bad timeframe", lambda: sf.OkxBackfilling("BTC-USDT", "2w", "2024-01-01", "2024-01-02").run(), UsageError, "unsupported timeframe '2w'"),
    ("unknown symbol", lambda: sf.BinanceBackfilling("NOPEUSDT", "1m", "2024-01-01", "2024-01-02").run(), SourceError, "unknown symbol 'NOPEUSDT'"),
    ("no sinks", lambda: Pipeline("binance", sinks=[]), UsageError, "at least one sink"),
    ("zero workers", lambda: Pipeline("binance", workers=0), UsageError, "workers must be at least 1"),
    ("unknown sink by name", lambda: Pipeline("binance", sinks=["s3"]), UsageError, "unknown sink 's3'"),
]


@pytest.mark.parametrize("call,error,text", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input(exchange_env, in_tmp, call, error, text):
    with pytest.raises(error) as info:
        call()
    assert text in str(info.value) and "\n" not in str(info.value)
    if issubclass(error, ForgeError):
        assert info.value.exit_code == (2 if issubclass(error, UsageError) else 1)
    assert not list(Path(in_tmp).glob("*.csv"))


def test_the_table_is_large_enough():
    assert len(CLI_CASES) + len(API_CASES) + 7 >= 30


def test_a_transform_or_model_module_that_raises_on_import_is_one_line(forge, exchange_env, in_tmp):
    (in_tmp / "boom.py").write_text("raise RuntimeError('boom at import')\n")
    t = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-02",
              "--transform", "boom:fn", "-q")
    assert t.code == 2 and "importing boom raised RuntimeError: boom at import" in t.err, t
    m = forge("run", "-s", "binance", "--sink", "postgres", "--database-url", "postgresql://x@127.0.0.1:1/db",
              "--model", "boom:Model", "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-02", "-q")
    assert m.code == 2 and "cannot import model 'boom:Model': RuntimeError: boom at import" in m.err, m
    for r in (t, m):
        assert len(r.err.strip().splitlines()) == 1 and "unexpected" not in r.err


@pytest.mark.parametrize("name,value", [("FORGE_HTTP_TIMEOUT", "-1"), ("FORGE_HTTP_TIMEOUT", "abc"),
                                        ("FORGE_HTTP_MAX_ATTEMPTS", "0"), ("FORGE_HTTP_MAX_ATTEMPTS", "2.5"),
                                        ("FORGE_HTTP_GIVE_UP_AFTER", "nan"), ("FORGE_HTTP_GIVE_UP_AFTER", "0")])
def test_a_bad_http_environment_variable_is_a_usage_error(forge, exchange_env, in_tmp, monkeypatch, name, value):
    """FORGE_HTTP_TIMEOUT=-1 was an 'unexpected ValueError' from requests, MAX_ATTEMPTS=0 a run
    that 'gave up after 0 attempts', GIVE_UP_AFTER=nan silently accepted."""
    monkeypatch.setenv(name, value)
    result = forge(*RUN, *B, *DATES)
    assert result.code == 2, result
    assert result.err.strip() == result.err.strip().splitlines()[0]
    assert f"environment variable {name}={value!r}: give a" in result.err
    assert not list(in_tmp.glob("*.csv"))


def test_a_plugin_left_out_by_forge_load_plugins_says_so(forge, exchange_env, in_tmp, monkeypatch):
    """It was 'unknown source 'binance'; installed sources: none', as if Binance were not installed."""
    monkeypatch.setenv("FORGE_LOAD_PLUGINS", "nope")
    result = forge(*RUN, *B, *DATES)
    assert result.code == 2, result
    assert "unknown source 'binance'" in result.err
    assert "FORGE_LOAD_PLUGINS='nope' loads only those entry points; unset it to load all" in result.err


@pytest.mark.parametrize("args", [["-s", "binance", "--symbol", "FOOBAR", *DATES],
                                  [*B, "--from", "2030-01-01", "--to", "2030-01-02"]], ids=["unknown symbol", "future"])
def test_a_failed_run_leaves_no_directory_it_created(forge, exchange_env, in_tmp, args):
    """--output 'a/b/{symbol}.csv' of a run that wrote nothing left the empty a/b behind."""
    result = forge(*RUN, *args, "--output", "a/b/{symbol}.csv")
    assert result.code in (1, 2), result
    assert list(in_tmp.iterdir()) == []
