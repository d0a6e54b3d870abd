"""The hooks a Forge plugin can implement. Every hook receives a callback, like llm's
``register_models``: a plugin registers classes, it never returns them.

A plugin is a module (or object) with ``@forge_core.hookimpl`` functions, published under the
entry-point group ``forge_etl``::

    [project.entry-points.forge_etl]
    bybit = "forge_bybit"

Hooks fire once per process when the plugins load, never per row or per batch. Data hooks are
not broadcast: installing a plugin adds names users can choose, it never changes what an
existing pipeline does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "forge_etl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def forge_register_sources(register: Callable[[type], None]) -> None:
    """Register source classes: ``register(MySource)``.

    A source is a subclass of :class:`forge_core.Source` with a unique ``name`` (what users
    type after ``--source``). It turns ``(symbol, timeframe, time range)`` into batches of
    closed candles.
    """


@hookspec
def forge_register_sinks(register: Callable[[type], None]) -> None:
    """Register sink classes: ``register(MySink)``.

    A sink is a subclass of :class:`forge_core.Sink` with a unique ``name`` (what users type
    after ``--sink``). It writes batches and makes them durable on ``commit()``.
    """


@hookspec
def forge_register_transforms(register: Callable[[type], None]) -> None:
    """Register transform classes: ``register(MyTransform)``.

    A transform is a subclass of :class:`forge_core.Transform` with a unique ``name``. It runs
    only when the user names it (``--transform name``).
    """


@hookspec
def forge_register_commands(cli: Any) -> None:
    """Add commands to the ``forge`` Click group: ``@cli.command()`` inside the hook."""
