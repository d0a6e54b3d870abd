"""The parquet sink end to end against the mock exchange, read back with pyarrow, polars and
DuckDB and compared with the rows the mock's market defines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from forge_sink_parquet import ParquetSink

from forge_core import Batch, RunInfo, SinkError, UsageError
from forge_core.times import parse_range
from forge_mock_exchange import MockConfig, MockExchange
from forge_mock_exchange.expected import binance_rows

NOW = 1742034030456
COLUMNS = ("source", "symbol", "timeframe", "open_ts", "end_ts", "open", "high", "low", "close", "volume",
           "quote_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume")
DECIMALS = ("open", "high", "low", "close", "volume", "quote_volume", "taker_buy_base_volume",
            "taker_buy_quote_volume")


def expected(symbol: str, start: str, end: str, timeframe: str = "1m") -> list[dict]:
    lo, hi = parse_range(start, end)
    return [dict(zip(COLUMNS, r, strict=True)) for r in binance_rows(symbol, timeframe, lo, hi, NOW)]


def canonical(row: dict) -> dict:
    """A row read back, in the mock's terms: decimals as their 8-place strings, ints as ints."""
    out = {k: (f"{v:f}" if isinstance(v, Decimal) else v) for k, v in row.items() if k not in ("year", "month")}
    assert out.pop("open_time") == datetime.fromtimestamp(out["open_ts"] / 1000, timezone.utc)
    return out


def by_pyarrow(root: Path, **where) -> list[dict]:
    dataset = ds.dataset(root, partitioning="hive")
    expr = None
    for key, value in where.items():
        e = ds.field(key) == value
        expr = e if expr is None else expr & e
    rows = dataset.to_table(filter=expr).sort_by([("symbol", "ascending"), ("open_ts", "ascending")]).to_pylist()
    return [canonical(r) for r in rows]


def by_polars(root: Path, **where) -> list[dict]:
    lf = pl.scan_parquet(root)
    for key, value in where.items():
        lf = lf.filter(pl.col(key) == value)
    return [canonical(r) for r in lf.sort("symbol", "open_ts").collect().to_dicts()]


def by_duckdb(root: Path, **where) -> list[dict]:
    cond = " and ".join(f"{k} = {v!r}" for k, v in where.items()) or "true"
    rel = duckdb.sql(f"select * from '{root}/**/*.parquet' where {cond} order by symbol, open_ts")
    return [canonical(dict(zip(rel.columns, r, strict=True))) for r in rel.fetchall()]


READERS = (by_pyarrow, by_polars, by_duckdb)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run(forge, root: Path, *args: str):
    return forge("run", "-s", "binance", "--sink", "parquet", "--root", str(root), "-q", *args)


def test_rows_read_back_exactly_by_pyarrow_polars_and_duckdb(forge, exchange_env, tmp_path):
    root = tmp_path / "data"
    result = run(forge, root, "--symbol", "BTCUSDT,ETHUSDT", "--from", "2024-01-30 12:00", "--to", "2024-02-02")
    assert result.code == 0, result
    want = expected("BTCUSDT", "2024-01-30 12:00", "2024-02-02") + expected("ETHUSDT", "2024-01-30 12:00", "2024-02-02")
    for read in READERS:
        assert read(root) == want, read.__name__
    assert sorted(files(root)) == [f"source=binance/symbol={s}/timeframe=1m/year=2024/month={m}/part-0.parquet"
                                   for s in ("BTCUSDT", "ETHUSDT") for m in (1, 2)]
    schema = pq.read_schema(root / "source=binance/symbol=BTCUSDT/timeframe=1m/year=2024/month=2/part-0.parquet")
    assert schema.field("open_time").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("open_ts").type == pa.int64() and schema.field("trades").type == pa.int64()
    assert all(schema.field(c).type == pa.decimal128(38, 8) for c in DECIMALS)
    assert "symbol" not in schema.names  # a Hive key, not a column: no reader sees it twice


def test_partition_pruning_reads_only_the_partitions_asked_for(forge, exchange_env, tmp_path):
    root = tmp_path / "data"
    assert run(forge, root, "--symbol", "BTCUSDT,ETHUSDT", "--from", "2024-01-31", "--to", "2024-02-01").code == 0
    dataset = ds.dataset(root, partitioning="hive")
    only = (ds.field("symbol") == "ETHUSDT") & (ds.field("month") == 2)
    assert [f.path for f in dataset.get_fragments(filter=only)] == [
        str(root / "source=binance/symbol=ETHUSDT/timeframe=1m/year=2024/month=2/part-0.parquet")]
    plan = pl.scan_parquet(root).filter(pl.col("symbol") == "ETHUSDT", pl.col("month") == 2).explain()
    assert "symbol=ETHUSDT/timeframe=1m/year=2024/month=2/part-0.parquet" in plan
    assert plan.count("part-0.parquet") == 1 and "sources" not in plan, plan
    analyzed = duckdb.sql(f"explain analyze select * from '{root}/**/*.parquet' "
                          "where symbol = 'ETHUSDT' and month = 2").fetchall()[0][1]
    assert "Total Files Read: 1" in analyzed and "Scanning Files: 1/4" in analyzed, analyzed
    want = expected("ETHUSDT", "2024-02-01", "2024-02-01")
    for read in READERS:
        assert read(root, symbol="ETHUSDT", month=2) == want, read.__name__


