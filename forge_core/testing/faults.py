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
               pages that had candles are hit; with ``extra["empty_once"]`` each request (path
               and query) at most once, a one-off wrong answer that a re-ask gets right
``trickle``    the normal answer, its body sent one byte at a time, ``extra["trickle_seconds"]``
               (default 0.05 s) apart: a read timeout per byte never fires
``waf403``     HTTP 403 with an HTML block page (a firewall or CDN in front of the exchange),
               modelled on CloudFront's "The request could not be satisfied" page; not retried
``geo451``     HTTP 451 with Binance's restricted-location body (``code`` 0; the words public
               reports quote from the US and some clouds; Binance REST paths only: the archive's
               ``/data/...`` files and its listing ``/?prefix=`` still answer); not retried
``bare429``    HTTP 429 without ``Retry-After`` (Binance -1003 body, or OKX 50011 on /api/v5): the
               client must back off on its own
``ban418``     HTTP 418 with ``Retry-After: 120`` and Binance's "IP banned until <ms>" -1003 body
               (Binance REST paths only); retrying extends a real ban
``blank``      HTTP 200 with an empty body (``Content-Length: 0``)
``badlength``  HTTP 200 whose ``Content-Length`` announces fewer bytes than the body sent: the
               client reads a cut body and the rest is left on the connection
``gzipcut``    HTTP 200, ``Content-Encoding: gzip``, the compressed body cut in half (the
               ``Content-Length`` matches the cut): the decoder ends early without an error
``down``       every request after the first ``extra["down_after"]`` (default 0: every one) gets
               HTTP 503 (the rate is ignored)
=============  =================================================================================

Faults hit exchange paths only (never ``/mock/...``). ``mock.stats`` counts them as
``fault.<kind>``. Rates are probabilities per request (0 to 1; their sum at most 1). The faults
that rewrite a page (``duplicate``, ``short``, ``empty``) keep every JSON number's text as the
route sent it (``12345678901234567890.123456789`` stays whole, ``1.50`` stays ``1.50``).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from .server import MockExchange, Request, Response, send_head

KINDS = ("http500", "reset", "slow", "malformed", "truncated", "duplicate", "burst429", "okx50011", "empty",
         "trickle", "short", "waf403", "geo451", "bare429", "ban418", "blank", "badlength", "gzipcut")
ALL_KINDS = (*KINDS, "down")
__all__ = ["ALL_KINDS", "KINDS", "WAF_PAGE", "check_faults", "install"]

# the shape of a CDN's block page (CloudFront's, written from its known layout, not a capture):
# a title, two headings, then prose, a footer and an id, about 1 KB of markup in all
WAF_PAGE = b"""<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01 Transitional//EN" "http://www.w3.org/TR/html4/loose.dtd">
<HTML><HEAD><META HTTP-EQUIV="Content-Type" CONTENT="text/html; charset=iso-8859-1">
<TITLE>ERROR: The request could not be satisfied</TITLE>
<style>body { font-family: sans-serif; }</style>
</HEAD><BODY>
<H1>403 ERROR</H1>
<H2>The request could not be satisfied.</H2>
<HR noshade size="1px">
Request blocked.
We can't connect to the server for this app or website at this time. There might be too much traffic
or a configuration error. Try again later, or contact the app or website owner.
<BR clear="all">
If you provide content to customers through CloudFront, you can find steps to troubleshoot and help
prevent this error by reviewing the CloudFront documentation.
<BR clear="all">
<HR noshade size="1px">
<PRE>
Generated by cloudfront (CloudFront)
Request ID: 3kq9Zt0bNf4Qv2nLrXg5yWcH8dPmA1sJ7eUoTiKzBV6xYlEwR-Fh==
</PRE>
<ADDRESS>
</ADDRESS>
</BODY></HTML>"""


