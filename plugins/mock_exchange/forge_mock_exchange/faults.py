"""Injectable faults, drawn per request from a seeded RNG: ``MockConfig(faults={"http500": 0.05})``.

=============  =================================================================================
kind           what the client sees
=============  =================================================================================
``http500``    HTTP 500/502/503 with an error body
``reset``      headers and half the body, then the connection is closed
``slow``       no answer for ``extra["slow_seconds"]`` (default 3 s), then the normal answer
``malformed``  HTTP 200 with a body that is not JSON
``truncated``  HTTP 200 with the JSON cut short (the Content-Length matches the cut body)
``duplicate``  the page repeats some of its rows (in place, order kept)
``burst429``   HTTP 429 with ``Retry-After: 1`` (Binance -1003 body, or OKX 50011 on /api/v5)
``okx50011``   HTTP 200 with OKX's ``{"code":"50011",...}`` envelope (OKX paths only)
``down``       every request from the ``extra["down_after"]``-th on gets HTTP 503 (no rate)
=============  =================================================================================

Faults hit exchange paths only (never ``/mock/...``). ``mock.stats`` counts them as
``fault.<kind>``.
"""

from __future__ import annotations

import json
import random
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from .server import MockExchange, Request, Response

KINDS = ("http500", "reset", "slow", "malformed", "truncated", "duplicate", "burst429", "okx50011")


def install(mock: MockExchange) -> None:
    faults = mock.config.faults
    if not faults:
        return
    unknown = set(faults) - set(KINDS) - {"down"}
    if unknown:
        raise ValueError(f"unknown fault kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}, down")
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
        if kind is None:
            return False
        mock.count(f"fault.{kind}")
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
