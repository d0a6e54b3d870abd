"""Know what a store holds and make it whole: ``forge status``, ``forge verify``, ``forge repair``.

The digest is defined in :mod:`forge_core.integrity.digest` (and ``docs/verify.md``); the
ledger and the store hooks a sink implements in :mod:`forge_core.integrity.model`; the
comparison in :mod:`forge_core.integrity.engine`; the commands in
:mod:`forge_core.integrity.commands`.
"""

from __future__ import annotations

from .digest import (
    EMPTY_DIGEST,
    LINE_FIELDS,
    VALUE_FIELDS,
    digest,
    line,
    normalize,
    partition_key,
    partitions,
)
from .model import (
    AFTER_LAST_CANDLE,
    BEFORE_LISTING,
    EXCHANGE_EMPTY,
    FETCH_FAILED,
    NO_LATER_CANDLE,
    Hole,
    IntegrityStore,
    LedgerEntry,
    PartitionState,
    SeriesHeld,
    StoredRow,
)

__all__ = [
    "AFTER_LAST_CANDLE",
    "BEFORE_LISTING",
    "EMPTY_DIGEST",
    "EXCHANGE_EMPTY",
    "FETCH_FAILED",
    "LINE_FIELDS",
    "NO_LATER_CANDLE",
    "VALUE_FIELDS",
    "Hole",
    "IntegrityStore",
    "LedgerEntry",
    "PartitionState",
    "SeriesHeld",
    "StoredRow",
    "digest",
    "line",
    "normalize",
    "partition_key",
    "partitions",
]
