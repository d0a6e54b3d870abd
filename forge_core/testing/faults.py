"""Injectable faults, drawn per request from a seeded RNG: ``MockConfig(faults={"http500": 0.05})``
or ``forge mock-exchange --fault http500=0.05``.

=============  =================================================================================
kind           what the client sees
=============  =================================================================================
``http500``    HTTP 500/502/503 with an error body
``reset``      headers and half the body, then the connection is closed
``slow``       no answer for ``extra["slow_seconds"]`` (default 3 s), then the normal answer
``malformed``  HTTP 200 with a body that is not JSON
``truncated``  HTTP 200 with the JSON cut short (the Content-Length matches the cut body)
``duplicate``  the page repeats some of its rows (in place, order kept)
``short``      HTTP 200 with only the first half of the page's rows (in the page's own order):
               a page shorter than asked for that is not the end of the data
``burst429``   HTTP 429 with ``Retry-After: 1`` (Binance -1003 body, or OKX 50011 on /api/v5)
``okx50011``   HTTP 200 with OKX's ``{"code":"50011",...}`` envelope (OKX paths only)
``empty``      HTTP 200 with the page's candles taken out although the range has some: ``[]``
               (Binance), ``"data":[]`` (OKX), ``"list":[]`` (Bybit-style ``result``); only
               pages that had candles are hit
``trickle``    the normal answer, its body sent one byte at a time, ``extra["trickle_seconds"]``
               (default 0.05 s) apart: a read timeout per byte never fires
``down``       every request from the ``extra["down_after"]``-th on gets HTTP 503 (no rate)
=============  =================================================================================

Faults hit exchange paths only (never ``/mock/...``). ``mock.stats`` counts them as
``fault.<kind>``. Rates are probabilities per request (0 to 1; their sum at most 1).
"""

from __future__ import annotations

import json
import random
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from .server import MockExchange, Request, Response, send_head

KINDS = ("http500", "reset", "slow", "malformed", "truncated", "duplicate", "burst429", "okx50011", "empty",
         "trickle", "short")
ALL_KINDS = (*KINDS, "down")
__all__ = ["ALL_KINDS", "KINDS", "check_faults", "install"]


def check_faults(faults: dict[str, float]) -> None:
    """Raise ``ValueError`` (one line naming the bad kind or rate, and what is accepted)."""
    for kind, rate in faults.items():
        if kind not in ALL_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(ALL_KINDS)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate {kind}={rate:g} is not a probability: use a number from 0 to 1")
    total = sum(rate for kind, rate in faults.items() if kind != "down")
    if total > 1.0 + 1e-9:
        raise ValueError(f"fault rates add up to {total:g}; their sum must be at most 1")