def test_a_rerun_gives_an_identical_dataset(forge, exchange_env, tmp_path):
    root = tmp_path / "data"
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-31 20:00", "--to", "2024-02-01 03:00")
    assert run(forge, root, *args).code == 0
    first = files(root)
    assert run(forge, root, *args).code == 0
    assert files(root) == first
    assert not os.listdir(tmp_path / ".data.forge" / "tmp")
    assert not os.listdir(tmp_path / ".data.forge" / "runs")  # finished runs leave no resume state


def test_a_partial_month_merges_with_the_months_file(forge, exchange_env, tmp_path):
    root = tmp_path / "data"
    for start, end in [("2024-01-01", "2024-01-03"), ("2024-01-20", "2024-02-01 05:00"),
                       ("2024-01-02 12:00", "2024-01-21 06:00"), ("2024-01-10", "2024-01-10")]:
        assert run(forge, root, "--symbol", "BTCUSDT", "--from", start, "--to", end).code == 0
    want = expected("BTCUSDT", "2024-01-01", "2024-02-01 05:00")
    for read in READERS:
        assert read(root) == want, read.__name__
    assert len(list(root.rglob("*.parquet"))) == 2


def test_from_auto_continues_after_the_newest_candle(forge, exchange_env, tmp_path):
    root = tmp_path / "data"
    assert run(forge, root, "--symbol", "BTCUSDT", "--from", "2024-01-31 22:00", "--to", "2024-01-31").code == 0
    result = run(forge, root, "--symbol", "BTCUSDT", "--from", "auto", "--to", "2024-02-01 02:00")
    assert result.code == 0, result
    assert "121 1m candles" in result.out  # 2024-02-01 00:00 .. 02:00, nothing fetched again
    assert by_pyarrow(root) == expected("BTCUSDT", "2024-01-31 22:00", "2024-02-01 02:00")


def test_float64_option(forge, exchange_env, tmp_path):
    root = tmp_path / "data"
    assert run(forge, root, "--parquet-float", "--symbol", "BTCUSDT", "--from", "2024-02-01 10:00",
               "--to", "2024-02-01 11:00").code == 0
    table = ds.dataset(root, partitioning="hive").to_table().sort_by("open_ts")
    want = expected("BTCUSDT", "2024-02-01 10:00", "2024-02-01 11:00")
    for c in DECIMALS:
        assert table.schema.field(c).type == pa.float64()
        assert table[c].to_pylist() == [float(r[c]) for r in want]


