"""While a request waits to be retried, the progress line says so: what, why, attempt n of N,
when the next attempt starts and when it gives up; a ``retrying`` log event (issue 16)."""

from __future__ import annotations

import io
import re
import time

import pytest

from forge_core.progress import ProgressLine
from forge_core.testing import FROZEN_NOW, MockConfig, MockExchange

# burst429 answers HTTP 429 with Retry-After: 1; this seed hits the run's klines request once
FAULTS = MockConfig(now=FROZEN_NOW, faults={"burst429": 0.3}, fault_seed=10)
RUN = ("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--archive", "rest",
       "--from", "2024-01-01", "--to", "2024-01-03")
CLOCK = r"(?:\d{4}-\d\d-\d\d )?(\d\d:\d\d:\d\d)"


class Screen(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> Screen:
    """The CLI's progress line, forced on, drawing into this screen."""
    import forge_core.cli

    out = Screen()
    monkeypatch.setattr(forge_core.cli, "ProgressLine", lambda: ProgressLine(out, interval=0, width=200))
    return out


def _seconds(clock: str) -> int:
    h, m, s = map(int, clock.split(":"))
    return h * 3600 + m * 60 + s


def test_the_progress_line_shows_a_retry_and_until_when(forge, monkeypatch, in_tmp, screen):
    with MockExchange(FAULTS) as mock:
        monkeypatch.setenv("FORGE_BINANCE_URL", mock.url)
        began = time.time()
        result = forge(*RUN)
        ended = time.time()
        faults = mock.stats.get("fault.burst429", 0)
    assert result.code == 0, result
    assert faults >= 1
    drawn = [part.strip() for part in screen.getvalue().split("\r") if part.strip()]
    pattern = re.compile(rf"retrying BTCUSDT HTTP 429: attempt 2/10 at {CLOCK} UTC, gives up {CLOCK} \| "
                         rf"127\.0\.0\.1:\d+/api/v3/klines")
    shown = [m for line in drawn if (m := pattern.match(line))]
    assert shown, drawn
    # the next attempt is the Retry-After second away, the deadline FORGE_HTTP_GIVE_UP_AFTER (300 s)
    day = lambda t: _seconds(time.strftime("%H:%M:%S", time.gmtime(t)))  # noqa: E731
    at, gives_up = _seconds(shown[0].group(1)), _seconds(shown[0].group(2))
    assert day(began) <= at <= day(ended) + 1 or at < 60  # (or the run crossed midnight)
    assert 295 <= (gives_up - at) % 86400 <= 301
    # once the attempt is made the line goes back to the candles
    assert drawn[-1].startswith("BTCUSDT 72/72"), drawn
    assert "retrying" not in result.err  # the log event is quiet by default


def test_retrying_is_a_log_event_with_v(forge, monkeypatch, in_tmp, screen):
    with MockExchange(FAULTS) as mock:
        monkeypatch.setenv("FORGE_BINANCE_URL", mock.url)
        result = forge("-v", *RUN, "--log-format", "json")
    assert result.code == 0, result
    import json

    events = [json.loads(line) for line in result.err.splitlines() if line.startswith("{")]
    retries = [e for e in events if e["event"] == "retrying"]
    assert retries, result.err
    event = retries[0]
    assert event["error"] == "HTTP 429" and event["symbol"] == "BTCUSDT" and event["path"] == "/api/v3/klines"
    assert event["attempt"] == 2 and event["attempts"] == 10 and event["delay"] >= 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["next_at"]) and event["gives_up_at"] > event["next_at"]


def test_a_retry_redraws_at_once_within_the_width_and_ends_back_on_the_candles():
    from forge_core import retrying
    from forge_core.pipeline import Progress

    out = Screen()
    line = ProgressLine(out, interval=60, width=40)  # a page redraw would wait a minute
    line(Progress("ETHUSDT", 500, 1000, 500, 1000, 1.0))
    now = time.time()
    state = retrying.Retrying("api.binance.com", "/api/v3/klines", "ETHUSDT", "timeout", 3, 10, now + 4, now + 290)
    retrying.begin(state)
    try:
        shown = out.getvalue().split("\r")[-1]
        assert shown.startswith("retrying ETHUSDT timeout: attempt 3/10"), out.getvalue()
    finally:
        retrying.end()
    line.finish()
    parts = [p for p in out.getvalue().split("\r") if p.strip()]
    assert all(len(p) <= 39 for p in parts), parts
    assert parts[-1].startswith("ETHUSDT 500/1,000")
    retrying.begin(state)  # finished: no longer watching
    retrying.end()
    assert [p for p in out.getvalue().split("\r") if p.strip()] == parts

    wide = Screen()  # in 80 columns the deadline shows too
    line = ProgressLine(wide, interval=0, width=80)
    retrying.begin(state)
    retrying.end()
    line.finish()
    assert re.fullmatch(rf"retrying ETHUSDT timeout: attempt 3/10 at {CLOCK} UTC, gives up {CLOCK}",
                        wide.getvalue().split("\r")[1]), wide.getvalue()


def test_a_dropped_progress_line_stops_watching():
    import gc

    from forge_core import retrying

    seen = []
    stop = retrying.watch(seen.append)
    line = ProgressLine(Screen(), interval=0)
    watching = len(retrying._watchers)
    del line
    gc.collect()
    now = time.time()
    retrying.begin(retrying.Retrying("h", "/p", None, "HTTP 503", 2, 10, now + 1, now + 300))
    retrying.end()
    stop()
    assert len(retrying._watchers) == watching - 2 and [len(a) for a in seen] == [1, 0]


def test_a_long_wait_for_the_rate_limiter_is_shown_then_the_candles_again(monkeypatch):
    """The budget of the IP is spent (or every worker is paused after a 429): requests wait in
    the limiter, not in a retry, and the line used to freeze on the candle count."""
    import threading

    from forge_core.http import RateLimiter
    from forge_core.pipeline import Progress

    out = Screen()
    line = ProgressLine(out, interval=60, width=100)
    line(Progress("ETHUSDT", 500, 1000, 500, 1000, 1.0))
    short = RateLimiter(1, 0.3, name="okx-history")  # ordinary pacing is not news
    short.acquire()
    short.acquire()
    assert "okx-history" not in out.getvalue()
    from forge_core import retrying

    monkeypatch.setattr(retrying, "THROTTLE_SHOWN", 0.3)  # a waiter that starts late still waits long enough
    limiter = RateLimiter(1, 1.2, name="binance-spot")
    assert limiter.acquire()  # the window's one unit
    waiter = threading.Thread(target=limiter.acquire)
    waiter.start()
    deadline = time.monotonic() + 1.0
    while "waiting for" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    waiter.join(5)
    line.finish()
    parts = [p.strip() for p in out.getvalue().split("\r") if p.strip()]
    shown = [p for p in parts if p.startswith("waiting for binance-spot's rate limit until ")]
    assert shown and re.fullmatch(rf"waiting for binance-spot's rate limit until {CLOCK} UTC \| ETHUSDT 500/1,000.*",
                                  shown[0]), parts
    assert parts[-1].startswith("ETHUSDT 500/1,000")  # the wait is over: the candles again
