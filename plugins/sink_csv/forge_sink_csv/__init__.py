"""CSV sink for Forge: ``forge run --sink csv``."""

from .sink import CsvSink, default_name

__all__ = ["CsvSink", "default_name"]