def test_transform_columns_are_kept_and_resample_partitions_by_its_timeframe(forge, exchange_env, tmp_path,
                                                                           monkeypatch):
    (tmp_path / "my_cols.py").write_text(
        "def flag(c):\n    return {**c, 'bullish': c['close'] > c['open'], 'note': 'x' + c['symbol']}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    root = tmp_path / "data"
    result = run(forge, root, "--symbol", "ETHUSDT", "--from", "2024-01-31", "--to", "2024-02-01",
                 "--transform", "resample", "--resample-to", "1h", "--transform", "my_cols:flag")
    assert result.code == 0, result
    table = pq.read_table(root).sort_by("open_ts")
    assert set(table["timeframe"].to_pylist()) == {"1h"} and table.num_rows == 48
    assert table.schema.field("bullish").type == pa.bool_()
    assert table["note"].to_pylist() == ["xETHUSDT"] * 48
    # a row function sees prices as floats, but a value it passes through untouched keeps the
    # exchange's exact decimal (issue 16), so the dataset stores decimals
    assert pa.types.is_decimal(table.schema.field("close").type)
    hours = expected("ETHUSDT", "2024-01-31", "2024-02-01", "1h")
    assert [float(v) for v in table["close"].to_pylist()] == [float(h["close"]) for h in hours]
    assert table["bullish"].to_pylist() == [float(h["close"]) > float(h["open"]) for h in hours]


# -- kill -9 and resume ---------------------------------------------------------------------
ARGS = ["run", "-s", "binance", "--sink", "parquet", "--root", "data", "--symbol", "BTCUSDT,ETHUSDT",
        "--from", "2024-01-31 12:00", "--to", "2024-02-01 06:00", "--workers", "1", "--commit-every", "300", "-q"]


def committed(tmp_path: Path) -> dict[str, int]:
    runs = list((tmp_path / ".data.forge" / "runs").glob("*.json"))
    return json.loads(runs[0].read_text())["committed"] if runs else {}


def test_kill_9_then_the_same_command_resumes_to_the_identical_dataset(forge_process, tmp_path):
    with MockExchange(MockConfig(now=NOW, latency=0.2)) as slow:  # slow enough to kill mid-run
        proc = subprocess.Popen(["forge", *ARGS], cwd=tmp_path, env={**os.environ, "FORGE_BINANCE_URL": slow.url},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not committed(tmp_path).get("BTCUSDT", 0) > parse_range("2024-02-01", "2024-02-01")[0]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    kept = committed(tmp_path)
    with MockExchange(MockConfig(now=NOW)) as mock:
        result = forge_process(*ARGS, env={"FORGE_BINANCE_URL": mock.url}, cwd=tmp_path)
        served = mock.stats["binance.spot.candles"]
    assert result.code == 0, result
    assert "resumed BTCUSDT after" in result.out
    root = tmp_path / "data"
    want = expected("BTCUSDT", "2024-01-31 12:00", "2024-02-01 06:00") + \
        expected("ETHUSDT", "2024-01-31 12:00", "2024-02-01 06:00")
    for read in READERS:
        assert read(root) == want, read.__name__
    assert served < len(want) - (kept["BTCUSDT"] - parse_range("2024-01-31 12:00", "2024-01-31")[0]) // 60_000 + 10
    # and the dataset is byte for byte what an uninterrupted run writes
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with MockExchange(MockConfig(now=NOW)) as mock:
        assert forge_process(*ARGS, env={"FORGE_BINANCE_URL": mock.url}, cwd=fresh).code == 0
    assert files(fresh / "data") == files(root)


# -- safe writes ----------------------------------------------------------------------------
def _run_info(symbols=("BTCUSDT",), columns=COLUMNS) -> RunInfo:
    return RunInfo("binance", "Binance", tuple(symbols), "1m", 0, NOW, columns, output_timeframe="1m")


def _batch(start: str, end: str, symbol: str = "BTCUSDT") -> Batch:
    lo, hi = parse_range(start, end)
    return Batch("binance", symbol, "1m", COLUMNS, binance_rows(symbol, "1m", lo, hi, NOW))


def test_a_crash_while_writing_keeps_the_previous_file_and_the_root_clean(tmp_path, monkeypatch):
    root = tmp_path / "data"
    sink = ParquetSink(root=str(root))
    sink.open(_run_info())
    sink.write(_batch("2024-01-01", "2024-01-01"))
    sink.close(True)
    before = files(root)

    def torn(self, table, row_group_size=None):  # the file is begun ("PAR1" written), then the disk is full
        raise OSError(28, "No space left on device")

    sink = ParquetSink(root=str(root))
    sink.open(_run_info())
    sink.write(_batch("2024-01-02", "2024-01-02"))
    monkeypatch.setattr(pq.ParquetWriter, "write_table", torn)
    with pytest.raises(SinkError, match="No space left on device"):
        sink.commit()
    sink.close(False)
    assert files(root) == before
    assert not os.listdir(tmp_path / ".data.forge" / "tmp")


def test_one_partition_is_buffered_at_a_time(tmp_path):
    sink = ParquetSink(root=str(tmp_path / "data"))
    sink.open(_run_info(("BTCUSDT", "ETHUSDT")))
    sink.write(_batch("2024-01-31 23:00", "2024-02-01 01:00"))  # crosses a month: January is written
    assert len(list((tmp_path / "data").rglob("*.parquet"))) == 1
    assert sink.current is not None and sink.current.key[3:] == (2024, 2)
    sink.write(_batch("2024-02-01", "2024-02-01", "ETHUSDT"))  # next series: February of BTC written
    assert len(list((tmp_path / "data").rglob("*.parquet"))) == 2
    sink.close(True)
    assert len(list((tmp_path / "data").rglob("*.parquet"))) == 3


def test_a_value_needing_more_decimal_places_than_the_dataset_is_refused(tmp_path):
    sink = ParquetSink(root=str(tmp_path / "data"))
    sink.open(_run_info())
    sink.write(_batch("2024-01-01", "2024-01-01"))
    sink.commit()
    row = list(_batch("2024-01-02", "2024-01-02").rows[0])
    row[COLUMNS.index("close")] = "0.123456789"
    with pytest.raises(SinkError, match=r"close value 0.123456789 needs 9 decimal places.*decimal128\(38, 8\)"):
        sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, [tuple(row)]))
    sink.close(False)


