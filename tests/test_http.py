"""The shared HTTP client and rate limiter, against a real local server."""

import re
import threading
import time

import pytest

from forge_core.errors import SourceError
from forge_core.http import GaveUp, HttpClient, RateLimiter
from forge_mock_exchange.server import MockExchange, Response


def test_limiter_never_exceeds_capacity_in_any_window():
    class Stamped(RateLimiter):
        """Each grant's time, as the limiter itself took it (under its lock): a stamp taken by
        the caller after acquire() returned can come late on a loaded machine, and a late stamp
        of one window's unit counts it in the next."""

        def _wait_for(self, cost, now):
            wait = super()._wait_for(cost, now)
            if wait <= 0:  # granted at ``now``
                stamps.append(now)
            return wait

    limiter = Stamped(capacity=10, window=0.5)
    stamps: list[float] = []

    def worker():
        for _ in range(8):
            limiter.acquire(1)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stamps.sort()
    assert len(stamps) == 32
    for i, t in enumerate(stamps):
        in_window = [s for s in stamps[i:] if s < t + 0.5]
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


def test_a_retry_after_past_the_give_up_deadline_fails_at_once_saying_so(server):
    """It said only 'HTTP 429 (the next attempt would be after FORGE_HTTP_GIVE_UP_AFTER=60s)'
    after 1 attempt over 0 s: nothing told that the exchange had asked for 600 s."""
    server.route("/banned", lambda req: Response.json({"code": -1003}, 429, **{"Retry-After": "600"}))
    client = HttpClient(server.url, give_up_after=60, limiter=RateLimiter(100, 1))
    started = time.monotonic()
    # (the seconds are the one request's, 1 as well as 0 on a loaded machine)
    with pytest.raises(GaveUp, match=r"after 1 attempts over \ds: HTTP 429 \(the exchange asks to wait 600s "
                                     r"\(Retry-After\); the next attempt would be after FORGE_HTTP_GIVE_UP_AFTER=60s\)"):
        client.get_json("/banned")
    assert time.monotonic() - started < 30  # at once: not after waiting for the deadline
    assert 590 < client.limiter.paused_for() <= 600  # every other worker still waits as asked


def test_a_retry_the_limiter_holds_past_the_give_up_deadline_is_not_sent(server):
    """The rate limiter held the second attempt past FORGE_HTTP_GIVE_UP_AFTER: it went out with
    a negative budget and failed as 'no complete response within -0.4s' (or a read timeout of
    0.001 s) instead of the server's HTTP 503, one more request to a failing server."""
    calls: list[float] = []

    def down(req):
        calls.append(time.monotonic())
        return Response.json({"code": -1000, "msg": "Service unavailable."}, 503)

    class Held(RateLimiter):
        def acquire(self, *args, **kwargs):
            if calls:  # the window is full: this retry waits past the deadline
                time.sleep(max(0.0, calls[0] + 1.55 - time.monotonic()))
            return super().acquire(*args, **kwargs)

    server.route("/held", down)
    # 1.5 s: the first answer must come before the deadline (0.6 s was not always enough for
    # one request on a loaded machine: a read timeout, not the HTTP 503)
    client = HttpClient(server.url, give_up_after=1.5, limiter=Held(100, 1))
    with pytest.raises(GaveUp) as caught:
        client.get_json("/held")
    assert len(calls) == 1, caught.value
    assert "HTTP 503" in str(caught.value) and "the next attempt would be after FORGE_HTTP_GIVE_UP_AFTER" \
        in str(caught.value), caught.value


def test_gives_up_with_the_last_error_after_bounded_attempts(server):
    handler, calls = _flaky([500] * 100)
    server.route("/down", handler)
    client = HttpClient(server.url, backoff=0.01, max_attempts=4)
    with pytest.raises(SourceError, match="still failing after 4 attempts.*HTTP 500"):
        client.get_json("/down")
    assert calls["n"] == 4