# Binance's answer to a restricted location (the US, some cloud regions), as public issue threads
# quote it (ccxt, python-binance users, 2022-2024): HTTP 451 with this JSON
GEO_MSG = ("Service unavailable from a restricted location according to 'b. Eligibility' in "
           "https://www.binance.com/en/terms. Please contact customer service if you believe you received this "
           "message in error.")


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
        if "down" in faults and n > int(mock.config.extra.get("down_after", 0)):
            return "down"
        edge = 0.0
        for kind in KINDS:
            edge += faults.get(kind, 0.0)
            if roll < edge:
                okx = request.path.startswith("/api/v5")
                archive = request.path.startswith("/data/") or request.path == "/"
                if (kind == "okx50011" and not okx) or (kind in ("geo451", "ban418") and (okx or archive)):
                    return None
                return kind
        return None

    emptied: set[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]] = set()

    def empty_again(request: Request) -> bool:
        """With ``extra["empty_once"]``: this request was answered empty before."""
        if not mock.config.extra.get("empty_once"):
            return False
        key = (request.path, tuple(sorted((k, tuple(v)) for k, v in request.query.items())))
        with mock.lock:
            if key in emptied:
                return True
            emptied.add(key)
            return False

    def before_send(handler: BaseHTTPRequestHandler, request: Request, response: Response) -> bool:
        if request.path.startswith("/mock/"):
            return False
        kind = draw(request)
        if kind == "empty" and (not _is_page(response) or empty_again(request)):
            return False
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
        if kind == "badlength":
            if len(response.body) < 2:
                return False
            _send(handler, response.status, response.body[: len(response.body) // 2], response.headers,
                  response.content_type, body_override=response.body)
            return True  # the connection stays open, the rest of the body in it
        if kind == "gzipcut":
            packed = gzip.compress(response.body)
            _send(handler, response.status, packed[: max(1, len(packed) // 2)],
                  {**response.headers, "Content-Encoding": "gzip"}, response.content_type)
            return True
        if kind == "reset":
            body = response.body[: max(1, len(response.body) // 2)]
            _send(handler, response.status, response.body, response.headers, response.content_type, body_override=body)
            handler.close_connection = True
            return True
        replacement = {
            "http500": lambda: Response.json({"code": -1000, "msg": "An unknown error occurred while processing the request."},
                                             rng.choice((500, 502, 503))),
            "down": lambda: Response.json({"code": "50001", "msg": "Service temporarily unavailable."} if okx
                                          else {"code": -1000, "msg": "Service unavailable."}, 503),
            "malformed": lambda: Response(200, b"<html><body>upstream error</body></html>"),
            "waf403": lambda: Response(403, WAF_PAGE, content_type="text/html"),
            "geo451": lambda: Response.json({"code": 0, "msg": GEO_MSG}, 451),
            "truncated": lambda: Response(200, response.body[: max(1, len(response.body) * 2 // 3)]),
            "burst429": lambda: (Response.json({"msg": "Too Many Requests", "code": "50011"}, 429, **{"Retry-After": "1"})
                                 if okx else Response.json({"code": -1003, "msg": "Too much request weight used; "
                                                            "current limit is 6000 request weight per 1 MINUTE."},
                                                           429, **{"Retry-After": "1"})),
            "bare429": lambda: (Response.json({"msg": "Too Many Requests", "code": "50011"}, 429) if okx
                                else Response.json({"code": -1003, "msg": "Too much request weight used; current "
                                                    "limit is 6000 request weight per 1 MINUTE."}, 429)),
            "ban418": lambda: Response.json({"code": -1003, "msg": "Way too much request weight used; IP banned until "
                                             f"{mock.now() + 120_000}. Please use WebSocket Streams for live updates "
                                             "to avoid bans."}, 418, **{"Retry-After": "120"}),
            "blank": lambda: Response(200, b""),
            "okx50011": lambda: Response.json({"code": "50011", "msg": "Rate limit reached. Please refer to API "
                                               "documentation and throttle requests accordingly.", "data": []}),
        }[kind]()
        _send(handler, replacement.status, replacement.body, replacement.headers, replacement.content_type)
        return True

    mock.before_send = before_send


_NUMBER = "\x00number:"  # a JSON number's text, carried through json as a marked string


def _load(body: bytes) -> Any:
    """A page, its numbers kept as their text (``json.loads`` would make floats of them)."""
    return json.loads(body, parse_float=lambda text: _NUMBER + text)


def _dump(payload: Any) -> bytes:
    text = json.dumps(payload, separators=(",", ":"))
    return re.sub(r'"\\u0000number:([^"]*)"', r"\1", text).encode()


def _is_page(response: Response) -> bool:
    """A successful answer with candle rows (JSON arrays) in it."""
    if response.status != 200:
        return False
    try:
        rows = _rows_of(_load(response.body))
    except ValueError:
        return False
    return bool(rows) and isinstance(rows[0], list)


def _duplicate_rows(response: Response, rng: random.Random) -> None:
    try:
        payload: Any = _load(response.body)
    except ValueError:
        return
    rows = _rows_of(payload)
    if not isinstance(rows, list) or len(rows) < 2 or not isinstance(rows[0], list):
        return
    for _ in range(max(1, len(rows) // 50)):
        i = rng.randrange(len(rows))
        rows.insert(i, list(rows[i]))
    response.body = _dump(payload)


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
        payload: Any = _load(response.body)
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
    response.body = _dump(payload)
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
          content_type: str = "application/json", body_override: bytes | None = None) -> None:
    """Send a response announcing ``len(body)`` bytes; ``body_override`` sends fewer (a reset)."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body if body_override is None else body_override)
    handler.wfile.flush()