def test_a_new_dataset_takes_the_scale_its_strings_need():
    from forge_sink_parquet.convert import to_table

    table = to_table(("open_ts", "close", "note"), [(0, "1.5", "a"), (60_000, "0.0000000123", "b")], None,
                     False, "test")
    assert table.schema.field("close").type == pa.decimal128(38, 10)
    assert table["close"].to_pylist() == [Decimal("1.5"), Decimal("0.0000000123")]
    assert table.schema.field("note").type == pa.string()


# -- bad input ------------------------------------------------------------------------------
def one_line(result) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result
    return lines[0]


def test_bad_roots_fail_before_any_exchange_request(forge, fresh_mock, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGE_BINANCE_URL", fresh_mock.url)
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-01")
    (tmp_path / "afile").write_text("x")
    result = run(forge, tmp_path / "afile" / "data", *args)
    assert result.code == 1 and "cannot write the parquet dataset" in one_line(result)

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.csv").write_text("keep me")
    result = run(forge, foreign, *args)
    assert result.code == 1 and "holds 'notes.csv', which Forge did not write" in one_line(result)
    assert (foreign / "notes.csv").read_text() == "keep me"

    # a Parquet file in the layout's place, not written by Forge
    part = tmp_path / "other" / "source=binance/symbol=BTCUSDT/timeframe=1m/year=2024/month=1/part-0.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.table({"open_ts": [1]}), part)
    before = part.read_bytes()
    result = run(forge, tmp_path / "other", *args)
    assert result.code == 1 and "which Forge did not write" in one_line(result)
    assert part.read_bytes() == before

    result = forge("run", "-s", "binance", "--sink", "parquet", "-q", *args)
    assert result.code == 2 and "needs --root DIR" in one_line(result)
    assert fresh_mock.stats.get("binance.spot.candles", 0) == 0


def test_a_failed_run_that_wrote_nothing_leaves_nothing_it_created(forge, exchange_env, tmp_path):
    """The source fails before any row: the root it created, the bookkeeping directory beside it
    (.NAME.forge) and their parents were left behind, empty. A root that was there stays, and
    so does what a run before wrote."""
    fail = ("--symbol", "FOOBAR", "--from", "2024-01-01", "--to", "2024-01-01")
    result = run(forge, tmp_path / "a" / "b" / "data", *fail)
    assert result.code == 1 and "unknown symbol 'FOOBAR'" in one_line(result)
    assert list(tmp_path.iterdir()) == []

    (tmp_path / "mine").mkdir()
    assert run(forge, tmp_path / "mine", *fail).code == 1
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and list((tmp_path / "mine").iterdir()) == []

    ok = run(forge, tmp_path / "data", "--symbol", "BTCUSDT", "--from", "2024-01-01", "--to", "2024-01-01")
    assert ok.code == 0, ok
    before = files(tmp_path)
    assert run(forge, tmp_path / "data", *fail).code == 1
    assert files(tmp_path) == before and (tmp_path / ".data.forge" / "runs").is_dir()


def test_a_run_locks_the_new_lock_file_after_another_removed_it(tmp_path, monkeypatch):
    """A run that wrote nothing removes the bookkeeping directory and its lock file; one that
    opened that file just before takes the new one, so two runs never hold different locks."""
    import forge_sink_parquet.sink as module

    first = ParquetSink(root=str(tmp_path / "data"))
    first.open(_run_info())
    stale = open(tmp_path / ".data.forge" / "lock", "a")  # noqa: SIM115 (the next run's, opened in time)
    first.close(False)
    assert not (tmp_path / "data").exists() and not (tmp_path / ".data.forge").exists()
    real = open
    monkeypatch.setattr(module, "open", lambda path, *a, **kw: stale if not stale.closed else real(path, *a, **kw),
                        raising=False)
    second = ParquetSink(root=str(tmp_path / "data"))
    second.open(_run_info())
    assert stale.closed and (tmp_path / ".data.forge" / "lock").is_file()
    with pytest.raises(SinkError, match="another forge run is writing"):
        ParquetSink(root=str(tmp_path / "data")).open(_run_info())
    second.close(True)


def test_a_run_refused_the_lock_removes_nothing_of_the_run_holding_it(tmp_path, monkeypatch):
    """Two runs start on a new root: the second looked before the first made .data.forge, so it
    noted the directory as its own; refused the lock, it removed the lock file the first holds,
    and a third run took a new one while the first wrote."""
    from forge_sink_parquet import layout

    root = str(tmp_path / "data")
    first = ParquetSink(root=root)
    real, raced = layout.makedirs_durable, []

    def racing(path):
        if path.endswith("tmp") and not raced:
            raced.append(path)
            first.open(_run_info())  # the first run makes it all between the second's look and mkdir
        return real(path)

    monkeypatch.setattr(layout, "makedirs_durable", racing)
    with pytest.raises(SinkError, match="another forge run is writing"):
        ParquetSink(root=root).open(_run_info())
    monkeypatch.setattr(layout, "makedirs_durable", real)
    assert (tmp_path / ".data.forge" / "lock").is_file()
    with pytest.raises(SinkError, match="another forge run is writing"):
        ParquetSink(root=root).open(_run_info())
    first.close(True)


def test_number_type_conflicts_with_the_dataset_are_refused(forge, exchange_env, tmp_path):
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-01 00:00", "--to", "2024-01-01 01:00")
    floats, decimals = tmp_path / "floats", tmp_path / "decimals"
    assert run(forge, floats, "--parquet-float", *args).code == 0
    assert run(forge, decimals, *args).code == 0
    before = files(floats), files(decimals)
    result = run(forge, floats, *args)
    assert result.code == 1 and "stores prices and volumes as float64; add --parquet-float" in one_line(result)
    result = run(forge, decimals, "--parquet-float", *args)
    assert result.code == 1 and "as exact decimals; drop --parquet-float" in one_line(result)
    assert (files(floats), files(decimals)) == before


def test_other_columns_than_the_dataset_are_refused(forge, exchange_env, tmp_path):
    root = tmp_path / "data"
    args = ("--symbol", "BTCUSDT", "--from", "2024-01-01 00:00", "--to", "2024-01-01 01:00")
    assert run(forge, root, *args).code == 0
    before = files(root)
    result = run(forge, root, *args, "--transform", "select", "--columns",
                 "source,symbol,timeframe,open_ts,end_ts,close")
    assert result.code == 1, result
    assert "but the dataset's files have" in one_line(result)
    assert files(root) == before


def test_a_second_writer_of_the_same_root_is_refused(tmp_path):
    first = ParquetSink(root=str(tmp_path / "data"))
    first.open(_run_info())
    with pytest.raises(SinkError, match="another forge run is writing"):
        ParquetSink(root=str(tmp_path / "data")).open(_run_info())
    first.close(True)
    ParquetSink(root=str(tmp_path / "data")).open(_run_info())


def test_symbols_that_are_not_safe_directory_names_are_refused(tmp_path):
    with pytest.raises(SinkError, match="cannot use symbol 'BTC/USDT'"):
        ParquetSink(root=str(tmp_path / "data")).open(_run_info(("BTC/USDT",)))
    with pytest.raises(UsageError):
        ParquetSink(root=str(tmp_path / "data"), bogus=1)


# -- forge status / verify / repair ---------------------------------------------------------
VRANGE = ("--symbol", "BTCUSDT", "-t", "5m", "--from", "2024-01-01", "--to", "2024-02-29")
M5 = 300_000
JAN3 = 1704240000000  # 2024-01-03 00:00 UTC
FEB5 = 1707091200000


def damage(path: Path, drop: set[int], change: dict[int, dict], add: list[dict]) -> None:
    """Rewrite a partition file as someone else might have: rows dropped, changed, added
    (duplicates and off-grid rows included), Forge's footer kept."""
    table = pq.read_table(path)
    rows = [r for r in table.to_pylist() if r["open_ts"] not in drop]
    for r in rows:
        r.update(change.get(r["open_ts"], {}))
    rows = sorted(rows + add, key=lambda r: r["open_ts"])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def verify(forge, root: Path, *args: str) -> tuple[int, dict]:
    result = forge("verify", "-s", "binance", *VRANGE, "--sink", "parquet", "--root", str(root), "--json", *args)
    assert result.code in (0, 1), result
    return result.code, json.loads(result.out)


def test_verify_and_repair_a_parquet_dataset(forge, exchange_env, tmp_path):
    root = tmp_path / "data"
    assert run(forge, root, *VRANGE).code == 0
    code, report = verify(forge, root)
    assert code == 0 and report["series"][0]["counts"] == {"missing": 0, "extra": 0, "duplicate": 0, "changed": 0}
    pristine = files(root)

    jan = root / "source=binance/symbol=BTCUSDT/timeframe=5m/year=2024/month=1/part-0.parquet"
    feb = root / "source=binance/symbol=BTCUSDT/timeframe=5m/year=2024/month=2/part-0.parquet"
    row = pq.read_table(jan).filter(ds.field("open_ts") == JAN3 + 20 * M5).to_pylist()[0]
    damage(jan, drop={JAN3, JAN3 + M5}, change={JAN3 + 10 * M5: {"close": Decimal("1.23")}},
           add=[{**row, "open_ts": JAN3 + 20 * M5 + 60_000}, dict(row)])
    damage(feb, drop={FEB5}, change={}, add=[])
    code, report = verify(forge, root)
    assert code == 1
    assert report["series"][0]["counts"] == {"missing": 3, "extra": 1, "duplicate": 1, "changed": 1}
    changed = report["series"][0]["changed"]
    assert [(c["from"], c["fields"]) for c in changed] == [("2024-01-03T00:50:00Z", ["close"])]

    result = forge("repair", "-s", "binance", *VRANGE, "--sink", "parquet", "--root", str(root), "--delete-extra")
    assert result.code == 0, result
    code, report = verify(forge, root)
    assert code == 0, report
    for read in (by_pyarrow, by_duckdb):
        assert read(root) == expected("BTCUSDT", "2024-01-01", "2024-02-29", "5m"), read.__name__
    assert files(root) == pristine  # exactly the bytes a run writes
    ledger = json.loads((tmp_path / ".data.forge" / "ledger.json").read_text())
    assert {e["partition"]: e["digest"] == e["store_digest"] for e in ledger["partitions"]} == \
        {"2024-01": True, "2024-02": True}

    status = forge("status", "--sink", "parquet", "--root", str(root))
    assert status.code == 0, status
    assert "17,250 candles" in status.out
    res = forge("verify", "-s", "binance", *VRANGE, "--sink", "parquet", "--root", str(tmp_path / "nope"))
    assert res.code == 2 and "parquet root" in one_line(res) and "does not exist" in res.err


def test_repair_with_a_ledger_that_cannot_be_written(forge, exchange_env, tmp_path, monkeypatch):
    """The ledger beside the dataset cannot be replaced (read-only, disk full): repair wrote the
    month and then failed on the ledger, exit 1 and no report. Now the report, exit 0, one
    warning; the month is repaired."""
    import os

    root = tmp_path / "data"
    assert run(forge, root, *VRANGE).code == 0
    feb = root / "source=binance/symbol=BTCUSDT/timeframe=5m/year=2024/month=2/part-0.parquet"
    damage(feb, drop={FEB5}, change={}, add=[])
    real = os.replace

    def denied(a, b, *args, **kwargs):
        if str(b).endswith("ledger.json"):
            raise OSError(30, "Read-only file system", str(b))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(os, "replace", denied)
    result = forge("repair", "-s", "binance", *VRANGE, "--sink", "parquet", "--root", str(root))
    assert result.code == 0, result
    assert result.out.splitlines()[-1].endswith("; wrote 1, deleted 0; 1 fetch from the exchange: repaired")
    assert result.err.count("ledger_not_saved") == 1 and "Read-only file system" in result.err, result.err
    monkeypatch.setattr(os, "replace", real)
    assert verify(forge, root)[0] == 0


# -- memory: rows are written as they come, no pandas --------------------------------------------
def _text_batch(start: str, end: str, symbol: str = "BTCUSDT") -> Batch:
    """The rows of :func:`_batch` held as CSV text, as Binance's archive hands them on."""
    from forge_core import TextRows

    rows = _batch(start, end, symbol).rows
    fixed = {"source": "binance", "symbol": symbol, "timeframe": "1m"}
    fields = {c: [str(r[i]) for r in rows] for i, c in enumerate(COLUMNS) if c not in fixed}
    text = TextRows.build(COLUMNS, fields, fixed=fixed, ints=("trades",))
    assert text is not None and list(text) == rows
    return Batch("binance", symbol, "1m", COLUMNS, text)


def _write(root: Path, batches: list[Batch], commit_after: tuple[int, ...] = ()) -> ParquetSink:
    sink = ParquetSink(root=str(root))
    sink.open(_run_info())
    for i, batch in enumerate(batches):
        sink.write(batch)
        if i in commit_after:
            sink.commit()
    sink.close(True)
    return sink


def test_rows_are_written_in_row_groups_as_they_come(tmp_path, monkeypatch):
    from forge_sink_parquet import files as pqfiles

    monkeypatch.setattr(pqfiles, "ROW_GROUP", 500)
    sink = ParquetSink(root=str(tmp_path / "data"))
    sink.open(_run_info())
    sink.write(_batch("2024-01-01", "2024-01-01"))  # 1440 rows, no commit yet: two row groups are on disk
    sink.write(_batch("2024-01-02 00:00", "2024-01-02 00:09"))
    tmp = list((tmp_path / ".data.forge" / "tmp").iterdir())
    assert len(tmp) == 1 and tmp[0].stat().st_size > 10_000
    current = sink.current
    assert current is not None and current.out is not None
    assert current.out.buffered + current.pending_rows == 1450 - 1000  # at most about a row group held
    sink.close(True)
    path = tmp_path / "data/source=binance/symbol=BTCUSDT/timeframe=1m/year=2024/month=1/part-0.parquet"
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [500, 500, 450]
    assert pq.read_table(path)["open_ts"].to_pylist() == [r[3] for r in _batch("2024-01-01", "2024-01-02 00:09").rows]


def test_the_same_rows_give_the_same_bytes_however_they_arrive(tmp_path, monkeypatch):
    from forge_sink_parquet import files as pqfiles

    monkeypatch.setattr(pqfiles, "ROW_GROUP", 700)
    whole = tmp_path / "whole"
    _write(whole / "data", [_batch("2024-01-30", "2024-02-01 10:00")])
    # as text, in other pieces, committed mid-month (the file is finished, then merged with
    # again), and over a root that already holds part of the month with other values
    parts = tmp_path / "parts"
    stale = [tuple("1.00000000" if c == "close" else v for c, v in zip(COLUMNS, r, strict=True))
             for r in _batch("2024-01-31 10:00", "2024-01-31 12:00").rows]
    _write(parts / "data", [Batch("binance", "BTCUSDT", "1m", COLUMNS, stale)])
    sink = _write(parts / "data", [_text_batch("2024-01-30", "2024-01-30 23:59"),
                                   _batch("2024-01-31 00:00", "2024-01-31 11:00"),
                                   _text_batch("2024-01-31 11:01", "2024-02-01 10:00")], commit_after=(0,))
    assert files(parts / "data") == files(whole / "data")
    assert sink.rows_changed() == len(_batch("2024-01-30", "2024-02-01 10:00").rows)  # the stale ones differ
    assert sink.files_written == 2  # January's, written at the commit and again at the end, is one file


def test_a_rerun_leaves_unchanged_files_alone_and_rewrites_from_the_first_difference(tmp_path, monkeypatch):
    from forge_sink_parquet import files as pqfiles

    monkeypatch.setattr(pqfiles, "ROW_GROUP", 300)
    root = tmp_path / "data"
    rows = _batch("2024-01-01", "2024-01-02").rows
    assert _write(root, [_batch("2024-01-01", "2024-01-02")]).files_written == 1
    path = root / "source=binance/symbol=BTCUSDT/timeframe=1m/year=2024/month=1/part-0.parquet"
    kept = path.stat()
    again = _write(root, [_text_batch("2024-01-01", "2024-01-01 12:00"), _batch("2024-01-01 12:01", "2024-01-02")],
                   commit_after=(0,))
    assert (again.rows_changed(), again.files_written) == (0, 0)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)
    # one close differs, late in the month's second day: the rows before it are written unchanged
    i = COLUMNS.index("close")
    changed = [r if k != 2000 else (*r[:i], "1.00000000", *r[i + 1:]) for k, r in enumerate(rows)]
    sink = _write(root, [Batch("binance", "BTCUSDT", "1m", COLUMNS, changed[:1500]),
                         Batch("binance", "BTCUSDT", "1m", COLUMNS, changed[1500:])])
    assert (sink.rows_changed(), sink.files_written) == (1, 1)
    fresh = tmp_path / "fresh"
    _write(fresh, [Batch("binance", "BTCUSDT", "1m", COLUMNS, changed)])
    assert files(root) == files(fresh)


