"""The mock exchange server: a threaded ``http.server`` on 127.0.0.1 hosting route modules.

A route module imitates one exchange and lives next to the plugin it imitates (e.g.
``forge_binance.mock``). It exposes ``install(mock) -> None``, which adds handlers with
:meth:`MockExchange.route` (exact path) or :meth:`MockExchange.route_prefix`, and optionally
``ENVIRONMENT``: the environment variables that point its source at the mock (each is set to
:attr:`MockExchange.url`). The server finds route modules through the entry point group
``forge_etl_mock``, so ``forge mock-exchange`` serves whatever installed plugins provide::

    [project.entry-points.forge_etl_mock]
    myexchange = "my_exchange.mock"

A handler gets a :class:`Request` and returns a :class:`Response`. ``/mock/stats`` returns the
counters tests assert on (requests, 429s, bans); the fault injector (:mod:`.faults`) sits in
front of every route.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROUTE_GROUP = "forge_etl_mock"


def route_modules(names: Iterable[str] | None = None) -> dict[str, ModuleType]:
    """The installed route modules by entry point name (all of them, or only ``names``), in
    name order. One that fails to import is left out with a warning naming it."""
    wanted = None if names is None else set(names)
    found: dict[str, ModuleType] = {}
    for ep in sorted(entry_points(group=ROUTE_GROUP), key=lambda e: e.name):
        if ep.name in found or (wanted is not None and ep.name not in wanted):
            continue
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not take the other exchanges down
            dist = ep.dist.name if ep.dist is not None else "?"
            warnings.warn(f"mock routes {ep.name!r} ({dist}, {ep.value}) failed to load: {exc}", stacklevel=2)
            continue
        if not callable(getattr(module, "install", None)):
            warnings.warn(f"mock routes {ep.name!r} ({ep.value}) have no install(mock) function", stacklevel=2)
            continue
        found[ep.name] = module
    if wanted is not None and wanted - set(found):
        missing = ", ".join(sorted(wanted - set(found)))
        known = ", ".join(sorted({ep.name for ep in entry_points(group=ROUTE_GROUP)})) or "none"
        raise ValueError(f"no mock routes named {missing} (installed: {known})")
    return found


@dataclass
class MockConfig:
    """Knobs of the mock. ``now`` freezes the exchanges' clock (epoch ms) for deterministic
    tests; ``None`` follows the real clock. ``weight_window`` shortens Binance's one-minute
    rate-limit window (benchmarks); the advertised limits scale with it. ``clock_offset`` (ms,
    settable while serving) puts the real-time clock ahead (or behind, negative) of this
    machine's, as a real exchange's may be."""

    latency: float = 0.0
    now: int | None = None
    clock_offset: int = 0
    binance_weight_limit: int = 6000
    binance_futures_weight_limit: int = 2400
    weight_window: int = 60
    okx_history_limit: int = 300
    okx_window: float = 2.0
    faults: dict[str, float] = field(default_factory=dict)
    fault_seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw_query: str = ""

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    @classmethod
    def json(cls, payload: Any, status: int = 200, **headers: str) -> Response:
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), dict(headers))


Handler = Callable[[Request], Response]


def send_head(handler: BaseHTTPRequestHandler, response: Response) -> None:
    """The status line and headers of ``response`` (its body is the caller's to write)."""
    handler.send_response(response.status)
    handler.send_header("Content-Type", response.content_type)
    handler.send_header("Content-Length", str(len(response.body)))
    for key, value in response.headers.items():
        handler.send_header(key, value)
    handler.end_headers()


class MockExchange:
    """Serve the mock on ``127.0.0.1:port`` (0 = a free port) in a background thread."""

    def __init__(self, config: MockConfig | None = None, port: int = 0, *,
                 routes: Iterable[str | ModuleType] | None = None, **overrides: Any) -> None:
        """``routes``: entry point names or modules to install; default every installed one."""
        self.config = config or MockConfig(**overrides)
        self.port = port
        self.routes: dict[str, Handler] = {}
        self.prefixes: list[tuple[str, Handler]] = []
        self.stats: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.state: dict[str, Any] = {}  # per-route counters and windows; /mock/reset clears it
        self.before_send: Callable[..., bool] | None = None  # the fault injector, if any
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.modules: dict[str, ModuleType] = {}
        if routes is None:
            self.modules = route_modules()
        else:
            names = [r for r in routes if isinstance(r, str)]
            by_name = route_modules(names) if names else {}
            for item in routes:
                module = by_name[item] if isinstance(item, str) else item
                self.modules[item if isinstance(item, str) else module.__name__] = module
        for module in self.modules.values():
            module.install(self)
        from . import faults  # in front of every route; a no-op without config.faults

        faults.install(self)
        self.route("/mock/stats", lambda req: Response.json(dict(self.stats)))
        self.route("/mock/reset", self._reset)

    def _reset(self, req: Request) -> Response:
        with self.lock:
            self.stats.clear()
            self.state.clear()
        return Response.json({})

    # -- routing ---------------------------------------------------------------------------
    def route(self, path: str, handler: Handler) -> None:
        self.routes[path] = handler

    def route_prefix(self, prefix: str, handler: Handler) -> None:
        self.prefixes.append((prefix, handler))

    def now(self) -> int:
        if self.config.now is not None:
            return self.config.now
        return time.time_ns() // 1_000_000 + self.config.clock_offset

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[key] += n

    def dispatch(self, request: Request) -> Response:
        handler = self.routes.get(request.path)
        if handler is None:
            for prefix, candidate in self.prefixes:
                if request.path.startswith(prefix):
                    handler = candidate
                    break
        if handler is None:
            return Response(404, b"<html><body><h2>404 Not found</h2></body></html>", content_type="text/html")
        return handler(request)

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the mock first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def environment(self) -> dict[str, str]:
        """Every environment variable the installed route modules name, set to :attr:`url`."""
        names = [n for m in self.modules.values() for n in getattr(m, "ENVIRONMENT", ())]
        return dict.fromkeys(dict.fromkeys(names), self.url)

    def start(self) -> MockExchange:
        mock = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body are separate writes: without this, Nagle's algorithm and the
                # client's delayed ACK add ~40 ms to every response
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def date_time_string(self, timestamp: float | None = None) -> str:
                # the Date header tells the mock's clock (frozen or offset), as a server's tells its own
                from email.utils import formatdate

                return formatdate(mock.now() / 1000 if timestamp is None else timestamp, usegmt=True)

            def do_GET(self) -> None:  # noqa: N802
                parts = urlsplit(self.path)
                request = Request("GET", parts.path, parse_qs(parts.query, keep_blank_values=True),
                                  {k.lower(): v for k, v in self.headers.items()}, parts.query)
                if mock.config.latency:
                    time.sleep(mock.config.latency)
                response = mock.dispatch(request)
                hook = mock.before_send
                if hook is not None and hook(self, request, response):
                    return  # the fault injector wrote (or broke) the response itself
                send_head(self, response)
                self.wfile.write(response.body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        class _Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 128

            def handle_error(self, request: Any, client_address: Any) -> None:
                # a client that gave up (a timeout on the slow fault) is normal: no traceback
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self._server = _Server(("127.0.0.1", self.port), _Handler)
        # stop() waits for the serve loop's next poll: 0.5 s by default, for every test's own mock
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="mock-exchange", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> MockExchange:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
