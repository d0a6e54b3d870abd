"""Structured logging through structlog on top of the standard ``logging`` module.

The library never installs handlers: an embedding app configures ``logging`` as it likes and
sees Forge's events under the ``forge`` logger. The CLI calls :func:`configure`.
"""

from __future__ import annotations

import logging
import sys

import structlog

from .redact import redact


def _redact(logger: object, method: str, event: dict[str, object]) -> dict[str, object]:
    """No URL credentials or secret query values in any log line, whoever logs it."""
    for key, value in event.items():
        if isinstance(value, str) and ("@" in value or "=" in value):
            event[key] = redact(value)
    return event


_PROCESSORS = [
    structlog.stdlib.filter_by_level,
    _redact,
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger under the ``forge`` namespace (``forge.forge_binance.source`` ...)."""
    return structlog.wrap_logger(
        logging.getLogger(f"forge.{name}"), processors=_PROCESSORS, wrapper_class=structlog.stdlib.BoundLogger
    )


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def configure(verbosity: int = 0, fmt: str = "console") -> None:
    """Send Forge's logs to stderr: warnings by default, info with ``-v``, debug with ``-vv``."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = _StderrHandler()
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=renderer))
    logger = logging.getLogger("forge")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
