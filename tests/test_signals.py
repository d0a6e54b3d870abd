"""SIGTERM and SIGHUP stop a run the way Ctrl-C does (issue 17): the batch in flight is
committed or rolled back, one line says how much is kept, and the same command resumes."""

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
    assert proc.returncode == 130, err
    assert err.strip().startswith("forge: error: interrupted:") and "candles committed" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / FILES[0]).exists()
    assert "resumed BTCUSDT after" in finish_and_check(forge_process, tmp_path)
