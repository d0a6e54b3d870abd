"""A re-run of a finished range downloads again; its summary says how many rows it actually
changed in each sink: ``0 rows changed`` when nothing differs (issue 16)."""

from __future__ import annotations

import json
import uuid

from conftest import read_csv
from forge_core import Pipeline, Plugins, Sink

RANGE = ("--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01", "--to", "2024-01-03")  # 72 candles
NAME = "Binance-BTCUSDT-1h-2024-01-01_2024-01-03.csv"


def summary(in_tmp) -> dict:
    return json.loads((in_tmp / "s.json").read_text())


def test_csv_rerun_says_how_many_rows_changed(forge, exchange_env, in_tmp):
    run = ("run", "-q", "-s", "binance", *RANGE, "--summary-json", "s.json")
    first = forge(*run)
    assert first.code == 0, first
    assert first.out.rstrip().endswith(f"-> {NAME}; 72 rows changed"), first.out
    again = forge(*run)
    assert again.code == 0, again
    assert again.out.rstrip().endswith("; 0 rows changed") and summary(in_tmp)["rows_changed"] == {"csv": 0}

    header, rows = read_csv(in_tmp / NAME)
    lines = (in_tmp / NAME).read_text().splitlines()
    i = header.index("close")
    edited = lines[10].split(",")
    edited[i] = "1.5"
    lines[10] = ",".join(edited)
    (in_tmp / NAME).write_text("\n".join(lines) + "\n")  # an editor's line ends: not a change
    repaired = forge(*run)
    assert repaired.code == 0, repaired
    assert repaired.out.rstrip().endswith("; 1 row changed") and summary(in_tmp)["rows_changed"] == {"csv": 1}
    assert read_csv(in_tmp / NAME) == (header, rows)

    # --from auto extends the file: the new candles are what changed
    auto = forge("run", "-q", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "auto",
                 "--to", "2024-01-04", "--log-format", "json")
    assert auto.code == 0, auto
    assert json.loads(auto.out)["rows_changed"] == {"csv": 24}


def test_postgres_rerun_counts_real_changes(forge, exchange_env, in_tmp, pg_url, db, monkeypatch):
    monkeypatch.setenv("FORGE_DATABASE_URL", pg_url)
    table = f"t_{uuid.uuid4().hex[:10]}"
    run = ("run", "-q", "-s", "binance", "--sink", "postgres", "--table", table, *RANGE, "--summary-json", "s.json")
    try:
        first = forge(*run)
        assert first.code == 0, first
        assert first.out.rstrip().endswith("; 72 rows changed") and summary(in_tmp)["rows_changed"] == {"postgres": 72}
        again = forge(*run)
        assert again.code == 0, again
        assert again.out.rstrip().endswith("; 0 rows changed") and summary(in_tmp)["rows_changed"] == {"postgres": 0}
        db.execute(f"UPDATE {table} SET close = close + 1 WHERE open_ts = 1704096000000")  # 2024-01-01 08:00
        assert db.rowcount == 1
        repaired = forge(*run)
        assert repaired.code == 0, repaired
        assert repaired.out.rstrip().endswith("; 1 row changed") and summary(in_tmp)["rows_changed"] == {"postgres": 1}
    finally:
        db.execute(f"DROP TABLE IF EXISTS {table}")


def test_a_sink_that_cannot_tell_is_named_not_counted(exchange_env):
    class Memory(Sink):
        name = "memory"

        def write(self, batch):
            pass

    class Counting(Memory):
        name = "counting"

        def rows_changed(self):
            return 5

    result = Pipeline("binance", [Memory(), Counting(), Memory()], plugins=Plugins()).run(
        "BTCUSDT", "1h", "2024-01-01", "2024-01-01")
    assert result.rows_changed == {"memory": None, "counting": 5, "memory#2": None}
    assert "; rows changed: memory not counted, counting 5, memory#2 not counted" in result.summary()
    only = Pipeline("binance", [Memory()], plugins=Plugins()).run("BTCUSDT", "1h", "2024-01-01", "2024-01-01")
    assert only.summary().endswith("; rows changed not counted by memory")


def test_parquet_rerun_counts_real_changes(forge, exchange_env, in_tmp):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    run = ("run", "-q", "-s", "binance", "--sink", "parquet", "--root", "data", *RANGE, "--summary-json", "s.json")
    assert forge(*run).out.rstrip().endswith("; 72 rows changed")
    again = forge(*run)
    assert again.code == 0 and summary(in_tmp)["rows_changed"] == {"parquet": 0}, again
    (path,) = (in_tmp / "data").rglob("*.parquet")
    table = pq.read_table(path)
    i = table.column_names.index("close")
    bumped = pc.if_else(pc.equal(table["open_ts"], 1704096000000), pa.scalar(1, table["close"].type), table["close"])
    pq.write_table(table.set_column(i, table.schema.field(i), bumped), path)
    assert forge(*run).code == 0 and summary(in_tmp)["rows_changed"] == {"parquet": 1}