def test_connection_refused_is_retried_then_reported():
    # a host that answered earlier in this run and now refuses (a restart) is retried;
    # one that never answered fails at once (test_a_host_that_never_answered_fails_fast)
    with MockExchange() as gone:
        gone.route("/x", lambda req: Response.json({}))
        url = gone.url
        HttpClient(url).get_json("/x")
    host = url.split("//")[1]
    client = HttpClient(url, backoff=0.01, max_attempts=2)
    with pytest.raises(SourceError, match=rf"{host}/x still failing after 2 attempts over \d+s: ConnectionError: \[Errno 111\] Connection refused$"):
        client.get_json("/x")


def test_timeouts_are_retried(server):
    calls = {"n": 0}
    retried = threading.Event()

    def slow(req):
        calls["n"] += 1
        if calls["n"] == 1:
            retried.wait(10)  # no answer until the client has given up on it and asked again
        else:
            retried.set()
        return Response.json({"ok": True})

    server.route("/slow", slow)
    # 0.5 s for a whole answer: the retry's (on a new connection) must come within it, as on a
    # loaded machine it did not always within 0.3 s (then a second timeout, a second retry)
    client = HttpClient(server.url, backoff=0.01, timeout=(1.0, 0.5))
    assert client.get_json("/slow") == {"ok": True}
    assert client.stats.retries >= 1 and retried.is_set()


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


