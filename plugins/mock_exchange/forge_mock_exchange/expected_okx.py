"""Compatibility: the expected OKX rows now live next to the OKX mock routes."""

from forge_okx.mock import okx_rows

__all__ = ["okx_rows"]
