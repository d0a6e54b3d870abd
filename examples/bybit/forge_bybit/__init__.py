"""Bybit klines for Forge (an example third-party plugin): ``forge run --source bybit``."""

from .source import BybitSource

__all__ = ["BybitSource"]
