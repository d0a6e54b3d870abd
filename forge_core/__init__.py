"""Forge: backfill exact historical candles from crypto exchanges, through pluggy plugins.

The embedding API is :class:`Pipeline`; plugin authors subclass :class:`Source`, :class:`Sink`
or :class:`Transform` and register them with the hooks in :mod:`forge_core.hookspecs`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    ForgeError,
    RetryableError,
    SinkError,
    SinkUnavailable,
    SourceError,
    TransformError,
    UsageError,
)
from .hookspecs import hookimpl
from .http import Cancelled, GaveUp, HttpClient, RateLimiter, default_check
from .logs import get_logger
from .options import Option
from .paging import Hole, backward_pages, forward_pages
from .pipeline import Pipeline, Progress, RunResult
from .plugins import Plugins
from .records import (
    CANDLE_COLUMNS,
    EXTRA_COLUMNS,
    Batch,
    Fetched,
    Row,
    RowMaker,
    TextRows,
    row_maker,
)
from .redact import redact, redact_url
from .sinks import RunInfo, Sink
from .sources import Source, SymbolInfo, Task
from .timeframes import DAY, HOUR, MINUTE, NAMES, SECOND, Timeframe, parse_timeframe
from .times import iso, now_ms, parse_range
from .transforms import RowFunction, Transform


def __getattr__(name: str) -> type:
    """``sf.BinanceBackfilling``, ``sf.PostgresEmitter``...: resolved from the installed plugins."""
    if name.endswith(("Backfilling", "Emitter")):
        from .compat import resolve

        return resolve(name)
    raise AttributeError(f"module 'forge_core' has no attribute {name!r}")


__all__ = [
    "CANDLE_COLUMNS",
    "DAY",
    "EXTRA_COLUMNS",
    "Batch",
    "Cancelled",
    "Fetched",
    "Hole",
    "ForgeError",
    "GaveUp",
    "HOUR",
    "HttpClient",
    "MINUTE",
    "NAMES",
    "Option",
    "Pipeline",
    "Plugins",
    "Progress",
    "RateLimiter",
    "RetryableError",
    "Row",
    "RowFunction",
    "RowMaker",
    "RunInfo",
    "RunResult",
    "SECOND",
    "Sink",
    "SinkError",
    "SinkUnavailable",
    "Source",
    "SourceError",
    "SymbolInfo",
    "Task",
    "TextRows",
    "Timeframe",
    "Transform",
    "TransformError",
    "UsageError",
    "__version__",
    "backward_pages",
    "default_check",
    "forward_pages",
    "get_logger",
    "hookimpl",
    "iso",
    "now_ms",
    "parse_range",
    "parse_timeframe",
    "row_maker",
    "redact",
    "redact_url",
]
