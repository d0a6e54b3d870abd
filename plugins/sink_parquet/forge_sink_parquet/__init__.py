"""Parquet sink for Forge: ``forge run --sink parquet --root data/``."""

from .sink import ParquetSink

__all__ = ["ParquetSink"]
