"""Binance klines for Forge: ``forge run --source binance``."""

from .source import BinanceSource

__all__ = ["BinanceSource"]