# -- a whole-response deadline (issue 17.9) ------------------------------------------------------
class Trickle:
    """A raw TCP server that answers every request with headers at once, then its body one
    byte every ``gap`` seconds, forever (until the test ends)."""

    def __init__(self, gap: float = 0.1) -> None:
        import socket

        self.gap = gap
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        with conn:
            try:
                conn.recv(65536)
                self.requests += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[")
                while not self.stop.wait(self.gap):
                    conn.sendall(b"1")
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture
def trickle():
    server = Trickle()
    yield server
    server.close()


def _in_thread(fn, limit: float):
    """Run ``fn`` in a thread; (elapsed, result or exception), or fail if still running after ``limit``."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["value"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still waiting after {limit}s"
    return time.monotonic() - started, out["value"]


def test_a_trickled_body_is_cut_at_the_timeout_and_the_give_up_deadline_holds(trickle, monkeypatch):
    from forge_core.http import GaveUp

    monkeypatch.setenv("FORGE_HTTP_TIMEOUT", "1")
    monkeypatch.setenv("FORGE_HTTP_GIVE_UP_AFTER", "3")
    client = HttpClient(trickle.url, backoff=0.01)
    elapsed, error = _in_thread(lambda: client.get_json("/x"), 20)
    assert isinstance(error, GaveUp), error
    assert elapsed < 5, elapsed
    # the last attempt may have been cut short by the give-up deadline
    assert re.search(r"still failing after \d attempts over [34]s: no complete response within (1|0\.\d+)s",
                     str(error)), error
    assert "\n" not in str(error)
    assert 2 <= trickle.requests <= 4  # each attempt was cut after about a second, then retried


# -- redaction (issue 17.10) ---------------------------------------------------------------------
@pytest.mark.parametrize("url, shown", [
    ("http://user:s3cret@host:8000/p?symbol=X&signature=abc&apiKey=k1",
     "http://***@host:8000/p?symbol=X&signature=***&apiKey=***"),
    ("https://s3cret@host/p", "https://***@host/p"),
    ("https://user:pa/s3cret@host/p", "https://***@host/p"),  # an unencoded / in the password
    ("postgresql://me:s3@cret@db:5432/x", "postgresql://***@db:5432/x"),
    ("http://host/p?token=s3cret&limit=5&X-Amz-Signature=s3cret", "http://host/p?token=***&limit=5&X-Amz-Signature=***"),
    ("https://api.binance.com/api/v3/klines?symbol=BTCUSDT&limit=1000",
     "https://api.binance.com/api/v3/klines?symbol=BTCUSDT&limit=1000"),
])
def test_redact_url(url, shown):
    from forge_core import redact, redact_url

    assert redact_url(url) == shown
    assert redact(f"failed: {url} (twice)") == f"failed: {shown} (twice)"


def test_redact_masks_query_strings_quoted_without_their_url():
    from forge_core import redact

    text = "Max retries exceeded with url: /v1/x?password=s3cret&passphrase=s3cret&interval=1m (Caused by X)"
    assert redact(text) == "Max retries exceeded with url: /v1/x?password=***&passphrase=***&interval=1m (Caused by X)"


def test_no_secret_in_errors_or_logs_of_a_failing_signed_request(server, caplog):
    """A plugin that signs requests and quotes the URL in its own error still leaks nothing."""
    import logging

    from forge_core.errors import RetryableError

    server.route("/signed", lambda req: Response(503, b"busy"))

    def check(response, body):
        raise RetryableError(f"HTTP {response.status_code} from {response.url}")

    host = server.url.split("//")[1]
    client = HttpClient(f"http://user:s3cretpw@{host}", check=check, backoff=0.01, max_attempts=2)
    with caplog.at_level(logging.DEBUG, logger="forge"), pytest.raises(SourceError) as error:
        client.get_json("/signed", {"symbol": "BTCUSDT", "signature": "s3cretsig"})
    text = f"{error.value} {error.value!r} {caplog.text}"
    assert "s3cretpw" not in text and "s3cretsig" not in text and "user" not in text
    assert f"{host}/signed still failing after 2 attempts" in str(error.value)
    assert "signature=***" in str(error.value)


def test_a_bad_base_url_error_shows_no_credentials():
    from forge_core.errors import UsageError

    with pytest.raises(UsageError, match=r"bad base URL 'ftp://\*\*\*@host'") as error:
        HttpClient("ftp://user:s3cret@host")
    assert "s3cret" not in f"{error.value} {error.value!r}"


# -- rate limit: one 429 stops every worker until Retry-After has passed (issue 17.12) -------------
def _hammer(server, retry_after: str | None, *, threads: int = 6, per_thread: int = 8):
    """Several workers share one client and limiter; the 6th request gets a 429. Returns the
    arrival times of all requests (server side), the time the client's pause came in force and
    the time it ends, after checking that no worker passed the limiter meanwhile: every
    acquire() or hold() called during the pause returned after it (monotonic, one process).

    Timed from the client's pause, not from the moment the 429 left the server: on a loaded
    machine the thread reading the 429 can get the CPU late while the others go on sending."""
    lock = threading.Lock()
    arrivals: list[float] = []
    sent_429: list[float] = []

    def handler(req):
        with lock:
            arrivals.append(time.monotonic())
            n = len(arrivals)
        if n == 6:
            headers = {} if retry_after is None else {"Retry-After": retry_after()}
            sent_429.append(time.monotonic())
            return Response.json({"code": -1003}, 429, **headers)
        time.sleep(0.02)
        return Response.json({"n": n})

    server.route("/w", handler)
    limiter = RateLimiter(10_000, 60)
    pauses: list[tuple[float, float]] = []  # (in force from, until)
    passes: list[tuple[float, float]] = []  # acquire() and hold(): (called, returned)

    def pause(seconds, real=limiter.pause):
        real(seconds)
        pauses.append((time.monotonic(), limiter._paused_until))

    def timed(real):
        def call(*args, **kwargs):
            called = time.monotonic()
            result = real(*args, **kwargs)
            passes.append((called, time.monotonic()))
            return result
        return call

    limiter.pause, limiter.acquire, limiter.hold = pause, timed(limiter.acquire), timed(limiter.hold)
    client = HttpClient(server.url, backoff=0.01, limiter=limiter)

    def worker():
        for _ in range(per_thread):
            client.get_json("/w")

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(30)
    assert len(arrivals) == threads * per_thread + 1 and len(sent_429) == 1 and pauses
    begun, until = pauses[0]
    assert [(c, r) for c, r in passes if begun <= c < until and r < until] == []
    # only requests already past hold() when the pause began (one per other worker) arrive in it
    assert len([t for t in arrivals if begun < t < until]) <= threads - 1
    return arrivals, begun, until


def test_a_429_with_an_http_date_retry_after_stops_every_worker_until_then(server):
    from email.utils import formatdate

    # HTTP dates have whole seconds: three seconds from now is at least two from now
    arrivals, begun, until = _hammer(server, lambda: formatdate(time.time() + 3, usegmt=True))
    assert until - begun > 1.9
    assert max(arrivals) > until  # and the work went on after the pause


def test_a_429_without_retry_after_still_pauses_every_worker(server):
    arrivals, begun, until = _hammer(server, None)
    assert until - begun == pytest.approx(1.0, abs=0.05)  # the default second
    assert max(arrivals) > until


def test_a_pause_holds_a_request_that_already_passed_acquire():
    limiter = RateLimiter(100, 60)
    assert limiter.acquire(1)
    limiter.pause(0.3)  # another worker saw a 429 just now
    started = time.monotonic()
    assert limiter.hold(1)  # what the client calls right before sending
    assert time.monotonic() - started >= 0.25


def test_a_pause_ends_at_once_when_the_run_is_cancelled():
    limiter = RateLimiter(100, 60)
    limiter.pause(3600)  # a 418 ban's Retry-After
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    assert limiter.acquire(1, cancel) is False
    assert time.monotonic() - started < 2


def test_a_conservative_initial_budget_until_the_real_limit_is_known():
    limiter = RateLimiter(6000, 60, initial=30)
    assert limiter.capacity == 30 and not limiter.known
    for _ in range(30):
        limiter.acquire(1)
    assert limiter.paused_for() == 0 and limiter._used == 30
    limiter.reconfigure(6000, 60)  # from exchangeInfo: what start-up spent still counts
    assert limiter.known and limiter.capacity == 6000 and limiter._used == 30


def test_weight_others_spent_counts_against_the_published_limit_not_the_initial_one():
    """A run started after earlier runs on the same IP spent more than the initial tenth of the
    limit: its start-up must not wait out the window (the streamforge guide's batch loop waited
    about 60 s per run), while its own start-up spending stays capped by the initial capacity."""
    limiter = RateLimiter(5700, 61, initial=600)
    limiter.observe(900)  # X-MBX-USED-WEIGHT-1M of the IP, spent by earlier runs
    started = time.monotonic()
    assert limiter.acquire(20) and limiter.acquire(20)
    assert time.monotonic() - started < 0.5 and limiter.waited == 0
    for _ in range(28):
        limiter.acquire(20)  # 600 of its own now
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    assert limiter.acquire(20, cancel) is False  # its own 601st unit waits until the limit is known
    assert limiter.waited > 50
    limiter.observe(5690)  # the IP is at the published limit: nothing more until it frees up
    limiter.reconfigure(5700, 61)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    assert limiter.acquire(20, cancel) is False


def test_retry_after_reads_seconds_and_http_dates():
    from email.utils import formatdate

    from forge_core.http import retry_after

    class R:
        def __init__(self, value):
            self.headers = {"Retry-After": value}

    assert retry_after(R("7")) == 7
    assert 8 < retry_after(R(formatdate(time.time() + 10, usegmt=True))) <= 10
    assert retry_after(R(formatdate(time.time() - 10, usegmt=True))) == 0
    assert retry_after(R("soon")) is None


# -- DNS failures and never-answering hosts fail fast (issue 16) ----------------------------------
def test_a_host_name_that_does_not_resolve_fails_fast_naming_the_variable():
    from forge_core.http import Unreachable

    client = HttpClient("http://user:s3cret@forge-test-host.invalid:8000", envvar="FORGE_X_URL", backoff=1)
    started = time.monotonic()
    with pytest.raises(Unreachable) as error:
        client.get_json("/api/time")
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert message.startswith("forge-test-host.invalid:8000/api/time: the host name does not resolve")
    assert "FORGE_X_URL" in message and "s3cret" not in message and "\n" not in message
    assert error.value.status is None


def test_a_host_that_never_answered_fails_fast():
    from forge_core.http import Unreachable

    client = HttpClient("http://127.0.0.1:9", backoff=1, hint="start it with forge mock-exchange")
    started = time.monotonic()
    with pytest.raises(Unreachable, match=r"^127.0.0.1:9/x: connection refused .*start it with forge mock-exchange"):
        client.get_json("/x")
    assert time.monotonic() - started < 2 and client.stats.retries == 0


def test_a_host_that_answered_before_is_retried_through_a_restart():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = MockExchange(port=port).start()
    first.route("/x", lambda req: Response.json({"up": 1}))
    url = first.url
    assert HttpClient(url).get_json("/x") == {"up": 1}
    first.stop()  # its open keep-alive connections would still answer: a new client, same host
    client = HttpClient(url, backoff=0.3)
    second = MockExchange(port=port)
    second.route("/x", lambda req: Response.json({"up": 2}))
    threading.Timer(0.5, second.start).start()
    try:
        assert client.get_json("/x") == {"up": 2}
    finally:
        second.stop()
    assert client.stats.retries >= 1


# -- no per-request filesystem lookups (issue 18.5) ------------------------------------------------
def test_no_netrc_lookup_per_request_and_proxies_still_honoured(server, monkeypatch):
    import requests

    looked = []
    real = requests.utils.get_netrc_auth
    monkeypatch.setattr(requests.sessions, "get_netrc_auth", lambda *a, **k: looked.append(a) or real(*a, **k))
    server.route("/x", lambda req: Response.json({"via": "proxy"}))
    monkeypatch.setenv("HTTP_PROXY", server.url)  # the "proxy" answers for any host
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = HttpClient("http://forge-test-host.invalid")
    for _ in range(5):
        assert client.get_json("/x") == {"via": "proxy"}
    assert looked == []


def test_no_per_request_stat_of_the_ca_bundle(server, monkeypatch, tmp_path):
    import os

    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    server.route("/x", lambda req: Response.json({}))
    client = HttpClient(server.url)
    client.get_json("/x")
    stats = []
    for name in ("isdir", "exists", "isfile"):
        real = getattr(os.path, name)
        monkeypatch.setattr(os.path, name, lambda p, real=real: stats.append(p) or real(p))
    for _ in range(5):
        client.get_json("/x")
    assert stats == []


def test_tls_settings_are_checked_once_per_connection_pool(monkeypatch):
    """requests' cert_verify stats the CA bundle; the adapter calls it once per pool."""
    import os

    from forge_core.http import _Adapter

    class Pool:
        pass

    calls = []
    monkeypatch.setattr(os.path, "exists", lambda p: calls.append(p) or True)
    adapter, pool = _Adapter(None, threading.Event()), Pool()
    for _ in range(3):
        adapter.cert_verify(pool, "https://api.example.com/x", True, None)
    assert len(calls) == 1 and pool.cert_reqs == "CERT_REQUIRED"
    adapter.cert_verify(pool, "https://api.example.com/x", "/other/bundle.pem", None)
    assert len(calls) == 2 and pool.ca_certs == "/other/bundle.pem"


# -- exact numbers (issue 11) ------------------------------------------------------------------------
def test_get_json_exact_keeps_numbers_exact(server):
    body = b'{"p": 0.1, "q": 12345678901234567890.123456789, "n": 12345678901234567890, "e": 1e-7, "l": [2.50]}'
    server.route("/n", lambda req: Response(200, body))
    client = HttpClient(server.url)
    assert client.get_json("/n", exact=True) == {
        "p": "0.1", "q": "12345678901234567890.123456789", "n": 12345678901234567890, "e": "1e-7", "l": ["2.50"]}
    assert client.get_json("/n")["p"] == 0.1  # the default is unchanged: floats


# -- an error body that is not the exchange's JSON: one clear line, never the body ----------------
def test_a_waf_block_page_is_one_line_with_status_host_path_and_a_short_reason(server):
    """A 403 from a firewall or CDN comes as kilobytes of HTML: the error says what a 403 means
    and quotes the page's title, with no markup, no query and no URL credentials."""
    from forge_core.testing.faults import WAF_PAGE

    server.route("/api/x", lambda req: Response(403, WAF_PAGE, content_type="text/html"))
    host = server.url.split("//")[1]
    client = HttpClient(f"http://user:s3cretpw@{host}", backoff=0.01)
    with pytest.raises(SourceError) as error:
        client.get_json("/api/x", {"symbol": "BTCUSDT", "signature": "s3cretsig"})
    text = str(error.value)
    assert text.startswith(f"HTTP 403 from {host}/api/x: forbidden: refused by the exchange's firewall")
    assert "ERROR: The request could not be satisfied" in text
    assert "\n" not in text and "<" not in text and "DOCTYPE" not in text and "cloudfront" not in text.lower()
    assert "s3cret" not in f"{text} {error.value!r}" and "user" not in text and len(text) < 300
    assert client.stats.requests == 1  # final: a retry would not get past a firewall


@pytest.mark.parametrize("body, reason", [
    (b"<html><head><style>p{}</style></head><body><p>Bad &amp; wrong</p>\n<script>x()</script></body></html>",
     "Bad & wrong"),
    (b"upstream connect error\n  or disconnect/reset before headers", "upstream connect error or disconnect/reset"),
    (b"<html><body>" + b"<div></div>" * 5000 + b"</body></html>", "Bad Request"),  # nothing readable
    (("x" * 5000).encode(), "x" * 100),
])
def test_any_non_json_error_body_becomes_a_short_plain_text_reason(server, body, reason):
    server.route("/bad", lambda req: Response(400, body, content_type="text/plain"))
    with pytest.raises(SourceError) as error:
        HttpClient(server.url).get_json("/bad")
    text = str(error.value)
    assert text.startswith("HTTP 400 from 127.0.0.1:") and reason in text
    assert "\n" not in text and "<" not in text and len(text) < 200


def test_weight_others_spent_frees_up_when_the_servers_minute_ends(monkeypatch):
    """Binance counts weight per epoch-aligned minute. A run started 45 s into a minute that
    other runs on the IP had nearly filled waits the 15 s left of it (plus the slack), not a
    whole 61.2 s window from when it saw the count: back-to-back runs took 65 s instead of 9 s."""
    import forge_core.http as http_module

    clock = {"mono": 1000.0, "wall": 1_700_000_000 // 60 * 60 + 45.0}  # 45 s into a minute
    monkeypatch.setattr(http_module.time, "monotonic", lambda: clock["mono"])
    monkeypatch.setattr(http_module.time, "time", lambda: clock["wall"])
    limiter = RateLimiter(5700, 61.2, name="test-limit")
    limiter.reconfigure(5700, 61.2, counting_window=60)
    limiter.observe(5600)  # X-MBX-USED-WEIGHT-1M: the IP spent 5,600 in this minute
    assert limiter._wait_for(200, clock["mono"]) == pytest.approx(15 + 1.2)
    assert limiter._wait_for(100, clock["mono"]) == 0  # what is left of the minute is still usable
    clock["mono"] += 16.3
    clock["wall"] += 16.3  # the next minute: the server's count began again
    limiter._expire(clock["mono"])
    assert limiter._used == 0 and limiter._wait_for(2000, clock["mono"]) == 0
    limiter.observe(300)
    assert limiter._wait_for(5400, clock["mono"]) == 0 and limiter._wait_for(5401, clock["mono"]) > 0


def test_weight_seen_before_the_limit_was_known_frees_up_with_the_servers_minute(monkeypatch):
    """exchangeInfo's own X-MBX-USED-WEIGHT-1M arrives before its body tells the window: that
    count is placed in the server's minute once it is known, not a whole window from when seen."""
    import forge_core.http as http_module

    clock = {"mono": 1000.0, "wall": 1_700_000_000 // 60 * 60 + 45.0}
    monkeypatch.setattr(http_module.time, "monotonic", lambda: clock["mono"])
    monkeypatch.setattr(http_module.time, "time", lambda: clock["wall"])
    limiter = RateLimiter(5700, 61.2, name="test-limit", initial=600)
    limiter.acquire(20)  # exchangeInfo, its own weight
    limiter.observe(5600)  # ... and what its header said the IP spent this minute
    limiter.reconfigure(5700, 61.2, counting_window=60)
    assert limiter._wait_for(200, clock["mono"]) == pytest.approx(15 + 1.2)
