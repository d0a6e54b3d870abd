"""``--follow`` with ``--resample-to`` writes what a bounded run over the same range writes."""

from __future__ import annotations

import threading

from conftest import follow_until_ended, wait_for
from forge_core import Pipeline
from forge_core.times import parse_instant

NOW = parse_instant("2024-01-20T00:00:30Z")[0]


def rows_of(path):
    from conftest import read_csv

    return read_csv(path)



def test_a_follow_from_before_the_listing_writes_the_listing_period_as_a_run_does(mock_exchange_factory, tmp_path):
    """NEWUSDT lists 2024-01-15 08:00; followed 1h -> 1d from 2024-01-12, its first day (16
    hours, the whole of what the exchange has of it) is written, as ``forge run`` over the same
    range writes it: the follow dropped it as partly covered (its start clamped to the listing)."""
    mock = mock_exchange_factory(now=NOW)

    def pipeline(output: str) -> Pipeline:
        return Pipeline(("binance", {"base_url": mock.url, "archive": "rest"}),
                        [("csv", {"output": str(tmp_path / output)})], [("resample", {"resample_to": "1d"})])

    follower = pipeline("follow.csv").follow(["NEWUSDT"], "1h", since="2024-01-12", resync=0.1)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: "NEWUSDT" in follower.series and follower.series["NEWUSDT"].current)
    finally:
        follower.stop()
        thread.join(20)
    assert not thread.is_alive()
    pipeline("run.csv").run(["NEWUSDT"], "1h", "2024-01-12", "2024-01-19")
    header, followed = rows_of(tmp_path / "follow.csv")
    run_header, ran = rows_of(tmp_path / "run.csv")
    assert followed[0][3] == str(parse_instant("2024-01-15")[0])  # the listing day
    assert (header, followed) == (run_header, ran)


def test_a_follow_of_an_expired_contract_resampled_ends_after_its_last_whole_period(fresh_mock, tmp_path):
    """BTCUSDT_240329 (USD-M) delivered 2024-03-29 08:00, followed 1h -> 1d: its last day has 8
    hours only, so no day of it is written (as a run over the same range, and the exchange's
    own 1d candles, have none), and the run ends by itself. It waited for that day's last hour
    for ever: never done, so never 'every series ended for good', asking for that day again."""
    from forge_core.testing.market import QUARTER_DELIVERED

    since = QUARTER_DELIVERED - 4 * 24 * 3_600_000 - 8 * 3_600_000  # 2024-03-25 00:00

    def pipeline(output: str) -> Pipeline:
        return Pipeline(("binance", {"base_url": fresh_mock.url, "archive_url": fresh_mock.url, "market": "usdm"}),
                        [("csv", {"output": str(tmp_path / output)})], [("resample", {"resample_to": "1d"})])

    follower = pipeline("follow.csv").follow(["BTCUSDT_240329"], "1h", since=since, resync=0.1, recheck=0.1)
    result = follow_until_ended(follower)
    assert result is not None and result.stopped_by == "every series ended for good"
    pipeline("run.csv").run(["BTCUSDT_240329"], "1h", since, "now")
    followed, ran = rows_of(tmp_path / "follow.csv"), rows_of(tmp_path / "run.csv")
    assert followed[1][-1][3] == str(parse_instant("2024-03-28")[0])  # the last whole day
    assert followed == ran


def test_a_pair_paused_inside_an_output_period_is_followed_again_when_it_trades_again(fresh_mock, tmp_path):
    """PAUSEUSDT in BREAK from 07:00 to 10:30, followed 1m -> 4h from 04:00: its period 04:00
    ends in the pause, so it cannot be whole until the pair trades again. The series is left
    there and its status asked again; trading, it goes on, and both periods are what a run
    writes. It was never asked about again: waiting inside that period it was neither at its
    end nor lagging without progress, and its page walks stop at the last candle."""
    from test_follow_pause import clock_at_recheck

    from forge_core.testing.market import PAUSE

    hour = 3_600_000
    since, trading = PAUSE[0] - 3 * hour, PAUSE[1] + 90 * 60_000 + 30_456  # 04:00; 12:00:30

    def pipeline(output: str) -> Pipeline:
        return Pipeline(("binance", {"base_url": fresh_mock.url, "archive": "rest"}),
                        [("csv", {"output": str(tmp_path / output)})], [("resample", {"resample_to": "4h"})])

    follower = pipeline("follow.csv").follow(["PAUSEUSDT"], "1m", since=since, resync=0.1, recheck=0.2)
    clock_at_recheck(follower, fresh_mock, fresh_mock.config.now, trading)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: "PAUSEUSDT" in follower.series
                        and follower.series["PAUSEUSDT"].last_open == since + 4 * hour, 20)
    finally:
        follower.stop()
        thread.join(20)
    assert not thread.is_alive()
    pipeline("run.csv").run(["PAUSEUSDT"], "1m", since, since + 8 * hour - 60_000)
    followed, ran = rows_of(tmp_path / "follow.csv"), rows_of(tmp_path / "run.csv")
    assert [r[3] for r in followed[1]] == [str(since), str(since + 4 * hour)]
    assert followed == ran


def test_follow_with_since_needs_no_from(forge, fresh_exchange_env, in_tmp):
    """``--follow --since DATE`` is enough (docs/follow.md: a series no sink holds starts at
    --since): it was refused with "Missing option '--from'". Expired contracts, so it ends."""
    result = forge("run", "-q", "-s", "binance", "--market", "usdm", "--symbol", "BTCUSDT_240329", "-t", "1h",
                   "--since", "2024-03-28", "--follow", "--output", "f.csv")
    assert result.code == 0, result
    assert "stopped by every series ended for good" in result.out
    assert rows_of(in_tmp / "f.csv")[1][0][3] == str(parse_instant("2024-03-28")[0])


def test_follow_from_a_date_after_the_exchanges_clock_is_refused(forge, fresh_exchange_env, in_tmp):
    """``--since 2030-01-01`` (a typo for 2023?) waited silently for years; a bounded run
    refuses the same --from."""
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "--since", "2030-01-01", "--follow",
                   "--output", "f.csv")
    assert result.code == 2, result
    assert result.err == ("forge: error: --since 2030-01-01T00:00:00Z is after the exchange's clock "
                          "(2025-03-15T10:20:30Z): nothing has closed there yet; give a date in the past\n")
    assert not list(in_tmp.glob("*.csv"))
