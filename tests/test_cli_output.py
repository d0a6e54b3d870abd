"""What ``forge run`` prints (issue 16): the summary as structured fields, what a run that gives
up kept, the progress line within the terminal, times as users type them."""

from __future__ import annotations

import io
import json

import pytest

from conftest import NOW
from forge_core.pipeline import Progress
from forge_core.progress import ProgressLine
from forge_core.times import display, iso
from forge_mock_exchange import MockConfig, MockExchange

RUN = ["run", "-q", "-s", "binance", "--symbol", "BTCUSDT,ETHUSDT", "-t", "1h", "--from", "2024-01-01",
       "--to", "2024-01-02"]


@pytest.mark.parametrize("bad,code,text", [(["--symbol", "FOOBAR"], 1, "unknown symbol 'FOOBAR' on Binance spot"),
                                           (["-t", "60m"], 2, "did you mean 1h?"),
                                           (["--colour", "red"], 2, "No such option")])
def test_log_format_json_prints_an_error_as_one_json_object(forge, exchange_env, in_tmp, bad, code, text):
    """It was the plain 'forge: error: ...' line amid JSON logs."""
    result = forge(*RUN, *bad, "--log-format", "json")
    assert result.code == code, result
    [line] = result.err.strip().splitlines()
    error = json.loads(line)
    assert error["event"] == "error" and error["level"] == "error" and error["exit"] == code
    assert text in error["message"] and not error["message"].startswith("forge")


def test_log_format_json_prints_the_summary_as_fields(forge, exchange_env, in_tmp):
    result = forge(*RUN, "--log-format", "json")
    assert result.code == 0, result
    summary = json.loads(result.out)
    assert summary["event"] == "run_summary" and summary["status"] == "ok"
    assert summary["rows"] == {"BTCUSDT": 48, "ETHUSDT": 48} and summary["total"] == 96
    assert summary["timeframe"] == "1h" and summary["source"] == "binance"
    assert summary["origins"] and "requests" in summary["source_stats"] and "retries" in summary["source_stats"]
    assert summary["start_time"] == "2024-01-01 00:00:00 UTC" and summary["end_time"] == "2024-01-02 23:59:59 UTC"
    assert "Binance-ETHUSDT-1h-2024-01-01_2024-01-02.csv" in " ".join(summary["destinations"])
    assert summary["elapsed"] >= 0


def test_summary_json_file_for_scripts(forge, exchange_env, in_tmp):
    result = forge(*RUN, "--summary-json", "summary.json")
    assert result.code == 0, result
    assert "96 1h candles from binance" in result.out  # the text summary stays
    data = json.loads((in_tmp / "summary.json").read_text())
    assert data["status"] == "ok" and data["rows"] == {"BTCUSDT": 48, "ETHUSDT": 48} and data["error"] is None


def test_a_run_that_gives_up_says_what_was_kept_and_that_rerunning_resumes(forge, monkeypatch, in_tmp):
    monkeypatch.setenv("FORGE_HTTP_MAX_ATTEMPTS", "2")
    with MockExchange(MockConfig(now=NOW, faults={"down": 1.0}, extra={"down_after": 6})) as mock:
        monkeypatch.setenv("FORGE_BINANCE_URL", mock.url)
        monkeypatch.setenv("FORGE_BINANCE_ARCHIVE_URL", mock.url)
        result = forge("run", "-q", "-s", "binance", "--symbol", "BTCUSDT", "--archive", "rest", "--workers", "1",
                       "--commit-every", "1000", "--from", "2024-01-01", "--to", "2024-01-10",
                       "--summary-json", "s.json")
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "still failing after 2 attempts" in lines[0]
    data = json.loads((in_tmp / "s.json").read_text())
    assert data["status"] == "failed" and "still failing" in data["error"] and data["committed"] > 0
    assert f"gave up: {data['committed']} candles committed and kept" in lines[0]
    assert "run the same command again to resume" in lines[0]


class Screen(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_fits_a_narrow_terminal_and_counts_symbol_and_total_apart():
    screen = Screen()
    line = ProgressLine(screen, interval=0, width=40)
    total = 0
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        for done in range(0, 525_600, 50_000):
            total += 50_000
            line(Progress(symbol, min(done + 50_000, 525_600), 525_600, total, 3 * 525_600, 12.0))
    line.finish()
    text = screen.getvalue()
    assert "\n" not in text
    assert all(len(part) <= 39 for part in text.split("\r")), max(text.split("\r"), key=len)

    wide = Screen()
    line = ProgressLine(wide, interval=0, width=120)
    line(Progress("BTCUSDT", 500, 1000, 500, 3000, 1.0))
    line(Progress("ETHUSDT", 0, 1000, 1500, 3000, 2.0))  # a new symbol: its own count restarts
    drawn = [part for part in wide.getvalue().split("\r") if part.strip()]
    assert drawn[0].startswith("BTCUSDT 500/1,000 | total 500/3,000 (16.7%)")
    assert drawn[1].startswith("ETHUSDT 1,000/1,000 | total 1,500/3,000 (50.0%)")


def test_times_print_without_microseconds():
    end_of_candle = 1695031199999  # 2023-09-18 09:59:59.999
    assert iso(end_of_candle) == "2023-09-18T09:59:59.999Z"
    assert iso(1705305600000) == "2024-01-15T08:00:00Z"  # whole seconds as before
    assert display(end_of_candle) == "2023-09-18 09:59:59 UTC"


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_a_click_exception_from_a_plugin_command_is_the_one_error_line(capsys, log_format):
    """A plugin command's click.ClickException printed click's own 'Error: ...', never the JSON
    object --log-format json promises: every error takes the one path."""
    import click

    from forge_core.cli import main
    from forge_core.hookspecs import hookimpl
    from forge_core.plugins import Plugins

    class Command:
        @hookimpl
        def forge_register_commands(self, cli):
            @cli.command(name="boom")
            def boom():
                raise click.ClickException("the boom failed; try --quiet")

    plugins = Plugins(entry_points=False)
    plugins.register(Command(), name="boom")
    capsys.readouterr()
    code = main(["--log-format", log_format, "boom"], plugins=plugins)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    if log_format == "json":
        assert json.loads(line) == {"event": "error", "level": "error", "message": "the boom failed; try --quiet",
                                    "exit": 1}
    else:
        assert line == "forge: error: the boom failed; try --quiet"
