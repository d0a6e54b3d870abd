"""Compatibility: the expected Binance rows now live next to the Binance mock routes."""

from forge_binance.mock import binance_rows
from forge_core.testing import as_csv_lines
from forge_core.times import parse_range

__all__ = ["as_csv_lines", "binance_csv_lines", "binance_rows"]


def binance_csv_lines(symbol: str, tf: str, start: str, end: str, now: int, market: object = None) -> list[list[str]]:
    """The CSV lines Forge writes for the mock's ``symbol`` over ``start``..``end`` (as ``--from``
    and ``--to`` take them), its clock at ``now``."""
    lo, hi = parse_range(start, end)
    return as_csv_lines(binance_rows(symbol, tf, lo, hi, now, market))
