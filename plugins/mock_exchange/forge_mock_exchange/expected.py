"""Compatibility: the expected Binance rows now live next to the Binance mock routes."""

from forge_binance.mock import binance_rows
from forge_core.testing import as_csv_lines

__all__ = ["as_csv_lines", "binance_rows"]
