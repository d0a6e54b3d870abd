"""``forge status / verify / repair`` end to end: the mock exchange, a CSV file and a real
PostgreSQL. Each test loads BTCUSDT 5m for January and February 2024 (two partitions; the
mock's 150-minute maintenance hole is 2024-01-10 03:00-05:30, 30 slots), damages the store in
known ways and checks the report to the candle."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from forge_core.integrity import digest, line, normalize
from forge_mock_exchange.market import MAINTENANCE

RANGE = ("--symbol", "BTCUSDT", "-t", "5m", "--from", "2024-01-01", "--to", "2024-02-29")
M5 = 300_000
JAN3 = 1704240000000  # 2024-01-03 00:00 UTC
FEB5 = 1707091200000  # 2024-02-05 00:00 UTC
IN_HOLE = MAINTENANCE[0] + 12 * M5  # 2024-01-10 04:00, inside the exchange's hole
SLOTS = (31 + 29) * 288
HOLE_SLOTS = (MAINTENANCE[1] - MAINTENANCE[0]) // M5


def test_digest_definition_is_what_docs_say():
    assert [normalize(v) for v in ("42000.50000000", "0.00000000", "100", "1E+2", ".5", "-0.0", None)] == \
        ["42000.5", "0", "100", "100", "0.5", "0", ""]
    lines = [line(60000, 119999, ("2", "3", "1", "2.5", "0")), line(0, 59999, ("1", "2", "0.5", "2", "10.1"))]
    import hashlib

    want = hashlib.sha256(b"0,59999,1,2,0.5,2,10.1\n60000,119999,2,3,1,2.5,0\n").hexdigest()
    assert digest(lines) == want
    from forge_core.integrity.digest import digest_rows

    usual = [(0, 59999, "42000.50000000", "42001.00000000", "41999.10", "42000", "0.00000000"),
             (60000, 119999, "10.0", "100", "5.", "0.5", "12.34500")]
    odd = [*usual, (120000, 179999, "-0.0", ".5", "007", "1E+2", None)]
    for rows in (usual, odd):
        assert digest_rows(rows) == digest(line(t, e, map(normalize, v)) for t, e, *v in rows)
    assert digest_rows(usual[:1]) == hashlib.sha256(b"0,59999,42000.5,42001,41999.1,42000,0\n").hexdigest()


def verify(forge, *args: str) -> tuple[int, dict]:
    result = forge("verify", "-s", "binance", *RANGE, "--json", *args)
    assert result.code in (0, 1), result
    return result.code, json.loads(result.out)


def counts(report: dict) -> dict:
    return report["series"][0]["counts"]


def ranges(report: dict, kind: str) -> list[tuple]:
    return [(i["from"], i["to"], i["count"], i.get("reason", ""), tuple(i.get("fields", ())))
            for i in report["series"][0][kind]]


def assert_hole_is_the_exchanges(report: dict) -> None:
    holes = report["series"][0]["holes"]
    assert [(h["from_ms"], h["to_ms"], h["slots"], h["reason"]) for h in holes] == [
        (MAINTENANCE[0], MAINTENANCE[1] - M5, HOLE_SLOTS, "exchange_affirmed_empty")]
    assert holes[0]["evidence"] == {"candle_before": "2024-01-10T02:55:00Z", "candle_after": "2024-01-10T05:30:00Z"}
    for issue in report["series"][0]["missing"]:
        assert not (MAINTENANCE[0] <= issue["to_ms"] and issue["from_ms"] < MAINTENANCE[1])


# -- CSV ----------------------------------------------------------------------------------------
@pytest.fixture
def loaded_csv(forge, exchange_env, in_tmp: Path) -> Path:
    result = forge("run", "-s", "binance", *RANGE, "--output", "btc.csv", "-q")
    assert result.code == 0, result
    return in_tmp / "btc.csv"


def damage_csv(path: Path) -> None:
    with open(path, newline="") as f:
        header, *rows = list(csv.reader(f))
    i = {c: header.index(c) for c in header}
    by_ts = {int(r[i["open_ts"]]): r for r in rows}
    drop = {JAN3, JAN3 + M5, JAN3 + 2 * M5, FEB5}
    by_ts[JAN3 + 10 * M5][i["close"]] = "1.23"
    by_ts[FEB5 + 7 * M5][i["volume"]] = "999"
    by_ts[FEB5 + 7 * M5][i["high"]] = "1"
    off_grid = list(by_ts[JAN3 + 20 * M5])
    off_grid[i["open_ts"]] = str(JAN3 + 20 * M5 + 60_000)
    in_hole = list(by_ts[JAN3])
    in_hole[i["open_ts"]], in_hole[i["end_ts"]] = str(IN_HOLE), str(IN_HOLE + M5 - 1)
    out = []
    for r in rows:
        ts = int(r[i["open_ts"]])
        if ts in drop:
            continue
        out.append(r)
        if ts == JAN3 + 20 * M5:
            out.append(off_grid)
        if ts == JAN3 + 30 * M5:
            out.append(list(r))  # a duplicated line
        if ts == MAINTENANCE[0] - M5:
            out.append(in_hole)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *out])


def test_csv_verify_reports_exactly_then_repair_makes_it_whole(forge, loaded_csv):
    code, report = verify(forge, "--output", "btc.csv")
    assert code == 0 and counts(report) == {"missing": 0, "extra": 0, "duplicate": 0, "changed": 0}
    assert_hole_is_the_exchanges(report)

    damage_csv(loaded_csv)
    code, report = verify(forge, "--output", "btc.csv")
    assert code == 1
    assert counts(report) == {"missing": 4, "extra": 2, "duplicate": 1, "changed": 2}
    assert ranges(report, "missing") == [("2024-01-03T00:00:00Z", "2024-01-03T00:10:00Z", 3, "", ()),
                                         ("2024-02-05T00:00:00Z", "2024-02-05T00:00:00Z", 1, "", ())]
    assert ranges(report, "changed") == [("2024-01-03T00:50:00Z", "2024-01-03T00:50:00Z", 1, "", ("close",)),
                                         ("2024-02-05T00:35:00Z", "2024-02-05T00:35:00Z", 1, "", ("high", "volume"))]
    assert ranges(report, "duplicates") == [("2024-01-03T02:30:00Z", "2024-01-03T02:30:00Z", 1, "", ())]
    assert sorted(ranges(report, "extra")) == [("2024-01-03T01:41:00Z", "2024-01-03T01:41:00Z", 1, "off_grid", ()),
                                               ("2024-01-10T04:00:00Z", "2024-01-10T04:00:00Z", 1, "in_exchange_hole", ())]
    assert_hole_is_the_exchanges(report)
    text = forge("verify", "-s", "binance", *RANGE, "--output", "btc.csv")
    assert text.code == 1
    assert text.out.splitlines()[-1].startswith("verify: 1 series, 2 partitions (2 differs)")
    assert "missing 4, extra 2, duplicate 1, changed 2" in text.out.splitlines()[-1]

    repaired = forge("repair", "-s", "binance", *RANGE, "--output", "btc.csv", "--json")
    assert repaired.code == 0, repaired
    summary = json.loads(repaired.out)["summary"]
    assert (summary["written"], summary["deleted"]) == (6, 1)  # extras are kept without --delete-extra
    code, report = verify(forge, "--output", "btc.csv")
    assert code == 1 and counts(report) == {"missing": 0, "extra": 2, "duplicate": 0, "changed": 0}

    assert forge("repair", "-s", "binance", *RANGE, "--output", "btc.csv", "--delete-extra").code == 0
    code, report = verify(forge, "--output", "btc.csv")
    assert code == 0 and counts(report) == {"missing": 0, "extra": 0, "duplicate": 0, "changed": 0}
    with open(loaded_csv, newline="") as f:
        assert len(list(csv.reader(f))) - 1 == SLOTS - HOLE_SLOTS

    again = forge("repair", "-s", "binance", *RANGE, "--output", "btc.csv", "--json")
    summary = json.loads(again.out)["summary"]
    assert again.code == 0 and summary["fetches"] == 0 and summary["written"] == 0
    ledger = json.loads((loaded_csv.parent / "btc.csv.ledger.json").read_text())
    jan = next(e for e in ledger["partitions"] if e["partition"] == "2024-01")
    assert jan["rows"] == 31 * 288 - HOLE_SLOTS and jan["digest"] == jan["store_digest"]
    assert [h["reason"] for h in jan["holes"]] == ["exchange_affirmed_empty"]

    status = forge("status", "--output", "btc.csv")
    assert status.code == 0
    assert "17,250 candles" in status.out and "exchange affirmed empty" in status.out


def test_csv_bad_input(forge, loaded_csv):
    res = forge("verify", "-s", "binance", "--symbol", "ETHUSDT", "--from", "2024-01-01", "--to", "2024-01-31",
                "-t", "5m", "--output", "btc.csv")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    assert "holds no binance ETHUSDT 5m candles" in res.err
    res = forge("verify", "-s", "binance", "--symbol", "BTCUSDT", "--from", "2023-01-01", "--to", "2023-03-31",
                "-t", "5m", "--output", "btc.csv")  # a range outside what the file holds
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    assert "holds no binance BTCUSDT 5m candles from 2023-01-01T00:00:00Z to 2023-03-31T23:55:00Z" in res.err
    res = forge("repair", "-s", "binance", "--symbol", "BTCUSDT", "--from", "2023-01-01", "--to", "2023-03-31",
                "-t", "5m", "--output", "btc.csv")
    assert res.code == 2 and "holds no binance BTCUSDT 5m candles" in res.err
    res = forge("verify", "-s", "binance", *RANGE, "--output", "nope.csv")
    assert res.code == 2 and "CSV file nope.csv does not exist" in res.err
    loaded_csv.with_name("data").mkdir(exist_ok=True)
    res = forge("repair", "-s", "binance", *RANGE, "--output", "data")  # exists, but is no file
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    assert "--output data is a directory; name the CSV file in it" in res.err
    res = forge("verify", "-s", "binance", *RANGE)
    assert res.code == 2 and "--output FILE is required" in res.err


@pytest.mark.parametrize("command", ["verify", "repair"])
def test_symbols_the_store_does_not_hold_are_refused_before_any_is_checked(forge, loaded_csv, exchange_env, command):
    """Among several symbols, one the store does not hold (or a typo) was refused after the
    symbols before it were checked against the exchange, their reports lost; now first, all of
    them named, no candle asked for."""
    before = dict(exchange_env.stats)
    res = forge(command, "-s", "binance", "--symbol", "BTCUSDT,ETHUSDT,BTCUSTD", "-t", "5m", "--from", "2024-01-01",
                "--to", "2024-02-29", "--output", "btc.csv")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1, res
    assert "CSV file btc.csv holds no binance ETHUSDT, BTCUSTD 5m candles from 2024-01-01T00:00:00Z" in res.err
    served = {k: exchange_env.stats[k] - before.get(k, 0) for k in exchange_env.stats}
    assert served.get("binance.spot.candles", 0) == 0 and served.get("archive.zip", 0) == 0, served


def test_a_symbol_whose_rows_were_all_lost_is_repaired_among_several(forge, exchange_env, in_tmp):
    """The store holds no ETHUSDT row any more, but the ledger knows its partitions: repair of
    several symbols restores it, as repair of ETHUSDT alone does (the refusal of symbols held
    nothing of is for those the ledger does not know either)."""
    args = ("-s", "binance", "--archive", "rest", "--symbol", "BTCUSDT,ETHUSDT", "-t", "1h", "--from", "2024-01-01",
            "--to", "2024-01-31", "--output", "x.csv")
    assert forge("run", *args, "-q").code == 0
    assert forge("verify", *args).code == 0
    data = in_tmp / "x.csv"
    kept = [line for line in data.read_text().splitlines() if ",ETHUSDT," not in line]
    data.write_text("\n".join(kept) + "\n")
    res = forge("repair", *args)
    assert res.code == 0, res
    assert res.out.splitlines()[-1].startswith("repair: 2 series, 2 partitions (1 identical, 1 repaired); missing 742")


def test_sink_without_hooks_is_refused(forge, exchange_env, monkeypatch):
    import forge_core.cli
    from forge_core import Sink, hookimpl
    from forge_core.plugins import Plugins

    class Plain(Sink):
        name = "plain"

        def write(self, batch):  # pragma: no cover
            pass

    class Plugin:
        @hookimpl
        def forge_register_sinks(self, register):
            register(Plain)

    def plugins() -> Plugins:
        p = Plugins()
        p.register(Plugin(), name="plain")
        return p

    monkeypatch.setattr(forge_core.cli, "Plugins", plugins)
    res = forge("verify", "-s", "binance", *RANGE, "--sink", "plain")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    assert "sink 'plain' does not support status, verify or repair" in res.err and "csv, parquet, postgres" in res.err


# -- PostgreSQL ---------------------------------------------------------------------------------
@pytest.fixture
def pg_loaded(forge, db, pg_url: str, exchange_env, monkeypatch: pytest.MonkeyPatch) -> str:
    schema = f"v_{uuid.uuid4().hex[:10]}"
    db.execute(f"CREATE SCHEMA {schema}")
    url = make_url(pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
    monkeypatch.setenv("FORGE_DATABASE_URL", url.render_as_string(hide_password=False))
    result = forge("run", "-s", "binance", *RANGE, "--sink", "postgres", "-q")
    assert result.code == 0, result
    yield schema
    db.execute(f"DROP SCHEMA {schema} CASCADE")


def damage_pg(db, schema: str) -> None:
    t = f"{schema}.klines"
    db.execute(f"DELETE FROM {t} WHERE open_ts IN (%s, %s, %s, %s)", (JAN3, JAN3 + M5, JAN3 + 2 * M5, FEB5))
    db.execute(f"UPDATE {t} SET close = 1.23 WHERE open_ts = %s", (JAN3 + 10 * M5,))
    db.execute(f"UPDATE {t} SET volume = 999, high = 1 WHERE open_ts = %s", (FEB5 + 7 * M5,))
    db.execute(f"INSERT INTO {t} SELECT source, symbol, timeframe, open_ts + 60000, end_ts + 60000, open, high, low, "
               f"close, volume FROM {t} WHERE open_ts = %s", (JAN3 + 20 * M5,))
    db.execute(f"INSERT INTO {t} SELECT source, symbol, timeframe, %s, %s, open, high, low, close, volume "
               f"FROM {t} WHERE open_ts = %s", (IN_HOLE, IN_HOLE + M5 - 1, JAN3 + 5 * M5))


def test_postgres_verify_reports_exactly_then_repair_makes_it_whole(forge, pg_loaded, db):
    code, report = verify(forge, "--sink", "postgres")
    assert code == 0, report
    assert_hole_is_the_exchanges(report)
    damage_pg(db, pg_loaded)
    code, report = verify(forge, "--sink", "postgres")
    assert code == 1
    assert counts(report) == {"missing": 4, "extra": 2, "duplicate": 0, "changed": 2}
    assert ranges(report, "missing") == [("2024-01-03T00:00:00Z", "2024-01-03T00:10:00Z", 3, "", ()),
                                         ("2024-02-05T00:00:00Z", "2024-02-05T00:00:00Z", 1, "", ())]
    assert ranges(report, "changed") == [("2024-01-03T00:50:00Z", "2024-01-03T00:50:00Z", 1, "", ("close",)),
                                         ("2024-02-05T00:35:00Z", "2024-02-05T00:35:00Z", 1, "", ("high", "volume"))]
    assert sorted(ranges(report, "extra")) == [("2024-01-03T01:41:00Z", "2024-01-03T01:41:00Z", 1, "off_grid", ()),
                                               ("2024-01-10T04:00:00Z", "2024-01-10T04:00:00Z", 1, "in_exchange_hole", ())]
    assert_hole_is_the_exchanges(report)

    repaired = forge("repair", "-s", "binance", *RANGE, "--sink", "postgres", "--delete-extra", "--json")
    assert repaired.code == 0, repaired
    summary = json.loads(repaired.out)["summary"]
    assert (summary["written"], summary["deleted"]) == (6, 2)
    code, report = verify(forge, "--sink", "postgres")
    assert code == 0 and counts(report) == {"missing": 0, "extra": 0, "duplicate": 0, "changed": 0}
    db.execute(f"SELECT count(*) FROM {pg_loaded}.klines")
    assert db.fetchone()[0] == SLOTS - HOLE_SLOTS
    db.execute(f"SELECT partition, entry->>'status', entry->'holes'->0->>'reason' FROM {pg_loaded}.forge_ledger "
               "ORDER BY partition")
    assert db.fetchall() == [("2024-01", "identical", "exchange_affirmed_empty"), ("2024-02", "identical", None)]

    again = forge("repair", "-s", "binance", *RANGE, "--sink", "postgres", "--json")
    assert again.code == 0 and json.loads(again.out)["summary"]["fetches"] == 0
    status = forge("status", "--sink", "postgres", "--json")
    series = json.loads(status.out)["series"]
    assert [(s["symbol"], s["rows"], s["exchange_rows"], s["ledger_current"]) for s in series] == [
        ("BTCUSDT", SLOTS - HOLE_SLOTS, SLOTS - HOLE_SLOTS, 2)]


def test_postgres_interrupted_repair_resumes(forge, pg_loaded, db, monkeypatch):
    import forge_sink_postgres.integrity as pgi

    damage_pg(db, pg_loaded)
    original = pgi.PostgresIntegrity.apply
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C, delivered as the terminal would: a SIGINT to the process
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the signal handler raises KeyboardInterrupt here
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pgi.PostgresIntegrity, "apply", interrupted)
    first = forge("repair", "-s", "binance", *RANGE, "--sink", "postgres")
    assert first.code == 130, first
    monkeypatch.setattr(pgi.PostgresIntegrity, "apply", original)
    db.execute(f"SELECT partition, entry->>'status' FROM {pg_loaded}.forge_ledger")
    assert db.fetchall() == [("2024-01", "repaired")]  # committed with January's rows; February not yet

    second = forge("repair", "-s", "binance", *RANGE, "--sink", "postgres", "--json")
    assert second.code == 0, second
    statuses = [p["status"] for p in json.loads(second.out)["series"][0]["partitions"]]
    assert statuses == ["skipped", "repaired"]  # January is not fetched again
    code, report = verify(forge, "--sink", "postgres")
    assert counts(report) == {"missing": 0, "extra": 2, "duplicate": 0, "changed": 0}


def test_csv_repair_stopped_by_sigterm_exits_143_and_resumes(loaded_csv, forge, in_tmp):
    """A scheduler's SIGTERM while repair writes its second partition: the process died of the
    signal (no line, no cleanup) unless a pipeline run happened to be in progress, as the
    archive's fast path never is. Now exit 143 and one line; the first partition is kept and
    the same command repairs the rest without fetching the first again."""
    import subprocess

    damage_csv(loaded_csv)
    hook = Path(__file__).parent / "fixtures" / "term_at_apply"  # sitecustomize: SIGTERM at the 2nd write
    env = {**os.environ, "PYTHONPATH": str(hook), "FORGE_TEST_TERM_AT_APPLY": "2"}
    stopped = subprocess.run(["forge", "repair", "-s", "binance", *RANGE, "--output", "btc.csv"], env=env,
                             cwd=in_tmp, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert stopped.returncode == 143, stopped
    assert stopped.stderr == ("forge: error: interrupted: every partition repaired before it is kept; run the same "
                              "command again to resume\n")
    assert sorted(p.name for p in in_tmp.iterdir()) == ["btc.csv", "btc.csv.ledger.json"]
    resumed = forge("repair", "-s", "binance", *RANGE, "--output", "btc.csv", "--json")
    assert resumed.code == 0, resumed
    report = json.loads(resumed.out)
    assert [p["status"] for p in report["series"][0]["partitions"]] == ["skipped", "repaired"]
    assert counts(report) == {"missing": 1, "extra": 0, "duplicate": 0, "changed": 1}  # February's damage
    code, report = verify(forge, "--output", "btc.csv")
    assert counts(report) == {"missing": 0, "extra": 2, "duplicate": 0, "changed": 0}  # extras are kept


def test_postgres_repair_by_a_role_that_may_not_write_the_ledger(forge, pg_loaded, db, pg_url, monkeypatch):
    """A role that may write the data table but not the ledger (no CREATE on the schema): verify
    warned and went on, repair failed whole ('permission denied for schema') with nothing written.
    Now the rows are repaired and one warning says the ledger was not; once the owner has made
    the ledger and granted its rows, that role's repair records it (CREATE TABLE IF NOT EXISTS
    needed CREATE on the schema even with the table there)."""
    role = f"w_{uuid.uuid4().hex[:10]}"
    db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    try:
        db.execute(f"GRANT USAGE ON SCHEMA {pg_loaded} TO {role}")
        db.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {pg_loaded}.klines TO {role}")
        url = make_url(pg_url).set(username=role, password="pw").update_query_dict(
            {"options": f"-csearch_path={pg_loaded}"})
        monkeypatch.setenv("FORGE_DATABASE_URL", url.render_as_string(hide_password=False))
        db.execute(f"DELETE FROM {pg_loaded}.klines WHERE open_ts IN (%s, %s)", (JAN3, FEB5))
        repaired = forge("repair", "-s", "binance", *RANGE, "--sink", "postgres", "--json")
        assert repaired.code == 0, repaired
        assert json.loads(repaired.out)["summary"]["written"] == 2
        assert repaired.err.count("ledger_not_saved") == 1 and "permission denied for schema" in repaired.err
        db.execute(f"SELECT count(*) FROM {pg_loaded}.klines")
        assert db.fetchone()[0] == SLOTS - HOLE_SLOTS
        db.execute(f"SELECT to_regclass('{pg_loaded}.forge_ledger')")
        assert db.fetchone()[0] is None

        db.execute(f"SET search_path = {pg_loaded}")
        db.execute("CREATE TABLE forge_ledger (target text NOT NULL, source text NOT NULL, symbol text NOT NULL, "
                   "timeframe text NOT NULL, partition text NOT NULL, range_start bigint NOT NULL, range_end bigint "
                   "NOT NULL, entry jsonb NOT NULL, store_digest text NOT NULL, verified_at timestamptz NOT NULL "
                   "DEFAULT now(), PRIMARY KEY (target, source, symbol, timeframe, partition))")
        db.execute("RESET search_path")
        db.execute(f"GRANT SELECT, INSERT, UPDATE ON {pg_loaded}.forge_ledger TO {role}")
        db.execute(f"DELETE FROM {pg_loaded}.klines WHERE open_ts = %s", (JAN3,))
        repaired = forge("repair", "-s", "binance", *RANGE, "--sink", "postgres", "--json")
        assert repaired.code == 0 and "ledger_not_saved" not in repaired.err, repaired
        db.execute(f"SELECT partition, entry->>'status' FROM {pg_loaded}.forge_ledger ORDER BY 1")
        assert db.fetchall() == [("2024-01", "repaired"), ("2024-02", "identical")]
    finally:
        db.execute(f"DROP OWNED BY {role}")
        db.execute(f"DROP ROLE {role}")


def test_csv_repair_with_a_ledger_that_cannot_be_written(forge, loaded_csv, monkeypatch):
    """The sidecar ledger cannot be replaced (a read-only file system, a full disk): repair wrote
    the CSV and then failed on the ledger, exit 1 and no report, the file repaired. Now the
    report, exit 0 and one warning; the next run checks those partitions again."""
    real = os.replace

    def denied(a, b, *args, **kwargs):
        if str(b).endswith(".ledger.json"):
            raise OSError(30, "Read-only file system", str(b))
        return real(a, b, *args, **kwargs)

    damage_csv(loaded_csv)
    monkeypatch.setattr(os, "replace", denied)
    repaired = forge("repair", "-s", "binance", *RANGE, "--output", "btc.csv")
    assert repaired.code == 0, repaired
    assert repaired.out.splitlines()[-1].endswith("; wrote 6, deleted 1; 1 fetch from the exchange: repaired")
    assert repaired.err.count("ledger_not_saved") == 1 and "Read-only file system" in repaired.err, repaired.err
    monkeypatch.setattr(os, "replace", real)
    code, report = verify(forge, "--output", "btc.csv")
    assert counts(report) == {"missing": 0, "extra": 2, "duplicate": 0, "changed": 0}


def test_a_damaged_csv_ledger_is_one_warning_and_verify_goes_on_from_the_data(forge, loaded_csv):
    """A truncated ledger, or one with an entry of another shape, stopped verify, repair and
    status ('ledger btc.csv.ledger.json is unreadable (...); delete it'), the second with
    Python's words ('Hole() argument after ** must be a mapping'). The ledger only records
    earlier checks, so now it is one warning and treated as absent: the same report as with no
    ledger, and the next save keeps it aside and writes a new one."""
    first_code, first = verify(forge, "--output", "btc.csv")
    ledger = loaded_csv.parent / "btc.csv.ledger.json"
    good = ledger.read_text()
    bad_hole = json.loads(good)
    bad_hole["partitions"][0]["holes"] = ["2024-01-10"]
    for damaged in (good[:300], json.dumps(bad_hole)):
        ledger.write_text(damaged)
        result = forge("verify", "-s", "binance", *RANGE, "--json", "--output", "btc.csv")
        assert result.code == first_code == 0, result
        assert counts(json.loads(result.out)) == counts(first)
        assert [p["status"] for p in json.loads(result.out)["series"][0]["partitions"]] == ["identical", "identical"]
        assert result.err.count("ledger_unreadable") == 1 and "btc.csv.ledger.json" in result.err, result.err
        assert "Traceback" not in result.err and "argument after" not in result.err
        assert (loaded_csv.parent / "btc.csv.ledger.json.unreadable").read_text() == damaged
        assert json.loads(ledger.read_text())["partitions"][0]["holes"][0]["first"] == MAINTENANCE[0]
    ledger.write_text(good[:300])
    status = forge("status", "--output", "btc.csv")
    assert status.code == 0 and "never verified" in status.out and status.err.count("ledger_unreadable") == 1


def test_a_damaged_postgres_ledger_row_is_one_warning_and_checked_again(forge, pg_loaded, db):
    """A forge_ledger row whose entry is of another shape (edited by hand) failed verify with a
    traceback; now one warning naming the table, that partition checked against the exchange
    and its row replaced."""
    code, _ = verify(forge, "--sink", "postgres")
    assert code == 0
    db.execute(f"UPDATE {pg_loaded}.forge_ledger SET entry = jsonb_set(entry, '{{holes}}', '[1]') "
               "WHERE partition = '2024-01'")
    result = forge("verify", "-s", "binance", *RANGE, "--json", "--sink", "postgres")
    assert result.code == 0, result
    assert result.err.count("ledger_unreadable") == 1 and "table forge_ledger (rows of klines)" in result.err, result.err
    assert counts(json.loads(result.out)) == {"missing": 0, "extra": 0, "duplicate": 0, "changed": 0}
    db.execute(f"SELECT entry->'holes'->0->>'slots' FROM {pg_loaded}.forge_ledger WHERE partition = '2024-01'")
    assert db.fetchone()[0] == str(HOLE_SLOTS)


def test_postgres_bad_input(forge, pg_loaded, monkeypatch):
    res = forge("verify", "-s", "binance", "--symbol", "SOLUSDT", "-t", "5m", "--from", "2024-01-01",
                "--to", "2024-01-31", "--sink", "postgres")
    assert res.code == 2 and "holds no binance SOLUSDT 5m candles" in res.err
    assert len(res.err.strip().splitlines()) == 1
    res = forge("verify", "-s", "binance", "--symbol", "BTCUSDT", "-t", "5m", "--from", "2023-06-01",
                "--to", "2023-06-30", "--sink", "postgres")  # a range outside what the table holds
    assert res.code == 2 and "holds no binance BTCUSDT 5m candles from 2023-06-01" in res.err
    res = forge("status", "--sink", "postgres", "--table", "nothere")
    assert res.code == 2 and "has no table nothere" in res.err
    monkeypatch.setenv("FORGE_DATABASE_URL", "postgresql://forge:s3cret-pw@127.0.0.1:1/none")
    res = forge("verify", "-s", "binance", *RANGE, "--sink", "postgres")
    assert res.code == 1 and len(res.err.strip().splitlines()) == 1
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/none" in res.err and "s3cret" not in res.err


def test_postgres_repair_of_a_verified_store_fetches_only_what_went_missing(forge, pg_loaded, db, exchange_env,
                                                                            monkeypatch):
    import forge_sink_postgres.integrity as pgi

    assert verify(forge, "--sink", "postgres")[0] == 0  # the ledger now knows both months
    db.execute(f"DELETE FROM {pg_loaded}.klines WHERE open_ts IN (%s, %s, %s)", (JAN3, JAN3 + 50 * M5, FEB5))
    before = dict(exchange_env.stats)
    digested = []
    original = pgi.PostgresIntegrity.partitions
    monkeypatch.setattr(pgi.PostgresIntegrity, "partitions", lambda self, *a: digested.append(a) or original(self, *a))
    repaired = forge("repair", "-s", "binance", *RANGE, "--sink", "postgres", "--json")
    assert repaired.code == 0, repaired
    assert digested == []  # counted, found short, repaired, proven by the write's own digest: never digested twice
    report = json.loads(repaired.out)
    assert [p["status"] for p in report["series"][0]["partitions"]] == ["repaired", "repaired"]
    assert report["summary"]["written"] == 3 and counts(report)["missing"] == 3
    served = {k: exchange_env.stats[k] - before.get(k, 0) for k in exchange_env.stats}
    assert served.get("archive.zip", 0) == 0  # no month downloaded again
    assert served["archive.checksum"] == 2  # each month's file is still the one the ledger recorded
    # time twice, exchangeInfo, first candle, one page per month, and the maintenance hole still
    # empty at REST (its page and the probe after it): January's file is the one recorded
    assert served["binance.spot.requests"] == 8
    code, report = verify(forge, "--sink", "postgres")
    assert code == 0 and counts(report) == {"missing": 0, "extra": 0, "duplicate": 0, "changed": 0}

    db.execute(f"UPDATE {pg_loaded}.klines SET close = 2 WHERE open_ts = %s", (JAN3 + 9 * M5,))
    db.execute(f"DELETE FROM {pg_loaded}.klines WHERE open_ts = %s", (JAN3 + 70 * M5,))
    repaired = forge("repair", "-s", "binance", *RANGE, "--sink", "postgres", "--json")
    report = json.loads(repaired.out)  # the digest does not match after the missing row: compared in full
    assert repaired.code == 0 and counts(report) == {"missing": 1, "extra": 0, "duplicate": 0, "changed": 1}
    assert verify(forge, "--sink", "postgres")[0] == 0


def test_before_listing_is_a_hole_and_a_row_there_is_extra(forge, exchange_env, in_tmp):
    from forge_mock_exchange.market import NEW_LISTED

    args = ("--symbol", "NEWUSDT", "-t", "1h", "--from", "2024-01-01", "--to", "2024-01-31", "--output", "new.csv")
    assert forge("run", "-s", "binance", *args, "-q").code == 0
    res = forge("verify", "-s", "binance", *args, "--json")
    assert res.code == 0, res
    holes = json.loads(res.out)["series"][0]["holes"]
    assert [(h["from"], h["to_ms"], h["reason"]) for h in holes] == [
        ("2024-01-01T00:00:00Z", NEW_LISTED - 3_600_000, "before_listing")]
    with open("new.csv", newline="") as f:
        header, first, *rest = list(csv.reader(f))
    early = list(first)
    early[header.index("open_ts")] = str(NEW_LISTED - 2 * 3_600_000)
    early[header.index("end_ts")] = str(NEW_LISTED - 3_600_000 - 1)
    with open("new.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, early, first, *rest])
    res = forge("verify", "-s", "binance", *args, "--json")
    assert res.code == 1
    assert ranges(json.loads(res.out), "extra") == [("2024-01-15T06:00:00Z", "2024-01-15T06:00:00Z", 1,
                                                     "before_listing", ())]
    res = forge("repair", "-s", "binance", *args)
    assert res.code == 0 and "(before listing, kept)" in res.out  # never deleted without --delete-extra


def test_postgres_table_without_a_key_duplicates_found_and_removed(forge, pg_loaded, db):
    t = f"{pg_loaded}.plain"
    db.execute(f"CREATE TABLE {t} AS SELECT * FROM {pg_loaded}.klines")  # no primary key
    db.execute(f"INSERT INTO {t} SELECT * FROM {t} WHERE open_ts IN (%s, %s)", (JAN3, FEB5))
    db.execute(f"UPDATE {t} SET close = 7 WHERE ctid = (SELECT max(ctid) FROM {t} WHERE open_ts = %s)", (FEB5,))
    code, report = verify(forge, "--sink", "postgres", "--table", "plain")
    # the first copy (in physical order) is the one kept: here the original, so nothing is "changed"
    assert code == 1 and counts(report) == {"missing": 0, "extra": 0, "duplicate": 2, "changed": 0}
    assert [d["from"] for d in report["series"][0]["duplicates"]] == ["2024-01-03T00:00:00Z", "2024-02-05T00:00:00Z"]
    assert forge("repair", "-s", "binance", *RANGE, "--sink", "postgres", "--table", "plain").code == 0
    code, report = verify(forge, "--sink", "postgres", "--table", "plain")
    assert code == 0, report["series"][0]["counts"]
    db.execute(f"SELECT count(*), count(DISTINCT open_ts) FROM {t}")
    assert db.fetchone() == (SLOTS - HOLE_SLOTS, SLOTS - HOLE_SLOTS)


def test_postgres_repair_of_only_missing_rows_never_reads_the_rows(forge, pg_loaded, db, monkeypatch):
    import forge_sink_postgres.integrity as pgi

    db.execute(f"DELETE FROM {pg_loaded}.klines WHERE (open_ts / {M5}) % 97 = 5")  # scattered, both months
    db.execute(f"SELECT count(*) FROM {pg_loaded}.klines")
    deleted = SLOTS - HOLE_SLOTS - db.fetchone()[0]

    def no_rows(*args, **kwargs):
        raise AssertionError("rows() read although only rows were missing")

    original = pgi.PostgresIntegrity.rows
    monkeypatch.setattr(pgi.PostgresIntegrity, "rows", no_rows)
    res = forge("repair", "-s", "binance", *RANGE, "--sink", "postgres", "--json")
    assert res.code == 0, res
    report = json.loads(res.out)
    assert counts(report) == {"missing": deleted, "extra": 0, "duplicate": 0, "changed": 0}
    assert report["summary"]["written"] == deleted
    monkeypatch.setattr(pgi.PostgresIntegrity, "rows", original)
    assert verify(forge, "--sink", "postgres")[0] == 0


# -- the exchange side from the archive (forge_binance.integrity) ---------------------------------
def _zip_rows(lines: list[str]) -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("X-1m-2024-01.csv", "".join(f"{x}\n" for x in lines))
    return out.getvalue()


def test_archive_canonical_lines_are_the_digest_of_the_rows_the_loader_reads():
    """The canonical text taken from an archive CSV's bytes equals the digest of the rows the
    loader builds from the same file, for every form the archive has; anything unusual is
    refused (None), never guessed."""
    import hashlib

    from forge_binance.archive import read_rows
    from forge_binance.integrity import canonical, csv_member
    from forge_core.timeframes import parse_timeframe

    tf = parse_timeframe("1m")
    t0 = 1704067200000

    def kline(ts: int, o: str = "42000.50000000", v: str = "0.00000000", micros: bool = False) -> str:
        a, b = (ts * 1000, (ts + 59_999) * 1000 + 999) if micros else (ts, ts + 59_999)
        return f"{a},{o},42001.00000000,41999.10000000,100.00000000,{v},{b},1.0,7,0.5,0.25,0"

    header = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,tbq,ignore"
    usual = [kline(t0 + i * 60_000) for i in range(5)]
    cases = {
        "usual": usual,
        "header": [header, *usual],
        "micros": [kline(t0 + i * 60_000, micros=True) for i in range(3)],
        "gap": [usual[0], usual[1], usual[4]],
        "point only": [kline(t0, o="5.", v="10.05000")],
    }
    for name, lines in cases.items():
        data = _zip_rows(lines)
        rows = read_rows(data, "binance", "X", tf, 0, 10**14)
        text, opens, _ = canonical(csv_member(data), tf, 0, 10**14)
        assert opens == [r[3] for r in rows], name
        assert hashlib.sha256(text).hexdigest() == digest(
            line(r[3], r[4], map(normalize, r[5:10])) for r in rows), name
    text, opens, first = canonical(csv_member(_zip_rows(usual)), tf, t0 + 60_000, t0 + 180_000)
    assert (opens, first) == ([t0 + 60_000, t0 + 120_000], 1)
    assert text.startswith(f"{t0 + 60_000},{t0 + 119_999},42000.5,42001,41999.1,100,0\n".encode())
    for odd in ("1E+2", "-1.5", "007.5", ".5", "100", "1.2.3"):
        assert canonical(csv_member(_zip_rows([kline(t0, o=odd)])), tf, 0, 10**14) is None, odd
    bad_close = usual[0].replace(f",{t0 + 59_999},", f",{t0 + 59_998},")
    assert canonical(csv_member(_zip_rows([bad_close])), tf, 0, 10**14) is None
    assert canonical(csv_member(_zip_rows([usual[0], usual[1] + ",extra"])), tf, 0, 10**14) is None
    assert canonical(csv_member(_zip_rows([usual[1], usual[0]])), tf, 0, 10**14) is None  # descending


def test_postgres_verify_digests_archive_bytes_then_trusts_unchanged_checksums(forge, pg_loaded, db, exchange_env,
                                                                               monkeypatch):
    """An intact store verifies without a row built from the archive (its canonical lines come
    from the zip's bytes); the ledger records each file's sha256, and a second verify only asks
    for the .CHECKSUM files (no zip) while the archive's bytes are the same. A store that then
    differs is still found, to the candle."""
    import forge_binance.archive as archive

    def no_rows(*args, **kwargs):
        raise AssertionError("a row was built from an archive file of an intact partition")

    original = archive.read_rows
    monkeypatch.setattr(archive, "read_rows", no_rows)
    zips = exchange_env.stats["archive.zip"]
    code, report = verify(forge, "--sink", "postgres")
    assert code == 0, report
    assert exchange_env.stats["archive.zip"] - zips == 2  # the two monthly files
    assert_hole_is_the_exchanges(report)
    db.execute(f"SELECT partition, entry->'files', entry->>'origin' FROM {pg_loaded}.forge_ledger ORDER BY 1")
    entries = db.fetchall()
    assert [(p, sorted(f), o) for p, f, o in entries] == [
        ("2024-01", ["BTCUSDT-5m-2024-01.zip"], "archive"), ("2024-02", ["BTCUSDT-5m-2024-02.zip"], "archive")]
    assert all(len(sha) == 64 for _, files, _ in entries for sha in files.values())

    zips, sums = exchange_env.stats["archive.zip"], exchange_env.stats["archive.checksum"]
    code, report = verify(forge, "--sink", "postgres")
    assert code == 0 and exchange_env.stats["archive.zip"] == zips  # nothing downloaded again
    assert exchange_env.stats["archive.checksum"] - sums == 2
    assert_hole_is_the_exchanges(report)

    monkeypatch.setattr(archive, "read_rows", original)
    db.execute(f"UPDATE {pg_loaded}.klines SET close = 1.23 WHERE open_ts = %s", (JAN3 + 10 * M5,))
    db.execute(f"DELETE FROM {pg_loaded}.klines WHERE open_ts = %s", (FEB5,))
    code, report = verify(forge, "--sink", "postgres")
    assert code == 1 and counts(report) == {"missing": 1, "extra": 0, "duplicate": 0, "changed": 1}
    assert ranges(report, "changed") == [("2024-01-03T00:50:00Z", "2024-01-03T00:50:00Z", 1, "", ("close",))]


def test_the_same_hole_in_several_symbols_is_the_venues_outage(forge, exchange_env, in_tmp):
    """The mock's maintenance hits every symbol at the same minutes: verified together, or one
    after the other against the same store's ledger, the hole is the venue's outage, with the
    symbols as evidence, in the report and in the ledger; a hole of one symbol alone is not."""
    args = ("-t", "1h", "--from", "2024-01-01", "--to", "2024-01-31", "--output", "both.csv")
    assert forge("run", "-s", "binance", "--symbol", "BTCUSDT,ETHUSDT", *args, "-q").code == 0
    alone = forge("verify", "-s", "binance", "--symbol", "BTCUSDT", *args, "--json")
    assert alone.code == 0
    assert [h["reason"] for h in json.loads(alone.out)["series"][0]["holes"]] == ["exchange_affirmed_empty"]

    res = forge("verify", "-s", "binance", "--symbol", "ETHUSDT", *args, "--json")  # BTCUSDT's from the ledger
    assert res.code == 0, res
    holes = json.loads(res.out)["series"][0]["holes"]
    assert [(h["from_ms"], h["reason"], h["evidence"]["symbols"]) for h in holes] == [
        (MAINTENANCE[0], "venue_outage", ["BTCUSDT", "ETHUSDT"])]
    assert holes[0]["evidence"]["candle_after"] == "2024-01-10T05:00:00Z"
    ledger = json.loads((in_tmp / "both.csv.ledger.json").read_text())["partitions"]
    assert sorted((e["symbol"], h["reason"], tuple(h["evidence"]["symbols"])) for e in ledger for h in e["holes"]) == [
        ("BTCUSDT", "venue_outage", ("BTCUSDT", "ETHUSDT")), ("ETHUSDT", "venue_outage", ("BTCUSDT", "ETHUSDT"))]
    text = forge("verify", "-s", "binance", "--symbol", "BTCUSDT,ETHUSDT", *args)
    assert text.code == 0
    assert "binance ETHUSDT 1h: hole 2024-01-10 03:00 .. 2024-01-10 04:00, 2 slots (the same hole in 2 symbols of the venue: an outage)" \
        in text.out


def test_repair_finds_an_archive_file_republished_since_the_last_check(forge, fresh_exchange_env, in_tmp):
    """Binance re-published February's file with other closes (a new .CHECKSUM) after the store
    was verified: verify sees it; repair skipped the month (its store digest was the one the
    ledger recorded) and left it. Now repair asks each file's .CHECKSUM: the changed month is
    fetched and exactly its 10 rows rewritten, the unchanged one is skipped without a download."""
    mock = fresh_exchange_env
    args = (*RANGE, "--output", "btc.csv")
    assert forge("run", "-s", "binance", *args, "-q").code == 0
    assert forge("verify", "-s", "binance", *args).code == 0
    ledger = (in_tmp / "btc.csv.ledger.json").read_text()
    mock.config.extra["archive_corrupt"] = {"BTCUSDT-5m-2024-02.zip": "values"}  # the mock re-publishes it
    code, report = verify(forge, "--output", "btc.csv")
    assert code == 1 and counts(report) == {"missing": 0, "extra": 0, "duplicate": 0, "changed": 10}
    assert ranges(report, "changed") == [("2024-02-01T00:50:00Z", "2024-02-01T01:35:00Z", 10, "", ("close",))]
    (in_tmp / "btc.csv.ledger.json").write_text(ledger)  # as a repair from cron finds it: no verify since

    zips = mock.stats["archive.zip"]
    repaired = forge("repair", "-s", "binance", *args, "--json")
    assert repaired.code == 0, repaired
    report = json.loads(repaired.out)
    assert [p["status"] for p in report["series"][0]["partitions"]] == ["skipped", "repaired"]
    assert ranges(report, "changed") == [("2024-02-01T00:50:00Z", "2024-02-01T01:35:00Z", 10, "", ("close",))]
    assert (report["summary"]["written"], report["summary"]["deleted"]) == (10, 0)
    assert mock.stats["archive.zip"] - zips == 1  # February's new file only
    code, report = verify(forge, "--output", "btc.csv")
    assert code == 0 and counts(report) == {"missing": 0, "extra": 0, "duplicate": 0, "changed": 0}
    again = json.loads(forge("repair", "-s", "binance", *args, "--json").out)
    assert [p["status"] for p in again["series"][0]["partitions"]] == ["skipped", "skipped"]

    # re-published again (the intact file) while the store lost a candle: writing that candle
    # back made the store equal the ledger's digest, which no longer is the exchange's
    mock.config.extra["archive_corrupt"] = {}
    with open(in_tmp / "btc.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    with open(in_tmp / "btc.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *(r for r in rows if int(r[header.index("open_ts")]) != FEB5)])
    repaired = json.loads(forge("repair", "-s", "binance", *args, "--json").out)
    assert counts(repaired) == {"missing": 1, "extra": 0, "duplicate": 0, "changed": 10}
    assert verify(forge, "--output", "btc.csv")[0] == 0


@pytest.mark.parametrize("defect", ["values", "short"])
def test_deep_finds_where_the_archive_and_rest_disagree(forge, mock_exchange_factory, monkeypatch, in_tmp, defect):
    """A re-uploaded archive file with other closes than REST (``values``) or lacking candles
    (``short``, which a load fills from REST): a plain verify of a store loaded from it is clean
    (store and archive agree), ``--deep`` draws days (seeded) and reports the candles where the
    two exchange sources disagree, with the file; a draw without that day finds nothing."""
    from forge_core.testing import FROZEN_NOW

    mock = mock_exchange_factory(now=FROZEN_NOW, latency=0, extra={"archive_corrupt": {"BTCUSDT-5m-2024-01.zip": defect}})
    for name in ("FORGE_BINANCE_URL", "FORGE_BINANCE_ARCHIVE_URL"):
        monkeypatch.setenv(name, mock.url)
    args = ("--symbol", "BTCUSDT", "-t", "5m", "--from", "2024-01-01", "--to", "2024-01-31", "--output", "d.csv")
    assert forge("run", "-s", "binance", *args, "-q").code == 0
    assert forge("verify", "-s", "binance", *args).code == 0

    res = forge("verify", "-s", "binance", *args, "--deep", "31", "--json")
    assert res.code == 1, res
    deep = json.loads(res.out)["series"][0]["deep"]
    assert len(deep["days"]) == 31 and deep["skipped_days"] == [] and deep["seed"] == 0
    kind, fields = {"values": ("archive_differs", ["close"]), "short": ("archive_lacks", [])}[defect]
    assert [(d["kind"], d["from"], d["to"], d["count"], d.get("fields", []), d["file"]) for d in deep["disagreements"]] == [
        (kind, "2024-01-01T00:50:00Z", "2024-01-01T01:35:00Z", 10, fields, "BTCUSDT-5m-2024-01.zip")]
    assert json.loads(res.out)["summary"]["deep_disagreements"] == 10

    if defect == "values":
        text = forge("verify", "-s", "binance", *args, "--deep", "3", "--deep-seed", "7")
        assert text.code == 0, text  # seed 7 does not draw the first day
        assert "deep: 3 day(s) of archive files cross-checked against REST, 0 candle(s) disagree" in text.out


@pytest.mark.parametrize("command", ["verify", "repair", "status"])
def test_commands_without_transforms_neither_list_nor_suggest_them(forge, loaded_csv, command):
    """verify --help listed --resample-to and --columns, which the command then refused with
    'choose that plugin, e.g. --transform resample': an option verify does not have."""
    assert "--resample-to" not in forge(command, "--help").out
    res = forge(command, *(("-s", "binance", *RANGE) if command != "status" else ()), "--output", "btc.csv",
                "--resample-to", "1h")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1, res
    assert (f"option --resample-to belongs to transform resample; forge {command} checks the exchange's own "
            "candles and takes no transforms") in res.err


def test_deep_and_options_belong_to_the_plugins_chosen(forge, loaded_csv, monkeypatch):
    """verify takes only the chosen source's and sink's options (the CLI's scoped resolution);
    --deep needs archive files."""
    res = forge("verify", "-s", "binance", *RANGE, "--output", "btc.csv", "--table", "t")
    assert res.code == 2 and "option --table belongs to sink postgres" in res.err
    assert len(res.err.strip().splitlines()) == 1
    res = forge("verify", "-s", "binance", *RANGE, "--output", "btc.csv", "--archive", "sometimes")
    assert res.code == 2 and "'sometimes' is not one of 'auto', 'archive', 'rest'" in res.err
    res = forge("verify", "-s", "binance", *RANGE, "--output", "btc.csv", "--archive", "rest", "--deep", "2")
    assert res.code == 2 and "--deep: none of the 2 days drawn comes from archive files" in res.err


def test_csv_repair_waits_for_a_run_writing_the_file_and_never_rewrites_under_it(forge, loaded_csv):
    """A repair rewrites the file: under a forge run's appends it would lose them. It takes the
    lock the run holds (one line naming the holder, exit 1, the file untouched), and a file
    that changed since the repair read it is not rewritten either."""
    from forge_sink_csv.integrity import CsvIntegrity

    damage_csv(loaded_csv)
    before = loaded_csv.read_bytes()
    lock = os.path.realpath(loaded_csv) + ".lock"
    run = subprocess.Popen([sys.executable, "-c", "import sys, time; from forge_sink_csv.lock import acquire; "
                            f"acquire({lock!r}, 'x', 'x'); print('held', flush=True); time.sleep(60)"],
                           stdout=subprocess.PIPE, text=True)  # a forge run writing the file
    try:
        assert run.stdout.readline() == "held\n"
        result = forge("repair", "-s", "binance", *RANGE, "--output", "btc.csv")
    finally:
        run.kill()
        run.wait()
    assert result.code == 1, result
    assert result.err.strip().splitlines()[-1].endswith(
        f"btc.csv is being written by another forge run (PID {run.pid}); let it finish or stop it, "
        "or pass --wait-for-lock SECONDS to wait for it"), result.err
    assert loaded_csv.read_bytes() == before

    store = CsvIntegrity(str(loaded_csv))
    with open(loaded_csv, "a") as f:  # a run appended after the repair read the file
        f.write(f"{before.decode().splitlines()[-1]}\n")
    appended = loaded_csv.read_bytes()
    entry = next(iter(store.ledger("binance", "BTCUSDT", "5m").values()), None)
    with pytest.raises(Exception, match="changed while the repair read it"):
        store.apply("binance", "BTCUSDT", "5m", (), [], [0], entry)
    assert loaded_csv.read_bytes() == appended

    assert forge("repair", "-s", "binance", *RANGE, "--output", "btc.csv").code == 0  # once the run is done
