"""``--follow`` with ``--resample-to`` writes what a bounded run over the same range writes."""

from __future__ import annotations

import threading
import time

from forge_core import Pipeline
from forge_core.times import parse_instant

NOW = parse_instant("2024-01-20T00:00:30Z")[0]


def rows_of(path):
    from conftest import read_csv

    return read_csv(path)


def wait_for(condition, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


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
