"""Real Binance bodies and behaviours (``exchange-apis.md`` section A, recorded responses in
``fixtures/`` and ``tests/fixtures/real/``, see their PROVENANCE.md) through the real source
over real HTTP: a local server answers with the recorded bytes, and every value Forge writes
is compared with the exchange's own string."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from conftest import read_csv
from forge_binance.source import BinanceSource, _ban_end, _ban_until
from forge_core import SourceError, Task
from forge_core.testing.server import MockExchange, Response
from forge_core.timeframes import parse_timeframe
from forge_core.times import display


def ban(mock: MockExchange, seconds: float) -> float:
    """Put the mock's spot IP under a ban (as after a client kept going past its 429s)."""
    until = time.time() + seconds
    with mock.lock:
        mock.state["weights.spot"] = {"window": -1, "used": 0, "over": 0, "banned_until": until}
    return until


def test_a_418_ban_says_until_when_and_is_not_retried(forge, fresh_mock, monkeypatch, tmp_path):
    """Binance's 418 body names the ban's end in epoch ms ("IP banned until 1702275878212");
    the design asks to stop and say until when. It said "wait 120 s", no time."""
    monkeypatch.setenv("FORGE_BINANCE_URL", fresh_mock.url)
    until = ban(fresh_mock, 600)
    result = forge("run", "-s", "binance", "--symbol", "BTCUSDT", "-t", "1h", "--from", "2024-01-01",
                   "--to", "2024-01-02", "--output", str(tmp_path / "out.csv"), "-q")
    assert result.code != 0 and "Traceback" not in result.err
    line = result.err.strip()
    assert "\n" not in line and "banned this IP" in line and "not retrying" in line
    assert f"banned until {display(int(until * 1000))}" in line and " min " in line
    assert fresh_mock.stats["binance.418"] == 1  # the ban is not extended by a retry
    assert not (tmp_path / "out.csv").exists()


# -- recorded klines bodies, served as recorded, through `forge run` -------------------------
FIXTURES = Path(__file__).resolve().parent / "fixtures"  # see PROVENANCE.md
REAL = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "real"
SPOT_INFO = FIXTURES / "binance_spot_exchangeInfo_2021-10-22_trimmed_nautilus.json"  # weight 1200/min
USDM_INFO = REAL / "binance_usdm_exchangeInfo_2022-02-19_trimmed_nautilus.json"
CCXT = json.loads((FIXTURES / "ccxt_binance_static_fetchOHLCV.json").read_text())
PREFIX = {"spot": "/api/v3", "usdm": "/fapi/v1"}


def replay(market: str, body: bytes, info: Path, now: int, compact: bool) -> MockExchange:
    """A server answering klines with the recorded klines as Binance selects them (open time
    in ``[startTime, endTime]``, ``limit`` of them), the recorded bytes themselves when the
    answer is the whole recording (``compact``: always Binance's compact wire form), the
    recorded exchangeInfo, and ``now`` as its time."""
    recorded = json.loads(body)
    server = MockExchange(routes=[])
    weight = {"x-mbx-used-weight-1m": "2"}  # as HTTP/2 delivers it: lower case

    def klines(req):
        start, end, limit = req.arg("startTime"), req.arg("endTime"), int(req.arg("limit") or 500)
        rows = [k for k in recorded if (start is None or k[0] >= int(start)) and (end is None or k[0] <= int(end))]
        rows = rows[:limit] if start is not None else rows[-limit:]
        if rows == recorded and not compact:
            return Response(200, body, dict(weight))
        return Response.json(rows, **weight)

    prefix = PREFIX[market]
    server.route(f"{prefix}/klines", klines)
    server.route(f"{prefix}/exchangeInfo", lambda req: Response(200, info.read_bytes(), dict(weight)))
    server.route(f"{prefix}/time", lambda req: Response.json({"serverTime": now}, **weight))
    return server


