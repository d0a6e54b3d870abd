"""The shared mock exchange: routes found through entry points, the faults added for issue 17
(``empty``, ``trickle``) and for the contract suites (``short``), and ``forge mock-exchange``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from forge_core.testing import FROZEN_NOW, MockConfig, MockExchange, route_modules
from forge_core.testing import server as server_module

ROOT = Path(__file__).resolve().parents[3]
JAN_9 = 1704758400000  # 2024-01-09 00:00 UTC: a day with candles on every exchange mocked here
BINANCE = {"symbol": "BTCUSDT", "interval": "1m", "startTime": JAN_9, "limit": 1000}
OKX = {"instId": "BTC-USDT", "bar": "1m", "after": JAN_9 + 300 * 60_000, "limit": 300}
BYBIT = {"category": "spot", "symbol": "BTCUSDT", "interval": "1", "start": JAN_9, "end": JAN_9 + 999 * 60_000,
         "limit": 1000}


def page(mock: MockExchange, path: str, params: dict) -> requests.Response:
    return requests.get(f"{mock.url}{path}", params=params, timeout=10)


def rows_of(body) -> list:
    return body if isinstance(body, list) else body["data"] if "data" in body else body["result"]["list"]


# -- route modules next to their plugins --------------------------------------------------------
def test_every_installed_plugin_brings_its_routes():
    modules = route_modules()
    assert {name: m.__name__ for name, m in modules.items()} == {
        "binance": "forge_binance.mock", "binance_archive": "forge_binance.mock_archive",
        "bybit": "forge_bybit.mock", "okx": "forge_okx.mock"}
    with MockExchange(MockConfig(now=FROZEN_NOW)) as mock:
        for path, params in (("/api/v3/klines", BINANCE), ("/api/v5/market/history-candles", OKX),
                             ("/v5/market/kline", BYBIT)):
            r = page(mock, path, params)
            assert r.status_code == 200 and len(rows_of(r.json())) > 100, path
        assert set(mock.environment) == {"FORGE_BINANCE_URL", "FORGE_BINANCE_FUTURES_URL", "FORGE_BINANCE_COINM_URL",
                                         "FORGE_BINANCE_ARCHIVE_URL", "FORGE_OKX_URL", "FORGE_BYBIT_URL"}
        assert set(mock.environment.values()) == {mock.url}


def test_a_mock_can_serve_only_some_routes():
    with MockExchange(MockConfig(now=FROZEN_NOW), routes=["bybit"]) as mock:
        assert page(mock, "/v5/market/kline", BYBIT).status_code == 200
        assert page(mock, "/api/v3/klines", BINANCE).status_code == 404
        assert mock.environment == {"FORGE_BYBIT_URL": mock.url}
    with pytest.raises(ValueError, match=r"no mock routes named nope \(installed: binance, binance_archive, bybit, okx\)"):
        MockExchange(routes=["nope"])


def test_a_broken_route_module_is_left_out_with_a_warning(monkeypatch):
    from importlib.metadata import EntryPoint

    real = server_module.entry_points

    def with_a_broken_one(group):
        return [*real(group=group), EntryPoint("zzbroken", "no_such_module_anywhere", group)]

    monkeypatch.setattr(server_module, "entry_points", with_a_broken_one)
    with pytest.warns(UserWarning, match="mock routes 'zzbroken'.*failed to load"):
        modules = route_modules()
    assert "zzbroken" not in modules and "binance" in modules


def test_the_old_import_paths_still_work():
    from forge_mock_exchange import MockConfig as OldConfig
    from forge_mock_exchange import MockExchange as OldExchange
    from forge_mock_exchange.expected import binance_rows
    from forge_mock_exchange.market import MAINTENANCE, Market
    from forge_mock_exchange.server import Response

    assert (OldConfig, OldExchange) == (MockConfig, MockExchange)
    assert Response.json({}).status == 200 and MAINTENANCE[0] < MAINTENANCE[1]
    assert binance_rows("BTCUSDT", "1h", JAN_9, JAN_9 + 86_400_000, FROZEN_NOW, Market.binance_spot())


# -- the faults -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path,params", [("/api/v3/klines", BINANCE), ("/api/v5/market/history-candles", OKX),
                                         ("/v5/market/kline", BYBIT)])
def test_empty_fault_serves_a_page_without_candles_for_a_range_that_has_some(path, params):
    with MockExchange(MockConfig(now=FROZEN_NOW)) as healthy:
        full = page(healthy, path, params).json()
    with MockExchange(MockConfig(now=FROZEN_NOW, faults={"empty": 1.0})) as mock:
        r = page(mock, path, params)
        body = r.json()
        assert r.status_code == 200 and rows_of(body) == [] and rows_of(full)
        if isinstance(body, dict):  # the envelope says success: only the rows are gone
            assert {k: v for k, v in body.items() if k not in ("data", "result", "time")} == \
                {k: v for k, v in full.items() if k not in ("data", "result", "time")}
        assert mock.stats["fault.empty"] == 1


def test_empty_fault_leaves_pages_that_are_not_candles_alone():
    with MockExchange(MockConfig(now=FROZEN_NOW, faults={"empty": 1.0})) as mock:
        info = page(mock, "/api/v3/exchangeInfo", {}).json()
        instruments = page(mock, "/api/v5/public/instruments", {"instType": "SPOT"}).json()
        assert info["symbols"] and instruments["data"] and mock.stats["fault.empty"] == 0


def test_short_fault_serves_the_first_half_of_the_page():
    with MockExchange(MockConfig(now=FROZEN_NOW)) as healthy:
        full = page(healthy, "/api/v5/market/history-candles", OKX).json()["data"]
    with MockExchange(MockConfig(now=FROZEN_NOW, faults={"short": 1.0})) as mock:
        short = page(mock, "/api/v5/market/history-candles", OKX).json()["data"]
        assert short == full[: len(full) // 2] and mock.stats["fault.short"] == 1


def test_empty_once_answers_each_request_empty_at_most_once():
    config = MockConfig(now=FROZEN_NOW, faults={"empty": 1.0}, extra={"empty_once": True})
    with MockExchange(config) as mock:
        first, again = (rows_of(page(mock, "/api/v3/klines", BINANCE).json()) for _ in range(2))
        other = rows_of(page(mock, "/api/v3/klines", {**BINANCE, "limit": 999}).json())
        assert (first, other) == ([], []) and len(again) == 1000 and mock.stats["fault.empty"] == 2


# a page of a venue that sends prices as JSON numbers (Coinbase's order: time, low, high, open, close, volume)
NUMBERS = b"[[1710331200,73241.50,73402.47,73243.330,12345678901234567890.123456789,1.56794406],"  \
          b"[1710327600,1E-8,0.10,2,3.0e5,0.00000001]]"


@pytest.mark.parametrize("fault", ["duplicate", "short"])
def test_faults_that_rewrite_a_page_keep_its_numbers_as_sent(fault):
    from forge_core.testing import Response

    with MockExchange(MockConfig(now=FROZEN_NOW, faults={fault: 1.0})) as mock:
        mock.route("/products/X/candles", lambda req: Response(200, NUMBERS))
        text = requests.get(f"{mock.url}/products/X/candles", timeout=10).text
    assert mock.stats[f"fault.{fault}"] == 1
    assert text.startswith("[[1710331200,73241.50,73402.47,73243.330,12345678901234567890.123456789,1.56794406]")
    if fault == "duplicate":
        assert "[1710327600,1E-8,0.10,2,3.0e5,0.00000001]" in text


def test_trickle_fault_sends_the_body_one_byte_at_a_time():
    config = MockConfig(now=FROZEN_NOW, faults={"trickle": 1.0}, extra={"trickle_seconds": 0.04})
    with MockExchange(MockConfig(now=FROZEN_NOW)) as healthy:
        want = page(healthy, "/api/v3/time", {}).content
    with MockExchange(config) as mock:
        began = time.monotonic()
        # no single read waits 0.8 s (the whole body, about 1.1 s, does not come at once), and a
        # loaded machine's pause of half a second between two bytes is not taken for one
        r = requests.get(f"{mock.url}/api/v3/time", timeout=(2, 0.8))
        took = time.monotonic() - began
        assert r.content == want and took >= len(want) * 0.04
        assert mock.stats["fault.trickle"] == 1


def raw_get(mock: MockExchange, target: str) -> tuple[bytes, bytes]:
    """One GET on a fresh socket: the head and every byte of the body the server sent before
    it closed (whatever its Content-Length says; the mock closes after each of these answers, so
    the 10 s are only a limit, long enough for a loaded machine: 0.5 s cut off a slow first byte)."""
    import socket

    with socket.create_connection(("127.0.0.1", int(mock.url.rsplit(":", 1)[1])), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


KLINES = "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=1704758400000&limit=50"


@pytest.mark.parametrize("fault", ["bare429", "ban418", "blank", "badlength", "gzipcut"])
def test_the_faults_of_the_fault_drill_send_what_they_say(fault):
    import gzip
    import zlib

    with MockExchange(MockConfig(now=FROZEN_NOW)) as healthy:
        _, want = raw_get(healthy, KLINES)
    with MockExchange(MockConfig(now=FROZEN_NOW, faults={fault: 1.0})) as mock:
        head, body = raw_get(mock, KLINES)
        assert mock.stats[f"fault.{fault}"] == 1
    lines = head.decode().lower().split("\r\n")
    length = int(next(h for h in lines if h.startswith("content-length:")).split(":")[1])
    if fault == "bare429":
        assert lines[0].endswith("429 too many requests") and not any(h.startswith("retry-after") for h in lines)
        assert b'"code":-1003' in body
    elif fault == "ban418":
        assert " 418 " in lines[0] and "retry-after: 120" in lines
        assert f"ip banned until {FROZEN_NOW + 120_000}.".encode() in body.lower()
    elif fault == "blank":
        assert lines[0].endswith("200 ok") and length == 0 and body == b""
    elif fault == "badlength":
        assert body == want and length == len(want) // 2  # all of it sent, half of it announced
    else:
        assert "content-encoding: gzip" in lines and length == len(body)
        with pytest.raises(EOFError):
            gzip.decompress(body)
        partial = zlib.decompressobj(wbits=31).decompress(body)
        assert want.startswith(partial) and len(partial) < len(want)


def test_down_without_down_after_fails_every_request():
    """``forge mock-exchange --fault down`` could not set ``down_after``: it served no fault."""
    with MockExchange(MockConfig(now=FROZEN_NOW, faults={"down": 1.0})) as mock:
        assert requests.get(f"{mock.url}/api/v3/time", timeout=10).status_code == 503
        assert mock.stats["fault.down"] == 1


def test_forge_mock_exchange_sets_fault_settings_with_extra():
    """``--extra KEY=VALUE`` fills ``MockConfig.extra`` (JSON, else text) from the command line:
    here the request count before ``down``, and an archive file whose checksum is wrong."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    corrupt = '{"BTCUSDT-1m-2024-02.zip": "checksum"}'
    proc = subprocess.Popen([sys.executable, "-m", "forge_core.cli", "mock-exchange", "--port", "0", "--latency", "0",
                             "--now", "2025-03-15", "--fault", "down", "--extra", "down_after=2",
                             "--extra", f"archive_corrupt={corrupt}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stderr.readline().split(" on ", 1)[1].split()[0]
        zip_path = "/data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip"
        archive = requests.get(url + zip_path, timeout=10)
        digest = requests.get(url + zip_path + ".CHECKSUM", timeout=10)
        third = requests.get(url + "/api/v3/time", timeout=10)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    import hashlib

    assert (archive.status_code, digest.status_code, third.status_code) == (200, 200, 503)
    assert "BTCUSDT-1m-2024-02.zip" in digest.text
    assert hashlib.sha256(archive.content).hexdigest() not in digest.text


def test_a_bad_extra_is_a_one_line_usage_error(forge):
    result = forge("mock-exchange", "--port", "0", "--extra", "down_after")
    [line] = result.err.strip().splitlines()
    assert result.code == 2 and "'down_after': use KEY=VALUE" in line and "--extra" in line


def test_fault_config_is_checked():
    for faults, message in (({"meteor": 1.0}, "unknown fault kind 'meteor'; known: http500, "),
                            ({"http500": 1.5}, "fault rate http500=1.5 is not a probability"),
                            ({"http500": 0.6, "reset": 0.6}, "fault rates add up to 1.2")):
        with pytest.raises(ValueError, match=message):
            MockExchange(MockConfig(faults=faults))


# -- forge mock-exchange ---------------------------------------------------------------------------
@pytest.mark.parametrize("fault,named", [("bogus=1", "unknown fault kind 'bogus'"), ("http500=x", "'http500=x'"),
                                         ("reset=7", "fault rate reset=7")])
def test_a_bad_fault_is_a_one_line_usage_error(forge, fault, named):
    result = forge("mock-exchange", "--port", "0", "--fault", fault)
    assert result.code == 2, result
    [line] = result.err.strip().splitlines()
    assert named in line and "--fault" in line and "unexpected" not in line


@pytest.mark.parametrize("option,value", [("--port", "99999"), ("--latency", "-1"),
                                          ("--weight-window", "0")])
def test_a_bad_number_is_a_one_line_usage_error(forge, option, value):
    """--port 99999 was an 'unexpected OverflowError' (and --port -1 hung); a negative latency or a
    0 s weight window started a server that cannot answer."""
    result = forge("mock-exchange", option, value)
    assert result.code == 2, result
    [line] = result.err.strip().splitlines()
    assert f"Invalid value for '{option}': {value}" in line


def test_a_port_in_use_is_one_line_naming_it():
    """It was 'unexpected OSError: [Errno 98] Address already in use'."""
    with MockExchange(MockConfig(latency=0)) as taken:
        port = taken.url.rsplit(":", 1)[1]
        proc = subprocess.run([sys.executable, "-m", "forge_core.cli", "mock-exchange", "--port", port],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc
    assert proc.stderr.strip() == (f"forge: error: cannot listen on 127.0.0.1:{port}: Address already in use; "
                                   "choose another --port, or --port 0 for any free one")


def test_help_points_to_a_doc_that_exists(forge):
    result = forge("mock-exchange", "--help")
    assert result.code == 0 and "docs/mock-exchange.md" in result.out
    doc = (ROOT / "docs" / "mock-exchange.md").read_text()
    from forge_core.testing.faults import ALL_KINDS

    for kind in ALL_KINDS:  # every fault kind is documented
        assert f"| `{kind}` |" in doc, kind


def test_forge_mock_exchange_prints_every_variable_to_export():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "forge_core.cli", "mock-exchange", "--port", "0", "--latency", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        status = proc.stderr.readline()
        lines = [proc.stdout.readline().strip() for _ in range(6)]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
    url = status.split(" on ", 1)[1].split()[0]
    assert url.startswith("http://127.0.0.1:")
    assert "binance, binance_archive, bybit, okx" in status
    assert sorted(lines) == sorted(f"export {name}={url}" for name in (
        "FORGE_BINANCE_URL", "FORGE_BINANCE_FUTURES_URL", "FORGE_BINANCE_COINM_URL", "FORGE_BINANCE_ARCHIVE_URL",
        "FORGE_BYBIT_URL", "FORGE_OKX_URL"))
