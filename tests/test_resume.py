"""Crash, kill -9 and Ctrl-C in the middle of a run; the same command then finishes the job
exactly, without fetching again what was committed."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from forge_core.times import parse_range
from forge_mock_exchange import MockConfig, MockExchange
from forge_mock_exchange.expected import as_csv_lines, binance_rows

NOW = 1742034030456
ARGS = ["run", "-s", "binance", "--symbol", "BTCUSDT,ETHUSDT", "--from", "2024-01-01", "--to", "2024-01-20",
        "--workers", "1", "--commit-every", "1000"]
FILES = ("Binance-BTCUSDT-1m-2024-01-01_2024-01-20.csv", "Binance-ETHUSDT-1m-2024-01-01_2024-01-20.csv")


@functools.cache  # 2-3 s per symbol; the same rows for every test here and in test_signals
def expected(symbol):
    lo, hi = parse_range("2024-01-01", "2024-01-20")
    return as_csv_lines(binance_rows(symbol, "1m", lo, hi, NOW))


def start_forge(mock: MockExchange, cwd: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "FORGE_BINANCE_URL": mock.url}
    return subprocess.Popen(["forge", *ARGS, *extra], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)


def wait_for_rows(path: Path, rows: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > rows * 160:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not grow")


def complete_rows(tmp_path: Path) -> int:
    """Rows already in the .part files, counting only whole lines (a torn one is refetched)."""
    total = 0
    for part in tmp_path.glob("*.part"):
        total += max(0, part.read_bytes().count(b"\n") - 1)
    return total


def finish_and_check(forge_process, tmp_path: Path) -> str:
    from conftest import read_csv

    kept = complete_rows(tmp_path)
    assert kept > 1000
    with MockExchange(MockConfig(now=NOW)) as mock:
        result = forge_process(*ARGS, env={"FORGE_BINANCE_URL": mock.url}, cwd=tmp_path)
        served = mock.stats["binance.spot.candles"]
    assert result.code == 0, result
    for name, symbol in zip(FILES, ("BTCUSDT", "ETHUSDT"), strict=True):
        _, rows = read_csv(tmp_path / name)
        assert rows == expected(symbol), name
    assert not list(tmp_path.glob("*.part"))
    total = len(expected("BTCUSDT")) * 2
    # exactly the rest, plus the one-candle listing probe per symbol: nothing fetched twice
    assert served == total - kept + 2
    return result.out


@pytest.mark.parametrize("how", ["kill -9", "ctrl-c"])
def test_interrupted_run_resumes_to_the_exact_result(forge_process, tmp_path, how):
    with MockExchange(MockConfig(now=NOW, latency=0.03)) as mock:
        proc = start_forge(mock, tmp_path)
        wait_for_rows(tmp_path / (FILES[0] + ".part"), 4000, proc)
        proc.send_signal(signal.SIGKILL if how == "kill -9" else signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert not (tmp_path / FILES[0]).exists(), "an interrupted run must not leave a file that looks complete"
    if how == "ctrl-c":
        assert proc.returncode == 130
        assert err.strip().startswith("forge: error: interrupted:") and "candles committed" in err
        assert len(err.strip().splitlines()) == 1
    else:
        assert proc.returncode == -signal.SIGKILL
    out = finish_and_check(forge_process, tmp_path)
    assert "resumed BTCUSDT after" in out


def test_ctrl_c_reports_exactly_what_the_part_keeps(tmp_path):
    """The count Ctrl-C prints is the count the resume will use (rows written after the last
    commit are not kept)."""
    import re

    with MockExchange(MockConfig(now=NOW, latency=0.03)) as mock:
        proc = start_forge(mock, tmp_path, "--commit-every", "7000")
        wait_for_rows(tmp_path / (FILES[0] + ".part"), 9000, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    said = re.search(r"interrupted: (\d+) candles committed", err)
    assert said, err
    assert int(said.group(1)) == complete_rows(tmp_path) >= 7000


def test_a_torn_last_line_is_cut_before_resuming(forge_process, tmp_path):
    head = expected("BTCUSDT")[:1500]
    header = ("source,symbol,timeframe,open_ts,end_ts,open,high,low,close,volume,quote_volume,trades,"
              "taker_buy_base_volume,taker_buy_quote_volume")
    text = header + "\n" + "\n".join(",".join(r) for r in head) + "\n" + ",".join(expected("BTCUSDT")[1500])[:37]
    (tmp_path / (FILES[0] + ".part")).write_text(text)
    identity = {"source": "binance", "symbols": ["BTCUSDT"], "timeframe": "1m",
                "start": parse_range("2024-01-01", "2024-01-20")[0], "end_day": "2024-01-20", "transforms": ""}
    (tmp_path / (FILES[0] + ".part.meta")).write_text(json.dumps(identity))
    finish_and_check(forge_process, tmp_path)


@pytest.mark.parametrize("first,second", [
    (("2024-01-01 00:00", "2024-01-01 23:00"), ("2024-01-01 05:00", "2024-01-01")),  # later start
    (("2024-01-01 06:00", "2024-01-01"), ("2024-01-01", "2024-01-01")),  # earlier start
])
def test_a_part_file_of_another_run_is_not_resumed(forge, monkeypatch, tmp_path, first, second):
    from conftest import read_csv

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORGE_HTTP_MAX_ATTEMPTS", "1")
    with MockExchange(MockConfig(now=NOW, faults={"down": 1.0}, extra={"down_after": 4})) as broken:
        monkeypatch.setenv("FORGE_BINANCE_URL", broken.url)
        assert forge("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", first[0], "--to", first[1],
                     "--output", "x.csv", "--commit-every", "100", "--workers", "1", "-q").code == 1
    assert (tmp_path / "x.csv.part").stat().st_size > 0
    with MockExchange(MockConfig(now=NOW)) as healthy:
        monkeypatch.setenv("FORGE_BINANCE_URL", healthy.url)
        result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", second[0], "--to", second[1],
                       "--output", "x.csv", "-q")
    assert result.code == 0 and "resumed" not in result.out
    _, rows = read_csv(tmp_path / "x.csv")
    lo, hi = parse_range(*second)
    assert rows == as_csv_lines(binance_rows("BTCUSDT", "1m", lo, hi, NOW))