def as_exchange_wrote_it(kline: list, source: str, symbol: str, tf: str) -> list[str]:
    """The CSV row of one recorded kline: every value the exchange's own string (ints as
    their digits), the 'ignore' field left out."""
    ints = [str(kline[i]) for i in (0, 6, 8)]
    return [source, symbol, tf, ints[0], ints[1], *kline[1:6], kline[7], ints[2], kline[9], kline[10]]


CASES = {  # name: (market, body, exchangeInfo, timeframe, --from, --to, now, closed klines); the ccxt
    # bodies are one value of a larger recorded file: served pretty-printed, as the others are stored
    # ten 1m klines, the last one still open at the time of the recording: never written
    "spot-1m-nautilus": ("spot", (REAL / "binance_spot_klines_BTCUSDT_1m_2021-10-22_nautilus.json").read_bytes(),
                         SPOT_INFO, "1m", "2021-10-22 23:00:00", "2021-10-22 23:20:00", 1634944320000 + 30_000, 9),
    "spot-1h-ccxt": ("spot", json.dumps(CCXT[0]["httpResponse"], indent=1).encode(), SPOT_INFO, "1h",
                     "2024-01-30 15:00:00", "2024-01-30 19:00:00", 1706641200000 + 5_000, 3),
    # futures prices at the symbol's precision ("71481.90", "0.002"): kept, not padded or trimmed
    "usdm-1m-ccxt": ("usdm", json.dumps(CCXT[2]["httpResponse"], indent=1).encode(), USDM_INFO, "1m",
                     "2024-04-10 08:40:00", "2024-04-10 08:50:00", 1712738640000 + 5_000, 3),
    # the USD-M docs' example: one week (2017-07-03 Monday), 'ignore' not zero
    "usdm-1w-docs": ("usdm", (FIXTURES / "binance_usdm_klines_docs_example_nautilus.json").read_bytes(), USDM_INFO,
                     "1w", "2017-06-26", "2017-07-09", 1499644800000 + 5_000, 1),
}