def test_rows_held_as_columns_with_or_without_csv_text(tmp_path):
    from forge_core import TextRows

    rows = _batch("2024-01-31 23:00", "2024-02-01 01:00").rows
    fixed = {"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}
    values = {c: [r[i] for r in rows] for i, c in enumerate(COLUMNS) if c not in fixed}
    plain = TextRows.from_columns(COLUMNS, values, fixed=fixed, ints=("trades",))
    assert plain is not None and plain.text() is not None  # read as CSV text
    comma = dict(values, close=[v.replace(".", ",") if k == 5 else v for k, v in enumerate(values["close"])])
    quoted = TextRows.from_columns(COLUMNS, comma, fixed=fixed, ints=("trades",))
    assert quoted is not None and quoted.text() is None  # a value needs quoting: read as tuples
    for name, held, close in (("plain", plain, values["close"]), ("quoted", quoted, comma["close"])):
        root = tmp_path / name
        _write(root, [Batch("binance", "BTCUSDT", "1m", COLUMNS, held)])
        want = [dict(zip(COLUMNS, r, strict=True), close=c) for r, c in zip(rows, close, strict=True)]
        assert by_pyarrow(root) == want, name  # the quoted root's close column is text
    with pytest.raises(SinkError, match="close"):  # a value with a comma is no decimal: refused, naming it
        _write(tmp_path / "plain", [Batch("binance", "BTCUSDT", "1m", COLUMNS, quoted)])


def test_rows_held_as_columns_are_stored_from_their_columns_the_same_bytes_as_tuples(tmp_path, monkeypatch):
    """A decoded REST page (ColumnRows) goes to Arrow column by column: its CSV text is never
    joined (nor held beside the page), and the files are the tuples' byte for byte."""
    from forge_core import TextRows
    from forge_core.records import ColumnRows

    rows = _batch("2024-01-31 22:00", "2024-02-01 01:00").rows
    fixed = {"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}
    as_ints = {c: [r[i] for r in rows] for i, c in enumerate(COLUMNS) if c not in fixed}
    as_text = {c: [str(v) for v in values] for c, values in as_ints.items()}
    _write(tmp_path / "tuples", [Batch("binance", "BTCUSDT", "1m", COLUMNS, rows)])

    def no_text(self):
        raise AssertionError("the CSV text was joined")

    monkeypatch.setattr(ColumnRows, "text", no_text)
    for name, values in (("ints", as_ints), ("text", as_text)):
        held = TextRows.from_columns(COLUMNS, values, fixed=fixed, ints=("trades",), plain=True)
        assert isinstance(held, ColumnRows)
        _write(tmp_path / name, [Batch("binance", "BTCUSDT", "1m", COLUMNS, held[:100]),
                                 Batch("binance", "BTCUSDT", "1m", COLUMNS, held[100:])])
        assert files(tmp_path / name) == files(tmp_path / "tuples"), name


# run in a process of its own (no pyarrow.dataset there: it imports pandas itself)
NO_PANDAS = """
import sys
from forge_core import Batch, RunInfo, TextRows
from forge_core.times import parse_range
from forge_binance.mock import binance_rows
from forge_sink_parquet import ParquetSink

COLUMNS, NOW, root = {columns!r}, {now!r}, {root!r}
fixed = {{"source": "binance", "symbol": "BTCUSDT", "timeframe": "1m"}}

def rows(start, end):
    return binance_rows("BTCUSDT", "1m", *parse_range(start, end), NOW)

def text(start, end):
    got = rows(start, end)
    fields = {{c: [str(r[i]) for r in got] for i, c in enumerate(COLUMNS) if c not in fixed}}
    return TextRows.build(COLUMNS, fields, fixed=fixed, ints=("trades",))

def write(*pieces):
    sink = ParquetSink(root=root)
    sink.open(RunInfo("binance", "Binance", ("BTCUSDT",), "1m", 0, NOW, COLUMNS, output_timeframe="1m"))
    for piece in pieces:
        sink.write(Batch("binance", "BTCUSDT", "1m", COLUMNS, piece))
        sink.commit()
    assert sink.last_open("binance", "BTCUSDT", "1m") is not None
    sink.close(True)
    return sink

write(text("2024-01-31 20:00", "2024-02-01 02:00"), rows("2024-02-01 02:01", "2024-02-01 03:00"))
again = write(rows("2024-01-31 22:00", "2024-02-01 01:00"), text("2024-02-01 01:01", "2024-02-01 02:00"))
assert again.rows_changed() == 0, again.rows_changed()
assert "pandas" not in sys.modules, "the parquet sink imported pandas"
"""


def test_the_sink_never_imports_pandas(tmp_path):
    pytest.importorskip("pandas")  # pyarrow imports it on Python-object conversions when it is installed
    code = NO_PANDAS.format(columns=COLUMNS, now=NOW, root=str(tmp_path / "data"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "data").rglob("*.parquet"))) == 2


def test_the_summary_counts_the_files_written_once_each(tmp_path):
    """A month committed in the middle (every --commit-every rows) is finished, then written
    again with the rest: the summary counted it twice (a 1m REST quarter: '5 parquet files
    written', 3 in the root)."""
    root = tmp_path / "data"
    sink = _write(root, [_batch("2024-01-31", "2024-01-31"), _batch("2024-02-01", "2024-02-01 12:00"),
                         _batch("2024-02-01 12:01", "2024-02-02")], commit_after=(0, 1))
    assert len(list(root.rglob("*.parquet"))) == 2
    assert sink.describe() == f"{os.path.relpath(root)} (2 parquet files written)"
    one = _write(tmp_path / "one", [_batch("2024-01-01", "2024-01-01")])
    assert one.describe().endswith(" (1 parquet file written)")
