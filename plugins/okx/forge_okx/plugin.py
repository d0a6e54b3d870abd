from __future__ import annotations

from collections.abc import Callable

from forge_core import hookimpl

from .source import OkxSource


@hookimpl
def forge_register_sources(register: Callable[[type], None]) -> None:
    register(OkxSource)
