"""Every command that takes a timeframe takes the spellings ``forge run -t`` takes (a source's
own names, OKX's ``1H``) and refuses the others with the same did-you-mean: ``forge status``
took only Forge's names (``-t 1H`` was "holds no 1H candles")."""

from __future__ import annotations

import pytest

RANGE = ("--symbol", "BTC-USDT", "--from", "2024-01-01", "--to", "2024-01-01")
COMMANDS = {
    "plan": ("plan", "-s", "okx", *RANGE),
    "verify": ("verify", "-s", "okx", *RANGE, "--output", "okx.csv"),
    "repair": ("repair", "-s", "okx", *RANGE, "--output", "okx.csv"),
    "status": ("status", "--output", "okx.csv"),
}


@pytest.fixture
def okx_file(forge, exchange_env, in_tmp):
    result = forge("run", "-s", "okx", *RANGE, "-t", "1H", "--output", "okx.csv", "-q")
    assert result.code == 0, result


def hint(err: str) -> str:
    """The did-you-mean of a one-line timeframe error (the choices list is the command's)."""
    assert err.startswith("forge: error: unsupported timeframe ") and len(err.strip().splitlines()) == 1, err
    return err.strip().rsplit(";", 1)[1]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_takes_the_sources_own_spelling(forge, okx_file, command):
    result = forge(*COMMANDS[command], "-t", "1H")
    assert result.code == 0, result
    if command in ("plan", "status"):
        assert result.out == forge(*COMMANDS[command], "-t", "1h").out
    else:  # (the ledger the first check wrote makes a second one different)
        assert "1 series, 1 partitions" in result.out and "missing 0" in result.out


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("wrong,meant", [("60m", " did you mean 1h?"), ("6H", " did you mean 6h (okx's 6Hutc)?"),
                                         ("1hour", " did you mean 1h?")])
def test_every_command_refuses_what_forge_run_refuses_with_the_same_hint(forge, okx_file, command, wrong, meant):
    run = forge("run", "-s", "okx", *RANGE, "-t", wrong, "-q")
    assert run.code == 2 and hint(run.err) == meant
    result = forge(*COMMANDS[command], "-t", wrong)
    assert result.code == 2 and hint(result.err) == meant, result


def test_status_of_a_store_without_that_source_offers_no_foreign_spelling(forge, exchange_env, in_tmp):
    """A Binance file: OKX's 1H means nothing there, as for forge run -s binance."""
    assert forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01", "--to",
                 "2024-01-01", "--output", "bin.csv", "-q").code == 0
    run = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1H", "--from", "2024-01-01", "-q")
    status = forge("status", "--output", "bin.csv", "-t", "1H")
    assert run.code == status.code == 2 and hint(status.err) == hint(run.err) == " did you mean 1h?"
