"""The shared HTTP client and rate limiter, against a real local server."""

import threading
import time

import pytest

from forge_core.errors import SourceError
from forge_core.http import HttpClient, RateLimiter
from forge_mock_exchange.server import MockExchange, Response


def test_limiter_never_exceeds_capacity_in_any_window():
    limiter = RateLimiter(capacity=10, window=0.5)
    stamps: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(8):
            limiter.acquire(1)
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert len(stamps) == 32
    for i, t in enumerate(stamps):
        # stamps are taken just after acquire(); allow a little scheduling delay under load
        in_window = [s for s in stamps[i:] if s < t + 0.45]
        assert len(in_window) <= 10
    # and it did not crawl: 32 units at 10 per 0.5 s need about 1.5 s, not much more
    assert stamps[-1] - stamps[0] < 3.0


def test_limiter_pause_holds_every_caller():
    limiter = RateLimiter(capacity=100, window=1)
    limiter.pause(0.3)
    started = time.monotonic()
    limiter.acquire()
    assert time.monotonic() - started >= 0.25


@pytest.fixture
def server():
    with MockExchange() as mock:
        yield mock


def _flaky(statuses):
    calls = {"n": 0}

    def handler(req):
        i = calls["n"]
        calls["n"] += 1
        status = statuses[i] if i < len(statuses) else 200
        if status == "garbage":
            return Response(200, b'[[1,"2"', content_type="application/json")
        if status == 429:
            return Response.json({"code": -1003}, 429, **{"Retry-After": "1"})
        return Response.json({"ok": i}, status)

    return handler, calls


def test_retries_5xx_and_malformed_bodies_then_succeeds(server):
    handler, calls = _flaky([500, 503, "garbage"])
    server.route("/flaky", handler)
    client = HttpClient(server.url, backoff=0.01)
    assert client.get_json("/flaky") == {"ok": 3}
    assert client.stats.retries == 3 and client.stats.requests == 4


def test_honours_retry_after_on_429(server):
    handler, calls = _flaky([429])
    server.route("/limited", handler)
    client = HttpClient(server.url, backoff=0.01, limiter=RateLimiter(100, 1))
    started = time.monotonic()
    assert client.get_json("/limited") == {"ok": 1}
    assert time.monotonic() - started >= 0.95
    assert client.stats.as_dict()["http_429"] == 1


def test_gives_up_with_the_last_error_after_bounded_attempts(server):
    handler, calls = _flaky([500] * 100)
    server.route("/down", handler)
    client = HttpClient(server.url, backoff=0.01, max_attempts=4)
    with pytest.raises(SourceError, match="still failing after 4 attempts.*HTTP 500"):
        client.get_json("/down")
    assert calls["n"] == 4


def test_connection_refused_is_retried_then_reported():
    client = HttpClient("http://127.0.0.1:9", backoff=0.01, max_attempts=2)
    with pytest.raises(SourceError, match=r"127.0.0.1:9/x still failing after 2 attempts over \d+s: ConnectionError: \[Errno 111\] Connection refused$"):
        client.get_json("/x")


def test_timeouts_are_retried(server):
    calls = {"n": 0}

    def slow(req):
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.6)
        return Response.json({"ok": True})

    server.route("/slow", slow)
    client = HttpClient(server.url, backoff=0.01, timeout=(1.0, 0.3))
    assert client.get_json("/slow") == {"ok": True}
    assert client.stats.retries == 1


def test_parse_errors_count_as_malformed_and_retry(server):
    handler, calls = _flaky([])
    server.route("/p", handler)
    client = HttpClient(server.url, backoff=0.01, max_attempts=3)

    def parse(body):
        if body["ok"] < 2:
            raise KeyError("rows")
        return body["ok"]

    assert client.get_json("/p", parse=parse) == 2


def test_get_bytes_retries_like_get_json_and_says_none_for_404(server):
    handler, calls = _flaky([503])
    server.route("/file.zip", lambda req: Response(200, b"PK-bytes") if handler(req).status == 200
                 else Response(503, b"busy"))
    client = HttpClient(server.url, backoff=0.01)
    assert client.get_bytes("/file.zip") == b"PK-bytes" and client.stats.retries == 1
    assert client.get_bytes("/missing.zip") is None  # the mock's 404


def test_giving_up_says_whether_the_host_answered(server):
    from forge_core.http import GaveUp

    server.route("/down", lambda req: Response(503, b""))
    with pytest.raises(GaveUp) as answered:
        HttpClient(server.url, backoff=0.01, max_attempts=2).get_bytes("/down")
    with pytest.raises(GaveUp) as unreachable:
        HttpClient("http://127.0.0.1:9", backoff=0.01, max_attempts=2).get_bytes("/x")
    assert answered.value.status == 503 and unreachable.value.status is None
