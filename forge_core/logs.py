"""Structured logging through structlog on top of the standard ``logging`` module.

The library never installs handlers: an embedding app configures ``logging`` as it likes and
sees Forge's events under the ``forge`` logger. The CLI calls :func:`configure`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .redact import redact

# structlog (and, through structlog.dev, rich and asyncio when installed) costs a tenth of a
# second to import: a quiet run logs nothing, so it is imported on the first event that a
# level lets through, or the first record a configured handler formats.


def _redact(logger: object, method: str, event: dict[str, object]) -> dict[str, object]:
    """No URL credentials or secret query values in any log line, whoever logs it."""
    for key, value in event.items():
        if isinstance(value, str) and ("@" in value or "=" in value):
            event[key] = redact(value)
    return event


def _processors() -> list[Any]:
    import structlog

    return [
        structlog.stdlib.filter_by_level,
        _redact,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]


class Logger:
    """A structlog ``BoundLogger`` over ``logging.getLogger(name)``, built on first use: an
    event below the logger's level returns at once (as structlog's ``filter_by_level`` would)."""

    __slots__ = ("_logger", "_bound")

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._bound: Any = None

    def _real(self) -> Any:
        if self._bound is None:
            import structlog

            self._bound = structlog.wrap_logger(self._logger, processors=_processors(),
                                                wrapper_class=structlog.stdlib.BoundLogger)
        return self._bound

    def _emit(self, level: int, method: str, event: str, kw: dict[str, Any]) -> Any:
        if not self._logger.isEnabledFor(level):
            return None
        return getattr(self._real(), method)(event, **kw)

    def debug(self, event: str, **kw: Any) -> Any:
        return self._emit(logging.DEBUG, "debug", event, kw)

    def info(self, event: str, **kw: Any) -> Any:
        return self._emit(logging.INFO, "info", event, kw)

    def warning(self, event: str, **kw: Any) -> Any:
        return self._emit(logging.WARNING, "warning", event, kw)

    warn = warning

    def error(self, event: str, **kw: Any) -> Any:
        return self._emit(logging.ERROR, "error", event, kw)

    def exception(self, event: str, **kw: Any) -> Any:
        return self._emit(logging.ERROR, "exception", event, kw)

    def critical(self, event: str, **kw: Any) -> Any:
        return self._emit(logging.CRITICAL, "critical", event, kw)

    def __getattr__(self, name: str) -> Any:  # bind(), new(), log() ...: the real logger's
        return getattr(self._real(), name)


def get_logger(name: str) -> Logger:
    """A logger under the ``forge`` namespace (``forge.forge_binance.source`` ...)."""
    return Logger(logging.getLogger(f"forge.{name}"))


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


class _Formatter(logging.Formatter):
    """structlog's ``ProcessorFormatter`` with the console or JSON renderer, built on the first
    record it formats."""

    def __init__(self, fmt: str) -> None:
        super().__init__()
        self._fmt_name = fmt
        self._real: logging.Formatter | None = None

    def format(self, record: logging.LogRecord) -> str:
        if self._real is None:
            import structlog

            renderer = (structlog.processors.JSONRenderer() if self._fmt_name == "json"
                        else structlog.dev.ConsoleRenderer(colors=False))
            self._real = structlog.stdlib.ProcessorFormatter(processor=renderer)
        return self._real.format(record)


def configure(verbosity: int = 0, fmt: str = "console") -> None:
    """Send Forge's logs to stderr: warnings by default, info with ``-v``, debug with ``-vv``."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(fmt))
    logger = logging.getLogger("forge")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
