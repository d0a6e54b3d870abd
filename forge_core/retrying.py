"""Requests waiting to be tried again, for displays: the HTTP client announces each retry here
(what, why, attempt n of N, until when), and the progress line shows it instead of freezing.

Kept free of heavy imports (no ``requests``): the progress display imports it at start-up.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# the query parameters exchanges name the symbol by (Binance, OKX, Bybit), when no context says it
_SYMBOL_PARAMS = ("symbol", "instId", "pair")


@dataclass(frozen=True)
class Retrying:
    """One request waiting for its next attempt. Times are epoch seconds (``time.time()``)."""

    host: str  # redacted host, e.g. ``api.binance.com``
    path: str  # ``/api/v3/klines``
    symbol: str | None
    error: str  # the kind of failure: ``HTTP 429``, ``timeout``, ``connection reset``, ...
    attempt: int  # the attempt that comes next
    attempts: int  # the most there will be (``FORGE_HTTP_MAX_ATTEMPTS``)
    until: float  # when the next attempt starts (after the backoff or the Retry-After pause)
    give_up_at: float  # when the request gives up (``FORGE_HTTP_GIVE_UP_AFTER`` after its first try)
    retry_after: float | None = None  # the server's Retry-After, seconds

    @property
    def what(self) -> str:
        return f"{self.host}{self.path}" + (f" {self.symbol}" if self.symbol else "")


@dataclass(frozen=True)
class Throttled:
    """A request held back by its rate limiter (not a failure): the exchange's budget for this
    IP is spent, or every worker is paused after a 429 (or, :class:`Backoff`, while the server
    is busy). Announced only for waits of
    :data:`THROTTLE_SHOWN` seconds or more; ordinary pacing is not news."""

    limiter: str  # the limiter's name, e.g. ``binance-spot``
    symbol: str | None
    until: float  # epoch seconds
    paused: bool = False  # a pause the exchange asked for (Retry-After), not the budget
    why: str | None = None  # another reason, for displays: ``backoff after HTTP 503``


THROTTLE_SHOWN = 1.0  # seconds

Watcher = Callable[[list[Retrying]], None]
_lock = threading.Lock()
_active: dict[int, Retrying] = {}
_throttled: dict[int, Throttled] = {}
_watchers: list[Callable[[], Watcher | None]] = []  # references: a bound method is held weakly
_context = threading.local()


def watch(callback: Watcher) -> Callable[[], None]:
    """Call ``callback(active)`` (from the retrying thread) whenever a retry begins or ends
    (or a long wait for a rate limiter, :func:`throttled`);
    ``active`` lists every request waiting now, soonest next attempt first. Returns the function
    that stops watching. A bound method is held weakly: a display that is dropped stops watching."""
    ref: Callable[[], Watcher | None]
    if inspect.ismethod(callback):
        ref = weakref.WeakMethod(callback)
    else:
        def ref() -> Watcher:
            return callback
    with _lock:
        _watchers.append(ref)

    def stop() -> None:
        with _lock:
            if ref in _watchers:
                _watchers.remove(ref)

    return stop


def active() -> list[Retrying]:
    with _lock:
        return sorted(_active.values(), key=lambda r: r.until)


def _enter(table: dict[int, Any], state: Any) -> None:
    with _lock:
        table[threading.get_ident()] = state
    _notify()


def _leave(table: dict[int, Any]) -> None:
    with _lock:
        if table.pop(threading.get_ident(), None) is None:
            return
    _notify()


def begin(state: Retrying) -> None:
    """This thread's request waits for ``state.until``."""
    _enter(_active, state)


def end() -> None:
    """This thread's request is being tried again (or gave up, or was cancelled)."""
    _leave(_active)


def throttled() -> list[Throttled]:
    """Requests waiting for their rate limiter now, the one waiting longest first."""
    with _lock:
        return sorted(_throttled.values(), key=lambda t: -t.until)


def throttle(state: Throttled) -> None:
    """This thread's request waits for its limiter until ``state.until``."""
    _enter(_throttled, state)


def unthrottle() -> None:
    _leave(_throttled)


def _notify() -> None:
    with _lock:
        _watchers[:] = [ref for ref in _watchers if ref() is not None]
        watchers = [w for w in (ref() for ref in _watchers) if w is not None]
    if not watchers:
        return
    now = active()
    for callback in watchers:
        with contextlib.suppress(Exception):  # a display never breaks a request
            callback(now)