@pytest.mark.parametrize("compact", [False, True], ids=["as-recorded", "compact"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_recorded_klines_body_becomes_exactly_its_closed_klines(forge, monkeypatch, tmp_path, case, compact):
    market, body, info, tf, start, end, now, closed = CASES[case]
    recorded = json.loads(body)
    source = "binance" if market == "spot" else f"binance-{market}"
    with replay(market, body, info, now, compact) as server:
        monkeypatch.setenv("FORGE_BINANCE_URL" if market == "spot" else "FORGE_BINANCE_FUTURES_URL", server.url)
        out = tmp_path / "out.csv"
        result = forge("run", "-s", "binance", "--market", market, "--symbol", "BTCUSDT", "-t", tf,
                       "--from", start, "--to", end, "--output", str(out), "-q")
    assert result.code == 0, result
    header, rows = read_csv(out)
    assert header[:5] == ["source", "symbol", "timeframe", "open_ts", "end_ts"]
    want = [as_exchange_wrote_it(k, source, "BTCUSDT", tf) for k in recorded if k[6] < now]
    assert len(want) == closed and rows == want


def test_the_recorded_exchange_info_sizes_the_weight_limit_and_time_reads(tmp_path):
    """The 2021 answer's REQUEST_WEIGHT 1200 per 1 MINUTE (today 6000): the limiter keeps to it,
    not to the published default; the recorded time body (pretty-printed) reads."""
    time_body = (FIXTURES / "binance_spot_time_nautilus.json").read_bytes()
    with replay("spot", b"[]", SPOT_INFO, 0, True) as server:
        server.route("/api/v3/time", lambda req: Response(200, time_body))
        src = BinanceSource(base_url=server.url, archive="rest")
        try:
            assert src.server_time() == 1633835466289
            src.prepare_symbols(["BTCUSDT", "ETHUSDT"], parse_timeframe("1m"))
            assert src.limiter.capacity == pytest.approx(1200 * 0.95) and src.limiter.counting_window == 60
        finally:
            src.close()


@pytest.mark.parametrize("msg", [  # errors.md today, and the 2018 wording (exchange-apis.md A.4)
    "Way too much request weight used; IP banned until 1702275878212. Please use WebSocket Streams for live "
    "updates to avoid bans.",
    "Way too many requests; IP banned until 1515547977300.",
])
def test_the_ban_end_is_read_from_binance_s_message(msg):
    until = int(msg.split("until ")[1][:13])
    assert _ban_until(msg, 30.0) == until and _ban_until(f"IP banned until {until * 1000}.", None) == until  # µs
    assert _ban_end(until) == f"banned until {display(until)}; try again after that"  # past: no "in"
    assert _ban_until("Way too much request weight used.", None) is None
    assert "2 minutes to 3 days" in _ban_end(None)


def test_a_418_without_retry_after_keeps_every_worker_quiet_until_the_ban_ends():
    """The client pauses the limiter (and a shared budget) for a 418's Retry-After, 60 s without
    one: processes sharing the IP went on after a minute, into a ban that lasts until the time
    its message names."""
    until = int(time.time() * 1000) + 600_000
    body = json.dumps({"code": -1003, "msg": f"Way too much request weight used; IP banned until {until}. "
                       "Please use WebSocket Streams for live updates to avoid bans."}).encode()
    with replay("spot", b"[]", SPOT_INFO, 0, True) as server:
        server.route("/api/v3/klines", lambda req: Response(418, body))
        src = BinanceSource(base_url=server.url, archive="rest")
        try:
            with pytest.raises(SourceError, match="banned until"):
                src._klines("BTCUSDT", parse_timeframe("1m"), {"startTime": 0, "limit": 1})
            assert 590 < src.limiter.paused_for() <= 600
        finally:
            src.close()


# -- times after the exchange's clock (exchange-apis.md A.2, F.5) ----------------------------
def test_coinm_never_asks_past_the_exchange_clock(fresh_mock):
    """A third party reports HTTP 403 for klines asked with a time even 1 ms in the future,
    "particularly strict for FUTURES_COIN" (ccxt clamps inverse endTime to now). COIN-M's probe
    after an empty page asked for a whole window from the cursor: near the exchange's clock
    (the newest candles, every follow step) its endTime was hours ahead, and a 403 is final."""
    from forge_binance.mock import binance_rows
    from forge_core.testing.market import Market

    fresh_mock.config.extra["binance_future_403"] = True
    fresh_mock.config.now = None  # the exchange's clock moves, as a real one does
    real = fresh_mock.routes["/dapi/v1/klines"]
    emptied: list[str] = []

    def flaky(req):  # the newest page comes back empty once, as real servers occasionally do
        answer = real(req)
        if req.arg("endTime") and answer.status == 200 and not emptied:
            emptied.append(req.raw_query)
            return Response.json([], **answer.headers)
        return answer

    fresh_mock.route("/dapi/v1/klines", flaky)
    src = BinanceSource(base_url=fresh_mock.url, market="coinm", archive="rest")
    tf = parse_timeframe("1m")
    try:
        now = src.server_time()
        end = tf.floor(now)  # the newest closed candle's end
        rows = list(src.fetch(Task("BTCUSD_PERP", tf, end - 30 * 60_000, end)))
    finally:
        src.close()
    assert emptied and fresh_mock.stats["binance.future403"] == 0
    assert rows == binance_rows("BTCUSD_PERP", "1m", end - 30 * 60_000, end, now, Market.binance_coinm())
    assert len(rows) == 30


# -- X-MBX-USED-WEIGHT in its real forms (exchange-apis.md A.4) -------------------------------
@pytest.mark.parametrize("headers,seen", [
    ({"X-MBX-USED-WEIGHT": "900", "X-MBX-USED-WEIGHT-1m": "900"}, 900),  # as the API sends it today
    ({"x-mbx-used-weight": "700", "x-mbx-used-weight-1m": "800"}, 800),  # HTTP/2: lower case; the minute's wins
    ({"x-mbx-used-weight": "500"}, 500),  # the legacy header alone
    ({}, None),  # none (a proxy dropped it): the limiter's own count only
])
def test_the_used_weight_header_is_read_in_its_real_forms(headers, seen):
    with replay("spot", b"[]", SPOT_INFO, 0, True) as server:
        server.route("/api/v3/klines", lambda req: Response.json([], **headers))
        src = BinanceSource(base_url=server.url, archive="rest")
        try:
            src._klines("BTCUSDT", parse_timeframe("1m"), {"startTime": 0, "limit": 1})
            used = src.limiter._used
        finally:
            src.close()
    assert used == (2 if seen is None else seen)  # 2: the request's own weight


def test_the_mock_sends_both_used_weight_headers_as_the_real_api(mock):
    import requests

    answer = requests.get(f"{mock.url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m", "limit": 1})
    assert answer.headers["X-MBX-USED-WEIGHT"] == answer.headers["X-MBX-USED-WEIGHT-1M"] != ""


# -- the recorded error bodies, each with the status Binance sends it with --------------------
ERRORS = {e["code"]: e for e in json.loads((REAL / "binance_error_bodies_from_ccxt_comments.json").read_text())}


@pytest.mark.parametrize("status,code,market,said", [
    (400, -1121, "spot", r"^unknown symbol 'BTCUSDT' on Binance spot \(Binance: Invalid symbol\.\)"),
    (400, -1120, "spot", r"^timeframe '1m' is not offered by Binance spot; choose one of: 1s 1m "),
    (400, -1104, "spot", r"^Binance spot refused the request for BTCUSDT 1m: HTTP 400 from [^ ]+/api/v3/klines: "
                         r"-1104 Not all sent parameters were read, read 8 parameters but was sent 9$"),
    (400, -1023, "usdm", r"^Binance usdm refused the request for BTCUSDT 1m: HTTP 400 from [^ ]+/fapi/v1/klines: "
                         r"-1023 Start time is greater than end time\.$"),
    (429, -1003, "spot", r"still failing after 2 attempts .*HTTP 429 -1003 Too much request weight used, current "
                         r"limit is 1200 request weight per 1 MINUTE\."),
])
def test_a_recorded_error_body_is_one_line_naming_it(status, code, market, said):
    body = json.dumps(ERRORS[code], separators=(",", ":")).encode()
    with replay(market, b"[]", SPOT_INFO, 0, True) as server:
        server.route(f"{PREFIX[market]}/klines", lambda req: Response(status, body, {"Retry-After": "0"}))
        src = BinanceSource(base_url=server.url, market=market, archive="rest")
        src.http.backoff, src.http.max_attempts = 0.01, 2
        try:
            with pytest.raises(SourceError) as caught:
                src.fetch(Task("BTCUSDT", parse_timeframe("1m"), 1706745600000, 1706745600000 + 60 * 60_000))
        finally:
            src.close()
    line = str(caught.value)
    assert "\n" not in line and re.search(said, line), line


# -- recorded archive rows, zipped and checksummed as data.binance.vision serves them ----------
def archive_server(market: str, symbol: str, tf: str, files: dict[str, str], now: int) -> MockExchange:
    """REST (time, exchangeInfo, and klines answering the first recorded row to the listing
    probe) and the archive: each of ``files`` (zip name -> CSV text) as the zip holding one CSV
    of the same name, with its ``.CHECKSUM`` line; any other file 404 as on the real host."""
    import hashlib
    import io
    import zipfile

    blobs: dict[str, bytes] = {}
    for name, text in files.items():
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(name.replace(".zip", ".csv"), text)
        blobs[name] = out.getvalue()
        blobs[name + ".CHECKSUM"] = f"{hashlib.sha256(out.getvalue()).hexdigest()}  {name}\n".encode()
    first = next(line for text in files.values() for line in text.splitlines() if line[:1].isdigit()).split(",")
    kline = [int(first[0][:13]), *first[1:6], int(first[6][:13]), first[7], int(first[8]), *first[9:]]
    server = MockExchange(routes=[])
    prefix = {"spot": "/api/v3", "usdm": "/fapi/v1", "coinm": "/dapi/v1"}[market]
    entry = {"symbol": symbol, "status": "TRADING", "contractStatus": "TRADING", "onboardDate": kline[0]}
    server.route(f"{prefix}/time", lambda req: Response.json({"serverTime": now}))
    server.route(f"{prefix}/exchangeInfo", lambda req: Response.json({"rateLimits": [], "symbols": [entry]}))
    server.route(f"{prefix}/klines", lambda req: Response.json([kline] if req.arg("startTime") == "0" else []))
    directory = {"spot": "spot", "usdm": "futures/um", "coinm": "futures/cm"}[market]

    def archive(req):
        folder, _, name = req.path.rpartition("/")
        wanted = f"/data/{directory}/{'daily' if name.count('-') >= 4 else 'monthly'}/klines/{symbol}/{tf}"
        body = blobs.get(name) if folder == wanted else None
        return Response(200, body, content_type="application/zip") if body is not None else Response(404, b"")

    server.route_prefix("/data/", archive)
    return server


ARCHIVE_CASES = {  # name: (market, symbol, tf, fixture, zip name, --from, --to)
    # the README's 2025 spot row: microseconds (an hourly copy of the older 1m example)
    "spot-2025-us": ("spot", "BTCUSDT", "1h", "binance_vision_spot_kline_row_readme_2025_microseconds.csv",
                     "BTCUSDT-1h-2025-01-01.zip", "2025-01-01 00:00:00", "2025-01-01 00:00:00"),
    "spot-ms": ("spot", "BTCUSDT", "1m", "binance_vision_spot_kline_row_readme_pre2025_milliseconds.csv",
                "BTCUSDT-1m-2020-09-30.zip", "2020-09-30 23:59:00", "2020-09-30 23:59:00"),
    "um-1w": ("usdm", "BTCUSDT", "1w", "binance_vision_um_kline_row_readme.csv", "BTCUSDT-1w-2017-07.zip",
              "2017-07-03", "2017-07-09"),
    "cm-header": ("coinm", "BTCUSD_PERP", "1h", "binance_vision_cm_BTCUSD_PERP_1h_2023-10-27_head_with_header_freqtrade.csv",
                  "BTCUSD_PERP-1h-2023-10-27.zip", "2023-10-27 00:00:00", "2023-10-27 02:00:00"),
    "cm-1m": ("coinm", "BTCUSD_PERP", "1m", "binance_vision_cm_kline_row_readme.csv", "BTCUSD_PERP-1m-2020-06-04.zip",
              "2020-06-04 08:12:00", "2020-06-04 08:12:00"),
}


@pytest.mark.parametrize("case", list(ARCHIVE_CASES))
def test_a_recorded_archive_row_becomes_exactly_its_candle(forge, monkeypatch, tmp_path, case):
    market, symbol, tf, fixture, name, start, end = ARCHIVE_CASES[case]
    text = (FIXTURES / fixture).read_text()
    env = {"spot": "FORGE_BINANCE_URL", "usdm": "FORGE_BINANCE_FUTURES_URL", "coinm": "FORGE_BINANCE_COINM_URL"}
    with archive_server(market, symbol, tf, {name: text}, 1735689600000 + 10 * 86_400_000) as server:
        monkeypatch.setenv(env[market], server.url)
        out = tmp_path / "out.csv"
        result = forge("run", "-s", "binance", "--market", market, "--symbol", symbol, "-t", tf, "--from", start,
                       "--to", end, "--archive", "archive", "--archive-url", server.url, "--output", str(out), "-q")
    assert result.code == 0, result
    source = "binance" if market == "spot" else f"binance-{market}"
    want = []
    for line in text.splitlines():
        if line[:1].isdigit():  # not the header
            v = line.split(",")
            want.append([source, symbol, tf, v[0][:13], v[6][:13], *v[1:6], v[7], v[8], v[9], v[10]])
    assert read_csv(out)[1] == want and want


# -- a 200 that is not the exchange's JSON: retried, never read as candles ----------------------
@pytest.mark.parametrize("bad", [b"", b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                                 b'[[1706745600000,"1.5","2.5"', b"[", b"null", b"{}"],
                         ids=["empty", "html", "truncated", "bracket", "null", "object"])
def test_a_200_without_klines_is_retried_and_the_rows_stay_exact(fresh_mock, bad):
    """What CDNs and proxies in front of an exchange answer during an upstream fault (an empty
    body, an HTML page, a cut or foreign JSON) comes with HTTP 200 too: once, then the real page."""
    from forge_binance.mock import binance_rows
    from forge_core.testing.market import Market

    real = fresh_mock.routes["/api/v3/klines"]
    spoiled: list[str] = []

    def once(req):
        answer = real(req)
        if req.arg("endTime") and not spoiled:
            spoiled.append(req.raw_query)
            return Response(200, bad, dict(answer.headers), "text/html" if bad.startswith(b"<") else "application/json")
        return answer

    fresh_mock.route("/api/v3/klines", once)
    src = BinanceSource(base_url=fresh_mock.url, archive="rest")
    src.http.backoff = 0.01
    tf, start = parse_timeframe("1m"), 1706745600000
    try:
        rows = list(src.fetch(Task("BTCUSDT", tf, start, start + 300 * 60_000)))
        stats = src.stats()
    finally:
        src.close()
    assert spoiled and stats["retries"] == 1
    assert rows == binance_rows("BTCUSDT", "1m", start, start + 300 * 60_000, fresh_mock.now(), Market.binance_spot())


# -- the transport real hosts use: gzip (requests asks for it) and chunked bodies ---------------
class RealTransport:
    """A front for the mock that answers as api.binance.com and www.okx.com do: the body gzip-
    (or deflate-) compressed when the client accepts it, sent with ``Transfer-Encoding:
    chunked`` in small chunks, no Content-Length. The mock itself sends neither."""

    def __init__(self, behind: str, encoding: str, chunk: int) -> None:
        import gzip
        import threading
        import zlib
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import requests

        compress = {"gzip": gzip.compress, "deflate": zlib.compress, "identity": bytes}[encoding]
        self.compressed = 0
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                answer = requests.get(behind + self.path, headers={"Accept-Encoding": "identity"})
                body = answer.content
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("content-length", "content-encoding", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                if encoding != "identity" and encoding in self.headers.get("Accept-Encoding", ""):
                    body = compress(body)
                    self.send_header("Content-Encoding", encoding)
                    front.compressed += 1
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), chunk):
                    piece = body[i:i + chunk]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("encoding,chunk", [("gzip", 7), ("gzip", 16384), ("deflate", 1000), ("identity", 61)])
