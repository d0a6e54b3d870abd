"""Compatibility: the server is :mod:`forge_core.testing.server` (Forge's testing kit)."""

from forge_core.testing.server import (
    Handler,
    MockConfig,
    MockExchange,
    Request,
    Response,
    route_modules,
)

__all__ = ["Handler", "MockConfig", "MockExchange", "Request", "Response", "route_modules"]
