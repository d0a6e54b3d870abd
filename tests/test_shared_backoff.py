"""A busy server (5xx, Binance -1008, OKX 50013) makes every worker of a client back off
together, with one probe request after each pause, instead of each worker hammering it on its
own schedule (forge_core.retrying.Backoff)."""

from __future__ import annotations

import random
import re
import threading
import time

import pytest
import requests

from forge_core import retrying
from forge_core.errors import RetryableError
from forge_core.http import HttpClient
from forge_mock_exchange.server import MockExchange, Response


@pytest.fixture
def server():
    with MockExchange() as mock:
        yield mock


def test_workers_back_off_together_while_the_server_is_busy(server, monkeypatch):
    """8 workers, a server answering 503 for its first second: without a shared backoff each
    worker retries on its own doubling schedule (about 5 tries each, 40+ requests); together
    it is the 8 already on the wire plus one probe per pause."""
    monkeypatch.setattr(random, "random", lambda: 0.5)  # no jitter: the backoff is its nominal value
    lock = threading.Lock()
    busy_until: list[float] = []
    arrivals: list[tuple[float, int]] = []

    def handler(req):
        now = time.monotonic()
        with lock:
            if not busy_until:
                busy_until.append(now + 1.0)
            status = 503 if now < busy_until[0] else 200
            arrivals.append((now, status))
        time.sleep(0.01)
        return Response.json({"ok": status == 200}, status)

    server.route("/busy", handler)
    client = HttpClient(server.url, backoff=0.05)
    results: list[object] = []

    def worker():
        for _ in range(2):
            results.append(client.get_json("/busy"))

    pool = [threading.Thread(target=worker) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(30)
    assert results == [{"ok": True}] * 16
    busy = [t for t, status in arrivals if status == 503]
    assert len(busy) <= 16, f"{len(busy)} requests hit the busy server"
    assert client.backoff_gate.level == 0  # the probe's answer opened the gate again


def test_after_a_pause_one_probe_goes_first_and_its_answer_releases_the_rest(monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.5)
    gate = retrying.Backoff("api.example", base=0.1)
    gate.failed(time.monotonic(), "HTTP 503")
    went: list[float] = []
    lock = threading.Lock()

    def worker():
        assert gate.wait()
        with lock:
            went.append(time.monotonic())

    began = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(4)]
    for t in pool:
        t.start()
    deadline = time.monotonic() + 10
    while not went and time.monotonic() < deadline:  # however late the threads start
        time.sleep(0.01)
    window = gate.probe_window()  # 2 s: the others wait that long for the probe's answer
    time.sleep(0.25)
    assert len(went) == 1 and went[0] - began >= 0.09  # the probe, after the pause; the others wait
    gate.succeeded(went[0])  # the probe (sent after the busy answer) was answered
    for t in pool:
        t.join(5)
    # released by the answer, not by the end of the probe's window (one more probe then)
    assert len(went) == 4 and max(went) < went[0] + window


def test_a_busy_answer_to_a_request_sent_before_the_pause_does_not_double_it(monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.5)
    gate = retrying.Backoff("api.example", base=0.2)
    sent = time.monotonic()
    first = gate.failed(sent, "HTTP 503")
    for _ in range(15):  # the other workers' requests, on the wire when the first answer came
        assert gate.failed(sent, "HTTP 503") <= first
    assert gate.level == 1
    time.sleep(first)
    assert gate.wait()  # the probe
    again = gate.failed(time.monotonic(), "HTTP 503")  # sent after the busy answer: a new round
    assert gate.level == 2 and 0.35 < again < 0.41  # twice the pause (not the probe's own window)


def test_a_long_backoff_is_shown_as_a_wait(monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.5)
    monkeypatch.setattr(retrying, "THROTTLE_SHOWN", 0.05)
    gate = retrying.Backoff("api.binance.com", base=0.3)
    seen: list[list[retrying.Throttled]] = []
    stop = retrying.watch(lambda active: seen.append(retrying.throttled()))  # as a display sees it

    def busy_then_wait():  # the pause begins in this thread: one that starts late still waits 0.3 s
        gate.failed(time.monotonic(), "HTTP 503 -1008")
        gate.wait()

    waiter = threading.Thread(target=busy_then_wait)
    waiter.start()
    waiter.join(5)
    stop()
    assert seen, "the wait was never announced"
    assert [(w.limiter, w.why) for w in seen[0]] == [("api.binance.com", "backoff after HTTP 503 -1008")]
    assert seen[-1] == [] and retrying.throttled() == []  # and withdrawn when it ended


def test_cancel_ends_a_backoff_wait(monkeypatch):
    monkeypatch.setattr(random, "random", lambda: 0.5)
    gate = retrying.Backoff("api.example", base=30.0)
    gate.failed(time.monotonic(), "HTTP 503")
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    began = time.monotonic()
    assert gate.wait(cancel) is False
    assert time.monotonic() - began < 10  # a third of the 30 s pause (the timer thread may start late)


def _response(status: int, body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    response.url = "https://api.example/x"
    return response


def test_binance_1008_is_busy_whatever_its_status():
    from forge_binance.source import BinanceSource

    source = BinanceSource(base_url="http://127.0.0.1:9", archive="rest")
    body = {"code": -1008, "msg": "Server is currently overloaded with other requests. Please try again in a few minutes."}
    with pytest.raises(RetryableError) as caught:
        source._check(_response(400, b""), body)
    assert caught.value.busy
    with pytest.raises(RetryableError) as other:
        source._check(_response(400, b""), {"code": -1007, "msg": "Timeout waiting for response from backend server."})
    assert not other.value.busy  # -1007 with a 400: not a busy server (a 5xx would count anyway)


def test_okx_50013_is_busy():
    from forge_okx.source import OkxSource

    source = OkxSource(base_url="http://127.0.0.1:9")
    limiter = next(iter(source.clients.values())).limiter
    with pytest.raises(RetryableError) as caught:
        source._check(_response(200, b""), {"code": "50013", "msg": "Systems are busy. Please try again later."},
                      limiter)
    assert caught.value.busy


def test_the_give_up_deadline_holds_for_a_retry_waiting_behind_the_shared_backoff(server):
    """8 workers, a server answering 503 for good, FORGE_HTTP_GIVE_UP_AFTER 2 s. A retry
    waiting at the shared backoff gate waited past its deadline (each worker in turn behind a
    doubling pause), then went out with a negative budget: requests gave up after up to 57 s,
    with 'no complete response within -45.5s' or 'Read timed out. (read timeout=0.001)'
    instead of the server's HTTP 503."""
    from forge_core.http import GaveUp

    server.route("/down", lambda req: Response.json({"code": -1000, "msg": "Service unavailable."}, 503))
    client = HttpClient(server.url, give_up_after=2)
    failures: list[tuple[float, str]] = []

    def worker():
        began = time.monotonic()
        try:
            client.get_json("/down")
        except GaveUp as exc:
            failures.append((time.monotonic() - began, str(exc)))

    pool = [threading.Thread(target=worker) for _ in range(8)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert len(failures) == 8
    for _, message in failures:
        assert "HTTP 503" in message and "within -" not in message and "timeout=0.001" not in message, message
    # The give-up clock starts at a request's first send: a worker that waited behind the gate
    # before it (another worker's backoff) is not failing yet, so time it from that send, which
    # the message gives in whole seconds ("over 2s"), not from the thread's start.
    retried = [int(re.search(r"over (\d+)s", message)[1]) for message in (m for _, m in failures)
               if "after 1 attempts" not in message]
    assert retried and max(retried) <= 3, failures  # the deadline, and one backoff step at most
