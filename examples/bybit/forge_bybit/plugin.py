"""The module the entry point names: its hooks register the plugin's classes."""

from __future__ import annotations

from collections.abc import Callable

from forge_core import hookimpl

from .source import BybitSource


@hookimpl
def forge_register_sources(register: Callable[[type], None]) -> None:
    register(BybitSource)
