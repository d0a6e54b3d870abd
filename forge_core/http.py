"""HTTP for exchange plugins: a shared rate limiter and a client that retries what can be retried.

Nothing here knows an exchange. A plugin gives the client its base URL, a limiter sized to the
exchange's published limits and a ``check`` function that maps the exchange's error bodies to
:class:`~forge_core.errors.SourceError` (final) or :class:`~forge_core.errors.RetryableError`.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from . import __version__
from .errors import ForgeError, RetryableError, SourceError, UsageError
from .logs import get_logger

log = get_logger(__name__)
USER_AGENT = f"forge-etl/{__version__} (+https://github.com/forge-etl)"
Check = Callable[[requests.Response, Any], None]


class RateLimiter:
    """At most ``capacity`` units in any sliding window of ``window`` seconds, for all threads.

    A sliding window never exceeds a fixed-window server limit either. :meth:`pause` stops
    every caller until a time (after a 429's ``Retry-After``); :meth:`observe` takes the
    server's own count of used weight into account (other processes on the same IP).
    """

    def __init__(self, capacity: float, window: float, *, name: str = "") -> None:
        self.capacity = capacity
        self.window = window
        self.name = name
        self._lock = threading.Lock()
        self._log: deque[tuple[float, float]] = deque()
        self._used = 0.0
        self._paused_until = 0.0
        self.waited = 0.0

    def reconfigure(self, capacity: float, window: float) -> None:
        with self._lock:
            self.capacity, self.window = capacity, window

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._log and self._log[0][0] <= horizon:
            self._used -= self._log.popleft()[1]

    def acquire(self, cost: float = 1.0) -> None:
        cost = min(cost, self.capacity)
        while True:
            with self._lock:
                now = time.monotonic()
                self._expire(now)
                if now < self._paused_until:
                    wait = self._paused_until - now
                elif self._used + cost <= self.capacity:
                    self._log.append((now, cost))
                    self._used += cost
                    return
                else:
                    # wait until enough of the oldest entries have left the window
                    need, freed, wait = self._used + cost - self.capacity, 0.0, 0.0
                    for t, c in self._log:
                        freed += c
                        wait = t + self.window - now
                        if freed >= need:
                            break
                self.waited += max(wait, 0.0)
            time.sleep(max(wait, 0.001))

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def observe(self, used: float) -> None:
        """The server says ``used`` units are spent in its current window."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            if used > self._used:
                self._log.append((now, used - self._used))
                self._used = used


@dataclass
class HttpStats:
    requests: int = 0
    retries: int = 0
    status: dict[int, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, status: int | None = None, retry: bool = False) -> None:
        with self._lock:
            if status is not None:
                self.requests += 1
                self.status[status] = self.status.get(status, 0) + 1
            if retry:
                self.retries += 1

    def as_dict(self) -> dict[str, int]:
        out = {"requests": self.requests, "retries": self.retries}
        for code in (429, 418):
            out[f"http_{code}"] = self.status.get(code, 0)
        return out


class GaveUp(SourceError):
    """A request still failing after its retries. ``status`` is the last HTTP status, or
    ``None`` when the last attempt could not reach the host at all."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status


class Cancelled(SourceError):
    """The client was closed (the run stopped) while a request was waiting to retry."""


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def default_check(response: requests.Response, body: Any) -> None:
    """Treat 408, 429 and 5xx as retryable, other non-2xx statuses as final."""
    if response.status_code in (408, 429) or response.status_code >= 500:
        raise RetryableError(f"HTTP {response.status_code}", _retry_after(response))
    if response.status_code >= 400:
        raise SourceError(f"HTTP {response.status_code} from {urlsplit(response.url).path}: {str(body)[:200]}")


class HttpClient:
    """GET JSON from one exchange host with keep-alive sessions (one per thread), timeouts,
    retries with exponential backoff and jitter, and a shared :class:`RateLimiter`.

    ``max_attempts`` and ``give_up_after`` bound how long a persistent fault is retried before
    the run fails with the last error (defaults 10 attempts, 300 s; environment
    ``FORGE_HTTP_MAX_ATTEMPTS``, ``FORGE_HTTP_GIVE_UP_AFTER``, ``FORGE_HTTP_TIMEOUT`` for the
    read timeout, 30 s).
    """

    def __init__(
        self,
        base_url: str,
        *,
        limiter: RateLimiter | None = None,
        check: Check = default_check,
        timeout: tuple[float, float] | None = None,
        max_attempts: int | None = None,
        give_up_after: float | None = None,
        backoff: float = 0.25,
        max_backoff: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"bad base URL {base_url!r}: give the host root, e.g. https://api.binance.com")
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.check = check
        self.timeout = timeout or (5.0, _env_float("FORGE_HTTP_TIMEOUT", 30.0))
        self.max_attempts = max_attempts or int(_env_float("FORGE_HTTP_MAX_ATTEMPTS", 10))
        self.give_up_after = give_up_after or _env_float("FORGE_HTTP_GIVE_UP_AFTER", 300.0)
        self.cancelled = threading.Event()
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        self.stats = HttpStats()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update(self.headers)
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def get_json(
        self,
        path: str,
        params: Mapping[str, Any] | None = None,
        *,
        cost: float = 1.0,
        on_response: Callable[[requests.Response], None] | None = None,
        parse: Callable[[Any], Any] | None = None,
    ) -> Any:
        """GET ``base_url + path`` and return the decoded JSON body (or ``parse(body)``),
        retrying transient faults. ``parse`` raising ``ValueError``, ``TypeError``,
        ``KeyError`` or ``IndexError`` marks the body malformed, which is retried too."""

        def read(response: requests.Response) -> Any:
            if on_response is not None:
                on_response(response)
            try:
                body = response.json()
            except ValueError:
                body = None
            self.check(response, body)
            if body is None and response.status_code < 300:
                raise RetryableError(f"malformed JSON body (HTTP {response.status_code})")
            if parse is None:
                return body
            try:
                return parse(body)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise RetryableError(f"malformed body: {type(exc).__name__}: {_short(exc)}") from None

        return self._get(path, params, cost, read)

    def get_bytes(self, path: str, params: Mapping[str, Any] | None = None, *, cost: float = 1.0) -> bytes | None:
        """GET a file: its bytes, or ``None`` for a 404 (no such file), with the same retries."""

        def read(response: requests.Response) -> bytes | None:
            if response.status_code == 404:
                return None
            self.check(response, None)
            return response.content

        return self._get(path, params, cost, read)

    def _get(self, path: str, params: Mapping[str, Any] | None, cost: float,
             read: Callable[[requests.Response], Any]) -> Any:
        """The retry loop: ``read`` turns a response into the result, or raises
        :class:`RetryableError` (try again) or another :class:`ForgeError` (final)."""
        url = self.base_url + path
        started = time.monotonic()
        last_error, last_status = "no attempt made", None
        for attempt in range(1, self.max_attempts + 1):
            if self.cancelled.is_set():
                raise Cancelled("cancelled")
            if self.limiter is not None:
                self.limiter.acquire(cost)
            retry_after: float | None = None
            try:
                response = self.session.get(url, params=params, timeout=self.timeout)
                self.stats.count(response.status_code)
                last_status = response.status_code
                return read(response)
            except RetryableError as exc:
                last_error, retry_after = str(exc), exc.retry_after
            except ForgeError:
                raise
            except requests.exceptions.RequestException as exc:
                last_error, last_status = f"{type(exc).__name__}: {_short(exc)}", None
            if attempt == self.max_attempts or time.monotonic() - started > self.give_up_after:
                break
            delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random())
            if retry_after is not None:
                delay = max(delay, retry_after)
                if self.limiter is not None:
                    self.limiter.pause(retry_after)
            self.stats.count(retry=True)
            log.info("retry", url=urlsplit(url).path, attempt=attempt, error=last_error, delay=round(delay, 2))
            if self.cancelled.wait(delay):
                raise Cancelled("cancelled")
        raise GaveUp(
            f"{urlsplit(url).netloc}{urlsplit(url).path} still failing after {attempt} attempts "
            f"over {time.monotonic() - started:.0f}s: {last_error}",
            last_status,
        )

    def close(self) -> None:
        """Stop retrying in every thread and close the sessions."""
        self.cancelled.set()
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ForgeError(f"environment variable {name}={value!r} is not a number") from None


def _short(exc: BaseException) -> str:
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:  # requests nests the useful part deep inside its message
        return errno.group(0)
    return text if len(text) < 200 else text[:200] + "..."
