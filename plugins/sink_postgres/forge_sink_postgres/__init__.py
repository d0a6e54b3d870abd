"""PostgreSQL sink for Forge: ``forge run --sink postgres``."""

from .sink import PostgresSink

__all__ = ["PostgresSink"]