def test_compressed_chunked_answers_give_the_same_rows(fresh_mock, encoding, chunk):
    from forge_binance.mock import binance_rows
    from forge_core.testing.market import Market
    from forge_okx.mock import okx_rows
    from forge_okx.source import OkxSource

    front = RealTransport(fresh_mock.url, encoding, chunk)
    binance, okx = BinanceSource(base_url=front.url, archive="rest"), OkxSource(base_url=front.url)
    m1, h1, start = parse_timeframe("1m"), parse_timeframe("1h"), 1706745600000
    try:
        binance.server_time()
        okx.server_time()
        spot = list(binance.fetch(Task("BTCUSDT", m1, start, start + 1000 * 60_000)))
        okx_got = list(okx.fetch(Task("BTC-USDT", h1, start, start + 300 * 3_600_000)))
        retries = binance.stats()["retries"] + okx.stats()["retries"]
        assert front.compressed >= (4 if encoding != "identity" else 0)  # time, info, klines; time, candles
    finally:
        binance.close()
        okx.close()
        front.close()
    now = fresh_mock.now()
    assert spot == binance_rows("BTCUSDT", "1m", start, start + 1000 * 60_000, now, Market.binance_spot())
    assert okx_got == okx_rows("BTC-USDT", "1h", start, start + 300 * 3_600_000, now) and retries == 0


