"""OKX candles for Forge: ``forge run --source okx``."""

from .source import OkxSource

__all__ = ["OkxSource"]
