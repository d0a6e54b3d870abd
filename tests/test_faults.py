"""Full backfills under injected faults: the output stays exact, nobody gets banned, retries stay
bounded, and a fault that never clears fails the run cleanly and the next run resumes."""

from __future__ import annotations

import pytest

from forge_core.times import parse_range
from forge_mock_exchange import MockConfig, MockExchange
from forge_mock_exchange.expected import as_csv_lines, binance_rows
from forge_mock_exchange.server import Response

NOW = 1742034030456
RANGE = ("2024-01-05", "2024-01-24")  # 20 days of 1m: 20 pages, the maintenance hole included
NAME = "Binance-BTCUSDT-1m-2024-01-05_2024-01-24.csv"


def want():
    lo, hi = parse_range(*RANGE)
    return as_csv_lines(binance_rows("BTCUSDT", "1m", lo, hi, NOW))


def backfill(forge, monkeypatch, mock, *extra):
    monkeypatch.setenv("FORGE_BINANCE_URL", mock.url)
    return forge("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", RANGE[0], "--to", RANGE[1],
                 "-q", *extra)


MATRIX = {
    "http500": {"http500": 0.15},
    "reset": {"reset": 0.15},
    "slow": {"slow": 0.1},
    "malformed": {"malformed": 0.15},
    "truncated": {"truncated": 0.15},
    "duplicate": {"duplicate": 0.3},
    "burst429": {"burst429": 0.1},
    "bare429": {"bare429": 0.05},
    "bodies": {"blank": 0.05, "badlength": 0.05, "gzipcut": 0.05},
    "all": {"http500": 0.03, "reset": 0.03, "slow": 0.02, "malformed": 0.03, "truncated": 0.03,
            "duplicate": 0.05, "burst429": 0.03},
}


@pytest.mark.parametrize("name", list(MATRIX))
def test_exact_output_under_faults(forge, monkeypatch, in_tmp, name):
    from conftest import read_csv

    if "slow" in MATRIX[name]:  # a 1.5 s answer must time out; elsewhere a loaded machine must not
        monkeypatch.setenv("FORGE_HTTP_TIMEOUT", "1")
    config = MockConfig(now=NOW, faults=MATRIX[name], fault_seed=7, extra={"slow_seconds": 1.5})
    with MockExchange(config) as mock:
        result = backfill(forge, monkeypatch, mock, "--workers", "4")
        stats = dict(mock.stats)
    assert result.code == 0, result
    _, rows = read_csv(in_tmp / NAME)
    assert rows == want()
    faults = sum(v for k, v in stats.items() if k.startswith("fault."))
    retries = int(result.out.split("retries ")[1].split(",")[0])
    assert faults > 0, stats
    assert stats.get("binance.418", 0) == 0
    if name != "duplicate":  # a duplicated row is dropped, not retried
        assert 1 <= retries <= 2 * faults
    else:
        assert retries == 0


def test_a_fault_that_never_clears_fails_cleanly_and_the_next_run_resumes(forge, monkeypatch, in_tmp):
    from conftest import read_csv

    monkeypatch.setenv("FORGE_HTTP_MAX_ATTEMPTS", "3")
    config = MockConfig(now=NOW, faults={"down": 1.0}, extra={"down_after": 12})
    with MockExchange(config) as mock:
        first = backfill(forge, monkeypatch, mock, "--workers", "1", "--commit-every", "1000")
        served_first = mock.stats["binance.spot.requests"]
    assert first.code == 1
    assert "still failing after 3 attempts" in first.err and "HTTP 503" in first.err
    assert len(first.err.strip().splitlines()) == 1 and "Traceback" not in first.err
    assert not (in_tmp / NAME).exists()
    part = in_tmp / (NAME + ".part")
    _, kept = read_csv(part)
    assert kept == want()[: len(kept)] and len(kept) >= 5000  # committed rows survive

    with MockExchange(MockConfig(now=NOW)) as healthy:
        second = backfill(forge, monkeypatch, healthy)
        klines = healthy.stats["binance.spot.candles"]
    assert second.code == 0, second
    assert "resumed BTCUSDT after" in second.out
    _, rows = read_csv(in_tmp / NAME)
    assert rows == want()
    assert klines < len(want()) - len(kept) + 1500  # what was done was not fetched again
    assert served_first > 12


def test_a_418_ban_is_not_retried_and_a_run_after_it_resumes(forge, monkeypatch, in_tmp):
    from conftest import read_csv

    config = MockConfig(now=NOW, faults={"ban418": 0.04}, fault_seed=3)
    with MockExchange(config) as mock:
        first = backfill(forge, monkeypatch, mock, "--workers", "1", "--commit-every", "1000")
        stats = dict(mock.stats)
    assert first.code == 1
    [line] = first.err.strip().splitlines()
    assert "Binance has banned this IP" in line and "banned until 2025-03-15 10:22:30 UTC" in line
    assert stats["fault.ban418"] == 1  # not asked again
    with MockExchange(MockConfig(now=NOW)) as healthy:
        second = backfill(forge, monkeypatch, healthy)
    assert second.code == 0 and "resumed BTCUSDT after" in second.out, second
    _, rows = read_csv(in_tmp / NAME)
    assert rows == want()


