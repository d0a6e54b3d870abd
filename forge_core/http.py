"""HTTP for exchange plugins: a shared rate limiter and a client that retries what can be retried.

Nothing here knows an exchange. A plugin gives the client its base URL, a limiter sized to the
exchange's published limits and a ``check`` function that maps the exchange's error bodies to
:class:`~forge_core.errors.SourceError` (final) or :class:`~forge_core.errors.RetryableError`.
"""

from __future__ import annotations

import bisect
import html
import json
import math
import os
import random
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from . import __version__, budget, retrying
from .errors import ForgeError, RetryableError, SourceError, UsageError
from .logs import get_logger
from .redact import redact, redact_host, redact_url

log = get_logger(__name__)
USER_AGENT = f"forge-etl/{__version__} (+https://github.com/forge-etl)"
Check = Callable[[requests.Response, Any], None]


class RateLimiter:
    """At most ``capacity`` units in any sliding window of ``window`` seconds, for all threads.

    A sliding window never exceeds a fixed-window server limit either. :meth:`pause` stops
    every caller until a time (after a 429's ``Retry-After``): those waiting in :meth:`acquire`
    and, through :meth:`hold`, those that acquired but have not sent yet. :meth:`observe` takes
    the server's own count of used weight into account (other processes on the same IP).

    ``initial`` is a conservative capacity used until the exchange's real limit is known
    (:meth:`reconfigure`): start-up requests (exchange info, server time, probes) draw from it.
    It caps this limiter's own spending only: what the server says others behind the IP used
    (:meth:`observe`) counts against the published ``capacity`` (against the initial one, a run
    started after others had spent a tenth of the limit would wait out the whole window before
    its first request), and a shared budget (:mod:`forge_core.budget`) is charged at the full
    ``capacity`` (at the initial one, every new source's start-up would cost the participants
    ten times its weight).

    ``counting_window`` is the exchange's own fixed, epoch-aligned window (Binance: 60 s) when
    ``window`` adds a slack to it: :meth:`observe` aligns the server's count on it.
    """

    def __init__(self, capacity: float, window: float, *, name: str = "", initial: float | None = None) -> None:
        self.capacity = capacity if initial is None else min(capacity, initial)
        self.limit = capacity  # what a shared budget is charged against
        self.window = window
        self.counting_window: float | None = None
        self.name = name
        self.known = initial is None
        self._lock = threading.Lock()
        self._log: deque[tuple[float, float, bool]] = deque()  # (when, units, spent by this limiter)
        self._used = 0.0  # every unit in the window, ours and those the server reported
        self._own = 0.0  # ours only: what the initial capacity caps
        self._paused_until = 0.0
        self.waited = 0.0

    def reconfigure(self, capacity: float, window: float, counting_window: float | None = None) -> None:
        """The exchange's real limit (what was spent in the window still counts)."""
        with self._lock:
            self.capacity, self.limit, self.window = capacity, capacity, window
            self.counting_window = counting_window
            self.known = True
            if counting_window:  # counts the server reported before (exchangeInfo's own header)
                now, wall = time.monotonic(), time.time()
                self._log = deque(sorted((t if own else self._window_start(t, now, wall), units, own)
                                         for t, units, own in self._log))

    def _window_start(self, when: float, now: float, wall: float) -> float:
        """The monotonic time the server's counting window holding ``when`` began."""
        assert self.counting_window
        return when - (wall - (now - when)) % self.counting_window

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._log and self._log[0][0] <= horizon:
            _, units, own = self._log.popleft()
            self._used -= units
            if own:
                self._own -= units

    def _wait_for(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` more units fit (0: they fit now)."""
        over_all = self._used + cost - (self.capacity if self.known else self.limit)
        over_own = -1.0 if self.known else self._own + cost - self.capacity
        wait = 0.0
        for over, own_only in ((over_all, False), (over_own, True)):
            freed = 0.0
            for t, units, own in self._log:  # until enough of the oldest entries leave the window
                if over <= 0 or freed >= over:
                    break
                if own or not own_only:
                    freed += units
                    wait = max(wait, t + self.window - now)
        return wait

    def acquire(self, cost: float = 1.0, cancel: threading.Event | None = None) -> bool:
        """Take ``cost`` units, waiting as long as needed; False if ``cancel`` was set meanwhile.
        A wait of :data:`~forge_core.retrying.THROTTLE_SHOWN` seconds or more is announced to
        displays (:func:`forge_core.retrying.throttled`): the progress line says why it stalls."""
        cost = min(cost, self.capacity)
        announced = False
        try:
            while True:
                with self._lock:
                    now = time.monotonic()
                    self._expire(now)
                    paused = now < self._paused_until
                    wait = self._paused_until - now if paused else self._wait_for(cost, now)
                    if wait <= 0:
                        self._log.append((now, cost, True))
                        self._used += cost
                        self._own += cost
                        shared = budget.current()
                        if shared is None:
                            return True
                        break
                    self.waited += wait
                if wait >= retrying.THROTTLE_SHOWN:
                    retrying.throttle(retrying.Throttled(self.name, retrying.current_symbol(), time.time() + wait,
                                                         paused))
                    announced = True
                if cancel is None:
                    time.sleep(max(wait, 0.001))
                elif cancel.wait(max(wait, 0.001)):
                    return False
        finally:
            if announced:
                retrying.unthrottle()
        # this process's window allows it; now the budget every process behind the IP shares
        shared.acquire(self.name, cost, self.limit, self.window)
        return True

    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when not paused). Lock-free: one float read."""
        left = self._paused_until - time.monotonic()
        return left if left > 0 else 0.0

    def hold(self, cost: float = 1.0, cancel: threading.Event | None = None) -> bool:
        """Called just before a request is sent: if a pause began after :meth:`acquire`
        returned, wait for it to end and acquire again (the first unit stays spent: safe)."""
        if self.paused_for() > 0:
            return self.acquire(cost, cancel)
        return True

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        shared = budget.current()
        if shared is not None:
            shared.pause(self.name, seconds)

    def observe(self, used: float) -> None:
        """The server says ``used`` units are spent in its current window. With a
        ``counting_window`` that count frees up when the server's epoch-aligned window ends
        (plus the slack), not a whole ``window`` after it was seen: a run started late in a
        minute others had filled would otherwise wait up to a minute the server does not ask."""
        with self._lock:
            now = time.monotonic()
            self._expire(now)
            if used > self._used:
                when = self._window_start(now, now, time.time()) if self.counting_window else now
                entry = (when, used - self._used, False)
                if self._log and self._log[-1][0] > when:  # keep the log in time order
                    bisect.insort(self._log, entry, key=lambda e: e[0])
                else:
                    self._log.append(entry)
                self._used = used
        shared = budget.current()
        if shared is not None:
            shared.observe(self.name, used, self.limit, self.window, self.counting_window or self.window)


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


class Unreachable(GaveUp):
    """The host's name does not resolve, or it refused the connection and has never answered in
    this process: not retried (a wrong or unset base URL, no network), ``status`` is ``None``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


class Cancelled(SourceError):
    """The client was closed (the run stopped) while a request was waiting to retry."""


def retry_after(response: requests.Response) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


_retry_after = retry_after  # the old private name


# statuses whose cause is the network path, not the request: said in words, whatever the body
_STATUS_HINTS = {
    403: "forbidden: refused by the exchange's firewall (a WAF rule, or this IP or region is blocked)",
    451: "unavailable for legal reasons: this IP's region is restricted",
}
_TAG = re.compile(r"<[^>]*>")
_DROP = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TITLE = re.compile(r"<(title|h1|h2)\b[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
REASON_CHARS = 120


def body_reason(content: bytes | str | None, limit: int = REASON_CHARS) -> str:
    """A short plain-text reason from an error body that is not the exchange's JSON: an HTML
    page's title and first headings (tags, scripts and entities dropped), or a text body's
    first words, on one line and at most ``limit`` characters; ``""`` when nothing readable
    is left. Never the body itself: a WAF or proxy page can be kilobytes of markup."""
    if not content:
        return ""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    text = text[:65536]
    if "<" in text and ">" in text:
        heads = []
        for match in _TITLE.finditer(text):
            words = " ".join(html.unescape(_TAG.sub(" ", match.group(2))).split())
            key = words.lower().strip(" .:!")
            if key and not any(key in h.lower() for h in heads):
                heads.append(words)
        text = " - ".join(heads) if heads else html.unescape(_TAG.sub(" ", _DROP.sub(" ", text)))
    text = " ".join(text.split())
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def error_line(response: requests.Response, reason: str | None = None) -> str:
    """One line for a refused request: ``HTTP 403 from host/path: <reason>``. The host never
    shows credentials and the query is left out; ``reason`` defaults to the body's
    :func:`body_reason`, and a 403/451 always says what it means."""
    parts = urlsplit(response.url or "")
    where = f"{redact_host(response.url or '')}{parts.path}" if parts.netloc else "the exchange"
    if reason is None:
        reason = body_reason(response.content)
    hint = _STATUS_HINTS.get(response.status_code)
    text = "; ".join(x for x in (hint, reason) if x) or (response.reason or "no reason given")
    return redact(f"HTTP {response.status_code} from {where}: {text}")


def default_check(response: requests.Response, body: Any) -> None:
    """Treat 408, 429 and 5xx as retryable, other non-2xx statuses as final (one line each)."""
    if response.status_code in (408, 429) or response.status_code >= 500:
        raise RetryableError(f"HTTP {response.status_code}", retry_after(response))
    if response.status_code >= 400:
        reason = None if body is None else _short_json(body)
        raise SourceError(error_line(response, reason))


def _short_json(body: Any) -> str:
    text = json.dumps(body, separators=(",", ":"), default=str)
    return text if len(text) <= 200 else text[:197] + "..."


# hosts (scheme://host:port) that have answered an HTTP request in this process: a refused
# connection to one of them is a restart (retried), to any other a wrong host (not retried)
_answered: set[str] = set()
# a response arriving at less than this rate is cut at the timeout; faster ones may take longer
MIN_RATE = 100_000  # bytes per second


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}"


def _exact_float(text: str) -> str:
    return text


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not an exact number")


def decode_json(content: bytes, *, exact: bool = False) -> Any:
    """JSON from bytes; with ``exact``, numbers with a fraction or exponent are kept as the
    exchange's exact text (``0.1`` -> ``"0.1"``), integers are ``int`` and NaN/Infinity are refused."""
    if exact:
        return json.loads(content, parse_float=_exact_float, parse_constant=_no_constant)
    return json.loads(content)


class _Adapter(requests.adapters.HTTPAdapter):
    """One thread's connection pool; checks the limiter's pause right before a request goes
    on the wire (a 429 seen by another worker after this one passed ``acquire``)."""

    def __init__(self, limiter: RateLimiter | None, cancel: threading.Event) -> None:
        super().__init__(pool_connections=1, pool_maxsize=2, max_retries=0)
        self.limiter = limiter
        self.cancel = cancel
        self.cost = 1.0  # of the request being sent (one adapter per thread)
        self._pool_key: tuple[str, Any, Any, dict[str, Any], dict[str, Any]] | None = None
        self._verified: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        if self.limiter is not None and not self.limiter.hold(self.cost, self.cancel):
            raise Cancelled("cancelled")
        return super().send(request, *args, **kwargs)

    # requests stats the CA bundle (and client certificate) on every request: once is enough
    # for this adapter's one host, so both answers are kept

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        url = request.url or ""
        cached = self._pool_key
        if cached is not None and cached[1] == verify and cached[2] == cert and url.startswith(cached[0]):
            return dict(cached[3]), dict(cached[4])
        host, kwargs = super().build_connection_pool_key_attributes(request, verify, cert)
        prefix = f"{host['scheme']}://{urlsplit(url).netloc}/"
        self._pool_key = (prefix, verify, cert, dict(host), dict(kwargs))
        return host, kwargs

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        key = (verify, cert)
        if self._verified.get(conn) == key:
            return
        super().cert_verify(conn, url, verify, cert)
        self._verified[conn] = key


class HttpClient:
    """GET JSON from one exchange host with keep-alive sessions (one per thread), timeouts,
    retries with exponential backoff and jitter, and a shared :class:`RateLimiter`.

    ``max_attempts`` and ``give_up_after`` bound how long a persistent fault is retried before
    the run fails with the last error (defaults 10 attempts, 300 s; environment
    ``FORGE_HTTP_MAX_ATTEMPTS``, ``FORGE_HTTP_GIVE_UP_AFTER``). ``FORGE_HTTP_TIMEOUT`` (30 s)
    bounds each whole response, not each read: a body trickling in is cut and retried. A busy
    server (a 5xx, or a :class:`RetryableError` with ``busy``) pauses all of this client's
    threads together, and one probe request goes first after each pause
    (:class:`forge_core.retrying.Backoff`).

    A host whose name does not resolve, or that refuses connections and has not answered in
    this process, fails at once (:class:`Unreachable`); ``envvar`` names the environment
    variable that sets this host and ``hint`` adds advice to that message. URLs in messages
    and logs are redacted (:func:`forge_core.redact_url`). Proxies come from the usual
    environment variables (read once); ``~/.netrc`` is not read.
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
        envvar: str | None = None,
        hint: str | None = None,
    ) -> None:
        try:
            parts = urlsplit(base_url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            ok = False
        if not ok:
            where = f" (the base URL option or {envvar})" if envvar else ""
            raise UsageError(f"bad base URL {redact_url(base_url)!r}{where}: give the host root, "
                             "e.g. https://api.binance.com")
        self.base_url = base_url.rstrip("/")
        self.host = redact_host(self.base_url)
        self.envvar = envvar
        self.hint = hint
        self.limiter = limiter
        self.check = check
        self.timeout = timeout or (5.0, _env_float("FORGE_HTTP_TIMEOUT", 30.0))
        self.max_attempts = max_attempts or int(_env_float("FORGE_HTTP_MAX_ATTEMPTS", 10, whole=True))
        self.give_up_after = give_up_after or _env_float("FORGE_HTTP_GIVE_UP_AFTER", 300.0)
        self.cancelled = threading.Event()
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        self.stats = HttpStats()
        self.backoff_gate = retrying.Backoff(self.host, backoff, max_backoff)  # shared by this client's threads
        self._origin = _origin(self.base_url)
        # requests' trust_env re-reads the environment and stats ~/.netrc on every request;
        # do the proxy and CA-bundle part once, here, for this one host
        self._proxies = requests.utils.get_environ_proxies(self.base_url)
        self._verify: bool | str = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False
            session.proxies.update(self._proxies)
            session.verify = self._verify
            session.headers.update(self.headers)
            adapter = _Adapter(self.limiter, self.cancelled)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session, self._local.adapter = session, adapter
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
        exact: bool = False,
        raw: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """GET ``base_url + path`` and return the decoded JSON body (or ``parse(body)``),
        retrying transient faults. ``parse`` raising ``ValueError``, ``TypeError``,
        ``KeyError`` or ``IndexError`` marks the body malformed, which is retried too.

        ``exact=True`` keeps JSON numbers exact, for exchanges that send prices as numbers:
        a number with a fraction or exponent arrives as its text (``0.1`` -> ``"0.1"``,
        exactly what the exchange sent, ready for a row or ``Decimal``), an integer as
        ``int``; without it they are ``float`` and ``0.1`` may print as ``0.1000000000000000055``.

        ``raw(content)`` may take a 2xx body straight from its bytes, without decoding it:
        it returns the result, or ``None`` to have the body decoded and parsed as usual (it
        must accept only bodies it has checked completely). ``check`` then sees body ``None``."""

        def read(response: requests.Response) -> Any:
            if on_response is not None:
                on_response(response)
            if raw is not None and response.status_code < 300:
                try:
                    result = raw(response.content)
                except (ValueError, TypeError, KeyError, IndexError, AttributeError):
                    result = None  # not the form it reads: decoded and parsed as usual
                if result is not None:
                    self.check(response, None)
                    return result
            try:
                body = decode_json(response.content, exact=exact)
            except ValueError:
                body = None
            self.check(response, body)
            if body is None and response.status_code < 300:
                raise RetryableError(f"malformed JSON body (HTTP {response.status_code})")
            if parse is None:
                return body
            try:
                return parse(body)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
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

    def _send(self, url: str, params: Mapping[str, Any] | None, cost: float, budget: float) -> requests.Response:
        """One request whose whole response must arrive within ``budget`` seconds, plus the
        time a body arriving at :data:`MIN_RATE` or faster needs. Headers are bounded by the
        read timeout per socket read; the body by the budget as a whole (one byte at a time
        does not keep a request alive)."""
        connect, read = self.timeout
        began = time.monotonic()
        deadline = began + budget
        left = max(budget, 0.001)
        session = self.session
        self._local.adapter.cost = cost
        response = session.get(url, params=params, timeout=(min(connect, left), min(read, left)), stream=True)
        raw = response.raw
        chunks: list[bytes] = []
        received = 0
        try:
            sock = getattr(getattr(raw, "connection", None), "sock", None)
            while True:
                left = deadline + received / MIN_RATE - time.monotonic()
                if left <= 0:
                    raise RetryableError(f"no complete response within {budget:.3g}s "
                                         f"({received} bytes of the body had arrived)")
                if sock is not None:
                    sock.settimeout(min(read, left))
                chunk = raw.read1(65536, decode_content=True)
                if not chunk:
                    break
                chunks.append(chunk)
                received += len(chunk)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            response.close()  # never reuse a connection with a half-read body
            if isinstance(exc, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
                raise RetryableError(f"no complete response within {budget:.3g}s "
                                     f"({received} bytes of the body had arrived)") from None
            raise RetryableError(f"body cut short after {received} bytes: {type(exc).__name__}: "
                                 f"{_short(exc)}") from None
        except BaseException:
            response.close()
            raise
        response._content = b"".join(chunks)
        response._content_consumed = True
        raw.release_conn()
        return response

    def _unreachable(self, exc: requests.exceptions.RequestException, url: str) -> Unreachable | None:
        """An :class:`Unreachable` if retrying ``exc`` is pointless: the name does not resolve,
        or the host refused and has never answered in this process. ``None`` otherwise."""
        if not isinstance(exc, requests.exceptions.ConnectionError) or isinstance(exc, requests.exceptions.ProxyError):
            return None
        if self._origin in _answered:
            return None  # it answered before: a restart or a blip, retried
        reason = exc.args[0] if exc.args else None
        reason = getattr(reason, "reason", reason)
        if isinstance(reason, urllib3.exceptions.NameResolutionError):
            what = "the host name does not resolve"
        elif isinstance(reason, urllib3.exceptions.NewConnectionError) and (
                isinstance(reason.__cause__ or reason.__context__, ConnectionRefusedError)
                or "Connection refused" in str(reason)):
            what = "connection refused by a host that has not answered in this run"
        else:
            return None
        # as the bad-URL error: the URL may come from the option (--base-url, --archive-url) as well
        advice = (f"is the host right? the base URL option or {self.envvar} sets it" if self.envvar
                  else "is the base URL right?")
        if self.hint:
            advice += f"; {self.hint}"
        return Unreachable(f"{self.host}{urlsplit(url).path}: {what} ({_short(exc)}); not retried ({advice})")

    def _past_deadline(self, why: str = "") -> str:
        """The give-up suffix of a request's last error."""
        return f" ({why}the next attempt would be after FORGE_HTTP_GIVE_UP_AFTER={self.give_up_after:g}s)"

    def _get(self, path: str, params: Mapping[str, Any] | None, cost: float,
             read: Callable[[requests.Response], Any]) -> Any:
        """The retry loop: ``read`` turns a response into the result, or raises
        :class:`RetryableError` (try again) or another :class:`ForgeError` (final).
        Each attempt has ``timeout`` for its whole response; all attempts ``give_up_after``."""
        url = self.base_url + path
        # the give-up clock starts at the first send: waiting for the rate limiter or behind
        # another request's backoff is not this request failing
        started = give_up_at = math.inf
        last_error, last_status = "no attempt made", None
        attempt = 0
        for attempt in range(1, self.max_attempts + 1):
            if self.cancelled.is_set():
                raise Cancelled("cancelled")
            if self.limiter is not None and not self.limiter.acquire(cost, self.cancelled):
                raise Cancelled("cancelled")
            retry_after: float | None = None
            kind = "error"
            gate = self.backoff_gate
            if gate.level and not gate.wait(self.cancelled, give_up_at):  # the server is busy: everyone waits
                if self.cancelled.is_set():
                    raise Cancelled("cancelled")
                last_error += self._past_deadline(f"every worker is backing off after {gate.why or 'a busy answer'}; ")
                break
            status, together = None, 0.0
            sent = time.monotonic()
            if attempt == 1:
                started, give_up_at = sent, sent + self.give_up_after
            elif sent >= give_up_at:  # the limiter held this retry past the deadline
                last_error += self._past_deadline()
                break
            try:
                budget = min(self.timeout[1], give_up_at - sent)
                response = self._send(url, params, cost, budget)
                _answered.add(self._origin)
                self.stats.count(response.status_code)
                last_status = status = response.status_code
                if status in (429, 418) and self.limiter is not None:
                    # stop every worker now, before the check decides anything
                    wait = retry_after_or(response, 1.0 if status == 429 else 60.0)
                    self.limiter.pause(wait)
                result = read(response)
                if gate.level:
                    gate.succeeded(sent)
                return result
            except RetryableError as exc:
                last_error, retry_after = str(exc), exc.retry_after
                kind = _kind(exc, last_status)
                if exc.busy or (status is not None and status >= 500):
                    together = gate.failed(sent, kind)
            except ForgeError:
                if gate.level and status is not None:
                    gate.succeeded(sent)  # a final answer: the server is not busy
                raise
            except requests.exceptions.RequestException as exc:
                unreachable = self._unreachable(exc, url)
                if unreachable is not None:
                    raise unreachable from None
                last_error, last_status = f"{type(exc).__name__}: {_short(exc)}", None
                kind = _kind(exc, None)
            now = time.monotonic()
            if attempt == self.max_attempts or now >= give_up_at:
                break
            delay = max(together, min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random()))
            if retry_after is not None:
                delay = max(delay, retry_after)
                if self.limiter is not None:
                    self.limiter.pause(retry_after)
            if now + delay > give_up_at:
                asked = f"the exchange asks to wait {retry_after:.0f}s (Retry-After); " \
                    if retry_after is not None and retry_after >= delay else ""
                last_error += self._past_deadline(asked)
                break
            self.stats.count(retry=True)
            wall = time.time()
            state = retrying.Retrying(self.host, urlsplit(url).path, retrying.current_symbol(params), kind,
                                      attempt + 1, self.max_attempts, wall + delay, wall + give_up_at - now,
                                      retry_after)
            log.info("retrying", host=state.host, path=state.path, symbol=state.symbol, error=kind,
                     detail=redact(last_error), attempt=state.attempt, attempts=state.attempts,
                     delay=round(delay, 2), next_at=_utc(state.until), gives_up_at=_utc(state.give_up_at))
            retrying.begin(state)
            try:
                if self.cancelled.wait(delay):
                    raise Cancelled("cancelled")
            finally:
                retrying.end()
        raise GaveUp(
            f"{self.host}{urlsplit(url).path} still failing after {attempt} attempts "
            f"over {time.monotonic() - started:.0f}s: {redact(last_error)}",
            last_status,
        )

    def close(self) -> None:
        """Stop retrying in every thread and close the sessions."""
        self.cancelled.set()
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()


_CODE = re.compile(r"\bHTTP (\d{3}) (-?\d{4,5})\b")


def _kind(exc: BaseException, status: int | None) -> str:
    """The kind of a retried failure, short, for the progress line: ``HTTP 429``, ``timeout``,
    ``connection reset``, ``malformed body``, ..."""
    text = str(exc)
    if isinstance(exc, RetryableError):
        if text.startswith("no complete response"):
            return "timeout"
        if text.startswith("body cut short"):
            return "connection reset"
        if text.startswith("malformed"):
            return "malformed body"
        # the exchange's code where the status alone misleads: Binance -1008 (server busy) comes
        # with 400, OKX 50004 (endpoint timeout) with 400, 50005 with 410, 50011 with 200
        code = _CODE.search(text) if status is not None and status != 429 and status < 500 else None
        if code is not None and int(code.group(1)) == status:
            return f"HTTP {status} {code.group(2)}"
        if status is not None and status >= 300:
            return f"HTTP {status}"
        return text[:40]
    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout"
    if isinstance(exc, requests.exceptions.ConnectionError):
        lowered = text.lower()
        return "connection reset" if "reset" in lowered or "aborted" in lowered else "connection error"
    return type(exc).__name__


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def retry_after_or(response: requests.Response, default: float) -> float:
    value = retry_after(response)
    return default if value is None else value


def _env_float(name: str, default: float, whole: bool = False) -> float:
    """A positive number (a whole one with ``whole``) from the environment, else a usage error."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0 and (not whole or number.is_integer())):
        kind = "a whole number >= 1" if whole else "a number of seconds > 0"
        raise UsageError(f"environment variable {name}={value!r}: give {kind} (default {default:g}), "
                         f"or unset it")
    return number


def _short(exc: BaseException) -> str:
    text = redact(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:  # requests nests the useful part deep inside its message
        return errno.group(0)
    return text if len(text) < 200 else text[:200] + "..."