def install(mock: MockExchange) -> None:
    faults = mock.config.faults
    if not faults:
        return
    check_faults(faults)
    rng = random.Random(mock.config.fault_seed)
    served = {"n": 0}

    def draw(request: Request) -> str | None:
        with mock.lock:
            served["n"] += 1
            n = served["n"]
            roll = rng.random()
        down_after = mock.config.extra.get("down_after")
        if "down" in faults and down_after is not None and n > int(down_after):
            return "down"
        edge = 0.0
        for kind in KINDS:
            edge += faults.get(kind, 0.0)
            if roll < edge:
                if kind == "okx50011" and not request.path.startswith("/api/v5"):
                    return None
                return kind
        return None

    def before_send(handler: BaseHTTPRequestHandler, request: Request, response: Response) -> bool:
        if request.path.startswith("/mock/"):
            return False
        kind = draw(request)
        if kind is None or (kind == "empty" and not _cut_rows(response, 0)):
            return False
        if kind == "short" and not _cut_rows(response, 0.5):
            return False
        mock.count(f"fault.{kind}")
        if kind in ("empty", "short"):
            return False  # the page now has fewer candles (or none); sent normally
        if kind == "trickle":
            _trickle(handler, response, float(mock.config.extra.get("trickle_seconds", 0.05)))
            return True
        okx = request.path.startswith("/api/v5")
        if kind == "slow":
            time.sleep(float(mock.config.extra.get("slow_seconds", 3.0)))
            return False
        if kind == "duplicate":
            _duplicate_rows(response, rng)
            return False
        if kind == "reset":
            body = response.body[: max(1, len(response.body) // 2)]
            _send(handler, response.status, response.body, response.headers, body_override=body)
            handler.close_connection = True
            return True
        replacement = {
            "http500": lambda: Response.json({"code": -1000, "msg": "An unknown error occurred while processing the request."},
                                             rng.choice((500, 502, 503))),
            "down": lambda: Response.json({"code": "50001", "msg": "Service temporarily unavailable."} if okx
                                          else {"code": -1000, "msg": "Service unavailable."}, 503),
            "malformed": lambda: Response(200, b"<html><body>upstream error</body></html>"),
            "truncated": lambda: Response(200, response.body[: max(1, len(response.body) * 2 // 3)]),
            "burst429": lambda: (Response.json({"msg": "Too Many Requests", "code": "50011"}, 429, **{"Retry-After": "1"})
                                 if okx else Response.json({"code": -1003, "msg": "Too much request weight used; "
                                                            "current limit is 6000 request weight per 1 MINUTE."},
                                                           429, **{"Retry-After": "1"})),
            "okx50011": lambda: Response.json({"code": "50011", "msg": "Rate limit reached. Please refer to API "
                                               "documentation and throttle requests accordingly.", "data": []}),
        }[kind]()
        _send(handler, replacement.status, replacement.body, replacement.headers)
        return True

    mock.before_send = before_send


def _duplicate_rows(response: Response, rng: random.Random) -> None:
    try:
        payload: Any = json.loads(response.body)
    except ValueError:
        return
    rows = payload if isinstance(payload, list) else payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(rows, list) or len(rows) < 2 or not isinstance(rows[0], list):
        return
    for _ in range(max(1, len(rows) // 50)):
        i = rng.randrange(len(rows))
        rows.insert(i, list(rows[i]))
    response.body = json.dumps(payload, separators=(",", ":")).encode()


def _rows_of(payload: Any) -> list[Any] | None:
    """The candle rows of a page: the body itself (Binance), ``data`` (OKX), ``result.list``."""
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        if isinstance(payload.get("data"), list):
            return payload["data"]
        result = payload.get("result")
        if isinstance(result, dict) and isinstance(result.get("list"), list):
            return result["list"]
    return None


def _cut_rows(response: Response, keep: float) -> bool:
    """Keep the first ``keep`` fraction of a successful page's candles (0: none, else at least
    one, and at least one fewer than there were); False if it is no page of several candles."""
    if response.status != 200:
        return False
    try:
        payload: Any = json.loads(response.body)
    except ValueError:
        return False
    rows = _rows_of(payload)
    if not rows or not isinstance(rows[0], list):  # no candles (or instruments, times, ...)
        return False
    if keep:
        if len(rows) < 2:
            return False
        del rows[max(1, int(len(rows) * keep)):]
    else:
        rows.clear()
    response.body = json.dumps(payload, separators=(",", ":")).encode()
    return True


def _trickle(handler: BaseHTTPRequestHandler, response: Response, gap: float) -> None:
    """The whole answer announced, then its body one byte every ``gap`` seconds."""
    send_head(handler, response)
    try:
        handler.wfile.flush()
        for i in range(len(response.body)):
            time.sleep(gap)
            handler.wfile.write(response.body[i:i + 1])
            handler.wfile.flush()
    except OSError:  # the client gave up: what a whole-response deadline should do
        handler.close_connection = True


def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str],
          body_override: bytes | None = None) -> None:
    """Send a response announcing ``len(body)`` bytes; ``body_override`` sends fewer (a reset)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body if body_override is None else body_override)
    handler.wfile.flush()