def test_a_418_ban_is_remembered_by_the_next_run(forge, monkeypatch, in_tmp):
    """A run that met a ban stopped, and the next one (cron, an orchestrator's retry) sent its
    first request into the ban again, which Binance may answer by lengthening it. The ban's end
    is now kept on this machine: a run before it refuses in one line without a request; another
    host (here another mock) is not banned."""
    import time

    with MockExchange(MockConfig(now=NOW)) as mock:
        mock.state["weights.spot"] = {"window": -1, "used": 0, "over": 0, "banned_until": time.time() + 120}
        first = backfill(forge, monkeypatch, mock)
        assert first.code == 1 and "Binance has banned this IP" in first.err, first
        asked = dict(mock.stats)
        second = backfill(forge, monkeypatch, mock)
        assert second.code == 1 and dict(mock.stats) == asked, (second, mock.stats)
        [line] = second.err.strip().splitlines()
        assert line.startswith("forge: error: Binance banned this IP (HTTP 418, remembered from an earlier run")
        assert "not asking before the ban ends" in line and "try again after that" in line
    with MockExchange(MockConfig(now=NOW)) as other:
        assert backfill(forge, monkeypatch, other).code == 0


def test_unknown_fault_kind_is_refused():
    with pytest.raises(ValueError, match="unknown fault kind"):
        MockExchange(MockConfig(faults={"meteor": 1.0}))


# -- hangs, secrets and unreachable hosts, through the CLI (issues 16, 17.9, 17.10) ---------------
def test_a_trickling_exchange_is_given_up_on_within_the_deadline(forge_process, in_tmp):
    """Headers at once, then the body one byte every 0.1 s, forever: each attempt is cut after
    FORGE_HTTP_TIMEOUT and the run fails after FORGE_HTTP_GIVE_UP_AFTER, with one line."""
    import time

    from test_http import Trickle

    server = Trickle()
    try:
        started = time.monotonic()
        result = forge_process("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", RANGE[0], "--to", RANGE[1],
                               "-q", cwd=in_tmp, timeout=60,
                               env={"FORGE_BINANCE_URL": server.url, "FORGE_HTTP_TIMEOUT": "1",
                                    "FORGE_HTTP_GIVE_UP_AFTER": "3"})
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert result.code == 1, result
    assert elapsed < 15, elapsed  # start-up included
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert "still failing after" in result.err and "no complete response within" in result.err


def _down() -> MockExchange:
    """A host that answers 503 to everything."""
    mock = MockExchange(MockConfig(now=NOW))
    mock.routes.clear()
    mock.prefixes[:] = [("/", lambda req: Response(503, b"busy"))]
    return mock


def test_no_url_credentials_in_errors_warnings_or_debug_logs(forge, monkeypatch, in_tmp):
    monkeypatch.setenv("FORGE_HTTP_MAX_ATTEMPTS", "2")
    with _down() as down:
        host = down.url.split("//")[1]
        monkeypatch.setenv("FORGE_BINANCE_URL", f"http://user:s3cretpw@{host}")
        failed = forge("-vv", "run", "-s", "binance", "--symbol", "BTCUSDT", "--from", RANGE[0], "--to", RANGE[1])
    assert failed.code == 1, failed
    assert "s3cretpw" not in failed.err + failed.out and "user:" not in failed.err
    assert f"{host}/api/v3/time still failing after 2 attempts" in failed.err
    assert "archive_off" in failed.err  # the -v log line that shows the base URL, redacted
    assert f"http://***@{host}" in failed.err


def test_no_archive_url_credentials_in_fallback_warnings(forge, monkeypatch, in_tmp):
    monkeypatch.setenv("FORGE_HTTP_MAX_ATTEMPTS", "2")
    with MockExchange(MockConfig(now=NOW)) as mock, _down() as archive:
        rest, files = mock.url.split("//")[1], archive.url.split("//")[1]
        monkeypatch.setenv("FORGE_BINANCE_URL", f"http://user:s3cretpw@{rest}")
        monkeypatch.setenv("FORGE_BINANCE_ARCHIVE_URL", f"http://user:s3cretpw2@{files}")
        result = forge("-vv", "run", "-s", "binance", "--symbol", "BTCUSDT", "--from", "2024-01-05",
                       "--to", "2024-01-07", "--archive", "auto", "-t", "1m")
    assert result.code == 0, result
    assert "archive_fallback" in result.err and files in result.err
    assert "s3cretpw" not in result.err + result.out


def test_a_bad_base_url_shows_no_credentials(forge, in_tmp):
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "--from", RANGE[0], "--to", RANGE[1],
                   "--base-url", "ftp://user:s3cretpw@example.com")
    assert result.code == 2, result
    assert "bad base URL 'ftp://***@example.com'" in result.err and "s3cretpw" not in result.err


def test_a_host_name_that_does_not_resolve_fails_fast_naming_the_variable(forge, monkeypatch, in_tmp):
    """Futures with only FORGE_BINANCE_URL set went to fapi.binance.com and retried a DNS
    failure for 71 s; now one line, at once, naming the variable that sets the host."""
    import time

    monkeypatch.setenv("FORGE_BINANCE_FUTURES_URL", "http://user:s3cretpw@forge-test-host.invalid")
    started = time.monotonic()
    result = forge("run", "-s", "binance", "--market", "usdm", "--symbol", "BTCUSDT", "--from", RANGE[0],
                   "--to", RANGE[1], "-q")
    assert result.code == 1, result
    assert time.monotonic() - started < 10
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    line = result.err
    assert "forge-test-host.invalid" in line and "does not resolve" in line and "FORGE_BINANCE_FUTURES_URL" in line
    assert "s3cretpw" not in line