@contextlib.contextmanager
def symbol_context(symbol: str | None) -> Iterator[None]:
    """Requests this thread makes inside are for ``symbol`` (the run loop sets it per task)."""
    previous = getattr(_context, "symbol", None)
    _context.symbol = symbol
    try:
        yield
    finally:
        _context.symbol = previous


def current_symbol(params: Mapping[str, Any] | None = None) -> str | None:
    """The symbol of this thread's task, else the one the request's parameters name."""
    symbol = getattr(_context, "symbol", None)
    if symbol is None and params:
        for name in _SYMBOL_PARAMS:
            if name in params:
                return str(params[name])
    return symbol


class Backoff:
    """One backoff for all the workers of one host while its server says it is busy (a 5xx,
    Binance ``-1008``, OKX ``50013``): 16 workers pause together instead of each hammering it
    on its own schedule (a 429's Retry-After pauses them through the rate limiter instead).

    A busy answer closes the gate for a jittered ``base * 2**(level-1)`` seconds (at most
    ``cap``); answers to requests sent before that are the same round and do not double it
    again. When the pause is over one request goes first, as a probe, while the others wait
    for its answer (at most ``probe_window`` seconds): busy again doubles the pause, an answer
    opens the gate for everyone. The client calls :meth:`wait` right before each request while
    :attr:`level` is not 0, :meth:`failed` after a busy answer and :meth:`succeeded` after an
    answer; with the gate open that costs one attribute read per request."""

    def __init__(self, name: str, base: float = 0.25, cap: float = 30.0) -> None:
        self.name = name  # for displays: the host
        self.base, self.cap = base, cap
        self.level = 0  # busy rounds in a row; 0: the gate is open
        self.until = 0.0  # time.monotonic(): nobody sends before it
        self.why = ""  # the last busy answer, e.g. ``HTTP 503``
        self._raised = -math.inf  # when the level last went up
        self._lock = threading.Lock()

    def failed(self, sent: float, why: str) -> float:
        """A request sent at ``sent`` (``time.monotonic()``) found the server busy; the seconds
        every worker now waits."""
        with self._lock:
            now = time.monotonic()
            if sent >= self._raised:  # sent after the last pause began: this is a new round
                self.level += 1
                delay = min(self.cap, self.base * 2 ** (self.level - 1)) * (0.5 + random.random())
                self.until = now + delay  # (not the probe's window: its answer came)
                self._raised, self.why = now, why
            return max(self.until - now, 0.0)

    def succeeded(self, sent: float) -> None:
        """A request sent at ``sent`` was answered: if it left after the last busy answer (the
        probe), everyone may send again."""
        if self.level and sent >= self._raised:
            with self._lock:
                if sent >= self._raised:
                    self.level, self.until = 0, 0.0

    def probe_window(self) -> float:
        return min(self.cap, max(2.0, self.base * 2 ** self.level))

    def wait(self, cancel: threading.Event | None = None, deadline: float | None = None) -> bool:
        """Wait until this thread may send: the pause is over and either the gate is open or
        this request is the probe. False if ``cancel`` was set meanwhile, or ``deadline``
        (``time.monotonic()``) came first. A wait of :data:`THROTTLE_SHOWN` seconds or more is
        announced to displays."""
        announced = False
        try:
            while True:
                with self._lock:
                    now = time.monotonic()
                    if self.level == 0:
                        return True
                    if now >= self.until:  # this one goes first; the others wait for its answer
                        self.until = now + self.probe_window()
                        return True
                    if deadline is not None and now >= deadline:
                        return False
                    left = self.until - now
                if not announced and left >= THROTTLE_SHOWN:
                    throttle(Throttled(self.name, current_symbol(), time.time() + left,
                                       why=f"backoff after {self.why}" if self.why else "backoff"))
                    announced = True
                step = min(left, 0.05)  # an answer to the probe opens the gate at any moment
                if deadline is not None:
                    step = max(min(step, deadline - now), 0.001)
                if cancel is None:
                    time.sleep(step)
                elif cancel.wait(step):
                    return False
        finally:
            if announced:
                unthrottle()


def clock(ts: float) -> str:
    """``14:03:21`` (UTC), or ``2024-03-01 14:03:21`` when not today."""
    now = time.gmtime()
    t = time.gmtime(ts)
    if t[:3] == now[:3]:
        return time.strftime("%H:%M:%S", t)
    return time.strftime("%Y-%m-%d %H:%M:%S", t)
