"""Adds ``forge mock-exchange`` to the ``forge`` command."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from forge_core import ForgeError, hookimpl
from forge_core.times import parse_instant


def parse_faults(items: tuple[str, ...]) -> dict[str, float]:
    """``("http500=0.02", "reset")`` -> ``{"http500": 0.02, "reset": 1.0}``; a bad item is a
    usage error (one line naming it and the known kinds)."""
    from forge_core.testing.faults import check_faults

    rates: dict[str, float] = {}
    for item in items:
        kind, _, rate = item.partition("=")
        try:
            rates[kind.strip()] = float(rate or "1")
        except ValueError:
            raise click.BadParameter(f"{item!r}: use KIND=RATE, e.g. http500=0.02", param_hint="--fault") from None
    try:
        check_faults(rates)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None
    return rates


def parse_extra(items: tuple[str, ...]) -> dict[str, Any]:
    """``("down_after=12", 'archive_missing=["BTCUSDT-1m-2024-02.zip"]')`` -> ``MockConfig.extra``:
    each VALUE is JSON if it parses, else the text itself."""
    extra: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r}: use KEY=VALUE, e.g. down_after=12", param_hint="--extra")
        try:
            extra[key.strip()] = json.loads(value)
        except ValueError:
            extra[key.strip()] = value
    return extra


@hookimpl
def forge_register_commands(cli: Any) -> None:
    @cli.command(name="mock-exchange")
    @click.option("--port", type=click.IntRange(0, 65535), default=8000, metavar="N", show_default=True, help="Port on 127.0.0.1 (0 = any free port).")
    @click.option("--latency", type=click.FloatRange(0), default=0.05, metavar="S", show_default=True, help="Seconds added to every response.")
    @click.option("--now", "now", default=None, help="Freeze the exchanges' clock at this time (default: real time).")
    @click.option("--weight-window", type=click.IntRange(1), default=60, metavar="S", show_default=True,
                  help="Binance rate-limit window in seconds (60 = the real one-minute window).")
    @click.option("--fault", "faults", multiple=True, metavar="KIND=RATE",
                  help="Inject faults, e.g. --fault http500=0.02 --fault empty=0.01 (kinds: docs/mock-exchange.md).")
    @click.option("--fault-seed", type=int, default=0, show_default=True, help="Seed for fault injection.")
    @click.option("--extra", "extra", multiple=True, metavar="KEY=VALUE",
                  help="A fault's setting (VALUE as JSON, else text), e.g. --extra down_after=12 "
                       "--extra trickle_seconds=1 (keys: docs/mock-exchange.md).")
    def mock_exchange(port: int, latency: float, now: str | None, weight_window: int,
                      faults: tuple[str, ...], fault_seed: int, extra: tuple[str, ...]) -> None:
        """Serve market data with deterministic candles on 127.0.0.1, for every exchange whose
        installed plugin ships mock routes (entry point group forge_etl_mock). Prints the
        environment variables that point each source at it."""
        from forge_core.testing.server import MockConfig, MockExchange

        rates = parse_faults(faults)
        config = MockConfig(latency=latency, now=parse_instant(now)[0] if now else None,
                            weight_window=weight_window, faults=rates, fault_seed=fault_seed,
                            extra=parse_extra(extra))
        try:
            mock = MockExchange(config, port=port).start()
        except OSError as exc:  # the port is taken (or not ours to bind)
            raise ForgeError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; "
                             "choose another --port, or --port 0 for any free one") from None
        try:
            served = ", ".join(mock.modules) or "no exchanges (no installed plugin ships mock routes)"
            click.echo(f"mock exchange on {mock.url} serving {served}; Ctrl-C to stop", err=True)
            for name, value in mock.environment.items():
                click.echo(f"export {name}={value}")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        finally:
            mock.stop()
