"""pytest fixtures of Forge's testing kit, registered through the ``pytest11`` entry point
``forge`` (disable with ``-p no:forge``). Importing this module is cheap: the servers start only
when a test asks for them.

* ``mock_exchange`` (session): one mock exchange with every installed plugin's routes, clock
  frozen at :data:`~forge_core.testing.FROZEN_NOW`, no latency, no faults. Don't reconfigure it.
* ``mock_exchange_factory``: ``make(config=None, **config_fields) -> MockExchange``, started, with
  a frozen clock unless ``now`` is given; stopped after the test. For faults and latency.
* ``mock_env``: ``mock_exchange``, with every environment variable its routes name
  (``FORGE_BINANCE_URL``, ``FORGE_OKX_URL``, ...) pointing at it for this test.
* ``pg_url`` (session): a PostgreSQL URL: ``$FORGE_TEST_DATABASE_URL`` if set, else a throwaway
  server (``initdb`` + ``pg_ctl`` in a temp dir, removed at the end).
* ``pg_server`` (session): that throwaway :class:`~forge_core.testing.pgserver.PgServer` (for
  restarts), or ``None`` with ``FORGE_TEST_DATABASE_URL``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def mock_exchange() -> Iterator[Any]:
    from forge_core.testing import FROZEN_NOW, MockConfig, MockExchange

    with MockExchange(MockConfig(now=FROZEN_NOW)) as server:
        yield server


@pytest.fixture
def mock_exchange_factory() -> Iterator[Callable[..., Any]]:
    from forge_core.testing import FROZEN_NOW, MockConfig, MockExchange

    started: list[Any] = []

    def make(config: Any = None, *, routes: Any = None, **fields: Any) -> Any:
        if config is None:
            fields.setdefault("now", FROZEN_NOW)
            config = MockConfig(**fields)
        server = MockExchange(config, routes=routes).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def mock_env(mock_exchange: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in mock_exchange.environment.items():
        monkeypatch.setenv(name, value)
    return mock_exchange


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    if os.environ.get("FORGE_TEST_DATABASE_URL"):
        yield None
        return
    from forge_core.testing import pgserver

    server = pgserver.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server: Any) -> str:
    return os.environ["FORGE_TEST_DATABASE_URL"] if pg_server is None else pg_server.url
