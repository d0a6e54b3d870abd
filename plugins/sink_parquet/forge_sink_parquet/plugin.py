from __future__ import annotations

from collections.abc import Callable

from forge_core import hookimpl

from .sink import ParquetSink


@hookimpl
def forge_register_sinks(register: Callable[[type], None]) -> None:
    register(ParquetSink)
