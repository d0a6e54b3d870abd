"""Forge's testing kit for plugin authors: ``pip install forge-etl``, then in your tests::

    from forge_core.testing import SourceContract, SinkContract

    class TestMySource(SourceContract):      # every contract test runs against your source
        source = "myexchange"
        ...

pytest finds the kit's fixtures by itself (entry point ``pytest11``: ``mock_exchange``,
``mock_exchange_factory``, ``mock_env``, ``pg_url``, ``pg_server``). The mock exchange server
hosts the routes every installed plugin ships (entry point group ``forge_etl_mock``) over
Forge's deterministic synthetic market (:mod:`.market`), with a fault injector in front.
Guide: ``docs/testing-plugins.md``.
"""

from __future__ import annotations

from .server import Handler, MockConfig, MockExchange, Request, Response, route_modules

FROZEN_NOW = 1742034030456  # the kit's frozen exchange clock: 2025-03-15 10:20:30.456 UTC


def as_csv_lines(rows: list[tuple]) -> list[list[str]]:
    """Rows as the CSV sink writes them: every value through ``str``."""
    return [[str(x) for x in row] for row in rows]


def __getattr__(name: str) -> object:
    # the contract suites import pytest: load them only when asked for
    if name in ("SourceContract", "SinkContract", "SyntheticSource", "MemorySink", "MemoryStore"):
        from . import contracts

        return getattr(contracts, name)
    raise AttributeError(f"module 'forge_core.testing' has no attribute {name!r}")


__all__ = ["FROZEN_NOW", "Handler", "MemorySink", "MemoryStore", "MockConfig", "MockExchange", "Request",
           "Response", "SinkContract", "SourceContract", "SyntheticSource", "as_csv_lines", "route_modules"]
