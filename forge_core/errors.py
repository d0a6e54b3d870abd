"""Errors with exit codes. The CLI prints their message as one line; no traceback."""

from __future__ import annotations


class ForgeError(Exception):
    """A failure the user can act on. ``str(error)`` is the one line shown to them, with any
    URL credentials and secret query values redacted (:func:`forge_core.redact`)."""

    exit_code = 1

    def __init__(self, *args: object) -> None:
        from .redact import redact

        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))

    def __str__(self) -> str:
        from .redact import redact

        return redact(super().__str__())


class UsageError(ForgeError):
    """The user asked for something invalid (bad option, unknown plugin, bad date)."""

    exit_code = 2


class RetryableError(ForgeError):
    """A transient failure (429, 5xx, timeout, malformed body): try again after ``retry_after``.
    ``busy``: the server says it is overloaded (Binance -1008 whatever the HTTP status), so every
    worker of the client backs off together (:class:`forge_core.retrying.Backoff`); a 5xx
    counts as busy without it."""

    def __init__(self, message: str, retry_after: float | None = None, *, busy: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.busy = busy


class SourceError(ForgeError):
    """The exchange refused a request for a reason that retrying cannot fix."""


class BeforeListing(SourceError):
    """A range wholly before a symbol's first candle (``first_open``, the exchange's word).
    ``span`` and ``fix`` say what the user asked and what to change: ``--to`` for a range, the
    partitions for a partition run."""

    def __init__(self, where: str, symbol: str, first_open: int, end: int, *, span: str | None = None,
                 fix: str = "choose --to after the listing") -> None:
        from .times import iso

        span = f"the range ends {iso(end)}" if span is None else span
        super().__init__(f"{where} has no {symbol} candles before {iso(first_open)} (its first); {span}: {fix}")
        self.where, self.symbol, self.first_open, self.end = where, symbol, first_open, end


class SinkError(ForgeError):
    """The destination could not accept or commit rows."""


class SinkUnavailable(SinkError):
    """The destination cannot be reached now (a lost connection retried for a while, the rows
    kept): a run fails with it, a follow run waits for the destination and commits again."""


class TransformError(ForgeError):
    """A transform raised while processing a batch."""