@pytest.mark.parametrize("market,suffix", [("spot", "/api/v3"), ("usdm", "/fapi"), ("coinm", "/dapi/v1")])
def test_a_base_url_with_the_api_path_in_it_says_to_give_the_host_root(forge, mock, tmp_path, market, suffix):
    """Binance answers an unknown path 404 (an HTML page, or nothing with Accept: JSON): a
    --base-url of https://api.binance.com/api/v3 doubled the path, said only as the 404."""
    symbol = "BTCUSD_PERP" if market == "coinm" else "BTCUSDT"
    result = forge("run", "-s", "binance", "--market", market, "--symbol", symbol, "-t", "1h", "--from", "2024-01-01",
                   "--to", "2024-01-01", "--base-url", mock.url + suffix, "--output", str(tmp_path / "o.csv"), "-q")
    line = result.err.strip()
    assert result.code != 0 and "\n" not in line and "HTTP 404" in line
    assert "is the base URL the host root, like https://" in line


@pytest.mark.parametrize("market", ["spot", "usdm", "coinm"])
def test_a_run_to_now_through_empty_answers_never_asks_past_the_exchange_clock(
        forge, mock_exchange_factory, monkeypatch, tmp_path, market):
    """Every market, the newest candles, a moving clock, every page wrongly empty the first time
    (each one re-checked with probes): no request names a time after the exchange's clock, and
    the candles are exact."""
    from forge_binance.mock import binance_rows
    from forge_core.testing.market import Market

    server = mock_exchange_factory(now=None, extra={"binance_future_403": True})
    prefix = {"spot": "/api/v3", "usdm": "/fapi/v1", "coinm": "/dapi/v1"}[market]
    real = server.routes[f"{prefix}/klines"]
    seen: set[str | None] = set()

    def empty_once(req):
        answer = real(req)
        if req.arg("endTime") and answer.status == 200 and req.arg("startTime") not in seen:
            seen.add(req.arg("startTime"))  # each page's first answer: the probes after it are answered
            return Response.json([], **answer.headers)
        return answer

    server.route(f"{prefix}/klines", empty_once)
    for name in ("FORGE_BINANCE_URL", "FORGE_BINANCE_FUTURES_URL", "FORGE_BINANCE_COINM_URL"):
        monkeypatch.setenv(name, server.url)
    symbol = "BTCUSD_PERP" if market == "coinm" else "BTCUSDT"
    start = (int(time.time() * 1000) // 60_000 - 900) * 60_000  # 15 hours back
    out = tmp_path / "out.csv"
    result = forge("run", "-s", "binance", "--market", market, "--symbol", symbol, "-t", "1m",
                   "--from", str(start), "--to", "now", "--output", str(out), "-q")
    assert result.code == 0, result
    assert server.stats["binance.future403"] == 0 and seen
    rows = read_csv(out)[1]
    end = int(rows[-1][3]) + 60_000
    market_of = {"spot": Market.binance_spot, "usdm": Market.binance_usdm, "coinm": Market.binance_coinm}[market]()
    want = binance_rows(symbol, "1m", start, end, end + 60_000, market_of)
    assert rows == [[str(v) for v in r] for r in want] and len(rows) >= 899
