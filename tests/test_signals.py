"""SIGTERM and SIGHUP stop a run the way Ctrl-C does (issue 17): the batch in flight is
committed or rolled back, one line says how much is kept, and the same command resumes. The exit
code is the shell's 128 + the signal: 143 for SIGTERM (what systemd, Kubernetes and Airflow
expect of a terminated job), 129 for SIGHUP, 130 for Ctrl-C."""

from __future__ import annotations

import signal

import pytest
from test_resume import FILES, NOW, finish_and_check, start_forge, wait_for_rows

from forge_mock_exchange import MockConfig, MockExchange


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_like_ctrl_c_and_the_run_resumes(forge_process, tmp_path, sig):
    with MockExchange(MockConfig(now=NOW, latency=0.03)) as mock:
        proc = start_forge(mock, tmp_path)
        wait_for_rows(tmp_path / (FILES[0] + ".part"), 4000, proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err  # 143 for SIGTERM (130 is Ctrl-C's)
    assert err.strip().startswith("forge: error: interrupted:") and "candles committed" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / FILES[0]).exists()
    assert "resumed BTCUSDT after" in finish_and_check(forge_process, tmp_path)


def test_sigterm_during_a_partition_run_exits_143(forge, exchange_env, in_tmp, monkeypatch):
    """``--partition`` runs go through click's Abort: the exit code still names the signal.
    (The source raises what the run's SIGTERM handler raises, without sending a real signal to
    the test process.)"""
    from forge_binance.source import BinanceSource
    from forge_core.pipeline import StopRequested

    def stopped(self, task):
        raise StopRequested(signal.SIGTERM)

    monkeypatch.setattr(BinanceSource, "fetch", stopped)
    result = forge("run", "--partition", "binance:spot:BTCUSDT:1h:2024-01", "-q")
    assert result.code == 143, result
    assert "interrupted" in result.err and "Traceback" not in result.err
