"""A follow run against a mock exchange that keeps failing one pair: the failure costs one
retry cycle, not one per page of that pair's backfill, and the other series stay exact."""

from __future__ import annotations

import threading
import time

from conftest import wait_for
from forge_core import Pipeline
from forge_core.testing.server import Response
from forge_mock_exchange.expected import as_csv_lines, binance_rows

MINUTE = 60_000
PAGES = 20  # of 1,000 1m candles, per series


def rows_of(path):
    from conftest import read_csv

    return read_csv(path)[1]



def test_a_pair_failing_in_its_backfill_is_given_up_after_one_retry_cycle_not_one_per_page(
        fresh_mock, tmp_path, monkeypatch):
    """ETHUSDT's klines from ``since`` on come back garbled (HTTP 200, not JSON), a backfill of
    20 pages: once one of its pages gave up, its other pages are not asked. They were, each for
    a whole retry cycle of its own, 40 requests in all, their results thrown away (with a 503,
    each paused every worker, and the pass took minutes). BTCUSDT, in the same pass, is
    written exactly."""
    monkeypatch.setenv("FORGE_HTTP_MAX_ATTEMPTS", "2")
    now = fresh_mock.config.now
    since = (now // MINUTE - PAGES * 1000) * MINUTE
    real, asked = fresh_mock.routes["/api/v3/klines"], []

    def route(req):
        if req.arg("symbol") == "ETHUSDT" and int(req.arg("startTime") or 0) >= since:
            asked.append(int(req.arg("startTime")))
            return Response(200, b"<html>502 Bad Gateway</html>")
        return real(req)

    fresh_mock.routes["/api/v3/klines"] = route
    follower = Pipeline(("binance", {"base_url": fresh_mock.url, "archive": "rest"}),
                        [("csv", {"output": str(tmp_path / "{symbol}.csv")})], workers=2).follow(
        ["BTCUSDT", "ETHUSDT"], "1m", since=since, resync=0.1)
    thread = threading.Thread(target=follower.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: "ETHUSDT" in follower.series and follower.series["ETHUSDT"].failures == 1
                        and follower.series["BTCUSDT"].current)
        time.sleep(0.5)  # (a page asked after the give-up would be asked by now)
    finally:
        follower.stop()
        thread.join(20)
    assert not thread.is_alive()
    eth = follower.series["ETHUSDT"]
    assert eth.failures == 1 and eth.written == 0
    # at most the pages running or queued when the first gave up (2 * workers), 2 attempts each
    assert len(asked) <= 2 * 2 * follower.workers, (len(asked), sorted(set(asked)))
    assert rows_of(tmp_path / "BTCUSDT.csv") == as_csv_lines(binance_rows("BTCUSDT", "1m", since, now, now))
